# Shared by the GPU check scripts (sourced, not run): the run's folders, logging, time-limited steps,
# the machine's description. Expects OUTDIR (the output folder) and PY (the python to use) to be set;
# sets LOG (OUTDIR/log.txt) and WORK (a scratch folder) and logs the machine.

say() { echo "== $(date +%T) $*" | tee -a "$LOG"; }

# step SECONDS CMD...: one step under a time limit; a failure (or the limit) is logged with the command's
# exit code and the script goes on. Model-load progress lines are left out of the log.
step() {
    local limit=$1
    shift
    say "$*"
    timeout "$limit" "$@" 2>&1 | grep -v -e "Loading weights" -e "it/s\]" | tee -a "$LOG" | tail -20
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || say "rc=$rc"
}

machine_info() {
    say "machine"
    {
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
        nproc
        "$PY" -c "import sys, torch, transformers, tokenizers, pyarrow; print(sys.version.split()[0], 'torch',
torch.__version__, 'transformers', transformers.__version__, 'tokenizers', tokenizers.__version__,
'pyarrow', pyarrow.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
        git rev-parse --short HEAD 2>/dev/null
    } 2>&1 | tee -a "$LOG"
}

mkdir -p "$OUTDIR"
LOG="$OUTDIR/log.txt"
WORK=$(mktemp -d)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
machine_info
