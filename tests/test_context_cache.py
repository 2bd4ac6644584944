"""The context cache: exact reuse, its memory budget, and windows equal to tokenizing every row anew."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest

from qa_core.config import QAConfig, RuntimeConfig
from qa_core.engine.host import RowPreparer
from qa_core.engine.stats import EngineStats
from qa_core.errors import ConfigError
from qa_core.records import Record, RowWindows
from qa_core.runtime.torch_runner import TorchRunner
from qa_core.stages.context_cache import ContextCache
from qa_core.stages.featurize import Featurizer
from qa_core.stages.windows import TokenizedText


def tokens_of(text: str) -> TokenizedText:
    """A stand-in tokenization: one token per character."""
    positions = np.arange(len(text), dtype=np.int32)
    return TokenizedText(positions, positions, positions + 1)


def size_of(text: str) -> int:
    return tokens_of(text).nbytes + sys.getsizeof(text)


class CountingEncoder:
    """Tokenizes with `tokens_of` and records every call's texts."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> list[TokenizedText]:
        self.calls.append(list(texts))
        return [tokens_of(text) for text in texts]


def test_each_distinct_context_is_encoded_once_across_calls() -> None:
    cache, encode = ContextCache(1 << 20), CountingEncoder()
    first = cache.tokens(["a b", "c d", "a b"], encode)
    second = cache.tokens(["c d", "e f", "e f"], encode)
    assert encode.calls == [["a b", "c d"], ["e f"]]
    assert first[0] is first[2] and second[0] is first[1]
    assert (cache.counts.lookups, cache.counts.tokenized, cache.counts.evictions) == (6, 3, 0)
    assert cache.counts.peak_bytes == cache.bytes == sum(size_of(t) for t in ("a b", "c d", "e f"))


def test_least_recently_used_contexts_leave_first_within_the_budget() -> None:
    texts = ["first context", "second context", "third context"]
    cache, encode = ContextCache(size_of(texts[0]) + size_of(texts[1]) + 1), CountingEncoder()
    cache.tokens(texts[:2], encode)
    cache.tokens([texts[0]], encode)  # the first is now the most recently used
    cache.tokens([texts[2]], encode)  # over the budget: the second leaves
    assert cache.counts.evictions == 1 and cache.bytes <= cache.max_bytes
    cache.tokens([texts[0], texts[1]], encode)
    assert encode.calls[-1] == [texts[1]]  # the first was kept, the second encoded again


def test_a_context_over_the_budget_is_used_but_never_kept() -> None:
    cache, encode = ContextCache(10), CountingEncoder()
    (tokens,) = cache.tokens(["a context far longer than ten bytes"], encode)
    assert len(tokens) == 35 and len(cache) == 0 and cache.bytes == 0 and cache.counts.evictions == 0
    cache.tokens(["a context far longer than ten bytes"], encode)
    assert len(encode.calls) == 2


def test_a_zero_budget_still_encodes_each_context_of_a_call_once() -> None:
    cache, encode = ContextCache(0), CountingEncoder()
    cache.tokens(["x", "x", "y"], encode)
    cache.tokens(["x"], encode)
    assert encode.calls == [["x", "y"], ["x"]] and cache.counts.peak_bytes == 0
    with pytest.raises(ValueError, match="budget"):
        ContextCache(-1)


def test_the_budget_is_a_checked_setting_left_out_of_the_config_hash() -> None:
    with pytest.raises(ConfigError, match=r"runtime\.context_cache_mb"):
        RuntimeConfig(context_cache_mb=-1)
    small = QAConfig(runtime=RuntimeConfig(context_cache_mb=0))
    assert small.config_hash() == QAConfig().config_hash()


def records(n: int) -> list[Record]:
    """`n` rows over three contexts, the same context never twice in a row (a cache's worst order)."""
    contexts = [
        f"Paragraph {k}: the bridge over river {k} was built in {1850 + k} by the town. " * 3
        for k in range(3)
    ]
    return [
        Record(str(i), f"q{i}", f"When was bridge {i % 3} built, question {i}?", contexts[i % 3])
        for i in range(n)
    ]


def window_arrays(item: object) -> list[tuple[bytes, ...]]:
    if not isinstance(item, RowWindows):
        return [("rejected",)]  # type: ignore[list-item]
    return [
        (f.input_ids.tobytes(), f.token_type_ids.tobytes(), f.char_starts.tobytes(), f.char_ends.tobytes())
        for f in item.windows
    ]


def test_rows_windowed_from_cached_contexts_equal_rows_tokenized_anew(tiny_model: TorchRunner) -> None:
    config = QAConfig()
    config = dataclasses.replace(
        config,
        featurize=dataclasses.replace(config.featurize, max_seq_len=32, doc_stride=8, min_context_tokens=16),
    )
    rows = records(12)
    stats = EngineStats()
    preparer = RowPreparer(tiny_model.tokenizer, config, stats)
    cached = [item for k in range(0, 12, 2) for item in preparer.featurize(rows[k : k + 2])]
    fresh = Featurizer(tiny_model.tokenizer, config.featurize)
    anew = [RowWindows(r, tuple(w)) if isinstance(w, list) else w for r in rows for w in fresh.featurize([r])]
    assert [window_arrays(a) for a in cached] == [window_arrays(b) for b in anew]
    assert all(len(item.windows) > 1 for item in cached if isinstance(item, RowWindows))  # several windows
    # Six calls of two rows over three contexts: each context tokenized once, the rest reused.
    assert (stats.context_lookups, stats.contexts_tokenized) == (12, 3)
    assert stats.context_cache_peak_bytes == preparer.contexts.bytes > 0


def test_peaks_combine_by_their_largest_value_and_a_part_keeps_its_own() -> None:
    one, two = (
        EngineStats(contexts_tokenized=3, context_cache_peak_bytes=500),
        EngineStats(contexts_tokenized=4, context_cache_peak_bytes=300),
    )
    one.add(two)
    assert (one.contexts_tokenized, one.context_cache_peak_bytes) == (7, 500)
    assert one.minus(two).context_cache_peak_bytes == 500
    assert EngineStats.from_state(one.to_state()) == one
