"""Launch an ablation family x seeds, skipping runs already done, into one directory compare_runs reads.

    python scripts/run_ablation.py --configs train_configs/llama_1b/{mitchell,depth_aware}.toml --seeds 0,1,2 \
        [--output-dir outputs/llama_1b] [--launcher "torchrun --nproc_per_node=8"] [--dry-run] \
        [--section.key value ...]

Each (config, seed) becomes ``<output-dir>/<config stem>_seed<k>/`` (``--job.output_dir``,
``--job.run_name`` and ``--job.seed`` are set here; every other ``--section.key value`` goes to
every run, after the config file). Runs go one after another, each under ``--launcher`` (default:
this Python, a world of one); a run's console output goes to
``<output-dir>/.logs/<run>.log`` (a dot-folder, so ``<output-dir>/*`` is only run directories).

A run directory is *done* when its ``metrics.jsonl`` reached ``training.steps`` or its last
logged train loss is non-finite (the trainer stops a diverged run; that is a result, kept and
reported, not retried). Done runs are skipped. A directory that exists but is not done (a killed
or failed run) is re-launched to continue: with ``--checkpoint.resume auto`` where the config
system has that mode, else ``--checkpoint.resume true`` when it holds a checkpoint, else it is an
error (delete the directory to start that run over). Every plan is validated through the config
system before anything is launched; bad input is a one-line error. The exit status is 1 when a
run failed, 0 otherwise. Compare the family with ``python scripts/compare_runs.py <output-dir>/*``.
"""

from __future__ import annotations

import argparse
import math
import shlex
import subprocess
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python scripts/run_ablation.py` puts scripts/, not the repo root, on sys.path
    sys.path.insert(0, str(REPO))

from components import config as config_mod  # noqa: E402
from scripts.report_common import error_exit, metric_series, read_metrics  # noqa: E402

MANAGED_KEYS = ("--job.seed", "--job.run_name", "--job.output_dir", "--checkpoint.resume")


@dataclass(frozen=True)
class PlannedRun:
    """One (config, seed): its run directory, train.py arguments and step count."""

    name: str
    run_dir: Path
    train_args: list[str]
    steps: int


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` (inclusive) or a mix -> sorted distinct seeds; a one-line error otherwise."""
    seeds: set[int] = set()
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            seeds.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise ValueError(f"--seeds {text!r} is not a list of integers; write e.g. 0,1,2 or 0-4") from None
    if not seeds:
        raise ValueError(f"--seeds {text!r} names no seed; write e.g. 0,1,2 or 0-4")
    return sorted(seeds)


def check_overrides(overrides: list[str]) -> None:
    """Extra arguments must be ``--section.key value`` pairs, none of the keys this script sets."""
    for flag in overrides[::2]:
        if not flag.startswith("--") or "." not in flag:
            raise ValueError(f"unexpected argument {flag!r}; extra arguments are --section.key value pairs for train.py")
        if flag.split("=")[0] in MANAGED_KEYS:
            raise ValueError(f"{flag} is set by run_ablation.py per run; use --seeds / --output-dir instead")
    if len(overrides) % 2:
        raise ValueError(f"{overrides[-1]} has no value; extra arguments are --section.key value pairs")


def plan_runs(configs: list[Path], seeds: list[int], output_dir: Path, overrides: list[str]) -> list[PlannedRun]:
    """Every (config, seed) in order, each resolved by the config system (so typos stop before any launch)."""
    check_overrides(overrides)
    stems = [config.stem for config in configs]
    for config in configs:
        if not config.is_file():
            raise FileNotFoundError(f"--configs {config} does not exist; pass TOML files under train_configs/")
        if stems.count(config.stem) > 1:
            raise ValueError(f"two configs share the stem {config.stem!r} ({config}), so their runs would share "
                             "directories; run them with different --output-dir")
    plans = []
    for config in configs:
        for seed in seeds:
            name = f"{config.stem}_seed{seed}"
            train_args = ["--config", str(config), *overrides, "--job.seed", str(seed),
                          "--job.run_name", name, "--job.output_dir", str(output_dir)]
            try:
                cfg = config_mod.load_config(train_args)[0]
            except config_mod.ConfigError as exc:
                raise ValueError(f"{config} (seed {seed}): {exc}") from None
            plans.append(PlannedRun(name, output_dir / name, train_args, cfg.training.steps))
    return plans


def run_state(run_dir: Path, steps: int) -> str:
    """"absent", "finished", "diverged" (last logged train loss non-finite) or "unfinished"."""
    if not run_dir.exists():
        return "absent"
    metrics = run_dir / "metrics.jsonl"
    records = read_metrics(metrics) if metrics.is_file() else []
    logged_steps, train = metric_series(records, "loss/train")
    if logged_steps and logged_steps[-1] >= steps:
        return "finished"
    if train and not math.isfinite(train[-1]):
        return "diverged"
    return "unfinished"


def resume_supports_auto() -> bool:
    """Whether the config system has ``checkpoint.resume = "auto"`` (continue if a checkpoint exists, else start)."""
    hint = typing.get_type_hints(config_mod.Checkpoint).get("resume")
    return "auto" in typing.get_args(hint)


def resume_args(run: PlannedRun, supports_auto: bool) -> list[str]:
    """Arguments that continue an unfinished run directory (module docstring)."""
    if supports_auto:
        return ["--checkpoint.resume", "auto"]
    if any((run.run_dir / "checkpoints").glob("step_*")):
        return ["--checkpoint.resume", "true"]
    raise ValueError(f"{run.run_dir} is unfinished and holds no checkpoint to continue; delete it to start "
                     "that run over (or enable checkpoint.interval so a relaunch can resume)")


def launch(run: PlannedRun, launcher: list[str], extra: list[str], log_dir: Path) -> int:
    """Run the repo's train.py for one plan, console output to ``log_dir/<name>.log``; the exit status."""
    log_dir.mkdir(parents=True, exist_ok=True)
    command = [*launcher, str(REPO / "train.py"), *run.train_args, *extra]
    with (log_dir / f"{run.name}.log").open("a") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode


def execute(plans: list[PlannedRun], launcher: list[str], log_dir: Path, dry_run: bool) -> int:
    """Launch what is not done, one line per run; 1 if any launch failed (a divergence is not a failure)."""
    supports_auto = resume_supports_auto()
    failed = 0
    for index, run in enumerate(plans, start=1):
        tag = f"[{index}/{len(plans)}] {run.name}:"
        state = run_state(run.run_dir, run.steps)
        if state in ("finished", "diverged"):
            print(f"{tag} {state}, skipped")
            continue
        extra = [] if state == "absent" else resume_args(run, supports_auto)
        if dry_run:
            print(f"{tag} would run {shlex.join([*launcher, 'train.py', *run.train_args, *extra])}")
            continue
        start = time.monotonic()
        status = launch(run, launcher, extra, log_dir)
        after = run_state(run.run_dir, run.steps)
        elapsed = f"{time.monotonic() - start:.0f} s"
        if after in ("finished", "diverged"):
            print(f"{tag} {after} ({elapsed})")
        else:
            failed += 1
            print(f"{tag} failed: exit {status} after {elapsed}, run {after}; see {log_dir / (run.name + '.log')}")
    return 1 if failed else 0


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", type=Path, required=True, help="TOML files, one run family member each")
    parser.add_argument("--seeds", default="0", help="seeds, e.g. 0,1,2 or 0-4 (default 0)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where the run directories go (default outputs/<folder of the first config>)")
    parser.add_argument("--launcher", default="", help='e.g. "torchrun --nproc_per_node=8" (default: this python)')
    parser.add_argument("--dry-run", action="store_true", help="print what would be launched, launch nothing")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    output_dir = args.output_dir or Path("outputs") / args.configs[0].resolve().parent.name
    launcher = shlex.split(args.launcher) if args.launcher else [sys.executable]
    try:
        plans = plan_runs(args.configs, parse_seeds(args.seeds), output_dir, overrides)
        for run in plans:  # unfinished directories that cannot continue stop us before the first launch
            if run_state(run.run_dir, run.steps) == "unfinished":
                resume_args(run, resume_supports_auto())
        status = execute(plans, launcher, output_dir / ".logs", args.dry_run)
    except (ValueError, FileNotFoundError) as exc:
        return error_exit(exc)
    if not args.dry_run:
        print(f"compare with: python scripts/compare_runs.py {output_dir}/*")
    return status


if __name__ == "__main__":
    sys.exit(main())
