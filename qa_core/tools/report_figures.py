"""The figures of `docqa report`: PNG files drawn with matplotlib's Agg canvas under `DIR/report/`.

Figures are drawn on a `Figure` with its own Agg canvas, never through pyplot, so a report leaves the
process's matplotlib backend and global state alone (it runs at the end of `docqa predict` and `run`).
Every figure has one size (the page shows them in a grid) and a tight layout; count axes carry at most
five ticks written short (`350k`, `1.2M`), so tick labels of large counts never run into each other.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from typing import Any

from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from qa_core.evaluation.reliability import ReliabilityBin
from qa_core.io.schema import REPORT_DIR
from qa_core.tools.report_scan import OutputFileSystem

# matplotlib logs every categorical axis at INFO; keep run logs readable.
logging.getLogger("matplotlib").setLevel(logging.WARNING)

FIGURES_DIR = REPORT_DIR
BAR_COLOR = "#4878a8"
POINT_COLOR = "#c44e52"
FIGURE_SIZE = (5.0, 3.4)  # inches at 100 dpi: 500 x 340 pixels, shown two or three to a row


def short_count(value: float, _position: object = None) -> str:
    """A tick label for a count: 950, 12k, 350k, 1.2M (whole numbers only; no decimals of a row)."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            text = f"{value / limit:.1f}".removesuffix(".0")
            return f"{text}{suffix}"
    return f"{value:.0f}"


def count_axis(axis: Axis) -> None:
    """At most five integer ticks labelled with `short_count`."""
    axis.set_major_locator(MaxNLocator(nbins=5, integer=True))
    axis.set_major_formatter(FuncFormatter(short_count))


class FigureFolder:
    """Draws figures into PNG files under the report folder and remembers their relative paths.

    Args:
        fs: The output folder's fsspec file system.
        root: The output folder's path on `fs`.
    """

    def __init__(self, fs: OutputFileSystem, root: str) -> None:
        self.fs, self.root = fs, root
        folder = f"{root}/{FIGURES_DIR}"
        if fs.exists(folder):  # no stale figure of an earlier report survives
            fs.rm(folder, recursive=True)
        fs.makedirs(folder, exist_ok=True)

    def draw(self, name: str, title: str, plot: Callable[[Axes], None]) -> str:
        """Writes `FIGURES_DIR/name.png` drawn by `plot` and returns that path, relative to the folder."""
        figure = render(title, plot)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        relative = f"{FIGURES_DIR}/{name}.png"
        with self.fs.open(f"{self.root}/{relative}", "wb") as handle:
            handle.write(buffer.getvalue())
        return relative


def render(title: str, plot: Callable[[Axes], None]) -> Figure:
    """The figure `plot` draws, titled, at `FIGURE_SIZE` with a tight layout (drawn once, so laid out)."""
    figure = Figure(figsize=FIGURE_SIZE, dpi=100, layout="tight")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    plot(axes)
    axes.set_title(title, fontsize=10)
    figure.canvas.draw()
    return figure


def stairs(axes: Axes, counts: tuple[int, ...], edges: Any, label: str) -> None:
    """A filled histogram of `counts` between `edges` (integer ticks for a "words" axis)."""
    axes.stairs(counts, edges, fill=True, color=BAR_COLOR)
    if label == "words":
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel(label)
    axes.set_ylabel("rows")
    count_axis(axes.yaxis)


def bars(axes: Axes, values: dict[str, int], unit: str = "rows") -> None:
    """Horizontal bars, one per key in order, each labelled with its value."""
    names = list(values)
    axes.barh(names, [values[n] for n in names], color=BAR_COLOR)
    axes.invert_yaxis()
    axes.margins(x=0.18)  # room for the value labels
    axes.set_xlabel(unit)
    count_axis(axes.xaxis)
    axes.tick_params(axis="y", labelsize=8)  # reason codes are long
    for y, name in enumerate(names):
        axes.annotate(f" {values[name]:,}", (values[name], y), va="center", fontsize=8)


def reliability_plot(bins: Sequence[ReliabilityBin]) -> Callable[[Axes], None]:
    """The reliability diagram of `bins`: exact-match rate per score bin, mean scores, the diagonal."""

    def plot(ax: Axes) -> None:
        filled = [b for b in bins if b.count]
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        ax.bar(
            [b.lower for b in filled],
            [b.accuracy for b in filled],
            width=0.1,
            align="edge",
            color=BAR_COLOR,
            edgecolor="white",
            label="exact-match rate",
        )
        points = ([b.mean_score for b in filled], [b.accuracy for b in filled])
        ax.plot(*points, "o", color=POINT_COLOR, label="mean score")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="score", ylabel="fraction exact match")
        ax.legend(fontsize=8, loc="upper left")

    return plot
