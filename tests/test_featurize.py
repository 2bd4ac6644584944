"""Featurization against the transformers tokenizer call it replaces, and its context-mask helper."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from qa_core.config import FeaturizeConfig
from qa_core.featurize import Featurizer, _second_sequence
from qa_core.model import QAModel
from qa_core.records import Feature, Record

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


@pytest.mark.parametrize(("max_seq_len", "doc_stride"), [(384, 128), (64, 16), (48, 8)])
def test_windows_match_the_transformers_call(tiny_model: QAModel, max_seq_len: int, doc_stride: int) -> None:
    config = FeaturizeConfig(max_seq_len=max_seq_len, doc_stride=doc_stride, max_question_len=16)
    records = [
        Record("0", "a", "Where does the river flow?", CONTEXT),
        Record("1", "b", "When was the bridge built?", CONTEXT[:300]),
        Record("2", "c", "Who crosses?", "Café owners cross."),
    ]
    results = Featurizer(tiny_model.tokenizer, config).featurize(records)
    for record, windows in zip(records, results, strict=True):
        assert isinstance(windows, list)
        expected = reference_windows(tiny_model.tokenizer, record.question, record.context, config)
        assert len(windows) == len(expected) > 0
        for feature, encoding in zip(windows, expected, strict=True):
            assert isinstance(feature, Feature)
            assert feature.input_ids.tolist() == encoding.ids
            assert feature.token_type_ids.tolist() == encoding.type_ids
            pairs = zip(encoding.sequence_ids, encoding.offsets, strict=True)
            starts = [a if s == 1 and b > a else -1 for s, (a, b) in pairs]
            assert feature.char_starts.tolist() == starts
    assert len(results[0]) > 2  # type: ignore[arg-type]  # the long context needs several windows


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
def test_second_sequence_mask_matches_a_loop(sequence_ids: list[int | None]) -> None:
    expected = np.array([s == 1 for s in sequence_ids], dtype=bool)
    assert np.array_equal(_second_sequence(sequence_ids), expected)
