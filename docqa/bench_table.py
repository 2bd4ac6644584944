"""`docqa bench`'s figures: rates and ratios to the bound, per round and over rounds, and the table.

Each mode's child process reports seconds and token counts (`docqa.bench`); this module turns them into
rates. With `--rounds R` every mode runs R times, one round after the other, and each round's ratios are
taken against that same round's bound: on a shared machine whose speed drifts by more than the modes
differ over the minutes of a bench, a ratio of two measurements taken minutes apart says more about the
drift than about the modes, while the median of ratios taken side by side does not.
"""

from __future__ import annotations

import statistics
from typing import Any

# Per-round figures kept in a combined record's `rounds` list (and printed per round).
ROUND_FIELDS = ("questions_per_s", "ratio_to_bound", "whole_questions_per_s", "whole_ratio_to_bound")


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adds rates and ratios to the bound of the same list (one round's modes)."""
    for r in results:
        r["questions_per_s"] = r["questions"] / r["seconds"]
        r["real_tokens_per_s"] = r["real_tokens"] / r["seconds"]
        r["padding_efficiency"] = r["real_tokens"] / r["padded_tokens"] if r["padded_tokens"] else None
        whole = r.get("whole_seconds")
        r["whole_questions_per_s"] = r["questions"] / whole if whole else None
    bound = next((r for r in results if r["mode"] == "bound"), None)
    for r in results:
        r["ratio_to_bound"] = r["questions_per_s"] / bound["questions_per_s"] if bound else None
        whole_rate = r["whole_questions_per_s"]
        r["whole_ratio_to_bound"] = whole_rate / bound["questions_per_s"] if bound and whole_rate else None
    return results


def combine_rounds(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One record per mode over `rounds` (each a `summarize`d list of the same modes, in order).

    A mode's record is its median round by answering time (the faster of the two middle ones for an even
    count), so its seconds, tokens and rates belong together (`docqa estimate` reads them); its ratios
    and whole-command rate are the medians of the per-round figures, which are kept under `rounds`.
    A single round is returned as it is.
    """
    if len(rounds) == 1:
        return rounds[0]
    combined = []
    for first in rounds[0]:
        runs = [next(r for r in results if r["mode"] == first["mode"]) for results in rounds]
        record = dict(sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2])
        for field in ("ratio_to_bound", "whole_questions_per_s", "whole_ratio_to_bound"):
            values = [r[field] for r in runs if r[field] is not None]
            record[field] = statistics.median(values) if values else None
        record["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
        record["rounds"] = [{field: r[field] for field in ROUND_FIELDS} for r in runs]
        combined.append(record)
    return combined


def _figure(value: float | None) -> str:
    return f"{value:.2f}" if value else "-"


def format_table(results: list[dict[str, Any]]) -> str:
    """A plain-text table of the figures: answering rates, and whole commands' rates beside them."""
    head = (
        f"{'mode':<14}{'q/s':>9}{'real tok/s':>12}{'pad eff':>9}{'peak RSS MB':>13}{'x bound':>9}"
        f"{'whole q/s':>11}{'x bound':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        ratio = f"{r['ratio_to_bound']:.2f}" if r["ratio_to_bound"] is not None else "-"
        lines.append(
            f"{r['mode']:<14}{r['questions_per_s']:>9.2f}{r['real_tokens_per_s']:>12.0f}"
            f"{r['padding_efficiency']:>9.3f}{r['peak_rss_mb']:>13.0f}{ratio:>9}"
            f"{_figure(r['whole_questions_per_s']):>11}{_figure(r['whole_ratio_to_bound']):>9}"
        )
    lines.append(
        "q/s: the answering (predict: model loaded; run: the whole job in-process; spark, spark-cluster: "
        "from the session started, executors' model loads included); whole: the command in a subprocess "
        "(imports, model load, report, exit)"
    )
    rounds = len(results[0].get("rounds", [])) if results else 0
    if rounds > 1:
        lines.append(
            f"{rounds} rounds: each mode's median round; x bound and whole are the medians of the ratios "
            "to the same round's bound"
        )
    for r in results:
        lines.extend(_notes(r))
    return "\n".join(lines)


def _notes(r: dict[str, Any]) -> list[str]:
    """The lines under the table about one mode's record."""
    lines = []
    if "best_shape" in r:
        chosen = r["questions"] / r["chosen_seconds"]
        lines.append(
            f"bound: fastest at {r['best_shape'][0]} windows / {r['best_shape'][1]} tokens; at the jobs' "
            f"{r['chosen_shape'][0]} / {r['chosen_shape'][1]}: {chosen:.2f} q/s"
        )
    if "workers" in r:  # the answering alone is in the table; say what it leaves out
        lines.append(
            f"{r['mode']}: {r['workers']} workers ({r['worker_models']}), start-up "
            f"{r['startup_seconds']:.1f} s; peak RSS of the largest process"
        )
    if "partitions" in r:
        cluster = (
            f" on {r['executors']} executors; the cluster's start {r['cluster_start_seconds']:.1f} s and"
            if "cluster_start_seconds" in r
            else ";"
        )
        lines.append(
            f"{r['mode']}: {r['partitions']} units{cluster} Spark (JVM) start "
            f"{r['startup_seconds']:.1f} s outside q/s; peak RSS of this process (Spark's JVM and Python "
            "workers not counted)"
        )
    if "host_us_per_row" in r:
        split = ", ".join(f"{name} {us:.0f}" for name, us in r["host_stages_us_per_row"].items())
        lines.append(
            f"host: {r['host_us_per_row']:.0f} us/row with an instant forward ({split}); "
            f"{r['host_prefetched_us_per_row']:.0f} us/row with a prefetch thread as on a GPU; garbage "
            f"collection {r['host_gc_us_per_row']:.1f} us/row over the passes "
            f"({r['host_gc_full_collections']} full); the tokenizer "
            f"alone {r['tokenizer_pairs_us_per_row']:.0f} us/row on every pair, "
            f"{r['tokenizer_distinct_us_per_row']:.0f} on each of {r['distinct_contexts']} distinct contexts "
            f"once and the questions; {r['contexts_tokenized']} contexts tokenized (context cache reuse "
            f"{_percent(r['context_reuse_rate'])}, peak {r['context_cache_peak_bytes'] / 2**20:.1f} MiB)"
        )
    if "host_workers" in r:
        lines.append(
            f"host, {r['host_workers']} processes at once ({r['host_workers_threads']} threads each, "
            f"1/{r['host_workers']} of the rows each): {r['host_workers_rows_per_s']:.0f} rows/s, "
            f"{r['host_workers_scaling']:.2f}x one process's {r['questions_per_s']:.0f}; "
            f"{r['host_workers_us_per_row']:.0f} us/row per process (slowest "
            f"{r['host_workers_us_per_row_max']:.0f}; one process {r['host_us_per_row']:.0f}); start-up "
            f"{r['host_workers_startup_seconds']:.1f} s outside"
        )
    if len(r.get("rounds", [])) > 1:
        lines.append(f"{r['mode']} per round: " + "; ".join(_round_figures(x) for x in r["rounds"]))
    return lines


def _round_figures(figures: dict[str, Any]) -> str:
    """One round of a mode: its rate, and its ratios to that round's bound where there is one."""
    ratios = [f"{figures['ratio_to_bound']:.2f}x"] if figures["ratio_to_bound"] is not None else []
    if figures["whole_ratio_to_bound"]:
        ratios.append(f"whole {figures['whole_ratio_to_bound']:.2f}x")
    return f"{figures['questions_per_s']:.2f} q/s" + (f" ({', '.join(ratios)})" if ratios else "")


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.0%}"
