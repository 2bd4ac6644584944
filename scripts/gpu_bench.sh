#!/usr/bin/env bash
# The GPU checks of issue 5 as one prepared script: bench (seed, bound, predict) in bf16, fp16 and fp32,
# SQuAD v1.1 dev F1 of GPU predict, prefetch and sort-buffer variants, and a host-side profile.
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

for dtype in bf16 fp16 fp32; do
    modes=seed,bound,predict
    [ "$dtype" = fp16 ] && modes=bound,predict
    step 240 "$PY" -m benchmarks.bench --device "$DEVICE" --dtype "$dtype" --n "$N" --data "$DATA" \
        --config "$GPU_CONFIG" --modes "$modes" --json "$OUTDIR/bench-$dtype.json"
done

# All of dev through `docqa predict` on the GPU config (bf16), scored; then prefetch / buffer variants.
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
predict --set model.dtype=fp16
step 60 "$PY" -m docqa eval --data "$DATA" --predictions "$WORK/pred"
predict --set batch.prefetch_buffers=0
predict --set batch.prefetch_buffers=2
predict --set batch.sort_buffer_windows=2048
predict --set batch.sort_buffer_windows=2048 --set batch.prefetch_buffers=2
predict --set batch.sort_buffer_windows=1024 --set batch.prefetch_buffers=2

# Where the host's time goes in GPU predict (bf16, all of dev): the top of a cProfile by own time.
step 120 "$PY" - "$GPU_CONFIG" "$WORK/dev.parquet" "$WORK/prof" "$DEVICE" <<'EOF'
import cProfile, pstats, sys, time
from qa_core.config import load_config
from qa_core.model import load_qa_model
from qa_core.predict import predict
config = load_config([sys.argv[1]], [f"model.device={sys.argv[4]}"])
model = load_qa_model(config.model)
predict(config, sys.argv[2], sys.argv[3], overwrite=True, progress=False, model=model)  # warm-up
profile = cProfile.Profile()
started = time.perf_counter()
profile.enable()
predict(config, sys.argv[2], sys.argv[3], overwrite=True, progress=False, model=model)
profile.disable()
print(f"profiled predict: {time.perf_counter() - started:.2f} s")
pstats.Stats(profile).sort_stats("tottime").print_stats(25)
EOF
say "done"
rm -rf "$WORK"
