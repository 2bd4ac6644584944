"""Beam's keyed join (`pipelines.keyed_join.JoinByKey`) forms the rows the held questions form.

The transform alone, on Beam's own runner with type checks, over random tables with every kind of bad
key; the whole `docqa run` job with a keyed join is tested with the other two-table jobs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.keyed_join import JoinByKey
from pipelines.runners import local_runner
from qa_core.config import InputConfig
from qa_core.io.pairs import PairsSource
from qa_core.jobs.parts import plan_units
from tests.test_pairs_join import JOINS, comparable, random_tables

COLUMNS = ("title", "kind")


def _comparable(element: tuple[int, Any]) -> tuple[int, str]:
    # Rows as text: a RejectedRow's reason survives the comparison (equal_to compares plain values).
    return element[0], repr(comparable(element[1]))


@pytest.mark.parametrize("seed", [3, 11, 38])
def test_join_by_key_forms_the_held_rows(tmp_path: Path, seed: int) -> None:
    docs, qs = random_tables(tmp_path, seed)
    held = PairsSource.open(docs, qs, InputConfig(passthrough_columns=COLUMNS), JOINS)
    keyed = PairsSource.open(docs, qs, InputConfig(passthrough_columns=COLUMNS, max_questions=1), JOINS)
    assert keyed.keyed is not None
    units = plan_units(keyed.row_count, 2, 4, keyed.boundary)
    pending = units[1::2] if seed == 38 else units  # a resumed attempt: only some units
    expected = [
        (p, repr(comparable(row)))
        for unit in pending
        for p, row in enumerate(held.rows(unit.start, unit.stop), start=unit.start)
    ]
    with BeamTestPipeline(runner=local_runner(PipelineOptions())) as pipeline:
        rows = (
            pipeline
            | beam.Create(pending, reshuffle=False)
            | JoinByKey(keyed.keyed, pending)
            | beam.Map(_comparable)
        )
        assert_that(rows, equal_to(expected))
