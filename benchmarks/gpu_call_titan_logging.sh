#!/usr/bin/env bash
# One GPU call (about 8 min) that measures, on one freshly allocated GPU:
#   1. the asynchronous checkpoint's cost on llama_1b (bench_checkpoint.py: async_save against no_save, 150 steps,
#      a save every 50);
#   2. torchtitan 0.2.2's trainer at metrics.log_freq 10 (as initlab is measured, the bench config's; 3 steps
#      profiled after the timed ones) and at log_freq 1, which reads the loss from the GPU every step;
#   3. initlab llama_1b `current` with a profile, and both trainers' device time side by side (device_trace.py).
#
#   INITLAB_COMMIT=<short hash> INITLAB_DIRTY=0|1 [PARTS="checkpoint titan10 titan1 profile"] [CKPT_STEPS=150]
#       benchmarks/gpu_call_titan_logging.sh OUTDIR
#
# PARTS picks the parts (default all four, about 8 min); CKPT_STEPS the checkpoint runs' length (a save every third);
# CKPT_VARIANTS bench_checkpoint's variants (default async_save,no_save); CKPT_TIMEOUT their seconds (default 280).
#
# OUTDIR gets the small files: bench_checkpoint.txt, summary.json, bc_runs.tar.gz (the runs' metrics and configs),
# tt_log10.{json,log}, tt_log1.{json,log}, bench_gpu.txt, <device>.json, profiles/, device_time.md. The carried
# wheels in .whl/ are installed into /tmp/site where missing (benchmarks/gpu_wheels.sh).
set -uo pipefail
out=${1:?usage: INITLAB_COMMIT=<hash> INITLAB_DIRTY=0|1 $0 OUTDIR}
: "${INITLAB_COMMIT:?INITLAB_COMMIT is not set (the commit of this tree)}"
cd "$(dirname "$0")/.."
export INITLAB_COMMIT INITLAB_DIRTY=${INITLAB_DIRTY:-} PYTHONUNBUFFERED=1
parts=" ${PARTS:-checkpoint titan10 titan1 profile} "
steps=${CKPT_STEPS:-150}
mkdir -p "$out"
source benchmarks/gpu_wheels.sh  # the carried packages this machine lacks, into /tmp/site
nvidia-smi --query-gpu=name --format=csv,noheader

if [[ $parts == *" checkpoint "* ]]; then
    timeout "${CKPT_TIMEOUT:-280}" python benchmarks/bench_checkpoint.py --config train_configs/llama_1b/base.toml --steps "$steps" \
        --interval $((steps / 3)) --log-freq 10 --variants "${CKPT_VARIANTS:-async_save,no_save}" --out /tmp/bc \
        --training.local_batch_size 8 --training.global_batch_size 16 --training.seq_len 2048 \
        --data.dataset embedded --metrics.val_tokens 12288 > "$out/bench_checkpoint.txt" 2>&1
    echo "bench_checkpoint exit $?"
    cp /tmp/bc/summary.json "$out/" 2>/dev/null
    (cd /tmp/bc && find . -type f \( -name '*.jsonl' -o -name '*.json' -o -name '*.toml' \) -size -3M \
        -not -path '*step_*' | tar -czf "$out/bc_runs.tar.gz" -T -)
    tail -n 22 "$out/bench_checkpoint.txt"
fi

python benchmarks/torchtitan/make_assets.py --out /tmp/tta > /dev/null 2>&1
titan=(python benchmarks/torchtitan/run_torchtitan.py --assets /tmp/tta --compile on --training.local_batch_size 8
       --training.global_batch_size 16)
if [[ $parts == *" titan10 "* ]]; then
    timeout 125 "${titan[@]}" --steps 30 --warmup 10 --profile-steps 3 --timeout-s 115 --json-out "$out/tt_log10.json" \
        --log-out "$out/tt_log10.log" --metrics.log_freq 10 > /dev/null 2>&1
    echo "torchtitan log_freq 10 exit $?"
fi
if [[ $parts == *" titan1 "* ]]; then
    timeout 100 "${titan[@]}" --steps 25 --warmup 10 --timeout-s 90 --json-out "$out/tt_log1.json" \
        --log-out "$out/tt_log1.log" --metrics.log_freq 1 > /dev/null 2>&1
    echo "torchtitan log_freq 1 exit $?"
fi
grep -h '"tokens_per_sec_per_device"' "$out"/tt_log*.json 2>/dev/null
[[ $parts == *" profile "* ]] || exit 0

timeout 100 python benchmarks/bench_gpu.py --models llama_1b --variants current --steps 10 --warmup 5 \
    --profile current --trace-dir /tmp/traces --out "$out" --torchtitan-summary "$out/tt_log10.json" \
    > "$out/bench_gpu.txt" 2>&1
echo "bench_gpu exit $?"
theirs=$(python -c "import json; print(json.load(open('$out/tt_log10.json')).get('trace') or '')" 2>/dev/null)
python benchmarks/device_trace.py --trace "initlab=/tmp/traces/trace_llama_1b_current.json.gz:3" \
    --trace "torchtitan=$theirs:3" --out "$out/device_time.md" > /dev/null
echo "device_trace exit $?"
tail -n 4 "$out/bench_gpu.txt"; head -n 20 "$out/device_time.md"
