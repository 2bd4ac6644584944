"""Windows assembled from a question and a context tokenized separately, each context only once.

The Rust tokenizer's own pair encoding (`truncation="only_second"` with a stride) re-tokenizes the context
for every question, and rows of a document QA table often share a context (SQuAD dev has about five
questions per context). A pair encoding is the two sequences encoded independently, cut and joined by the
post-processor, so the same windows can be built from one encoding of each context, which is much cheaper
per row (benchmarks/RESULTS.md):

- `PairTemplate` reads where the post-processor puts its special tokens (and which segment ids it gives)
  from one probe pair, and refuses templates it cannot reproduce (then docqa uses the pair encoding);
- `window_ranges` slices the context's tokens exactly as `tokenizers.Encoding.truncate` does;
- `assemble` joins special tokens, question and one context slice into the window's arrays.

`tests/test_featurize.py` checks the result against the tokenizer's pair encoding, window by window.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

# Words, punctuation, digits, runs of spaces and accents: enough for several windows of 5 tokens, and
# for tokenizers that treat a window's first token specially to show it.
PROBE_QUESTION = "Where is the  old bridge?"
PROBE_CONTEXT = "The river, in 1850:  the town's new bridge   crossed it; café owners walked over it daily."

_I32 = npt.NDArray[np.int32]
_I8 = npt.NDArray[np.int8]
Window = tuple[_I32, _I8, _I32, _I32]  # (input ids, type ids, char starts, char ends), each (T,)


@dataclass(frozen=True)
class TokenizedText:
    """One text tokenized without special tokens.

    Attributes:
        ids: Token ids, shape (n,).
        starts: Start character of each token in the text, shape (n,).
        ends: End character (exclusive), shape (n,).
        zero_width: Whether some token has no character (`context_of` gives it offsets -1); False: every
            window over a non-empty slice holds a context token that can bound an answer.
    """

    ids: _I32
    starts: _I32
    ends: _I32
    zero_width: bool = False

    @classmethod
    def from_encoding(cls, encoding: Any) -> TokenizedText:
        """Arrays of a `tokenizers.Encoding`."""
        offsets = _offsets(encoding)  # (n, 2)
        return cls(np.asarray(encoding.ids, dtype=np.int32), offsets[:, 0].copy(), offsets[:, 1].copy())

    @classmethod
    def context_of(cls, encoding: Any) -> TokenizedText:
        """A context's arrays, offsets -1 on zero-width tokens (they cannot bound a non-empty answer).

        Masked once per context here, not once per window: every window of every question over the
        context slices the same arrays.
        """
        ids = encoding.ids  # each read builds a new list: read once
        offsets = _offsets(encoding, len(ids))  # (n, 2)
        starts, ends = offsets[:, 0].copy(), offsets[:, 1].copy()  # (n,) each, contiguous
        zero_width = ends <= starts  # (n,); rare: most tokenizers give every token a character
        some = bool(zero_width.any())
        if some:
            starts[zero_width] = -1
            ends[zero_width] = -1
        return cls(np.array(ids, dtype=np.int32), starts, ends, some)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays."""
        return int(self.ids.nbytes + self.starts.nbytes + self.ends.nbytes)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class PairTemplate:
    """Where the post-processor puts special tokens around (question, context), and the segment ids.

    A window is `prefix + question + middle + context slice + suffix` (BERT: `[CLS] q [SEP] c [SEP]`,
    RoBERTa: `<s> q </s></s> c </s>`).
    """

    prefix: tuple[_I32, _I8]  # (ids, type ids) of the special tokens before the question
    middle: tuple[_I32, _I8]
    suffix: tuple[_I32, _I8]
    question_type: int
    context_type: int
    # Per question length, the head's type ids (`_head_types`); not part of the template's value.
    _heads: dict[int, _I8] = field(default_factory=dict, compare=False, repr=False)
    # The prefix's and middle's ids as Python ints, joined with a question's ids (`assemble_all`).
    _around: tuple[list[int], list[int]] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_around", (self.prefix[0].tolist(), self.middle[0].tolist()))

    @property
    def n_special(self) -> int:
        """Special tokens per window."""
        return sum(len(part[0]) for part in (self.prefix, self.middle, self.suffix))

    @classmethod
    def probe(cls, serialized: str, n_special: int) -> PairTemplate | None:
        """The template of a tokenizer's pair post-processor, checked against its own overflow windows.

        None (docqa then uses the pair encoding) when the post-processor does something else than
        `specials + question + specials + context + specials` with one segment id per sequence, or when
        windows built from the template differ from the tokenizer's own on a probe that needs several
        windows (for example byte-level tokenizers with `add_prefix_space`, whose overflow windows trim
        their first token's offsets differently).

        Args:
            serialized: The fast tokenizer's backend (`tokenizers.Tokenizer.to_str()`).
            n_special: What the tokenizer says a pair adds (`num_special_tokens_to_add(pair=True)`).
        """
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(serialized)  # a private copy: truncation is set on it below
        tokenizer.no_truncation()
        tokenizer.no_padding()
        encoding = tokenizer.encode(PROBE_QUESTION, PROBE_CONTEXT, add_special_tokens=True)
        template = cls._read(encoding, n_special)
        if template is None or not template._matches_overflow(tokenizer):
            return None
        return template

    @classmethod
    def _read(cls, encoding: Any, n_special: int) -> PairTemplate | None:
        """The template laid out in one untruncated pair encoding, if it has the supported shape."""
        sequence = encoding.sequence_ids
        ids = np.asarray(encoding.ids, dtype=np.int32)
        types = np.asarray(encoding.type_ids, dtype=np.int8)
        first = [k for k, s in enumerate(sequence) if s == 0]
        second = [k for k, s in enumerate(sequence) if s == 1]
        if not first or not second or first[-1] >= second[0]:
            return None
        a0, a1, b0, b1 = first[0], first[-1] + 1, second[0], second[-1] + 1
        contiguous = len(first) == a1 - a0 and len(second) == b1 - b0
        specials_only = all(s is None for s in sequence[:a0] + sequence[a1:b0] + sequence[b1:])
        one_type_each = len(set(types[a0:a1].tolist())) == 1 and len(set(types[b0:b1].tolist())) == 1
        if (
            not (contiguous and specials_only and one_type_each)
            or len(ids) - (a1 - a0) - (b1 - b0) != n_special
        ):
            return None
        return cls(
            prefix=(ids[:a0], types[:a0]),
            middle=(ids[a1:b0], types[a1:b0]),
            suffix=(ids[b1:], types[b1:]),
            question_type=int(types[a0]),
            context_type=int(types[b0]),
        )

    def _matches_overflow(self, tokenizer: Any) -> bool:
        """Whether the probe's windows from this template equal the tokenizer's own overflow windows."""
        question = tokenizer.encode(PROBE_QUESTION, add_special_tokens=False).ids
        context = TokenizedText.context_of(tokenizer.encode(PROBE_CONTEXT, add_special_tokens=False))
        room, stride = 5, 2  # several windows over the probe's context
        tokenizer.enable_truncation(
            len(question) + self.n_special + room, stride=stride, strategy="only_second", direction="right"
        )
        first = tokenizer.encode(PROBE_QUESTION, PROBE_CONTEXT, add_special_tokens=True)
        theirs = [first, *first.overflowing]
        ours = self.assemble_all(question, context, window_ranges(len(context), room, stride))
        if len(ours) != len(theirs) or len(ours) < 2:
            return False
        for window, encoding in zip(ours, theirs, strict=True):
            expected = pair_window(encoding)
            if not all(np.array_equal(window[k], expected[k]) for k in range(len(window))):
                return False
        return True

    def assemble(self, question: Sequence[int], context: TokenizedText, start: int, stop: int) -> Window:
        """One window: (input ids, type ids, char starts, char ends), each of shape (T,).

        `context` comes from `TokenizedText.context_of` (offsets -1 on zero-width tokens); char offsets are
        -1 outside the context.
        """
        return self.assemble_all(question, context, [(start, stop)])[0]

    def assemble_all(
        self, question: Sequence[int], context: TokenizedText, ranges: list[tuple[int, int]]
    ) -> list[Window]:
        """The windows of one question (its token ids) over context token `ranges`, as `assemble` builds each.

        The part before the context (specials, question, specials) is joined once per question, from the
        ids as the tokenizer gave them (one conversion); each window's arrays are then that part, a context
        slice and the suffix (`_joined`).
        """
        before, between = self._around
        head_ids = np.array([*before, *question, *between], dtype=np.int32)  # (H,)
        head = (head_ids, self._head_types(len(question)))  # (H,) each
        suffix = (*self.suffix, self.context_type)
        return [_joined(head, context, start, stop, suffix) for start, stop in ranges]

    def _head_types(self, question_tokens: int) -> _I8:
        """(H,) type ids of the part before the context, for a question of `question_tokens` tokens.

        They depend on the length alone, so each length's are built once and kept (read-only: they are
        only ever copied into a window).
        """
        types = self._heads.get(question_tokens)
        if types is None:
            question_types = np.full(question_tokens, self.question_type, np.int8)
            types = np.concatenate([self.prefix[1], question_types, self.middle[1]])  # (H,)
            types.setflags(write=False)
            types = self._heads.setdefault(question_tokens, types)
        return types


def _joined(
    head: tuple[_I32, _I8], context: TokenizedText, start: int, stop: int, suffix: tuple[_I32, _I8, int]
) -> Window:
    """One window: the head (ids, type ids), context tokens [start, stop), the suffix (ids, type ids).

    Each array is allocated once and filled by slices (cheaper than `np.concatenate` at these sizes);
    `suffix` carries the context's type id. Offsets are -1 outside the context.
    """
    head_ids, head_types = head
    suffix_ids, suffix_types, context_type = suffix
    at, end = len(head_ids), len(head_ids) + stop - start  # the context slice's place in the window
    total = end + len(suffix_ids)
    ids, types = np.empty(total, np.int32), np.empty(total, np.int8)  # (T,) each
    starts, ends = np.empty(total, np.int32), np.empty(total, np.int32)  # (T,) each
    ids[:at], ids[at:end], ids[end:] = head_ids, context.ids[start:stop], suffix_ids
    types[:at], types[at:end], types[end:] = head_types, context_type, suffix_types
    starts[:at], starts[at:end], starts[end:] = -1, context.starts[start:stop], -1
    ends[:at], ends[at:end], ends[end:] = -1, context.ends[start:stop], -1
    return ids, types, starts, ends


def pair_window(encoding: Any) -> Window:
    """A window as the tokenizer's pair encoding gives it: (input ids, type ids, char starts, char ends).

    Char offsets are -1 outside the context (the pair's second sequence) and on zero-width tokens, as in
    `PairTemplate.assemble`.
    """
    offsets = _offsets(encoding)  # (T, 2)
    in_context = context_mask(encoding.sequence_ids) & (offsets[:, 1] > offsets[:, 0])  # (T,)
    return (
        np.asarray(encoding.ids, dtype=np.int32),
        np.asarray(encoding.type_ids, dtype=np.int8),
        np.where(in_context, offsets[:, 0], -1).astype(np.int32),
        np.where(in_context, offsets[:, 1], -1).astype(np.int32),
    )


def context_mask(sequence_ids: list[int | None]) -> npt.NDArray[np.bool_]:
    """(T,) bool: which tokens belong to the pair's second sequence (the context).

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


def _offsets(encoding: Any, n: int | None = None) -> _I32:
    """(T, 2) character offsets of an encoding of `n` tokens (`np.fromiter` over the flat tuples).

    `n` None: counted here; pass it when known (each read of `Encoding.ids` builds a list).
    """
    n = len(encoding.ids) if n is None else n
    flat = np.fromiter(itertools.chain.from_iterable(encoding.offsets), dtype=np.int32, count=2 * n)
    return flat.reshape(n, 2)


def window_ranges(n_context: int, room: int, stride: int) -> list[tuple[int, int]]:
    """Context token ranges of the windows, as `tokenizers.Encoding.truncate(room, stride)` cuts them.

    The first window takes `room` tokens, each next one starts `room - stride` tokens later, and the last
    one ends at the context's end.

    Raises:
        ValueError: `stride >= room` when the context needs several windows (the windows would not advance).
    """
    if n_context <= room:
        return [(0, n_context)]
    if stride >= room:
        raise ValueError(f"doc_stride={stride} must be below the {room} context tokens a window holds")
    step = room - stride
    ranges = []
    start = 0
    while True:
        stop = min(start + room, n_context)
        ranges.append((start, stop))
        if stop == n_context:
            return ranges
        start += step
