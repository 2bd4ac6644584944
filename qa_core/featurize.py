"""Stage 2: a `Record` becomes overlapping token windows (`Feature`s) with character offsets.

Uses the fast (Rust) tokenizer's overflow windows: `truncation="only_second"` keeps the whole question in
every window and slides over the context with `doc_stride` tokens of overlap. Offsets come from the
tokenizer's offset mapping, so they index code points of the original context string, whatever the
normalizer does (lower-casing, accent stripping, CJK splitting).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from qa_core.config import FeaturizeConfig
from qa_core.records import Feature, Reason, Record, Rejection

logger = logging.getLogger(__name__)


class Featurizer:
    """Turns records into windows with one fast tokenizer.

    Args:
        tokenizer: A Hugging Face *fast* tokenizer (`tokenizer.is_fast`).
        config: Window sizes.

    Raises:
        ValueError: When the tokenizer is not a fast tokenizer (offsets are required).
    """

    def __init__(self, tokenizer: Any, config: FeaturizeConfig) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                f"{type(tokenizer).__name__} is not a fast tokenizer; docqa needs character offsets, "
                "which only fast (tokenizers-backed) tokenizers provide"
            )
        self.tokenizer = tokenizer
        self.config = config
        cls_id = tokenizer.cls_token_id
        self._cls_id: int | None = int(cls_id) if cls_id is not None else None
        # A question longer than this leaves no context token in the window.
        self._special = int(tokenizer.num_special_tokens_to_add(pair=True))
        self._questions, self._pairs = _backend_copies(tokenizer, config)

    def featurize(self, records: Sequence[Record]) -> list[list[Feature] | Rejection]:
        """Windows for each record, in order; a record that cannot be windowed becomes a `Rejection`.

        Tokenizes all records in one call (the Rust tokenizer is much faster batched); if that call
        fails, records are retried one by one so a single bad row only rejects itself.
        """
        if not records:
            return []
        try:
            return self._featurize_batch(records)
        except Exception:
            if len(records) == 1:
                raise
            logger.warning("batched tokenization failed; retrying %d records one by one", len(records))
        results: list[list[Feature] | Rejection] = []
        for record in records:
            try:
                results.extend(self._featurize_batch([record]))
            except Exception as err:
                results.append(record.reject(Reason.FEATURIZE_ERROR, f"{type(err).__name__}: {err}"))
        return results

    def _truncate_questions(self, records: Sequence[Record]) -> list[tuple[str, int] | None]:
        """Questions cut to `max_question_len` tokens, with their token counts; None if no tokens."""
        encoded = self._questions.encode_batch([r.question for r in records], add_special_tokens=False)
        limit = self.config.max_question_len
        questions: list[tuple[str, int] | None] = []
        for record, encoding in zip(records, encoded, strict=True):
            offsets = encoding.offsets
            if not offsets:
                questions.append(None)
            elif len(offsets) > limit:
                questions.append((record.question[: offsets[limit - 1][1]], limit))
            else:
                questions.append((record.question, len(offsets)))
        return questions

    def _featurize_batch(self, records: Sequence[Record]) -> list[list[Feature] | Rejection]:
        cfg = self.config
        questions = self._truncate_questions(records)
        results: list[list[Feature] | Rejection | None] = [None] * len(records)
        todo: list[int] = []
        for index, (record, question) in enumerate(zip(records, questions, strict=True)):
            if question is None:
                results[index] = record.reject(Reason.EMPTY_QUESTION, "question has no tokens")
                continue
            q_tokens = question[1]
            room = cfg.max_seq_len - q_tokens - self._special
            if room <= cfg.doc_stride:
                results[index] = record.reject(
                    Reason.QUESTION_TOO_LONG,
                    f"question takes {q_tokens} tokens; a {cfg.max_seq_len}-token window leaves {room} "
                    f"for context, which must exceed doc_stride={cfg.doc_stride}",
                )
                continue
            todo.append(index)
        if todo:
            encoded = self._pairs.encode_batch(
                [(questions[i][0], records[i].context) for i in todo]  # type: ignore[index]
            )
            for index, encoding in zip(todo, encoded, strict=True):
                # The first window, then the overflow windows in context order (as transformers does).
                results[index] = self._features_for(records[index], [encoding, *encoding.overflowing])
        return [r for r in results if r is not None]

    def _uncovered_tail(self, context: str, last: Feature) -> str | None:
        """Why the windows stop before the end of the context, or None when they cover it all.

        Guards against silent loss: tokenizers 0.23.2 returns at most two overflow windows per pair, so
        the rest of a long context would never be read. Only text after the last window's last token
        that still produces tokens counts as lost; it is tokenized only when it is not blank, which for
        well-formed windows it almost never is.
        """
        covered = int(last.char_ends.max())
        tail = context[covered:]
        if not tail.strip() or not self.tokenizer(tail, add_special_tokens=False)["input_ids"]:
            return None
        return (
            f"the tokenizer's windows stop at character {covered} of {len(context)} (tokenizers "
            f"{_tokenizers_version()} drops overflow windows; upgrade to tokenizers>=0.23.3)"
        )

    def _features_for(self, record: Record, encodings: list[Any]) -> list[Feature] | Rejection:
        features: list[Feature] = []
        for window_index, enc in enumerate(encodings):
            # (L, 2); fromiter over the flattened tuples is twice as fast as np.array on the tuple list.
            offsets = np.fromiter(
                itertools.chain.from_iterable(enc.offsets), dtype=np.int32, count=2 * len(enc.ids)
            ).reshape(-1, 2)
            # Context tokens only; zero-width tokens cannot bound a non-empty answer.
            in_context = _second_sequence(enc.sequence_ids) & (offsets[:, 1] > offsets[:, 0])
            input_ids = np.asarray(enc.ids, dtype=np.int32)
            cls_positions = (
                np.flatnonzero(input_ids == self._cls_id)
                if self._cls_id is not None
                else np.array([], np.int64)
            )
            features.append(
                Feature(
                    row_key=record.row_key,
                    window_index=window_index,
                    n_windows=len(encodings),
                    input_ids=input_ids,
                    token_type_ids=np.asarray(enc.type_ids, dtype=np.int8),
                    char_starts=np.where(in_context, offsets[:, 0], -1).astype(np.int32),
                    char_ends=np.where(in_context, offsets[:, 1], -1).astype(np.int32),
                    cls_index=int(cls_positions[0]) if len(cls_positions) else -1,
                )
            )
        if not any(bool((f.char_starts >= 0).any()) for f in features):
            return record.reject(Reason.NO_CONTEXT_TOKENS, "the context produced no tokens")
        uncovered = self._uncovered_tail(record.context, features[-1])
        if uncovered is not None:
            return record.reject(Reason.FEATURIZE_ERROR, uncovered)
        # Windows with no context token (possible only for odd tokenizers) can never hold an answer.
        kept = [f for f in features if bool((f.char_starts >= 0).any())]
        if len(kept) != len(features):
            kept = [
                Feature(
                    f.row_key,
                    i,
                    len(kept),
                    f.input_ids,
                    f.token_type_ids,
                    f.char_starts,
                    f.char_ends,
                    f.cls_index,
                )
                for i, f in enumerate(kept)
            ]
        return kept


def _backend_copies(tokenizer: Any, config: FeaturizeConfig) -> tuple[Any, Any]:
    """Two private copies of the fast tokenizer's Rust backend: for questions, and for windowed pairs.

    Calling the `tokenizers.Tokenizer` directly instead of the transformers wrapper saves the wrapper's
    conversion of every encoding into Python lists (measured: a third of featurization time); its
    truncation settings are state of the object, so each use gets its own copy, configured once, and
    a featurizer shared across threads never changes them mid-call.
    """
    from tokenizers import Tokenizer

    serialized = tokenizer.backend_tokenizer.to_str()
    questions = Tokenizer.from_str(serialized)
    questions.no_truncation()
    questions.no_padding()
    pairs = Tokenizer.from_str(serialized)
    pairs.no_padding()
    # Keep the whole question, slide over the context with `doc_stride` tokens of overlap; every
    # window comes back (the first, then `Encoding.overflowing`).
    pairs.enable_truncation(
        config.max_seq_len, stride=config.doc_stride, strategy="only_second", direction="right"
    )
    return questions, pairs


def _second_sequence(sequence_ids: list[int | None]) -> np.ndarray:
    """(L,) bool: which tokens belong to the pair's second sequence (the context).

    The second sequence is one contiguous run in every pair template, so it is found with two C-level
    list searches instead of a Python loop over tokens; anything else falls back to the loop.
    """
    mask = np.zeros(len(sequence_ids), dtype=bool)
    if 1 not in sequence_ids:
        return mask
    first = sequence_ids.index(1)
    last = len(sequence_ids) - sequence_ids[::-1].index(1)
    if sequence_ids.count(1) == last - first:
        mask[first:last] = True
    else:
        mask[:] = [s == 1 for s in sequence_ids]
    return mask


def _tokenizers_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tokenizers")
    except PackageNotFoundError:
        return "unknown"
