"""Stage 2: a `Record` becomes overlapping token windows (`Feature`s) with character offsets.

The windows are the fast (Rust) tokenizer's overflow windows of `truncation="only_second"`: the whole
question in every window, sliding over the context with `doc_stride` tokens of overlap. A question is cut
only when it would leave a window less than `featurize.min_context_tokens` of context (or passes an
explicit `featurize.max_question_len`); its windows then say so (`Feature.question_cut`), and the engine
counts them (`questions_cut` in `_run.json`).
They are built from each distinct context of a call tokenized once (`qa_core.stages.windows`: the same
windows for less work when rows share contexts) when the tokenizer's pair template allows, else from the
tokenizer's pair encoding itself. Offsets come from the tokenizer's offset mapping, so they
index code points of the original context string, whatever the normalizer does (lower-casing, accent
stripping, CJK splitting).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from qa_core.config import FeaturizeConfig
from qa_core.errors import ConfigError
from qa_core.records import Feature, Reason, Record, Rejection
from qa_core.stages.context_cache import ContextCache
from qa_core.stages.tokenizer import Tokenizer
from qa_core.stages.windows import PairTemplate, TokenizedText, Window, pair_window, window_ranges

logger = logging.getLogger(__name__)


class _Question(NamedTuple):
    """A question as windowed: its (possibly cut) text, that text's token ids, and whether it was cut."""

    text: str
    ids: list[int]
    cut: bool


class Featurizer:
    """Turns records into windows with one fast tokenizer.

    Args:
        tokenizer: A fast (tokenizers-backed) tokenizer (`qa_core.stages.tokenizer.Tokenizer`).
        config: Window sizes.

    Raises:
        ValueError: When the tokenizer is not a fast tokenizer (offsets are required).
        ConfigError: When the tokenizer's special tokens and `min_context_tokens` leave no room for a
            question token.
    """

    def __init__(self, tokenizer: Tokenizer, config: FeaturizeConfig) -> None:
        if not tokenizer.is_fast:
            raise ValueError(
                f"{type(tokenizer).__name__} is not a fast tokenizer; docqa needs character offsets, "
                "which only fast (tokenizers-backed) tokenizers provide"
            )
        self.tokenizer = tokenizer
        self.config = config
        cls_id = tokenizer.cls_token_id
        self._cls_id: int | None = int(cls_id) if cls_id is not None else None
        self._special = int(tokenizer.num_special_tokens_to_add(pair=True))
        self.question_limit = question_limit(config, self._special)
        serialized = tokenizer.backend_tokenizer.to_str()
        self._questions = _backend_copy(serialized)
        # Windows from separately tokenized questions and contexts (each context once per call), when
        # the pair template is one this module can rebuild; else the tokenizer's pair encoding.
        self._template = _probed_template(serialized, self._special)
        # The pair encoding's own copy only where the template cannot be rebuilt.
        self._pairs: Any = _backend_copy(serialized, config) if self._template is None else None
        self._cls_in_prefix = _first(self._template.prefix[0], self._cls_id) if self._template else None

    def featurize(
        self, records: Sequence[Record], contexts: ContextCache | None = None
    ) -> list[list[Feature] | Rejection]:
        """Windows for each record, in order; a record that cannot be windowed becomes a `Rejection`.

        Tokenizes all records in one call (the Rust tokenizer is much faster batched); if that call
        fails, records are retried one by one so a single bad row only rejects itself.

        Args:
            records: The records to window.
            contexts: Tokenized contexts kept across calls (the engine's); None: each distinct context
                of this call is tokenized once, and forgotten after it.
        """
        if not records:
            return []
        cache = contexts if contexts is not None else ContextCache(0)
        try:
            return self._featurize_batch(records, cache)
        except Exception:
            if len(records) == 1:
                raise
            logger.warning("batched tokenization failed; retrying %d records one by one", len(records))
        results: list[list[Feature] | Rejection] = []
        for record in records:
            try:
                results.extend(self._featurize_batch([record], cache))
            except Exception as err:
                results.append(record.reject(Reason.FEATURIZE_ERROR, f"{type(err).__name__}: {err}"))
        return results

    def _screen_questions(
        self, records: Sequence[Record]
    ) -> tuple[list[list[Feature] | Rejection | None], list[tuple[int, _Question]]]:
        """Questions cut to `question_limit` tokens; rows whose question leaves no room are rejected.

        A question is cut at the end of its `question_limit`-th token and the cut text encoded again,
        which is what the windows hold; its token count (rarely not the limit: normalizers can expand a
        character into several tokens) decides whether a window has room for context. Questions are
        encoded without offsets (`encode_batch_fast`: a window holds none for the question); only the
        rare long ones are encoded again with them, to find where to cut.

        Returns:
            Per record its rejection or None, and (index, question) of the records to window.
        """
        encoded = self._questions.encode_batch_fast([r.question for r in records], add_special_tokens=False)
        limit = self.question_limit
        ids = [e.ids for e in encoded]  # each `Encoding.ids` read builds a new list: read once
        cut = [k for k, tokens in enumerate(ids) if len(tokens) > limit]
        texts = [r.question for r in records]
        if cut:
            with_offsets = self._questions.encode_batch([texts[k] for k in cut], add_special_tokens=False)
            for k, encoding in zip(cut, with_offsets, strict=True):
                texts[k] = texts[k][: encoding.offsets[limit - 1][1]]
            recut = self._questions.encode_batch_fast([texts[k] for k in cut], add_special_tokens=False)
            for k, again in zip(cut, recut, strict=True):
                ids[k] = again.ids
        cut_set = set(cut)
        results: list[list[Feature] | Rejection | None] = [None] * len(records)
        todo: list[tuple[int, _Question]] = []
        for index, (record, text, tokens) in enumerate(zip(records, texts, ids, strict=True)):
            if not tokens:
                results[index] = record.reject(Reason.EMPTY_QUESTION, "question has no tokens")
                continue
            results[index] = self._question_problem(record, len(tokens))
            if results[index] is None:
                todo.append((index, _Question(text, tokens, index in cut_set)))
        return results, todo

    def _featurize_batch(
        self, records: Sequence[Record], cache: ContextCache
    ) -> list[list[Feature] | Rejection]:
        results, todo = self._screen_questions(records)
        if todo and self._template is not None:
            self._window_shared_contexts(records, todo, self._template, cache, results)
        elif todo:
            self._window_pairs(records, todo, results)
        return [r for r in results if r is not None]

    def _question_problem(self, record: Record, q_tokens: int) -> Rejection | None:
        """The rejection of a question that leaves a window no room for context beyond the stride."""
        room = self.config.max_seq_len - q_tokens - self._special
        if room > self.config.doc_stride:
            return None
        return record.reject(
            Reason.QUESTION_TOO_LONG,
            f"question takes {q_tokens} tokens; a {self.config.max_seq_len}-token window leaves {room} "
            f"for context, which must exceed doc_stride={self.config.doc_stride}",
        )

    def _window_shared_contexts(
        self,
        records: Sequence[Record],
        todo: list[tuple[int, _Question]],
        template: PairTemplate,
        cache: ContextCache,
        results: list[list[Feature] | Rejection | None],
    ) -> None:
        """Windows from questions and distinct contexts tokenized once each (`qa_core.stages.windows`)."""
        contexts = cache.tokens([records[i].context for i, _ in todo], self._encode_contexts)
        for (index, question), context in zip(todo, contexts, strict=True):
            room = self.config.max_seq_len - len(question.ids) - template.n_special
            ranges = window_ranges(len(context), room, self.config.doc_stride)
            windows = template.assemble_all(question.ids, context, ranges)
            # Each window holds a context slice; without zero-width tokens each slice bounds an answer.
            checked = not context.zero_width and len(context) > 0
            results[index] = self._finish(records[index], windows, question.cut, checked)

    def _encode_contexts(self, texts: list[str]) -> list[TokenizedText]:
        """Distinct contexts tokenized in one call."""
        encoded = self._questions.encode_batch(texts, add_special_tokens=False)
        return [TokenizedText.context_of(e) for e in encoded]

    def _window_pairs(
        self,
        records: Sequence[Record],
        todo: list[tuple[int, _Question]],
        results: list[list[Feature] | Rejection | None],
    ) -> None:
        """Windows from the tokenizer's own pair encoding with overflow (any post-processor)."""
        if self._pairs is None:  # made on first use (a race at worst makes two equal copies)
            self._pairs = _backend_copy(self.tokenizer.backend_tokenizer.to_str(), self.config)
        encoded = self._pairs.encode_batch([(q.text, records[i].context) for i, q in todo])
        for (index, question), encoding in zip(todo, encoded, strict=True):
            # The first window, then the overflow windows in context order (as transformers does).
            windows = [pair_window(e) for e in [encoding, *encoding.overflowing]]
            results[index] = self._finish(records[index], windows, question.cut)

    def _cls_index(self, ids: np.ndarray) -> int:
        """Where the first CLS token of a window is, -1 if none: the template's place when it has one."""
        if self._cls_in_prefix is not None:  # the prefix comes first, so its CLS is the first one
            return self._cls_in_prefix
        positions = np.flatnonzero(ids == (-1 if self._cls_id is None else self._cls_id))
        return int(positions[0]) if len(positions) else -1

    def _finish(
        self, record: Record, windows: list[Window], question_cut: bool, checked: bool = False
    ) -> list[Feature] | Rejection:
        """Features of a record's windows, minus windows without a context token.

        Args:
            record: The windows' record.
            windows: Per window (input ids, type ids, char starts, char ends), each of shape (T,).
            question_cut: Whether the windows hold a cut question.
            checked: Every window is known to hold a context token with offsets (not looked at again).

        Returns:
            The features, or a `NO_CONTEXT_TOKENS` rejection when no window has a context token.
        """
        # Windows with no context token (possible only for odd tokenizers) can never hold an answer.
        kept = windows if checked else [w for w in windows if len(w[2]) and w[2].max() >= 0]
        if not kept:
            return record.reject(Reason.NO_CONTEXT_TOKENS, "the context produced no tokens")
        features = []
        for window_index, (ids, types, starts, ends) in enumerate(kept):
            features.append(
                Feature(
                    row_key=record.row_key,
                    window_index=window_index,
                    n_windows=len(kept),
                    input_ids=ids,
                    token_type_ids=types,
                    char_starts=starts,
                    char_ends=ends,
                    cls_index=self._cls_index(ids),
                    question_cut=question_cut,
                )
            )
        return features


def _first(ids: np.ndarray, token: int | None) -> int | None:
    """The first position of `token` in `ids`, None when absent."""
    if token is None:
        return None
    positions = np.flatnonzero(ids == token)
    return int(positions[0]) if len(positions) else None


def question_limit(config: FeaturizeConfig, special_tokens: int) -> int:
    """Most question tokens a window holds: those leaving `min_context_tokens`, at most `max_question_len`.

    Args:
        config: Window sizes.
        special_tokens: Special tokens the tokenizer adds to a (question, context) pair.

    Raises:
        ConfigError: When no question token fits.
    """
    room = config.max_seq_len - special_tokens - config.min_context_tokens
    if room < 1:
        raise ConfigError(
            f"featurize.max_seq_len={config.max_seq_len} less the tokenizer's {special_tokens} special "
            f"tokens and featurize.min_context_tokens={config.min_context_tokens} leaves no room for the "
            "question; raise max_seq_len or lower min_context_tokens"
        )
    return room if config.max_question_len is None else min(room, config.max_question_len)


# Featurizers of one tokenizer share its backend copies and probed template: each costs a parse of the
# tokenizer's JSON (as long as a small job's featurizing), and an engine is built per job, per
# work unit on a cluster, and per worker process. Bounded: a process rarely holds more tokenizers.
_SHARED_TOKENIZERS = 8


@functools.lru_cache(maxsize=_SHARED_TOKENIZERS)
def _probed_template(serialized: str, n_special: int) -> PairTemplate | None:
    """`PairTemplate.probe`, once per tokenizer and process (a template is only read after the probe)."""
    return PairTemplate.probe(serialized, n_special)


@functools.lru_cache(maxsize=2 * _SHARED_TOKENIZERS)
def _backend_copy(serialized: str, pair_config: FeaturizeConfig | None = None) -> Any:
    """A copy of the fast tokenizer's Rust backend: for texts alone, or for windowed pairs.

    Calling the `tokenizers.Tokenizer` directly instead of the transformers wrapper saves the wrapper's
    conversion of every encoding into Python lists (measured: a third of featurization time). Its
    truncation settings are state of the object, so each kind of use gets its own copy, configured here
    once and never changed after: featurizers of the same tokenizer (and the same windows, for pairs)
    share it, across threads too (encoding only reads it), and the caller's tokenizer is never touched.

    Args:
        serialized: The backend (`tokenizers.Tokenizer.to_str()`).
        pair_config: For pairs: the window sizes to truncate to, with overflow. None: no truncation.
    """
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(serialized)
    copy.no_padding()
    if pair_config is None:
        copy.no_truncation()
    else:
        # Keep the whole question, slide over the context with `doc_stride` tokens of overlap; every
        # window comes back (the first, then `Encoding.overflowing`).
        copy.enable_truncation(
            pair_config.max_seq_len, stride=pair_config.doc_stride, strategy="only_second", direction="right"
        )
    return copy
