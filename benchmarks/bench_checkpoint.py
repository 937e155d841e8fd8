"""Cost of the fault-tolerance machinery through train.py itself: time blocked per checkpoint save (synchronous
vs asynchronous DCP) and the per-step non-finite check (training.nonfinite_check = step vs log).

    python benchmarks/bench_checkpoint.py --config train_configs/llama_1b/base.toml [--steps 30] [--interval 10]
        [--out outputs/bench_checkpoint] [--section.key VALUE ...]

Runs ``train.py`` three times in fresh run directories under ``--out``: (sync save, per-step check),
(async save, per-step check), (no save, check on logging steps only). Each run logs the seconds its
latest save blocked training (``checkpoint/blocked_s``) and the tokens/s between logging steps (save
stalls excluded). Prints a table and writes ``<out>/summary.json``; the first logging interval (compile,
warm-up) is left out of the throughput median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from components.run_dir import read_metrics  # noqa: E402

VARIANTS = {  # name -> train.py overrides
    "sync_save": ["--checkpoint.async_mode", "disabled", "--training.nonfinite_check", "step"],
    "async_save": ["--checkpoint.async_mode", "async", "--training.nonfinite_check", "step"],
    "no_save_check_on_log_steps": ["--checkpoint.enable", "false", "--training.nonfinite_check", "log"],
}


def summarize(run_dir: Path) -> dict:
    records = read_metrics(run_dir / "metrics.jsonl")
    blocked = [r["checkpoint/blocked_s"] for r in records if r.get("checkpoint/blocked_s") is not None]
    trained = [r for r in records if "throughput/tokens_per_sec" in r]  # (step 0 holds init statistics only)
    steady = trained[2:]  # after step 1 and the first interval
    rates, mfus = [r["throughput/tokens_per_sec"] for r in steady], [r["mfu"] for r in steady if "mfu" in r]
    return {"blocked_s_per_save": blocked, "median_tokens_per_sec": statistics.median(rates) if rates else None,
            "mfu": statistics.median(mfus) if mfus else None, "logged_steps": [r["step"] for r in records]}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Any other --section.key VALUE is passed to every train.py run.")
    parser.add_argument("--config", required=True, help="train.py config (TOML) of the model to measure")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--interval", type=int, default=10, help="steps between checkpoints in the saving runs")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_checkpoint",
                        help="directory for the three run directories and summary.json (must not exist)")
    args, extra = parser.parse_known_args(argv)
    if args.out.exists():
        parser.error(f"--out {args.out} exists; choose a new directory (runs are never overwritten)")
    summary = {}
    for name, overrides in VARIANTS.items():
        cmd = [sys.executable, "train.py", "--config", args.config, "--training.steps", str(args.steps),
               "--checkpoint.interval", str(args.interval), "--checkpoint.keep_last", "1", "--metrics.val_freq", "0",
               "--metrics.log_freq", str(args.interval), "--job.output_dir", str(args.out), "--job.run_name", name,
               *overrides, *extra]
        proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
            print(f"error: train.py failed for {name} (exit {proc.returncode})", file=sys.stderr)
            return 1
        summary[name] = {**summarize(args.out / name), "console": proc.stdout.splitlines()[-8:]}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("| variant | blocked s per save | median tokens/s | MFU |\n|---|---|---|---|")
    for name, s in summary.items():
        blocked = ", ".join(f"{b:.2f}" for b in s["blocked_s_per_save"]) or "-"
        mfu = f"{100 * s['mfu']:.1f} %" if s["mfu"] else "-"
        print(f"| {name} | {blocked} | {s['median_tokens_per_sec']:,.0f} | {mfu} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
