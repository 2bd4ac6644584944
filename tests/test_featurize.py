"""Featurization against the transformers tokenizer call it replaces, and its context-mask helper."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from qa_core.config import FeaturizeConfig
from qa_core.errors import ConfigError
from qa_core.records import Feature, Record
from qa_core.runtime.torch_runner import TorchRunner
from qa_core.stages.featurize import Featurizer, question_limit
from qa_core.stages.windows import context_mask, window_ranges

CONTEXT = (
    "The river flows past the old church. In 1850 the town built a bridge over the river, and in 1901 a "
    "second one. Café owners, naïve tourists and the church choir all cross it. "
) * 12


def reference_windows(tokenizer: Any, question: str, context: str, config: FeaturizeConfig) -> list[Any]:
    """The windows as the transformers tokenizer call (what docqa used before) produces them."""
    encoded = tokenizer(
        question,
        context,
        truncation="only_second",
        max_length=config.max_seq_len,
        stride=config.doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    return list(encoded.encodings)


def with_post_processor(tokenizer: Any, post_processor: Any) -> Any:
    """A copy of a fast tokenizer whose pair template is `post_processor`."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.post_processor = post_processor
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]"
    )


def templated(tokenizer: Any, kind: str) -> Any:
    """The tiny model's tokenizer (BERT), or a copy with a RoBERTa-style or a context-first template."""
    from tokenizers.processors import RobertaProcessing, TemplateProcessing

    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if kind == "roberta":  # [CLS] q [SEP] [SEP] c [SEP], all segment ids 0
        return with_post_processor(tokenizer, RobertaProcessing(("[SEP]", sep_id), ("[CLS]", cls_id)))
    if kind == "context-first":  # no `specials + q + specials + c + specials` layout: the pair path
        processor = TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $B:1 [SEP] $A:0 [SEP]",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
        return with_post_processor(tokenizer, processor)
    return tokenizer


@pytest.mark.parametrize("kind", ["bert", "roberta", "context-first", "bert-pair-path"])
@pytest.mark.parametrize(("max_seq_len", "doc_stride"), [(384, 128), (64, 16), (48, 8)])
def test_windows_match_the_transformers_call(
    tiny_transformers_tokenizer: Any, max_seq_len: int, doc_stride: int, kind: str
) -> None:
    """Both ways of building windows (shared contexts, pair encoding) give the tokenizer's own windows."""
    tokenizer = templated(tiny_transformers_tokenizer, kind.removesuffix("-pair-path"))
    config = FeaturizeConfig(
        max_seq_len=max_seq_len, doc_stride=doc_stride, min_context_tokens=doc_stride + 8, max_question_len=16
    )
    records = [
        Record("0", "a", "Where does the river flow?", CONTEXT),
        Record("1", "b", "When was the bridge built?", CONTEXT[:300]),
        Record("2", "c", "Who crosses?", "Café owners cross."),
        Record("3", "d", "What did the town build in 1850 over the river?", CONTEXT),  # a shared context
        Record("4", "e", "Where? " * 20, CONTEXT[:500]),  # cut to max_question_len tokens
    ]
    featurizer = Featurizer(tokenizer, config)
    assert (featurizer._template is None) == (kind == "context-first")
    if kind == "bert-pair-path":
        featurizer._template = None
    results = featurizer.featurize(records)
    for record, windows in zip(records, results, strict=True):
        assert isinstance(windows, list)
        # Questions past max_question_len tokens are cut at a token boundary (docqa's rule).
        offsets = tokenizer(record.question, add_special_tokens=False, return_offsets_mapping=True)
        kept = offsets["offset_mapping"][: config.max_question_len]
        question = record.question[: kept[-1][1]]
        expected = reference_windows(tokenizer, question, record.context, config)
        assert len(windows) == len(expected) > 0
        for feature, encoding in zip(windows, expected, strict=True):
            assert isinstance(feature, Feature)
            assert feature.input_ids.tolist() == encoding.ids
            assert feature.token_type_ids.tolist() == encoding.type_ids
            pairs = zip(encoding.sequence_ids, encoding.offsets, strict=True)
            starts = [a if s == 1 and b > a else -1 for s, (a, b) in pairs]
            assert feature.char_starts.tolist() == starts
            pairs = zip(encoding.sequence_ids, encoding.offsets, strict=True)
            assert feature.char_ends.tolist() == [b if s == 1 and b > a else -1 for s, (a, b) in pairs]
            assert feature.cls_index == encoding.ids.index(tokenizer.cls_token_id)
        assert [(f.window_index, f.n_windows) for f in windows] == [
            (k, len(windows)) for k in range(len(windows))
        ]
    assert len(results[0]) > 2  # type: ignore[arg-type]  # the long context needs several windows


@pytest.mark.parametrize("stride", [0, 1, 2, 4, 6])
@pytest.mark.parametrize("room", [1, 3, 5, 7])
def test_window_ranges_cut_like_the_tokenizer(tiny_model: TorchRunner, room: int, stride: int) -> None:
    """`window_ranges` against `tokenizers.Encoding.truncate` on contexts of 0-30 tokens."""
    from tokenizers import Tokenizer

    if stride >= room:
        with pytest.raises(ValueError, match="doc_stride"):
            window_ranges(room + 1, room, stride)
        return
    backend = Tokenizer.from_str(tiny_model.tokenizer.backend_tokenizer.to_str())
    for n in range(31):
        encoding = backend.encode(" ".join(["the"] * n), add_special_tokens=False)
        encoding.truncate(room, stride=stride)
        expected = [encoding, *encoding.overflowing]
        got = window_ranges(n, room, stride)
        assert len(got) == len(expected), n
        for (start, stop), part in zip(got, expected, strict=True):
            assert len(part.ids) == stop - start
            assert [a for a, _ in part.offsets] == [4 * k for k in range(start, stop)], (n, start, stop)


@pytest.mark.parametrize(
    "sequence_ids",
    [
        [None, 0, 0, None, 1, 1, 1, None],
        [None, 0, None, None, 1, None],
        [None, 0, 0, None],
        [1, 1, 0, 1],  # not contiguous: the slow path
        [],
    ],
)
def test_context_mask_matches_a_loop(sequence_ids: list[int | None]) -> None:
    expected = np.array([s == 1 for s in sequence_ids], dtype=bool)
    assert np.array_equal(context_mask(sequence_ids), expected)


def byte_level(add_prefix_space: bool) -> Any:
    """A small byte-level BPE tokenizer with a RoBERTa post-processor, trained here (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator([CONTEXT, "Where does the river flow? When was the bridge built?"], trainer)
    backend.post_processor = processors.RobertaProcessing(
        ("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=add_prefix_space
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, cls_token="<s>", sep_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


PIECES = [
    *"abc theriv ",
    "\u200b",
    "\u0301",
    "é",
    "中",
    "\t",
    "\n",
    "  ",
    "1850",
    ".",
    ",",
    "ﬁ",
    "İ",
    "😀",
    "the ",
]


@pytest.mark.parametrize("kind", ["bert", "byte-level", "byte-level-prefix-space"])
def test_shared_contexts_equal_the_pair_encoding_on_odd_text(tiny_model: TorchRunner, kind: str) -> None:
    """Both window builders agree (features or rejection reason) on random text full of edge cases:
    zero-width and combining characters, runs of spaces, empty and blank contexts, cut questions."""
    tokenizer = {
        "bert": lambda: tiny_model.tokenizer,
        "byte-level": lambda: byte_level(add_prefix_space=False),
        # Overflow windows trim their first token's offsets differently: the probe must refuse it.
        "byte-level-prefix-space": lambda: byte_level(add_prefix_space=True),
    }[kind]()
    rng = np.random.default_rng(0)

    def text(n: int) -> str:
        return "".join(PIECES[k] for k in rng.integers(0, len(PIECES), size=n))

    contexts = [text(int(rng.integers(0, 120))) for _ in range(25)] + ["", " ", "\u200b\u200b", "\u0301"]
    records = [
        Record(str(i), "x", text(int(rng.integers(1, 30))), contexts[int(rng.integers(0, len(contexts)))])
        for i in range(200)
    ]
    for config in [
        FeaturizeConfig(max_seq_len=24, doc_stride=4, min_context_tokens=8, max_question_len=6),
        FeaturizeConfig(max_seq_len=16, doc_stride=0, min_context_tokens=4, max_question_len=3),
        FeaturizeConfig(
            max_seq_len=8, doc_stride=2, min_context_tokens=3, max_question_len=1
        ),  # the probe must not need room
    ]:
        featurizer = Featurizer(tokenizer, config)
        assert (featurizer._template is None) == (kind == "byte-level-prefix-space")
        shared = featurizer.featurize(records)
        featurizer._template = None
        pairs = featurizer.featurize(records)
        for a, b in zip(shared, pairs, strict=True):
            if not isinstance(a, list) or not isinstance(b, list):
                assert getattr(a, "reason", None) == getattr(b, "reason", None)
                continue
            assert len(a) == len(b)
            for x, y in zip(a, b, strict=True):
                assert (x.window_index, x.n_windows, x.cls_index) == (
                    y.window_index,
                    y.n_windows,
                    y.cls_index,
                )
                for name in ("input_ids", "token_type_ids", "char_starts", "char_ends"):
                    assert np.array_equal(getattr(x, name), getattr(y, name)), name
                    assert getattr(x, name).dtype == getattr(y, name).dtype, name


def _question_tokens(feature: Feature) -> int:
    """Question tokens of a BERT-style window: those of segment 0 between [CLS] and the first [SEP]."""
    return int((feature.token_type_ids == 0).sum()) - 2


def test_long_questions_are_read_whole_when_the_context_keeps_its_room(
    tiny_transformers_tokenizer: Any,
) -> None:
    """A question is cut only past what leaves `min_context_tokens`, and a cut window says so."""
    tokenizer = tiny_transformers_tokenizer
    config = FeaturizeConfig(max_seq_len=128, doc_stride=16, min_context_tokens=48)
    featurizer = Featurizer(tokenizer, config)
    limit = 128 - 3 - 48  # [CLS] q [SEP] c [SEP]
    assert featurizer.question_limit == limit

    def question(n_tokens: int) -> str:
        return " ".join(["river"] * n_tokens)  # one token per word for this tokenizer

    assert len(tokenizer(question(70), add_special_tokens=False)["input_ids"]) == 70
    whole, cut = featurizer.featurize(
        [Record("0", "a", question(70), CONTEXT), Record("1", "b", question(limit + 30), CONTEXT)]
    )
    assert isinstance(whole, list) and isinstance(cut, list)
    assert all(_question_tokens(f) == 70 and not f.question_cut for f in whole)  # an old 64 cap cut it
    assert all(_question_tokens(f) == limit and f.question_cut for f in cut)
    assert all(int((f.token_type_ids == 1).sum()) >= 48 for f in cut[:-1])  # full windows keep the room

    capped = Featurizer(
        tokenizer, FeaturizeConfig(max_seq_len=128, doc_stride=16, min_context_tokens=48, max_question_len=10)
    )
    (windows,) = capped.featurize([Record("0", "a", question(11), CONTEXT)])
    assert isinstance(windows, list) and all(f.question_cut and _question_tokens(f) == 10 for f in windows)


def test_a_window_with_no_room_for_a_question_is_a_config_error() -> None:
    config = FeaturizeConfig(max_seq_len=16, doc_stride=4, min_context_tokens=11)
    assert question_limit(config, special_tokens=4) == 1
    with pytest.raises(ConfigError, match="min_context_tokens"):
        question_limit(
            config, special_tokens=6
        )  # a tokenizer with more special tokens than the config allows
    with pytest.raises(ConfigError, match="doc_stride"):
        FeaturizeConfig(doc_stride=160)  # windows could not advance
