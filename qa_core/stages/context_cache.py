"""Tokenized contexts kept by exact text, so a context asked several questions is tokenized once.

Document QA tables repeat contexts: SQuAD has about five questions per paragraph, a contract table twelve
questions per contract. The featurizer already tokenizes each distinct context of one call once; this
cache carries the tokens across calls (featurize chunks, Beam bundles) for as long as they fit a memory
budget, least recently used first out. Windows are still built per question from the cached tokens, so
the windows, and the answers, are exactly those of tokenizing every row's context anew.

A cached entry costs its token arrays (`TokenizedText.nbytes`) plus the context string it is keyed by
(`sys.getsizeof`): the cache holds the string alive after its rows are answered. A context bigger than
the whole budget is tokenized and used but never kept.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qa_core.stages.windows import TokenizedText

MEBIBYTE = 1 << 20


@dataclass
class ContextCacheCounts:
    """What a cache did, summed over its lookups (the `context_*` counts of `_run.json`).

    Attributes:
        lookups: Contexts asked for, one per windowed row.
        tokenized: Contexts the tokenizer encoded (the rest were reused: within one call or from the cache).
        evictions: Entries dropped to stay within the budget.
        peak_bytes: The most bytes the cache held at once.
    """

    lookups: int = 0
    tokenized: int = 0
    evictions: int = 0
    peak_bytes: int = 0


class ContextCache:
    """Tokenized contexts by exact text, least recently used evicted beyond `max_bytes`.

    Not thread-safe: one per featurizing engine (a process, a worker, a Beam DoFn instance).

    Args:
        max_bytes: The memory budget; 0 keeps nothing across calls (each call still tokenizes each of
            its distinct contexts once).
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"a context cache's budget must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self.counts = ContextCacheCounts()
        self._entries: OrderedDict[str, tuple[TokenizedText, int]] = OrderedDict()
        self._bytes = 0

    @property
    def bytes(self) -> int:
        """Bytes held now (token arrays and keys)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def tokens(
        self, contexts: Sequence[str], encode: Callable[[list[str]], list[TokenizedText]]
    ) -> list[TokenizedText]:
        """The tokens of each of `contexts`, in order, encoding only those not cached in one call.

        Args:
            contexts: One context per row (repeats allowed).
            encode: Tokenizes a list of distinct texts (one call into the Rust tokenizer).
        """
        found: dict[str, TokenizedText] = {}
        missing: list[str] = []
        for text in dict.fromkeys(contexts):
            entry = self._entries.get(text)
            if entry is None:
                missing.append(text)
            else:
                self._entries.move_to_end(text)
                found[text] = entry[0]
        if missing:
            for text, tokens in zip(missing, encode(missing), strict=True):
                found[text] = tokens
                self._keep(text, tokens)
        self.counts.lookups += len(contexts)
        self.counts.tokenized += len(missing)
        return [found[text] for text in contexts]

    def _keep(self, text: str, tokens: TokenizedText) -> None:
        """Stores an entry, evicting the least recently used ones beyond the budget."""
        size = tokens.nbytes + sys.getsizeof(text)
        if size > self.max_bytes:
            return
        self._entries[text] = (tokens, size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._bytes -= dropped
            self.counts.evictions += 1
        self.counts.peak_bytes = max(self.counts.peak_bytes, self._bytes)


def context_cache(megabytes: int) -> ContextCache:
    """A cache of `megabytes` MiB (`featurize.context_cache_mb`)."""
    return ContextCache(megabytes * MEBIBYTE)
