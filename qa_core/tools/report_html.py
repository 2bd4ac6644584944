"""HTML building blocks of `docqa report`: one escaping rule, tables, highlighted contexts, the page.

Every value that comes from the data (ids, questions, contexts, answers, rejection details, column names,
pass-through values, paths) reaches the page through `esc`, which escapes `&`, `<`, `>`, `"` and `'`. The
helpers here return `Html`: markup they built from escaped parts, which `esc` passes through unchanged;
nothing else is ever inserted as markup. The page holds no script, loads nothing from the network (inline
CSS, system fonts) and needs no JavaScript.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

CONTEXT_RADIUS = 200
"""Characters of context shown on each side of a highlighted answer."""
MAX_TEXT = 400
"""A value longer than this is cut (with an ellipsis) in tables: contexts can be pages long."""
ELLIPSIS = "\u2026"


class Html(str):
    """Markup built by this module's helpers from escaped parts: `esc` inserts it unchanged."""

    __slots__ = ()


def esc(value: object) -> Html:
    """The report's one escaping rule: `value` as text, with `& < > " '` escaped (`html.escape(quote=True)`).

    Args:
        value: Any value; `Html` (already-built markup) is returned unchanged, None and NaN read "n/a",
            numbers are formatted by `fmt`, anything else is `str(value)`.

    Returns:
        Text safe in element content and in quoted attribute values.
    """
    if isinstance(value, Html):
        return value
    return Html(html.escape(fmt(value), quote=True))


def fmt(value: object, digits: int = 3) -> str:
    """A value as the report shows it: thousands separators, `digits` decimals, "n/a" for None and NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def count(n: int, noun: str) -> str:
    """`n` and its noun, plural unless one: "1 row", "2,000 rows"."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """`text` cut to `limit` characters with an ellipsis (a table cell stays readable)."""
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def tag(name: str, content: object, **attributes: str) -> Html:
    """`<name attr="...">content</name>` with escaped attribute values and escaped (non-`Html`) content.

    A keyword ending in `_` names the attribute without it (`class_` -> `class`); `data_x` -> `data-x`.
    """
    attrs = "".join(
        f' {key.rstrip("_").replace("_", "-")}="{esc(value)}"' for key, value in attributes.items()
    )
    return Html(f"<{name}{attrs}>{esc(content)}</{name}>")


def join(parts: Iterable[object]) -> Html:
    """The parts one after another, each escaped unless it is `Html`."""
    return Html("".join(esc(part) for part in parts))


def table(head: Sequence[str], rows: Iterable[Sequence[object]], **attributes: str) -> Html:
    """A table with a header row; every cell goes through `esc` (values cut to `MAX_TEXT` characters).

    The table scrolls sideways inside its own box: one unbreakable value never widens the page.
    """
    header = join(tag("th", name) for name in head)
    body = join(
        tag("tr", join(tag("td", cell if isinstance(cell, Html) else clip(fmt(cell))) for cell in row))
        for row in rows
    )
    content = join([tag("thead", tag("tr", header)), tag("tbody", body)])
    return tag("div", tag("table", content, **attributes), class_="scroll")


def key_value_table(rows: Iterable[tuple[str, object]], **attributes: str) -> Html:
    """A two-column table of label / value rows."""
    body = join(tag("tr", join([tag("th", key), tag("td", value)])) for key, value in rows)
    return tag("div", tag("table", body, **attributes), class_="scroll")


def highlight(context: str, start: int, end: int, radius: int = CONTEXT_RADIUS) -> Html:
    """The context around `context[start:end]`, the span in `<mark>`, cut `radius` characters either side.

    Args:
        context: The row's context; `start`/`end` are code-point offsets into it (0 <= start <= end).
        start: Where the answer starts.
        end: Where it ends (exclusive).
        radius: Characters kept before and after the span; a cut side ends in an ellipsis.
    """
    left, right = max(0, start - radius), min(len(context), end + radius)
    before = (ELLIPSIS if left else "") + context[left:start]
    after = context[end:right] + (ELLIPSIS if right < len(context) else "")
    return tag("p", join([before, tag("mark", context[start:end]), after]), class_="context")


def section(id_: str, title: str, parts: Iterable[object]) -> Html:
    """A `<section id=...>` with its `<h2>` title: the stable handles a reader (or a test) finds parts by."""
    return tag("section", join([tag("h2", title), *parts]), id=id_)


def note(text: str, kind: str = "note") -> Html:
    """A one-paragraph remark (`kind` "warn" shows it in red)."""
    return tag("p", text, class_=kind)


def figure_grid(images: Iterable[tuple[str, str]]) -> Html:
    """Figures (relative PNG path, caption) in a CSS grid: two to three per row on a wide screen."""
    cells = (
        tag("figure", join([Html(f'<img src="{esc(path)}" alt="{esc(alt)}">'), tag("figcaption", alt)]))
        for path, alt in images
    )
    return tag("div", join(cells), class_="figure-grid")


def stat_tiles(stats: Iterable[tuple[str, str, object]]) -> Html:
    """The summary's tiles: (stable id, label, value) each, the value large."""
    tiles = (
        tag("div", join([tag("span", value, class_="value"), tag("span", label, class_="label")]), id=id_)
        for id_, label, value in stats
    )
    return tag("div", join(tiles), class_="stats")


STYLE = """
body{font-family:system-ui,sans-serif;max-width:78em;margin:1.5em auto;padding:0 1em;color:#222}
h1{font-size:1.5em;word-break:break-all}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top;overflow-wrap:break-word}
thead th{background:#f3f3f3}
.stats{display:grid;grid-template-columns:repeat(auto-fill,minmax(11em,1fr));gap:.6em;margin:1em 0}
.stats>div{border:1px solid #ddd;border-radius:6px;padding:.5em .8em;background:#fafafa}
.stats .value{display:block;font-size:1.5em;font-weight:600}.stats .label{font-size:.85em;color:#555}
.figure-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(24em,1fr));gap:1em}
.figure-grid figure{margin:0}.figure-grid img{width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
.samples{display:grid;grid-template-columns:repeat(auto-fill,minmax(30em,1fr));gap:.8em}
.sample,.rejection-example{border:1px solid #ddd;border-radius:6px;padding:.4em .8em;min-width:0}
.sample{overflow-wrap:anywhere}.scroll{overflow-x:auto}
.context{font-size:.92em;line-height:1.45;overflow-wrap:break-word}
mark{background:#ffe27a;padding:0 .1em}.meta{font-size:.85em;color:#555}
.note{color:#555}.warn{color:#a00}
"""


def page(title: str, parts: Iterable[object]) -> str:
    """The whole document: inline CSS, no script, every part escaped unless `Html`."""
    head = Html(f"<meta charset='utf-8'>{tag('title', title)}<style>{STYLE}</style>")
    return f"<!doctype html><html><head>{head}</head><body>{join(parts)}</body></html>\n"
