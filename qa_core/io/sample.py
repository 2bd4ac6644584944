"""A sample spread over a Parquet input, read from the few row groups that hold it (`docqa estimate`).

The layout (files, row groups, their rows) comes from the footers alone; a sample is a set of positions
counted over all files, each read from its row group with column projection.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qa_core.errors import InputError


@dataclass(frozen=True)
class InputLayout:
    """Files and row groups of the input, from the Parquet footers.

    Attributes:
        files: The resolved input files.
        row_groups: (file index, row group index, rows) of every row group, in file order.
    """

    files: tuple[str, ...]
    row_groups: tuple[tuple[int, int, int], ...]

    @property
    def rows(self) -> int:
        """All rows of the input."""
        return sum(n for _, _, n in self.row_groups)


def read_layout(files: list[str]) -> InputLayout:
    """Row groups and row counts of the files, from their footers only.

    Raises:
        InputError: An unreadable file, naming it.
    """
    groups: list[tuple[int, int, int]] = []
    for index, file in enumerate(files):
        try:
            with fsspec.open(file, "rb") as handle:
                metadata = pq.ParquetFile(handle).metadata
        except (OSError, pa.ArrowException) as err:
            raise InputError(f"cannot read the Parquet footer of {file}: {err}") from err
        groups += [(index, g, metadata.row_group(g).num_rows) for g in range(metadata.num_row_groups)]
    return InputLayout(tuple(files), tuple(groups))


def sample_rows(layout: InputLayout, columns: list[str], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """A stratified sample of `n` rows (all rows when there are fewer), in input order (`sample_positions`).

    Raises:
        InputError: An unreadable file, naming it.
    """
    return read_positions(layout, columns, sample_positions(layout.rows, n, seed))


def sample_positions(total: int, n: int, seed: int = 0) -> list[int]:
    """`n` of the positions `[0, total)` (all when there are fewer), ascending.

    The positions are cut into `n` equal strata of consecutive numbers and one is drawn at random (fixed
    seed) from each: spread over every file and row group like an evenly spaced sample, without its
    aliasing on periodic inputs (every 50th row empty, say).
    """
    k = min(n, total)
    rng = np.random.default_rng(seed)
    edges = [(i * total) // k for i in range(k + 1)] if k else [0]
    return [int(rng.integers(edges[i], edges[i + 1])) for i in range(k)]


def read_positions(layout: InputLayout, columns: list[str], targets: list[int]) -> list[dict[str, Any]]:
    """The rows at ascending positions `targets` (counted over all files), reading only their row groups.

    Raises:
        InputError: An unreadable file, naming it.
    """
    wanted: dict[tuple[int, int], list[int]] = defaultdict(list)
    start, t = 0, 0
    for file_index, group, rows in layout.row_groups:
        while t < len(targets) and targets[t] < start + rows:
            wanted[(file_index, group)].append(targets[t] - start)
            t += 1
        start += rows
    out: list[dict[str, Any]] = []
    by_file: dict[int, list[int]] = defaultdict(list)
    for file_index, group in wanted:
        by_file[file_index].append(group)
    for file_index in sorted(by_file):
        file = layout.files[file_index]
        try:
            with fsspec.open(file, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                for group in by_file[file_index]:
                    table = parquet.read_row_group(group, columns=columns)
                    out += table.take(wanted[(file_index, group)]).to_pylist()
        except (OSError, pa.ArrowException) as err:
            raise InputError(f"cannot read Parquet file {file}: {err}") from err
    return out
