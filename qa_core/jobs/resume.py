"""`--resume`: which parts of an earlier, unfinished attempt of the same job are kept, for every engine.

    _job.json of the folder == this job's plan (engine, config, model, batch shape, inputs, parts)?
        -> each part whose two files are finished and name its range -> kept (its footers' counters)
        -> the folder claimed, everything else removed -> only the other parts are answered

A part's content depends only on its rows and the config (`qa_core.jobs.parts`), so the kept parts and
the answered ones together equal a clean run's output. `docqa predict` plans its parts from its workers
and `output.part_rows`; `docqa spark` and `docqa run` from the cores they find (`plan_units`), which may
differ when a job is resumed, so they adopt the parts the folder's plan recorded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from qa_core.engine.stats import EngineStats
from qa_core.errors import OutputError
from qa_core.io.ownership import claim_output, read_job_file
from qa_core.io.schema import ANSWERS_DIR, COMPLETED_FILE, REJECTIONS_DIR, RUN_INFO_FILE
from qa_core.io.storage import storage_errors
from qa_core.io.write import part_name
from qa_core.jobs.lifecycle import JobPlan, open_output
from qa_core.jobs.parts import COUNTS_KEY, PART_KEY, PartRange, job_plan, part_metadata

logger = logging.getLogger(__name__)


@dataclass
class Kept:
    """The finished parts of an earlier attempt that `--resume` keeps: their numbers and counters."""

    indices: set[int] = field(default_factory=set)
    stats: EngineStats = field(default_factory=EngineStats)


@dataclass(frozen=True)
class PartedOutput:
    """A job's parts: the plan `_job.json` records, the parts kept from an earlier attempt, the rest.

    Attributes:
        parts: Every part of the job, in order.
        document: The job's plan (`parts.job_plan`), written to `_job.json`.
        kept: The parts an earlier attempt finished (none unless resuming).
        resuming: Whether the folder is claimed as it is (`--resume` of a folder with a `_job.json`)
            rather than prepared anew.
    """

    parts: tuple[PartRange, ...]
    document: dict[str, Any]
    kept: Kept
    resuming: bool

    def pending(self, parts: Sequence[PartRange] | None = None) -> list[PartRange]:
        """The parts (of `parts`, default all) still to answer."""
        return [p for p in (self.parts if parts is None else parts) if p.index not in self.kept.indices]

    def prepare(self, plan: JobPlan) -> str:
        """Takes the folder for this job (anew, or claimed with its kept parts); returns the owner token."""
        if not self.resuming:
            return open_output(plan, self.document)
        owner = claim_output(plan.output_dir, self.document)
        remove_unfinished(plan.output_dir, self.kept.indices)
        return owner

    def counts(self) -> dict[str, int]:
        """For `_run.json`'s counts: parts planned, and the parts and rows kept from an earlier attempt."""
        return {
            "parts": len(self.parts),
            "reused_parts": len(self.kept.indices),
            "reused_rows": self.kept.stats.rows,
        }


def parted_output(
    plan: JobPlan, parts: Sequence[PartRange], *, resume: bool, adopt_stored_parts: bool = False
) -> PartedOutput:
    """The job's parts and, with `resume`, those an earlier attempt of the same job finished.

    Changes nothing: `PartedOutput.prepare` takes the folder once the engine is ready.

    Args:
        plan: The job's plan (`lifecycle.preflight`).
        parts: The parts this job would plan on its own.
        resume: Keep an earlier attempt's finished parts (`JobRequest.resume`).
        adopt_stored_parts: Take the parts of the folder's plan instead of `parts` when they differ
            (cluster engines, whose plan depends on the cores they find).

    Raises:
        OutputError: See `resumable_parts`.
    """
    document = job_plan(
        plan.engine,
        plan.config,
        plan.revision,
        shape=plan.batch_shape,
        inputs=plan.source.identity(),
        parts=parts,
    )
    if not resume:
        return PartedOutput(tuple(parts), document, Kept(), resuming=False)
    stored = read_job_file(plan.output_dir)
    if adopt_stored_parts and stored is not None and isinstance(stored.get("parts"), list):
        try:
            parts = [PartRange(k, int(start), int(stop)) for k, (start, stop) in enumerate(stored["parts"])]
        except (TypeError, ValueError) as err:
            raise OutputError(
                f"cannot resume {plan.output_dir}: its _job.json has no valid parts ({err})"
            ) from err
        bounds = [0, *(p.stop for p in parts)]
        if (
            any(p.start != bounds[k] or p.stop < p.start for k, p in enumerate(parts))
            or bounds[-1] != plan.rows_read
        ):
            raise OutputError(
                f"cannot resume {plan.output_dir}: the parts of its _job.json do not cover the "
                f"{plan.rows_read} input rows; rerun with --overwrite"
            )
        document = {**document, "parts": [[p.start, p.stop] for p in parts]}
    kept = resumable_parts(plan.output_dir, stored, document, parts)
    logger.info(
        "resuming %s: keeping %d of %d parts (%d rows)",
        plan.output_dir,
        len(kept.indices),
        len(parts),
        kept.stats.rows,
    )
    # Nothing to resume (no folder yet): the folder is prepared as for a fresh run.
    return PartedOutput(tuple(parts), document, kept, resuming=stored is not None)


def resumable_parts(
    output_dir: str, stored: dict[str, Any] | None, plan: dict[str, Any], parts: Sequence[PartRange]
) -> Kept:
    """The parts of an earlier attempt that `--resume` keeps, after checking it was the same job.

    Changes nothing: the unfinished parts are removed by `remove_unfinished` once the job owns the folder.

    Args:
        output_dir: The output folder.
        stored: Its `_job.json` (None when it has none).
        plan: This job's plan (`job_plan`).
        parts: This job's parts, as in `plan`.

    Raises:
        OutputError: The folder holds another job (engine, config, model, inputs or parts differ), a
            finished run, output files without a `_job.json`, or a part that cannot be read for a reason
            other than being torn (a storage error: better to stop than to redo finished work).
    """
    fs, root = fsspec.core.url_to_fs(output_dir)
    root = root.rstrip("/")
    if stored is None:
        if _listing(fs, f"{root}/{ANSWERS_DIR}") or _listing(fs, f"{root}/{REJECTIONS_DIR}"):
            raise OutputError(
                f"cannot resume {output_dir}: it has output files but no _job.json (written by an older "
                "docqa or by docqa run); rerun with --overwrite"
            )
        return Kept()
    if stored.get("engine") != plan["engine"]:
        raise OutputError(
            f"cannot resume {output_dir}: it holds a run of docqa {stored.get('engine', 'run')}, which "
            f"docqa {plan['engine']} cannot continue; rerun with --overwrite"
        )
    if fs.exists(f"{root}/{COMPLETED_FILE}"):
        raise OutputError(f"cannot resume {output_dir}: its run is COMPLETED; pass --overwrite to redo it")
    for key, what in (
        ("config_hash", "config"),
        ("model_revision", "model"),
        ("batch_shape", "batch shape (docqa tune ran since?)"),
        ("inputs", "input files"),
        ("parts", "part plan"),
    ):
        if stored.get(key) != plan[key]:
            raise OutputError(
                f"cannot resume {output_dir}: it was started with another {what} ({key} "
                f"{_short(stored.get(key))}, now {_short(plan[key])}); rerun with the same settings and "
                "inputs, or pass --overwrite"
            )
    kept = Kept()
    for part in parts:
        stats = _finished_part(fs, root, part, plan["config_hash"])
        if stats is not None:
            kept.indices.add(part.index)
            kept.stats.add(stats)
    return kept


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _listing(fs: Any, folder: str) -> list[str]:
    """The entries of `folder`; none when it does not exist (an object store has no empty folders)."""
    try:
        return list(fs.ls(folder, detail=False))
    except FileNotFoundError:
        return []


def _finished_part(fs: Any, root: str, part: PartRange, config_hash: str) -> EngineStats | None:
    """The counters of part `part` when both its files are finished and name its range and config.

    None (answer the part again) for a missing file, a file that is not valid Parquet (cut short by a
    kill), or footers of another range, config or row count.

    Raises:
        OutputError: Any other failure to read the files (permissions, the network).
    """
    expected = json.loads(part_metadata(part, config_hash)[PART_KEY])
    rows, counters = [], []
    for folder in (ANSWERS_DIR, REJECTIONS_DIR):
        path = f"{root}/{folder}/{part_name(part.index)}"
        with storage_errors(OutputError, "cannot resume", path):
            try:
                with fs.open(path, "rb") as handle:
                    metadata = pq.ParquetFile(handle).metadata
            except FileNotFoundError:
                return None
            except pa.ArrowInvalid:  # no valid footer: the file was being written when the job died
                return None
        stored = metadata.metadata or {}
        try:
            if json.loads(stored.get(PART_KEY.encode(), b"null")) != expected:
                return None
            counters.append(EngineStats.from_state(json.loads(stored[COUNTS_KEY.encode()])))
        except (KeyError, ValueError, TypeError):
            return None
        rows.append(metadata.num_rows)
    stats = counters[0]
    if (stats.rows, stats.answered, sum(stats.rejected.values())) != (part.rows, *rows):
        return None
    return stats


def remove_unfinished(output_dir: str, kept: set[int]) -> None:
    """Clears what the kept parts do not cover: other part files, in-progress files, an old `_run.json`.

    Called once this job owns the folder (`claim_output`), so a refused or failed start changes nothing.

    Raises:
        OutputError: When the storage refuses.
    """
    fs, root = fsspec.core.url_to_fs(output_dir)
    root = root.rstrip("/")
    names = {part_name(k) for k in kept}
    with storage_errors(OutputError, "cannot resume", output_dir):
        for name in (COMPLETED_FILE, RUN_INFO_FILE):
            if fs.exists(f"{root}/{name}"):
                fs.rm(f"{root}/{name}")
        for folder in (ANSWERS_DIR, REJECTIONS_DIR):
            path = f"{root}/{folder}"
            fs.makedirs(path, exist_ok=True)
            for entry in _listing(fs, path):
                if entry.rstrip("/").rsplit("/", 1)[-1] not in names:
                    fs.rm(entry, recursive=True)
