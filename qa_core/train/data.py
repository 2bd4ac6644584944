"""Training windows: SQuAD examples cut by the inference `Featurizer` and labelled with answer tokens.

Training and inference share one windowing code path (`qa_core.stages.featurize.Featurizer`), so the model is
trained on exactly the windows it later answers from. Each example's first gold answer, the character
span `[answer_start, answer_start + len(text))`, becomes a label per window: the context tokens covering
the answer's first and last character, or the window's CLS token (both labels) when the answer is not
wholly inside the window (the usual SQuAD recipe of Devlin et al.).

Nothing is dropped silently: every skipped example and every window kind is counted in `TrainDataStats`,
which the trainer logs and writes into the model card.

Ambiguous offsets: in the rebuilt SQuAD v1.1 train file, 9,438 answers (about 11%) have a text that
occurs more than once in their context, and their `answer_start` was chosen by a heuristic that is
right for most of them (the README estimates about 2% of all answers point at another occurrence). We
keep them by default: dropping them would remove 11% of the data, and a biased subset (answers with
repeated, typically short, texts), to remove about 2% of label noise. `drop_ids` lets a run drop them.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np

from qa_core.errors import InputError
from qa_core.evaluation.squad import SquadDataset
from qa_core.records import Feature, Record, Rejection
from qa_core.stages.featurize import Featurizer

logger = logging.getLogger(__name__)

FEATURIZE_CHUNK = 1000  # records tokenized per call


@dataclass(frozen=True, eq=False)
class TrainWindow:
    """One labelled training window.

    Attributes:
        feature: The window, exactly as inference would build it.
        start_position: Token index of the answer's first token, or `feature.cls_index`.
        end_position: Token index of the answer's last token, or `feature.cls_index`.
        example_id: The SQuAD question id.
        has_answer: Whether the labels point at the answer rather than at CLS.
    """

    feature: Feature
    start_position: int
    end_position: int
    example_id: str
    has_answer: bool


@dataclass
class TrainDataStats:
    """Counts of the conversion from examples to windows.

    Attributes:
        examples: Examples in the dataset (after `max_examples`).
        used: Examples that produced windows.
        no_answer: Examples without any gold answer (v2.0 unanswerable), skipped.
        text_mismatch: Examples whose answer text differs from `context[start:start + len(text)]`,
            skipped (their label would be wrong).
        dropped_ids: Examples skipped because their id was in `drop_ids` (e.g. ambiguous offsets).
        rejected: Examples the featurizer rejected, by reason code.
        unaligned: Examples whose answer span maps to no window (e.g. whitespace-only answers).
        windows: Windows built.
        windows_with_answer: Windows whose labels point at the answer.
        windows_cls: Windows labelled CLS (the answer is not wholly inside).
    """

    examples: int = 0
    used: int = 0
    no_answer: int = 0
    text_mismatch: int = 0
    dropped_ids: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    unaligned: int = 0
    windows: int = 0
    windows_with_answer: int = 0
    windows_cls: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able counts."""
        return {
            "examples": self.examples,
            "used": self.used,
            "no_answer": self.no_answer,
            "text_mismatch": self.text_mismatch,
            "dropped_ids": self.dropped_ids,
            "rejected": dict(sorted(self.rejected.items())),
            "unaligned": self.unaligned,
            "windows": self.windows,
            "windows_with_answer": self.windows_with_answer,
            "windows_cls": self.windows_cls,
        }


def answer_token_span(feature: Feature, start_char: int, end_char: int) -> tuple[int, int] | None:
    """Token positions of the context tokens covering a character span, if the window holds it whole.

    Args:
        feature: A window; `char_starts`/`char_ends` are -1 outside the context.
        start_char: First character of the answer.
        end_char: End of the answer (exclusive).

    Returns:
        (start token, end token), or None when the span is not wholly inside the window's context.
    """
    context_tokens = np.flatnonzero(feature.char_starts >= 0)
    if context_tokens.size == 0:
        return None
    starts = feature.char_starts[context_tokens]
    ends = feature.char_ends[context_tokens]
    if starts[0] > start_char or ends[-1] < end_char:
        return None
    # Offsets grow along the context: the last token starting at or before the answer's first character,
    # and the first token ending at or after its last character.
    first = int(np.searchsorted(starts, start_char, side="right")) - 1
    last = int(np.searchsorted(ends, end_char, side="left"))
    if first > last or last >= context_tokens.size:
        return None
    return int(context_tokens[first]), int(context_tokens[last])


def label_windows(
    features: list[Feature], start_char: int, end_char: int, example_id: str
) -> list[TrainWindow]:
    """Labels the windows of one example (answer tokens, or CLS where the answer is not whole)."""
    windows = []
    for feature in features:
        span = answer_token_span(feature, start_char, end_char)
        # A tokenizer without CLS (rare) gets position 0, the slot BERT-style models use for "no answer".
        null = max(feature.cls_index, 0)
        start, end = span if span is not None else (null, null)
        windows.append(TrainWindow(feature, start, end, example_id, span is not None))
    return windows


def load_ambiguous_ids(path: str) -> frozenset[str]:
    """Question ids listed in an ambiguous-offsets side file.

    The file is a (gzip) JSON list of `{"id", "text", "chosen_start", "all_starts"}` objects: answers
    whose text occurs more than once in the context, with the start the rebuilt file chose.

    Raises:
        InputError: When the file cannot be read or is not such a list.
    """
    try:
        with fsspec.open(path, "rb") as handle:
            raw: bytes = handle.read()
        entries = json.loads(gzip.decompress(raw) if raw.startswith(b"\x1f\x8b") else raw)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON side file: {exc}") from exc
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "id" in e for e in entries):
        raise InputError(f"{path}: expected a JSON list of objects with an 'id'")
    return frozenset(str(e["id"]) for e in entries)


def build_train_windows(
    dataset: SquadDataset,
    featurizer: Featurizer,
    max_examples: int | None = None,
    drop_ids: Collection[str] = frozenset(),
) -> tuple[list[TrainWindow], TrainDataStats]:
    """Featurizes and labels the examples of a SQuAD dataset.

    Args:
        dataset: The training set.
        featurizer: The inference featurizer (same tokenizer and window config as the model will use).
        max_examples: Use only the first N examples (smoke runs).
        drop_ids: Question ids to skip (counted in `dropped_ids`).

    Returns:
        The windows in example order, and the counts.
    """
    examples = dataset.examples[:max_examples] if max_examples is not None else dataset.examples
    stats = TrainDataStats(examples=len(examples))
    records: list[Record] = []
    spans: list[tuple[int, int, str]] = []
    for index, example in enumerate(examples):
        if not example.answers:
            stats.no_answer += 1
            continue
        if example.id in drop_ids:
            stats.dropped_ids += 1
            continue
        answer = example.answers[0]
        end = answer.answer_start + len(answer.text)
        if example.context[answer.answer_start : end] != answer.text:
            stats.text_mismatch += 1
            if stats.text_mismatch <= 5:
                logger.warning("answer text != context slice for %s: %r", example.id, answer.text)
            continue
        records.append(Record(str(index), example.id, example.question, example.context))
        spans.append((answer.answer_start, end, example.id))
    windows: list[TrainWindow] = []
    for begin in range(0, len(records), FEATURIZE_CHUNK):
        chunk = records[begin : begin + FEATURIZE_CHUNK]
        for result, (start, end, example_id) in zip(
            featurizer.featurize(chunk), spans[begin : begin + FEATURIZE_CHUNK], strict=True
        ):
            if isinstance(result, Rejection):
                stats.rejected[result.reason.value] += 1
                continue
            labelled = label_windows(result, start, end, example_id)
            if not any(w.has_answer for w in labelled):
                stats.unaligned += 1
            stats.used += 1
            windows.extend(labelled)
        if begin and begin % (20 * FEATURIZE_CHUNK) == 0:
            logger.info("featurized %d / %d examples", begin, len(records))
    stats.windows = len(windows)
    stats.windows_with_answer = sum(w.has_answer for w in windows)
    stats.windows_cls = stats.windows - stats.windows_with_answer
    logger.info("training data: %s", json.dumps(stats.to_dict()))
    return windows, stats
