"""The summary of `scripts/gpu_host_check.sh`: per row set, the forward bound, predict, and the host cost.

Reads the bench JSON files the script wrote (`OUTDIR/<set>-1.json`: bound, predict and host in one
process; `OUTDIR/<set>-w<N>.json`: the same with `--workers N` over the rows repeated) and prints one
block per set:
    python scripts/gpu_host_summary.py OUTDIR SET [SET ...]
A file that is missing (its step failed or ran out of time) prints its figures as "-"; the summary is
also written to OUTDIR/summary.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

MICROSECONDS = 1e6
# The host mode's stages in the engine's order (the bench's JSON has its keys sorted).
STAGES = ("read", "validate", "tokenize and windows", "plan batches", "collate", "decode")


def _modes(path: Path) -> dict[str, dict[str, Any]]:
    """The bench file's records by mode; empty when the file is missing or unreadable."""
    try:
        return {r["mode"]: r for r in json.loads(path.read_text())["results"]}
    except (OSError, ValueError, KeyError) as err:
        print(f"({path.name}: {type(err).__name__}: {err})", file=sys.stderr)
        return {}


def _get(record: dict[str, Any] | None, key: str) -> float | None:
    return None if record is None else record.get(key)


def one_set(outdir: Path, name: str) -> dict[str, Any]:
    """The figures of one row set: its one-process file and each of its `--workers` files."""
    one = _modes(outdir / f"{name}-1.json")
    summary: dict[str, Any] = {
        "set": name,
        "questions": _get(one.get("bound"), "questions"),
        "bound_q_per_s": _get(one.get("bound"), "questions_per_s"),
        "predict_q_per_s": _get(one.get("predict"), "questions_per_s"),
        "predict_ratio_to_bound": _get(one.get("predict"), "ratio_to_bound"),
        "host_us_per_row": _get(one.get("host"), "host_us_per_row"),
        "host_stages_us_per_row": _get(one.get("host"), "host_stages_us_per_row"),
        "tokenizer_pairs_us_per_row": _get(one.get("host"), "tokenizer_pairs_us_per_row"),
        "workers": [],
    }
    counts = sorted(int(p.stem[len(name) + 2 :]) for p in outdir.glob(f"{name}-w*.json"))
    for workers in counts:
        modes = _modes(outdir / f"{name}-w{workers}.json")
        predict, host = modes.get("predict"), modes.get("host")
        rate = _get(host, "host_workers_rows_per_s")
        summary["workers"].append(
            {
                "workers": workers,
                "questions": _get(modes.get("bound"), "questions"),
                "bound_q_per_s": _get(modes.get("bound"), "questions_per_s"),
                "predict_q_per_s": _get(predict, "questions_per_s"),
                "predict_ratio_to_bound": _get(predict, "ratio_to_bound"),
                "host_rows_per_s": rate,
                "host_us_per_row_aggregate": MICROSECONDS / rate if rate else None,
                "host_us_per_row_per_process": _get(host, "host_workers_us_per_row"),
                "host_us_per_row_one_process": _get(host, "host_us_per_row"),
                "host_scaling": _get(host, "host_workers_scaling"),
            }
        )
    return summary


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_set(s: dict[str, Any]) -> list[str]:
    """The printed lines of one set's summary."""
    tag = f"[{s['set']}]"
    lines = [
        f"{tag} one process, {_f(s['questions'], '.0f')} rows: bound {_f(s['bound_q_per_s'], ',.0f')} q/s, "
        f"predict {_f(s['predict_q_per_s'], ',.0f')} q/s = {_f(s['predict_ratio_to_bound'], '.3f')}x bound; "
        f"host {_f(s['host_us_per_row'], '.0f')} us/row (tokenizer on every pair "
        f"{_f(s['tokenizer_pairs_us_per_row'], '.0f')})"
    ]
    if s["host_stages_us_per_row"]:
        stages = sorted(s["host_stages_us_per_row"].items(), key=lambda kv: _stage_index(kv[0]))
        split = ", ".join(f"{k} {v:.0f}" for k, v in stages)
        lines.append(f"{tag}   host split, us/row: {split}")
    for w in s["workers"]:
        lines.append(
            f"{tag} --workers {w['workers']}, {_f(w['questions'], '.0f')} rows: bound "
            f"{_f(w['bound_q_per_s'], ',.0f')} q/s, predict {_f(w['predict_q_per_s'], ',.0f')} q/s = "
            f"{_f(w['predict_ratio_to_bound'], '.3f')}x bound; host "
            f"{_f(w['host_rows_per_s'], ',.0f')} rows/s in {w['workers']} processes "
            f"({_f(w['host_us_per_row_aggregate'], '.0f')} us/row aggregate, "
            f"{_f(w['host_us_per_row_per_process'], '.0f')} per process, one process "
            f"{_f(w['host_us_per_row_one_process'], '.0f')}; {_f(w['host_scaling'], '.2f')}x one process)"
        )
    return lines


def _stage_index(stage: str) -> int:
    """A stage's place in `STAGES`; a stage not named there ("the rest") comes after them."""
    return STAGES.index(stage) if stage in STAGES else len(STAGES)


def main() -> None:
    """Prints each set's block and writes OUTDIR/summary.json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("sets", nargs="+")
    args = parser.parse_args()
    summaries = [one_set(args.outdir, name) for name in args.sets]
    print("SUMMARY (ratios against the bound of the same bench call, on the same rows)")
    for s in summaries:
        print("\n".join(format_set(s)))
    (args.outdir / "summary.json").write_text(json.dumps(summaries, indent=2))


if __name__ == "__main__":
    main()
