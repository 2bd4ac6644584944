#!/usr/bin/env bash
# GPU check of `docqa predict --workers` (issue 5), one prepared script, about 3-4 minutes on an H200:
#   1. the forward-only bound in the config's dtype (bf16) on all of SQuAD v1.1 dev (10,570 questions:
#      steadier than 2,000);
#   2. the CLI end to end on 16 copies of dev (169,120 rows) with a model per worker (16 workers) and with
#      one shared model in a device server (15 and 16 workers); `_run.json`'s timings split the wall time
#      into start-up (every process loaded) and answering (`answer_rows_per_second`, the figure to set
#      against the bound);
#   3. all of dev with a shared model and 8 workers, scored (EM / F1 must match one process's).
# Usage (repo root, CUDA machine, same python as scripts/gpu_bench.sh):
#   scripts/gpu_workers_check.sh SQUAD_DEV_V1.1_JSON OUTDIR
# DEVICE=cpu runs it on a CPU on the first 300 questions (a smoke test of the script).
set -u -o pipefail
DATA=${1:?SQuAD v1.1 dev JSON}
OUTDIR=${2:?output folder}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
COPIES=16
N=10570
CONFIG=configs/dataflow-gpu.yaml
RUNS=("16 per_worker" "15 shared" "16 shared")
DTYPE=bf16  # the config's
if [ "$DEVICE" != cuda ]; then
    COPIES=1; N=300; CONFIG=configs/local.yaml; RUNS=("2 per_worker" "2 shared"); DTYPE=fp32
fi
# shellcheck source=scripts/gpu_common.sh
source "$(dirname "$0")/gpu_common.sh"  # sets LOG and WORK under OUTDIR, logs the machine

step 90 "$PY" -m docqa.bench --device "$DEVICE" --dtype "$DTYPE" --n "$N" --data "$DATA" --config "$CONFIG" \
    --modes bound --json "$OUTDIR/bound.json"
step 60 "$PY" -m docqa convert-squad --data "$DATA" --output "$WORK/dev.parquet"
"$PY" -c "
import sys, pyarrow as pa, pyarrow.parquet as pq
base, copies = pq.read_table(sys.argv[1]).slice(0, int(sys.argv[4])), int(sys.argv[3])
pq.write_table(base, sys.argv[1])
parts = [base.set_column(0, 'id', pa.array([f'{c}-{i}' for i in base.column('id').to_pylist()]))
         for c in range(copies)]
pq.write_table(pa.concat_tables(parts), sys.argv[2], row_group_size=10_000)
" "$WORK/dev.parquet" "$WORK/copies.parquet" "$COPIES" "$N"

predict() {  # predict INPUT OUTPUT WORKERS WORKER_MODELS
    step 150 "$PY" -m docqa predict --config "$CONFIG" --input "$1" --output "$2" --overwrite --no-progress \
        --no-report --set "runtime.device=$DEVICE" --set "runtime.worker_models=$4" --workers "$3"
    "$PY" -c "import json, sys; d = json.load(open(sys.argv[1])); t = d['timings']
bound = [r for r in json.load(open(sys.argv[4]))['results'] if r['mode'] == 'bound'][0]['questions_per_s']
print('RESULT', sys.argv[2], 'workers', sys.argv[3], d['counts']['rows_read'], 'rows', t, 'model_seconds',
d['counts']['model_seconds'], 'x bound: answering %.2f, whole %.2f' % (t['answer_rows_per_second'] / bound,
t['rows_per_second'] / bound))" "$2/_run.json" "$4" "$3" "$OUTDIR/bound.json" 2>&1 | tee -a "$LOG"
}
for run in "${RUNS[@]}"; do
    set -- $run
    predict "$WORK/copies.parquet" "$WORK/pred-$1-$2" "$1" "$2"
done
predict "$WORK/dev.parquet" "$WORK/dev-shared" 8 shared
step 60 "$PY" -m docqa eval --data "$DATA" --predictions "$WORK/dev-shared" --json "$OUTDIR/eval-shared.json"
say "done"
rm -rf "$WORK"
