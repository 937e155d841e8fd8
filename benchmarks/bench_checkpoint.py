"""Cost of the fault-tolerance machinery through train.py itself: what a checkpoint save costs training (synchronous
vs asynchronous DCP) and the per-step non-finite check (training.nonfinite_check = step vs log).

    python benchmarks/bench_checkpoint.py --config train_configs/llama_1b/base.toml [--steps 30] [--interval 10]
        [--log-freq 10] [--variants async_save,no_save] [--out outputs/bench_checkpoint] [--section.key VALUE ...]

Runs ``train.py`` once per variant (``VARIANTS``; default all) in fresh run directories under ``--out``: sync save,
async save and no save, each with the per-step check, and no save with the check on logging steps only. Each run
logs the seconds its latest save blocked training (``checkpoint/blocked_s``) and the tokens/s between logging steps
(save stalls excluded). The cost of each save before the last step, measured against the ``no_save`` run's same
steps (same data, same code, only the saves differ): the seconds it blocked, plus the extra seconds the steps up to
the next save took (an asynchronous save writes in the background meanwhile), and that sum as a share of those
steps' time without saves. Prints the tables and writes ``<out>/summary.json``; the first logging interval
(compile, warm-up) is left out of the throughput median. Exit 2 with one line on bad input, 1 if a run fails.
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

from components.run_dir import RunDir, read_metrics  # noqa: E402
from reporting.sweep_timing import THROUGHPUT_KEY, logged_intervals  # noqa: E402

VARIANTS = {  # name -> train.py overrides
    "sync_save": ["--checkpoint.async_mode", "disabled", "--training.nonfinite_check", "step"],
    "async_save": ["--checkpoint.async_mode", "async", "--training.nonfinite_check", "step"],
    "no_save": ["--checkpoint.enable", "false", "--training.nonfinite_check", "step"],
    "no_save_check_on_log_steps": ["--checkpoint.enable", "false", "--training.nonfinite_check", "log"],
}
BASELINE = "no_save"  # the saving variants' costs are measured against its steps
SAVING_VARIANTS = ("sync_save", "async_save")
REFERENCE_INTERVAL = 200  # steps: the llama_1b family's checkpoint.interval, for the "% of a 200-step interval" column


def summarize(run_dir: Path) -> dict:
    records = read_metrics(run_dir / "metrics.jsonl")
    blocked = [r["checkpoint/blocked_s"] for r in records if r.get("checkpoint/blocked_s") is not None]
    trained = [r for r in records if THROUGHPUT_KEY in r]  # (step 0 holds init statistics only)
    steady = trained[2:]  # after step 1 and the first interval
    rates, mfus = [r[THROUGHPUT_KEY] for r in steady], [r["mfu"] for r in steady if "mfu" in r]
    return {"blocked_s_per_save": blocked, "median_tokens_per_sec": statistics.median(rates) if rates else None,
            "mfu": statistics.median(mfus) if mfus else None, "logged_steps": [r["step"] for r in records]}


def step_seconds(records: list[dict], tokens_per_step: int) -> dict[int, float]:
    """Logged step -> seconds of the steps since the previous logged step (reporting/sweep_timing.py)."""
    return {step: seconds for step, seconds, _ in logged_intervals(records, tokens_per_step)}


def save_costs(records: list[dict], baseline: list[dict], tokens_per_step: int, interval: int, steps: int) -> list[dict]:
    """Each save before the last step (every ``interval`` steps): the seconds it blocked (logged at the next logging
    step), the extra seconds the steps up to the next save took against the same steps of ``baseline`` (a run
    without saves), their sum, and the sum as a share of those steps' time in ``baseline``. A save whose steps up
    to the next save one of the runs did not reach (cut off) gets ``not_measured``, naming the run and its last step."""
    mine, base = step_seconds(records, tokens_per_step), step_seconds(baseline, tokens_per_step)
    blocked = {r["step"]: r["checkpoint/blocked_s"] for r in records if r.get("checkpoint/blocked_s") is not None}
    costs = []
    for save in range(interval, steps, interval):
        end = min(save + interval, steps)
        short = [(name, max(logged, default=0)) for name, logged in (("the saving run", mine), (BASELINE, base))
                 if max(logged, default=0) < end]
        if short:  # a run cut off before this window ended: said, never averaged in
            costs.append({"step": save, "not_measured": "; ".join(f"{name} logged up to step {last} of {end}"
                                                                  for name, last in short)})
            continue
        window = [step for step in sorted(mine) if save < step <= end]
        missing = [step for step in window if step not in base]
        if not window or missing or not any(step in blocked for step in window):
            raise ValueError(f"the save at step {save}: no logged steps after it in both runs, or no checkpoint/"
                             f"blocked_s logged after it; give --log-freq dividing --interval ({interval})")
        blocked_s = blocked[min(step for step in window if step in blocked)]
        slowdown_s = sum(mine[step] - base[step] for step in window)
        base_s = sum(base[step] for step in window)
        costs.append({"step": save, "blocked_s": round(blocked_s, 3), "slowdown_s": round(slowdown_s, 3),
                      "cost_s": round(blocked_s + slowdown_s, 3), "steps_s_without_saves": round(base_s, 3),
                      "share_of_interval": round((blocked_s + slowdown_s) / base_s, 4),
                      f"share_of_{REFERENCE_INTERVAL}_steps": round(
                          (blocked_s + slowdown_s) / (base_s / (window[-1] - save) * REFERENCE_INTERVAL), 4)})
    return costs


def check_args(args) -> list[str]:
    """The variants to run; SystemExit(2) with one line on bad input."""
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    problem = ""
    if unknown:
        problem = f"--variants: unknown {unknown[0]!r}; choose from {', '.join(VARIANTS)}"
    elif args.out.exists():
        problem = f"--out {args.out} exists; choose a new directory (runs are never overwritten)"
    elif min(args.interval, args.log_freq, args.steps) < 1 or args.interval % args.log_freq or args.interval >= args.steps:
        problem = (f"--interval {args.interval} --log-freq {args.log_freq} --steps {args.steps}: the log frequency "
                   "must divide the interval, which must be below the steps")
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    return variants


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Any other --section.key VALUE is passed to every train.py run.")
    parser.add_argument("--config", help="train.py config (TOML) of the model to measure (not with --from-runs)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--interval", type=int, default=10, help="steps between checkpoints in the saving runs")
    parser.add_argument("--log-freq", type=int, default=10, help="metrics.log_freq of every run (divides --interval)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated variants to run (default all: {', '.join(VARIANTS)}); the save costs "
                             f"need {BASELINE}")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_checkpoint",
                        help="directory for the three run directories and summary.json (must not exist)")
    parser.add_argument("--from-runs", action="store_true",
                        help="run nothing: summarize the variants' run directories already in --out (a call cut off "
                             "before its tables; unfinished runs are marked, and the saves they do not cover left out)")
    args, extra = parser.parse_known_args(argv)
    if args.from_runs:
        return from_runs(args)
    if args.config is None:
        print("error: --config is required (the train.py config of the model to measure)", file=sys.stderr)
        return 2
    variants = check_args(args)
    summary = {}
    for name in variants:
        cmd = [sys.executable, "train.py", "--config", args.config, "--training.steps", str(args.steps),
               "--checkpoint.interval", str(args.interval), "--checkpoint.keep_last", "1", "--metrics.val_freq", "0",
               "--metrics.log_freq", str(args.log_freq), "--job.output_dir", str(args.out), "--job.run_name", name,
               *VARIANTS[name], *extra]
        proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
            print(f"error: train.py failed for {name} (exit {proc.returncode})", file=sys.stderr)
            return 1
        summary[name] = {**summarize(args.out / name), "console": proc.stdout.splitlines()[-8:]}
    add_save_costs(summary, args.out, args.interval, args.steps)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(tables(summary))
    return 0


def from_runs(args) -> int:
    """``--from-runs``: the tables and summary.json (written as ``summary_from_runs.json``) of the run directories
    in ``--out``, the save interval and steps read from the saving runs' configs; exit 2 with one line if a run
    directory is missing or holds no metrics."""
    summary = {}
    for name in args.variants.split(","):
        if name not in VARIANTS or not (args.out / name / "metrics.jsonl").is_file():
            print(f"error: --from-runs: no run directory {args.out / name} with metrics.jsonl (variant {name!r}); "
                  "fix: pass the --out and --variants of the call that ran them", file=sys.stderr)
            return 2
        run = RunDir(args.out / name)
        summary[name] = {**summarize(args.out / name), "finished": run.finished, "last_step": run.last_step,
                         "steps_planned": run.steps_planned}
    saving = [name for name in SAVING_VARIANTS if name in summary]
    if saving:  # the saves' schedule, as that call ran it
        cfg = RunDir(args.out / saving[0]).config
        add_save_costs(summary, args.out, cfg.checkpoint.interval, cfg.training.steps)
    (args.out / "summary_from_runs.json").write_text(json.dumps(summary, indent=1))
    unfinished = [f"{name} (step {s['last_step']} of {s['steps_planned']})" for name, s in summary.items()
                  if not s["finished"]]
    print(tables(summary) + (f"\n\nunfinished runs: {', '.join(unfinished)}" if unfinished else ""))
    return 0


def add_save_costs(summary: dict, out: Path, interval: int, steps: int) -> None:
    """Each saving variant's ``save_costs`` (a save every ``interval`` of ``steps``) against the baseline run in
    ``out``, when both ran."""
    if BASELINE not in summary:
        return
    run = RunDir(out / BASELINE)
    tokens_per_step = run.config.training.global_batch_size * run.config.training.seq_len
    for name in SAVING_VARIANTS:
        if name in summary:
            summary[name]["save_costs"] = save_costs(read_metrics(out / name / "metrics.jsonl"), run.records,
                                                     tokens_per_step, interval, steps)


def tables(summary: dict) -> str:
    lines = ["| variant | blocked s per save | median tokens/s | MFU |", "|---|---|---|---|"]
    for name, s in summary.items():
        blocked = ", ".join(f"{b:.2f}" for b in s["blocked_s_per_save"]) or "-"
        mfu = f"{100 * s['mfu']:.1f} %" if s["mfu"] else "-"
        lines.append(f"| {name} | {blocked} | {s['median_tokens_per_sec']:,.0f} | {mfu} |")
    lines += ["", f"| variant | save at step | blocked s | slower steps after it, s | cost s | share of the interval | "
                  f"share of a {REFERENCE_INTERVAL}-step interval |", "|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        for c in s.get("save_costs", []):
            if "not_measured" in c:
                lines.append(f"| {name} | {c['step']} | not measured: {c['not_measured']} | | | | |")
                continue
            lines.append(f"| {name} | {c['step']} | {c['blocked_s']:.2f} | {c['slowdown_s']:.2f} | {c['cost_s']:.2f} | "
                         f"{100 * c['share_of_interval']:.1f} % | {100 * c[f'share_of_{REFERENCE_INTERVAL}_steps']:.2f} % |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
