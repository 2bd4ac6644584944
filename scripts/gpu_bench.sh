#!/usr/bin/env bash
# The GPU checks of issue 5 as one prepared script: forward-only cold/warm passes per SDPA backend, bench
# (seed, bound, predict) in bf16 and fp32, SQuAD v1.1 dev F1 of GPU predict, and host-side variants
# (prefetch, padding multiple, sort buffer).
#
# Run from the repo root on a CUDA machine whose python3 has torch, transformers, tokenizers>=0.23.3,
# pyarrow, fsspec, pyyaml and tqdm (Apache Beam is not needed: `run` and `beam-stock` are left out):
#   scripts/gpu_bench.sh SQUAD_DEV_V1.1_JSON OUTDIR [quick]
# Everything goes to OUTDIR/log.txt; bench tables also to OUTDIR/bench-<dtype>.json. `quick` runs the
# bench on 200 questions and predict on 500 (a smoke test of the script, CPU included: DEVICE=cpu).
set -u -o pipefail
DATA=${1:?SQuAD v1.1 dev JSON (.json, .json.gz or .zip)}
OUTDIR=${2:?output folder}
QUICK=${3:-}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
N=2000
ROWS=0  # 0: all of dev (10,570 questions)
if [ "$QUICK" = quick ]; then N=200; ROWS=500; fi
GPU_CONFIG=configs/dataflow-gpu.yaml
[ "$DEVICE" = cuda ] || GPU_CONFIG=configs/local.yaml
mkdir -p "$OUTDIR"
LOG="$OUTDIR/log.txt"
WORK=$(mktemp -d)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

say() { echo "== $(date +%T) $*" | tee -a "$LOG"; }
# step SECONDS CMD...: one step under a time limit; a failure is logged and the script goes on.
step() {
    local limit=$1
    shift
    say "$*"
    timeout "$limit" "$@" 2>&1 | grep -v -e "Loading weights" -e "it/s\]" | tee -a "$LOG" | tail -20
    local rc=$?
    [ "$rc" = 0 ] || say "rc=$rc"
}

say "machine"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
    nproc
    "$PY" -c "import sys, torch, transformers, tokenizers, pyarrow; print(sys.version.split()[0], 'torch',
torch.__version__, 'transformers', transformers.__version__, 'tokenizers', tokenizers.__version__,
'pyarrow', pyarrow.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
    git rev-parse --short HEAD 2>/dev/null
} 2>&1 | tee -a "$LOG"

# Forward only over the bench's batch shapes: cold vs warm passes, SDPA backends, padding multiple.
for variant in "with-cudnn bf16 8" "docqa bf16 8" "docqa bf16 1" "docqa fp32 8"; do
    # shellcheck disable=SC2086  # the variant is three words on purpose
    step 90 "$PY" scripts/gpu_sdpa_check.py "$DATA" $variant "$N"
done

for dtype in bf16 fp32; do
    step 240 "$PY" -m benchmarks.bench --device "$DEVICE" --dtype "$dtype" --n "$N" --data "$DATA" \
        --config "$GPU_CONFIG" --modes seed,bound,predict --json "$OUTDIR/bench-$dtype.json"
done

# All of dev through `docqa predict` on the GPU config (bf16), scored; then host-side variants.
step 60 "$PY" -m docqa convert-squad --data "$DATA" --output "$WORK/dev.parquet"
if [ "$ROWS" != 0 ]; then
    "$PY" -c "import pyarrow.parquet as pq, sys; t = pq.read_table(sys.argv[1]);
pq.write_table(t.slice(0, int(sys.argv[2])), sys.argv[1])" "$WORK/dev.parquet" "$ROWS"
fi
predict() {
    step 120 "$PY" -m docqa predict --config "$GPU_CONFIG" --input "$WORK/dev.parquet" --output "$WORK/pred" \
        --overwrite --no-progress --no-report --set "model.device=$DEVICE" "$@"
}
predict
step 60 "$PY" -m docqa eval --data "$DATA" --predictions "$WORK/pred" --json "$OUTDIR/eval-bf16.json"
predict --set batch.prefetch_buffers=0
predict --set batch.pad_to_multiple_of=32
predict --set batch.sort_buffer_windows=2048
say "done"
rm -rf "$WORK"
