#!/usr/bin/env bash
# The lr-transfer study of docs/hp_transfer/README.md on one GPU: scripts/sweep.py trains the sweep, then
# scripts/lr_transfer.py --runs writes the report (loss-vs-lr figure, optimum per size with bootstrap
# intervals, drift per parametrization, loss by size at the proxy's lr) into OUTDIR/report/.
#
#   scripts/hp_transfer_gpu.sh width|depth OUTDIR [--section.key value ...]
#
# The --section.key pairs go to every run. Environment (all optional):
#   PARALLEL  runs at once on the one device (default: 8 for width, 12 for depth: small models share it)
#   DEADLINE  seconds the sweep may run before it stops launching and interrupts what runs (default 400);
#             the report then covers the finished runs, seed by seed, and the same command continues
#   PREVIOUS  OUTDIR/runs.tar.gz (or a runs directory) of an earlier call: its finished runs are skipped
#   GRID      space-separated extra sweep axes, e.g. "model.dim=32,64 job.seed=0,1" (a smoke run)
# Exit status: sweep.py's (1 when a run failed; a divergence is a result, not a failure), 2 on bad input.
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
mkdir -p "$out"
sweep_args=("train_configs/hp_transfer/${study}_sweep.toml" --output-dir "$out/runs" --parallel "$parallel"
            --deadline "${DEADLINE:-400}" --archive "$out/runs.tar.gz")
if [[ -n "${PREVIOUS:-}" ]]; then sweep_args+=(--previous "$PREVIOUS"); fi
for axis in ${GRID:-}; do sweep_args+=(--grid "$axis"); done
start=$SECONDS
# Tokenize the corpus once here (on first use), not in the first PARALLEL runs at once.
python -c 'import sys; from scripts.train_runs import prepared_dataset; print("hp_transfer: data", prepared_dataset(sys.argv[1:]))' \
    --config "train_configs/hp_transfer/${study}.toml" "$@"
status=0
python scripts/sweep.py "${sweep_args[@]}" "$@" || status=$?
if [[ $status -eq 2 ]]; then exit 2; fi
echo "hp_transfer: sweep took $((SECONDS - start)) s (status $status); writing the report"
python scripts/lr_transfer.py --mode "$study" --runs "$out/runs" --out "$out/report"
echo "hp_transfer: done in $((SECONDS - start)) s; report in $out/report/report_$study.md"
exit $status
