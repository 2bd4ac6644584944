"""Host time of a two-table job against its materialised twin, the model replaced by an instant forward.

    python scripts/two_table_host.py DIR [--passes 5]

DIR is `scripts/two_table_data.py`'s output. Both jobs run `docqa predict`'s code (`qa_core.predict`)
with the host bench's instant forward (`docqa.bench_host.InstantRunner`: logits of the right shape drawn,
no model), torch at one thread, alternating two-table and materialised, the fastest of `--passes` each:
what the two inputs change is the host's work (reading, tokenizing, windows), the model's work being the
same windows in both. Prints us/row of each, their ratio, the bytes of each input on disk and the context
bytes each decodes, and checks that the answers are equal.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from docqa.bench_host import InstantRunner
from qa_core import predict
from qa_core.config import load_config
from qa_core.runtime.loaders import load_runner


def main() -> None:
    """Times both jobs and prints the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = load_config()
    instant = InstantRunner.over(load_runner(base.model, base.runtime))
    # No batch-shape probe: with the instant forward it would time nothing and store that as this
    # machine's shape (`batch.probe_min_rows`); both jobs batch with the defaults.
    no_probe = "batch.probe_min_rows=0"  # 0: never probe
    two = load_config((), ["input.passthrough_columns=[title]", no_probe])
    one = load_config((), ["input.passthrough_columns=[doc_id,question_id,title]", no_probe])
    documents, questions = str(args.data / "documents.parquet"), str(args.data / "questions.parquet")
    materialised = str(args.data / "materialised.parquet")
    best = {"two tables": float("inf"), "materialised": float("inf")}
    with tempfile.TemporaryDirectory() as work:
        for _ in range(args.passes):
            for name in list(best):
                out = f"{work}/{name.replace(' ', '-')}"
                instant._generator.manual_seed(0)  # the same logits for both jobs
                began = time.perf_counter()
                if name == "two tables":
                    info = predict(
                        two,
                        None,
                        out,
                        documents=documents,
                        questions=questions,
                        overwrite=True,
                        progress=False,
                        model=instant,
                    )
                else:
                    info = predict(one, materialised, out, overwrite=True, progress=False, model=instant)
                best[name] = min(best[name], time.perf_counter() - began)
                rows = info["counts"]["rows_read"]
        answers = [
            pq.read_table(f"{work}/{n.replace(' ', '-')}/answers").replace_schema_metadata() for n in best
        ]
        equal = answers[0].select(answers[1].schema.names).equals(answers[1])
    for name, seconds in best.items():
        print(f"{name}: {seconds * 1e6 / rows:.1f} us/row over {rows} rows (fastest of {args.passes})")
    print(
        f"materialised / two tables: {best['materialised'] / best['two tables']:.2f}x; answers equal: {equal}"
    )
    on_disk = {p.name: p.stat().st_size for p in sorted(args.data.glob("*.parquet"))}
    print(f"bytes on disk: {on_disk}")
    decoded = {
        name: pq.read_table(str(args.data / f"{name}.parquet"), columns=["context"]).column("context").nbytes
        for name in ("documents", "materialised")
    }
    print(f"context bytes decoded: {decoded}")


if __name__ == "__main__":
    main()
