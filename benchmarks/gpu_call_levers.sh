#!/usr/bin/env bash
# One GPU call (about 8 min) that measures levers against `current` on llama_1b (8 x 2048 x 2) in one allocation:
#   1. bench_gpu.py `current`, then each variant in VARIANTS, then `current` again (each in its own process);
#   2. a profile of each PROFILE variant (3 steps after its timed ones) with its chrome trace, read by device_trace.py
#      (with torchtitan's trace when TITAN_JSON names run_torchtitan.py's summary from an earlier call on this
#      machine): device time by kernel category, the longest waits with what the host thread was doing in each.
#
#   INITLAB_COMMIT=<short hash> INITLAB_DIRTY=0|1 [VARIANTS=current_cdt,current_nonfinite_log]
#       [PROFILE=current,current_nonfinite_log] [TITAN_JSON=...] [MODEL=llama_1b] [BENCH_TIMEOUT=520] benchmarks/gpu_call_levers.sh OUTDIR
#
# OUTDIR gets bench_gpu.txt (its output), <device>.json (the records), profiles/ (the profile's tables) and
# device_time.md; the trace itself (tens of MB) stays on the machine. The carried wheels in .whl/ are installed
# into /tmp/site where missing (benchmarks/gpu_wheels.sh).
set -uo pipefail
out=${1:?usage: INITLAB_COMMIT=<hash> INITLAB_DIRTY=0|1 $0 OUTDIR}
: "${INITLAB_COMMIT:?INITLAB_COMMIT is not set (the commit of this tree)}"
cd "$(dirname "$0")/.."
export INITLAB_COMMIT INITLAB_DIRTY=${INITLAB_DIRTY:-} PYTHONUNBUFFERED=1
variants=${VARIANTS:-current_cdt,current_nonfinite_log}
profile=${PROFILE:-current,current_nonfinite_log}
model=${MODEL:-llama_1b}  # debug: a CPU dry run of this script
mkdir -p "$out"
source benchmarks/gpu_wheels.sh  # the carried packages this machine lacks (the tokenizer's), into /tmp/site
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
timeout "${BENCH_TIMEOUT:-520}" python benchmarks/bench_gpu.py --models "$model" --variants "current,$variants,current" --steps 10 \
    --warmup 5 --profile "$profile" --trace-dir /tmp/traces --out "$out" > "$out/bench_gpu.txt" 2>&1
echo "bench_gpu exit $?"
traces=()
for name in ${profile//,/ }; do traces+=(--trace "$name=/tmp/traces/trace_${model}_$name.json.gz:3"); done
# torchtitan's trace of an earlier call on this machine (gpu_call_titan_logging.sh's tt_log10.json names it)
if [[ -n "${TITAN_JSON:-}" ]]; then
    theirs=$(python -c "import json; print(json.load(open('$TITAN_JSON')).get('trace') or '')" 2>/dev/null)
    [[ -n "$theirs" ]] && traces+=(--trace "torchtitan=$theirs:3")
fi
python benchmarks/device_trace.py "${traces[@]}" --out "$out/device_time.md" > /dev/null
echo "device_trace exit $?"
grep -E '^\| initlab|wall' "$out/bench_gpu.txt"; grep -B 2 -A 10 'longest waits' "$out/device_time.md"
