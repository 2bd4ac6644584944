r"""Snapping character spans to extended grapheme cluster boundaries (Unicode UAX #29).

A model's token offsets can stop inside a user-perceived character: the tokenizer's normalizer strips
combining marks, so the token for NFD "José" ends before U+0301, and Devanagari, Thai, Hangul jamo and
emoji sequences are cut the same way (token starts can fall inside a cluster too). `snap_span` widens a
span to the smallest one whose both ends are cluster boundaries, so an answer is always whole characters.

Clusters come from the `regex` package's `\X`, run near each end, never over the whole context (contexts
can be megabytes and this runs for every candidate). Most positions are settled by the two characters
around them (`_certain_boundary`). Otherwise `\X` walks forward from the nearest certain boundary a few
characters back; where there is none (a long cluster, a long run of flags), it segments ever larger
slices around the position, trusting only the boundaries a slice's cut ends cannot have moved, so the
result is exact for clusters of any length.
"""

from __future__ import annotations

import bisect
import operator
import re
from collections.abc import Callable, Sequence

import regex

_CLUSTER = regex.compile(r"\X")
# Two characters between which UAX #29 breaks whatever surrounds them (GB4, GB5 and the pairs no rule
# joins). The rules that look further back (GB9c Indic conjuncts, GB11 emoji ZWJ sequences, GB12/13 flag
# pairs) only apply to a Consonant after an InCB Extend/Linker character (some are GCB=Other), an emoji
# after ZWJ, and a regional indicator after another: those pairs are left out, as is every pair after a
# Prepend character (GB9b).
_CERTAIN_PAIR = regex.compile(
    r"""
      . [\p{GCB=Control}\r]                          # GB5: break before a control or CR
    | [^\r] \n                                       # GB5, except CR x LF (GB3)
    | [\p{GCB=Control}\n] .                          # GB4: break after a control or LF
    | \r [^\n]
    | (?! \p{GCB=Prepend} ) (?:
          [^\p{GCB=Extend}\p{GCB=ZWJ}\p{InCB=Extend}\p{InCB=Linker}] \p{GCB=Other}
        | . (?! \p{Extended_Pictographic} | \p{InCB=Consonant} ) \p{GCB=Other}
        | [^\p{GCB=L}] [\p{GCB=L}\p{GCB=LV}\p{GCB=LVT}]   # GB6: only an L joins these
        | [^\p{GCB=Regional_Indicator}] \p{GCB=Regional_Indicator}
      )
    """,
    flags=regex.VERBOSE | regex.DOTALL,
)
_FIRST_PREPEND = "\u0600"  # smallest Prepend: below it only CR joins the ASCII character after it
_RI_FIRST, _RI_LAST = "\U0001f1e6", "\U0001f1ff"  # regional indicators: flags are pairs of them
_LAST_NON_RI = regex.compile(r"[^\U0001F1E6-\U0001F1FF]", flags=regex.REVERSE)
_SCAN = 16  # how far back to look for a certain boundary to walk clusters from
_SCAN_WHOLE = 1 << 16  # longest text searched whole for a character that can join (longer: offset by offset)
# Blocks whose every character is GCB Other, Control or LF (tests/test_graphemes.py checks each against the
# `regex` package that `\X` uses): a text of these alone, CR left out, has a boundary at every position,
# for no rule joins two of them (GB3 needs CR; GB6-GB9c, GB11-GB13 need a Hangul, Extend, ZWJ, SpacingMark,
# Prepend or regional indicator character). Latin, Greek, Cyrillic letters, general punctuation, currency,
# letterlike and math symbols, arrows, CJK ideographs: nearly every non-ASCII context of SQuAD.
_BOUNDARY_EVERYWHERE = (
    r"\x00-\x0c\x0e-\u02ff\u0370-\u0482\u1e00-\u1fff\u2010-\u2027\u2030-\u205f\u2070-\u20cf"
    r"\u2100-\u2bff\u4e00-\u9fff"
)
_MAY_JOIN = re.compile(f"[^{_BOUNDARY_EVERYWHERE}]")  # `re`: a plain class, far faster than `regex`'s
_MARGIN = 32  # first slice half-width when there is none; it doubles until the boundaries are trusted


def _certain_boundary(text: str, pos: int) -> bool:
    r"""Whether `pos` is a cluster boundary whatever precedes its two neighbouring characters.

    False means "ask `\X`", not "inside a cluster".
    """
    if pos <= 0 or pos >= len(text):
        return True
    after, before = text[pos], text[pos - 1]
    if after < "\x80" and before < _FIRST_PREPEND:
        # The fast path (most of SQuAD): no rule joins an ASCII character to these, but CR x LF.
        return after != "\n" or before != "\r"
    return _CERTAIN_PAIR.match(text, pos - 1) is not None


def _is_regional_indicator(char: str) -> bool:
    return _RI_FIRST <= char <= _RI_LAST


def _enclosing_boundaries(text: str, pos: int) -> tuple[int, int]:
    """The last cluster boundary <= `pos` and the first one >= `pos` (both `pos` when it is one)."""
    for start in range(pos - 1, max(0, pos - _SCAN) - 1, -1):
        if _certain_boundary(text, start):
            # `start` is a true boundary, so `\X` from it yields the true clusters.
            below = start
            for match in _CLUSTER.finditer(text, start):
                end = int(match.end())
                if end >= pos:
                    return (pos, pos) if end == pos else (below, end)
                below = end
    return _enclosing_boundaries_sliced(text, pos)


def _enclosing_boundaries_sliced(text: str, pos: int) -> tuple[int, int]:
    """`_enclosing_boundaries` with no certain boundary close by: segments growing slices around `pos`."""
    n = len(text)
    margin = _MARGIN
    while True:
        lo, hi = max(0, pos - margin), min(n, pos + margin)
        lo_trusted = _certain_boundary(text, lo)
        if not lo_trusted and _is_regional_indicator(text[lo]) and _is_regional_indicator(text[lo - 1]):
            # Inside a run of regional indicators, pairs count from the run's first one (GB12/13): an
            # even number of them after it is a boundary.
            last_other = _LAST_NON_RI.search(text, 0, lo)
            run_start = 0 if last_other is None else int(last_other.end())
            lo -= (lo - run_start) % 2
            lo_trusted = lo > run_start or lo == 0
        ends: list[int] = [lo + m.end() for m in _CLUSTER.finditer(text[lo:hi])]
        # A slice that starts inside a cluster ends its first cluster too early (the rules lack what came
        # before); every later boundary is exact. Its end always looks like a boundary: trust it only there.
        trusted = [lo, *ends] if lo_trusted else ends[1:]
        if hi < n and trusted and trusted[-1] == hi:
            trusted.pop()
        at = bisect.bisect_right(trusted, pos)  # trusted[:at] <= pos < trusted[at:]
        if at > 0 and (trusted[at - 1] == pos or at < len(trusted)):
            below = trusted[at - 1]
            return below, pos if below == pos else trusted[at]
        if lo == 0 and hi == n:  # unreachable: with the whole text every boundary is trusted
            raise AssertionError(f"no cluster boundary around {pos}")
        margin *= 2


def snap_span(text: str, start: int, end: int) -> tuple[int, int]:
    """The smallest span covering `[start, end)` whose both ends are extended grapheme cluster boundaries.

    `start` moves back to the start of the cluster it falls inside and `end` forward to the end of the
    cluster it falls inside (over combining marks, ZWJ sequences, variation selectors, the second regional
    indicator of a flag, spacing marks, ...). Empty spans are returned unchanged.

    Args:
        text: The context the offsets index (code points).
        start: Start offset, `0 <= start <= end`.
        end: End offset (exclusive), `end <= len(text)`.

    Returns:
        `(start, end)` snapped; the same pair when both already are boundaries.

    Raises:
        ValueError: When the offsets are not a span of `text`.
    """
    if not 0 <= start <= end <= len(text):
        raise ValueError(f"span [{start}, {end}) is not inside a text of length {len(text)}")
    if start == end:
        return start, end
    return _snap_start(text, start), _snap_end(text, end)


def _snap_start(text: str, start: int) -> int:
    return start if _certain_boundary(text, start) else _enclosing_boundaries(text, start)[0]


def _snap_end(text: str, end: int) -> int:
    return end if _certain_boundary(text, end) else _enclosing_boundaries(text, end)[1]


def _moved(text: str, offsets: Sequence[int], snap: Callable[[str, int], int]) -> dict[int, int]:
    """`{p: snap(text, p)}` for each distinct offset `0 <= p <= len(text)` that `snap` moves.

    `_certain_boundary`'s ASCII test is inlined: it settles nearly every offset of a non-ASCII context
    (the characters around an answer's ends are mostly ASCII), and two calls per offset cost more.
    """
    moved: dict[int, int] = {}
    last, first_prepend = len(text), _FIRST_PREPEND
    crlf = "\r" in text  # one memchr: most texts have no CR, and then no CR LF pair to look for
    for p in set(offsets):
        if 0 < p < last:  # the text's ends are boundaries
            after = text[p]
            if after < "\x80":
                before = text[p - 1]
                if before < first_prepend and not (crlf and after == "\n" and before == "\r"):
                    continue
            q = snap(text, p)
            if q != p:
                moved[p] = q
    return moved


def boundary_everywhere(text: str) -> bool:
    """Whether every position of `text` is a cluster boundary, as far as one scan of it can tell.

    True for ASCII without CR (`isascii` is O(1), `in` one memchr) and for texts of `_BOUNDARY_EVERYWHERE`
    alone; False also means "look at each offset" (texts over `_SCAN_WHOLE` characters are never scanned).
    """
    if len(text) > _SCAN_WHOLE:
        return False
    return "\r" not in text if text.isascii() else _MAY_JOIN.search(text) is None


def snap_spans(
    text: str, starts: Sequence[int], ends: Sequence[int], everywhere: bool | None = None
) -> tuple[list[int], list[int]]:
    """`snap_span` over many spans of one text, each distinct offset looked up once.

    A window's candidates share most of their start and end offsets, so this costs about one
    `_certain_boundary` check per distinct offset when nothing moves (the usual case).

    Args:
        text: The context the offsets index (code points).
        starts: Start offsets.
        ends: End offsets (exclusive), as many as `starts`.
        everywhere: `boundary_everywhere(text)` when the caller has it (a row's windows share their
            text); None: found here.

    Returns:
        The snapped starts and ends, as lists (equal to the inputs when nothing moved).

    Raises:
        ValueError: When the lengths differ or an offset pair is not a span of `text`.
    """
    if len(starts) != len(ends):
        raise ValueError(f"{len(starts)} starts but {len(ends)} ends")
    if starts and (min(starts) < 0 or max(ends) > len(text) or not all(map(operator.le, starts, ends))):
        raise ValueError(f"a span is not inside a text of length {len(text)} (or ends before it starts)")
    if everywhere is None:
        everywhere = boundary_everywhere(text)
    if everywhere:  # nothing can move
        return list(starts), list(ends)
    # Each distinct offset is looked up once; in the usual case none moves and nothing else is done.
    moved_starts = _moved(text, starts, _snap_start)
    moved_ends = _moved(text, ends, _snap_end)
    if not moved_starts and not moved_ends:
        return list(starts), list(ends)
    out_starts: list[int] = []
    out_ends: list[int] = []
    for start, end in zip(starts, ends, strict=True):
        empty = start == end  # empty spans (no answer) stay as they are
        out_starts.append(start if empty else moved_starts.get(start, start))
        out_ends.append(end if empty else moved_ends.get(end, end))
    return out_starts, out_ends
