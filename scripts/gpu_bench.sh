#!/usr/bin/env bash
# The GPU checks of issue 5 as one prepared script: bench (seed, bound, predict) in bf16, SQuAD v1.1 dev F1
# of GPU predict in one process and with --workers, a profile of one process, and steady-state predict
# throughput with 1..16 worker processes sharing the GPU and with the host alone
# (scripts/gpu_predict_check.py). About 6 minutes on an H200 plus the machine's start. The forward-only
# SDPA checks of earlier calls: `scripts/gpu_sdpa_check.py` (not run here).
#
# Run from the repo root on a CUDA machine whose python3 has torch, transformers, tokenizers>=0.23.3,
# pyarrow, fsspec, pyyaml and tqdm (Apache Beam is not needed: `run` and `beam-stock` are left out):
#   scripts/gpu_bench.sh SQUAD_DEV_V1.1_JSON OUTDIR [quick]
# Everything goes to OUTDIR/log.txt; bench tables also to OUTDIR/bench-<dtype>.json. `quick` runs the
# bench on 200 questions and predict on 500 (a smoke test of the script, CPU included: DEVICE=cpu).
# Every step has its own time limit; a failed step is logged and the script goes on.
set -u -o pipefail
DATA=${1:?SQuAD v1.1 dev JSON (.json, .json.gz or .zip)}
OUTDIR=${2:?output folder}
QUICK=${3:-}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
N=2000
ROWS=0  # 0: all of dev (10,570 questions)
CHECK=(--workers 1,8,16 --copies 16 --warm-rows 600)  # 169,120 rows: >= 10,000 per process at 16
HOST_CHECK=(--workers 16 --copies 16 --warm-rows 300)
MANY=16  # --workers of the CLI run over those rows
if [ "$QUICK" = quick ]; then
    N=200; ROWS=500; CHECK=(--workers 1,2 --copies 1 --warm-rows 50); HOST_CHECK=(--workers 2 --copies 1 --warm-rows 50)
    MANY=2
fi
GPU_CONFIG=configs/dataflow-gpu.yaml
[ "$DEVICE" = cuda ] || GPU_CONFIG=configs/local.yaml
# shellcheck source=scripts/gpu_common.sh
source "$(dirname "$0")/gpu_common.sh"  # sets LOG and WORK under OUTDIR, logs the machine

step 300 "$PY" -m docqa.bench --device "$DEVICE" --dtype bf16 --n "$N" --data "$DATA" \
    --config "$GPU_CONFIG" --modes seed,bound,predict --json "$OUTDIR/bench-bf16.json"

# All of dev through the `docqa predict` CLI (bf16), in one process and in $MANY, each scored.
step 60 "$PY" -m docqa convert-squad --data "$DATA" --output "$WORK/dev.parquet"
if [ "$ROWS" != 0 ]; then
    "$PY" -c "import pyarrow.parquet as pq, sys; t = pq.read_table(sys.argv[1]);
pq.write_table(t.slice(0, int(sys.argv[2])), sys.argv[1])" "$WORK/dev.parquet" "$ROWS"
fi
predict() {
    step 150 "$PY" -m docqa predict --config "$GPU_CONFIG" --input "$1" --output "$2" --overwrite \
        --no-progress --no-report --set "runtime.device=$DEVICE" "${@:3}"
}
predict "$WORK/dev.parquet" "$WORK/pred"
step 60 "$PY" -m docqa eval --data "$DATA" --predictions "$WORK/pred" --json "$OUTDIR/eval-bf16.json"

# Steady state (start and model load left out) with 1..16 processes sharing the GPU and a profile of one
# process; then the host alone (random logits instead of the model) with as many processes.
step 300 "$PY" scripts/gpu_predict_check.py "$WORK/dev.parquet" "$WORK/check" --profile "${CHECK[@]}" \
    --set "runtime.device=$DEVICE"
step 150 "$PY" scripts/gpu_predict_check.py "$WORK/dev.parquet" "$WORK/host" --host-only "${HOST_CHECK[@]}"
# The CLI end to end over the check's rows with $MANY workers: worker start and model loads included.
predict "$WORK/check/copies.parquet" "$WORK/pred-workers" --workers "$MANY"
"$PY" -c "import json, sys; d = json.load(open(sys.argv[1])); print('CLI --workers', sys.argv[2], d['counts']['rows_read'],
'rows, wall', d['timings'])" "$WORK/pred-workers/_run.json" "$MANY" 2>&1 | tee -a "$LOG"
say "done"
rm -rf "$WORK"
