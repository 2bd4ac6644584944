#!/usr/bin/env bash
# The GPU check of issue 32 as one prepared run: the bf16 forward bound, `docqa predict` in one process and
# with `--workers N`, and the host's cost per row (`docqa bench --modes host`: `docqa predict` with an
# instant forward, one process split by stage, and N such processes at once), on two row sets:
#   squad  the first 2,000 SQuAD v1.1 dev questions, each with its own paragraph;
#   long   the same questions as the long-context set (`--context-paragraphs 4`: each context is its
#          paragraph and the next 3 of its article, as in benchmarks/RESULTS.md).
# Per set, one bench call runs bound, predict and host in one process over the rows, and one call per
# count in WORKERS runs the same modes with `--workers N` over the rows answered REPEAT times with fresh ids
# (each worker process meets every batch shape for the first time inside the timed answering, with no
# untimed pass: more rows amortize that as a long job does). Every ratio is taken against the bound of its
# own call, over the same rows. Then a summary per set: bound q/s, predict q/s, predict/bound in one
# process and with workers, host us/row in one process and with workers (scripts/gpu_host_summary.py).
# About 5 minutes on a 16-core H100/H200 machine by estimate (not yet run there); the step limits add up
# to 7.2 minutes, plus the machine's description.
#
# Run from the repo root on a CUDA machine whose python3 has torch, transformers, tokenizers, pyarrow,
# fsspec, pyyaml and tqdm (Apache Beam is not needed: run, spark and beam-stock are left out):
#   scripts/gpu_host_check.sh SQUAD_DEV_V1.1_JSON OUTDIR [quick]
# Environment: WORKERS (worker counts, default "8"; "4 8" adds a call per set, about a minute each), N
# (questions, default 2000), REPEAT (default 4), DEVICE (default cuda), PYTHON (default python3).
# Everything goes to OUTDIR/log.txt, each call's figures to OUTDIR/<set>-1.json and OUTDIR/<set>-w<N>.json,
# the summary to the log and OUTDIR/summary.json. Every step has its own time limit; a failed step is
# logged, its figures print as "-" and the script goes on. `quick` runs 60 questions, 2 workers and
# --repeat 2: a smoke test of the script, on a CPU with DEVICE=cpu (in fp32; 6.3 minutes on a busy 2-core CPU).
set -u -o pipefail
DATA=${1:?SQuAD v1.1 dev JSON (.json, .json.gz or .zip)}
OUTDIR=${2:?output folder}
QUICK=${3:-}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
N=${N:-2000}
REPEAT=${REPEAT:-4}
WORKERS=${WORKERS:-8}
LONG_PARAGRAPHS=4  # the long-context set of benchmarks/RESULTS.md
CONFIG=configs/dataflow-gpu.yaml
DTYPE=bf16
# Seconds per call: one process (squad, long), then each --workers call (squad, long). Estimated on a GPU:
# about 60 / 75 and 75 / 90 (each mode's child imports torch and loads the model, predict also runs the
# whole command in a subprocess, and every worker process loads its own model).
LIMITS=(100 110 100 120)
if [ "$DEVICE" != cuda ]; then
    CONFIG=configs/local.yaml; DTYPE=fp32  # a CPU without native bf16 would time its emulation
fi
if [ "$QUICK" = quick ]; then
    N=60; REPEAT=2; WORKERS=2; LIMITS=(300 300 300 300)
fi
# shellcheck source=scripts/gpu_common.sh
source "$(dirname "$0")/gpu_common.sh"  # sets LOG and WORK under OUTDIR, logs the machine

bench() {  # bench LIMIT JSON ARGS...: one `docqa bench` call; an earlier run's file never stands in for it
    local limit=$1 json=$2
    rm -f "$json"
    step "$limit" "$PY" -m docqa.bench --device "$DEVICE" --dtype "$DTYPE" --data "$DATA" --config "$CONFIG" \
        --json "$json" "${@:3}"
}

SETS=("squad 1" "long $LONG_PARAGRAPHS")
for k in 0 1; do
    set -- ${SETS[$k]}
    name=$1 paragraphs=$2
    rows=(--n "$N" --context-paragraphs "$paragraphs")
    bench "${LIMITS[$k]}" "$OUTDIR/$name-1.json" "${rows[@]}" --modes bound,predict,host
    for w in $WORKERS; do
        bench "${LIMITS[$((k + 2))]}" "$OUTDIR/$name-w$w.json" "${rows[@]}" --repeat "$REPEAT" --workers "$w" \
            --modes bound,predict,host
    done
done

say "summary"
"$PY" scripts/gpu_host_summary.py "$OUTDIR" squad long 2>&1 | tee -a "$LOG"
say "done"
rm -rf "$WORK"
