"""One sweep against fresh launches: do N runs finish sooner through the sweep runner (components/sweep.py:
``--parallel`` runs at once, one compiler cache under the sweep's ``.sweep/cache/`` shared by all of them) than as
N back-to-back ``python train.py`` launches, each with an empty compiler cache of its own? And the time to the
first step with an empty against a populated compiler cache (TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR).

    python benchmarks/bench_sweep.py [--sweep-file train_configs/lr_sensitivity/sweep.toml] [--n 6] [--parallel 3]
        [--steps S] [--ttfs-models llama_1b] [--workdir DIR] [--output OUT.json] [--section.key value ...]
    python benchmarks/bench_sweep.py --quick --output OUT.json    # CPU dry run: debug config, 2 runs of 2 steps
    python benchmarks/bench_sweep.py ... --mode fresh|sweep [--skip K] --output PART.json
    python benchmarks/bench_sweep.py --combine PART.json PART.json ... [--output OUT.json]

N runs that do not fit one call of a lent GPU can be measured in parts: ``--mode fresh`` (or ``sweep``) measures
only that mode, on points K+1 .. K+N (``--skip K``), and ``--combine`` joins parts whose fresh launches cover the
points of one sweep part, each once, all of one sweep file, overrides, steps, device, torch and commit, into one
record with the speed-up (the fresh launches' summed totals over the sweep's total). Time to first step: in ``--mode
both``; in a part, the sweep's model's from a fresh part with ``--skip 0`` and each ``--ttfs-models`` model's (none by
default) in the part that names it; ``--combine`` carries each model's pair over from the one part that measured it.

The N runs are the sweep file's first N points (its run order) with the ``--section.key value`` overrides; both
modes run the same points, each into its own directory under ``--workdir`` (deleted first), on token shards built
before any timing (the embedded corpus is built on first use). Per run, from its
files: ``loop_s`` (finished.json ``wall_s``), ``first_step_s`` (step 1's time from metrics.jsonl's step-1
tokens/s, compilation included: reporting/sweep_timing.py) and ``ttfs_s`` = launch-to-exit - loop + first step
(- the wait for a training slot, ``--prestart``):
the time from launch to the end of step 1, plus the short exit after the loop. Time to first step, cold and warm:
the first fresh launch (empty cache) against a 2-step relaunch of it on the cache it populated; and for each
``--ttfs-models`` model (benchmarks/bench_common.py's speed point) a 2-step run launched twice on one cache, empty
then populated. One JSON record: date, torch, device, commit, every launch's seconds, both totals, the speed-up
(fresh total / sweep total; the goal is >= 1.5) and the time-to-first-step table. Exit 2 with one line on bad
input, 1 if a run fails (with its log's last line).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/bench_sweep.py` puts benchmarks/, not the repo root, on sys.path
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.bench_common import MODEL_SETTINGS, git_commit, settings_argv  # noqa: E402
from components import sweep  # noqa: E402
from components.data import ensure_dataset_from  # noqa: E402
from components.provenance import device_name  # noqa: E402
from components.run_dir import RunDir  # noqa: E402
from components.tokenizer import build_tokenizer  # noqa: E402
from reporting.sweep_timing import run_timing  # noqa: E402

GOAL_SPEEDUP = 1.5
MODES = ("both", "fresh", "sweep")
# What the parts joined by --combine must share (the points themselves are checked by name).
SHARED_KEYS = ("sweep_file", "overrides", "steps", "device", "torch", "commit")
CACHE_VARS = tuple(sweep.CACHE_DIR_VARS)
DEFAULT_SWEEP = REPO / "train_configs/lr_sensitivity/sweep.toml"
QUICK_OVERRIDES = ["--training.steps", "2", "--metrics.log_freq", "1", "--metrics.val_freq", "0",
                   "--lr_scheduler.warmup_steps", "0"]
TTFS_OVERRIDES = ["--training.steps", "2", "--metrics.log_freq", "1", "--metrics.val_freq", "0",
                  "--lr_scheduler.warmup_steps", "0", "--checkpoint.enable", "false"]


class BenchError(ValueError):
    """Bad input: one line naming the culprit and a fix (exit 2)."""


class RunFailed(RuntimeError):
    """A launched train.py ended with an error (exit 1)."""


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep-file", type=Path, default=DEFAULT_SWEEP, help="sweep TOML (components/sweep.py)")
    parser.add_argument("--n", type=int, help="runs in each mode: the sweep file's first N points (default 6; --quick 2)")
    parser.add_argument("--parallel", type=int, help="runs at once in the sweep mode (default 3; --quick 2)")
    parser.add_argument("--prestart", type=int, default=0,
                        help="the sweep mode's --prestart (scripts/sweep.py): points started beyond --parallel (default 0)")
    parser.add_argument("--steps", type=int, help="training.steps of every run (default: the config's)")
    parser.add_argument("--ttfs-models",
                        help="comma-separated further models for time to first step cold/warm (of benchmarks/bench_common.py: "
                             "llama_1b, gpt2_124m, debug; default llama_1b, --quick or a part: none)")
    parser.add_argument("--workdir", type=Path, default=REPO / "outputs/bench_sweep", help="run directories and caches")
    parser.add_argument("--output", type=Path, help="write the JSON record here (default: print it only)")
    parser.add_argument("--quick", action="store_true",
                        help="CPU dry run: debug config, N=2, parallel 2, 2 steps, time to first step of debug")
    parser.add_argument("--mode", choices=MODES, default="both",
                        help="both (default), or one part of a measurement split over calls: fresh or sweep only")
    parser.add_argument("--skip", type=int, default=0, help="start after the sweep's first K points (a part)")
    parser.add_argument("--combine", type=Path, nargs="+", metavar="PART_JSON",
                        help="join part records (--mode fresh / sweep) into one record; runs nothing")
    own, overrides = sweep.split_overrides(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(own)
    if args.quick:
        args.sweep_file = None
        overrides = [*QUICK_OVERRIDES, *overrides]
    if args.ttfs_models is None:
        args.ttfs_models = "" if args.quick or args.mode != "both" else "llama_1b"
    args.n = args.n if args.n is not None else 2 if args.quick else 6
    args.parallel = args.parallel if args.parallel is not None else 2 if args.quick else 3
    if args.steps is not None:
        overrides += ["--training.steps", str(args.steps)]
    return args, overrides


def check(args: argparse.Namespace, overrides: list[str]) -> list[str]:
    """The TTFS model names; BenchError on bad input."""
    if args.n < 1 or args.parallel < 1 or args.prestart < 0:
        raise BenchError(f"--n {args.n} --parallel {args.parallel} --prestart {args.prestart}: "
                         "--n and --parallel must be >= 1, --prestart >= 0")
    if args.skip < 0:
        raise BenchError(f"--skip {args.skip}: must be >= 0 (points of the sweep to leave out before the N measured)")
    if args.steps is not None and args.steps < 1:
        raise BenchError(f"--steps {args.steps}: must be >= 1")
    if len(overrides) % 2:
        raise BenchError(f"{overrides[-1]} has no value; extra arguments are --section.key value pairs")
    models = [m for m in args.ttfs_models.split(",") if m]
    unknown = [m for m in models if m not in MODEL_SETTINGS]
    if unknown:
        raise BenchError(f"--ttfs-models: unknown model {unknown[0]!r}; choose from {', '.join(MODEL_SETTINGS)}")
    if args.sweep_file is not None and not args.sweep_file.is_file():
        raise BenchError(f"--sweep-file {args.sweep_file}: no such file; give a sweep TOML (components/sweep.py)")
    return models


def spec_for(args: argparse.Namespace, overrides: list[str], output_dir: Path) -> sweep.SweepSpec:
    if args.sweep_file is None:  # --quick: the debug config, one axis of seeds
        spec = sweep.SweepSpec(REPO / "train_configs/debug.toml", output_dir, grid={"job.seed": [0, 1]})
    else:
        spec = sweep.load_sweep_file(args.sweep_file)
    spec.output_dir, spec.overrides = output_dir, list(overrides)
    return spec


def points_for(args: argparse.Namespace, overrides: list[str], output_dir: Path) -> list[sweep.Point]:
    """The first N points of the sweep, run directories under ``output_dir``."""
    try:
        points = sweep.plan(spec_for(args, overrides, output_dir))
    except sweep.SweepError as err:
        raise BenchError(str(err)) from None
    if args.skip + args.n > len(points):
        raise BenchError(f"--n {args.n}: the sweep has only {len(points)} points; give --n {len(points) - args.skip}"
                         f"{f' (with --skip {args.skip})' if args.skip else ''} or less")
    return points[args.skip:args.skip + args.n]


def clean_env(cache: Path | None) -> dict[str, str]:
    """The environment without compiler-cache variables, plus a cache at ``cache`` when given."""
    env = {k: v for k, v in os.environ.items() if k not in CACHE_VARS}
    if cache is not None:
        env.update(sweep.compiler_cache_env(cache))
    return env


def launch(args: list[str], env: dict[str, str], log: Path) -> float:
    """Seconds from launch to exit of ``python train.py args``; RunFailed with the log's last line on an error."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run([sys.executable, str(REPO / "train.py"), *args], stdout=out, stderr=subprocess.STDOUT,
                              env=env, cwd=REPO).returncode
    seconds = time.perf_counter() - start
    if code != 0:
        raise RunFailed(f"train.py exit {code} ({log}): {sweep.error_line(sweep.last_attempt(log))}")
    return seconds


def run_record(run_dir: Path, seconds: float) -> dict:
    """One finished run's launch-to-exit, loop, first-step and time-to-first-step seconds."""
    try:
        timing = run_timing(RunDir(run_dir))
    except ValueError as err:
        raise RunFailed(str(err)) from None
    ttfs = seconds - timing.loop_s + timing.first_step_s - timing.wait_s
    return {"name": run_dir.name, "launch_s": round(seconds, 2), "loop_s": timing.loop_s,
            "first_step_s": round(timing.first_step_s, 2), "wait_s": timing.wait_s, "ttfs_s": round(ttfs, 2)}


def run_fresh(points: list[sweep.Point], work: Path) -> list[dict]:
    """Each point in turn, a new process with an empty compiler cache of its own (deleted after the run, but for the
    first point's: ``warm_relaunch`` reuses it)."""
    records = []
    for index, point in enumerate(points):
        cache = work / "cache" / point.name
        seconds = launch(point.train_args, clean_env(cache), work / "logs" / f"{point.name}.log")
        if index:
            shutil.rmtree(cache, ignore_errors=True)
        records.append(run_record(point.run_dir, seconds))
    return records


def run_sweep(points: list[sweep.Point], work: Path, parallel: int, prestart: int) -> tuple[list[dict], float]:
    """The points through the sweep runner (its own, initially empty, shared cache under ``work``); (records, total)."""
    saved = {k: os.environ.pop(k) for k in CACHE_VARS if k in os.environ}  # the sweep's own cache, not the caller's
    try:
        start = time.perf_counter()
        outcomes = sweep.execute(points, [sys.executable], work, parallel, say=lambda line: print(line, flush=True),
                                 prestart=prestart)
        total = time.perf_counter() - start
        sweep.write_summary(outcomes, work)  # as scripts/sweep.py does: <work>/.sweep/summary.json
    finally:
        os.environ.update(saved)
    failed = [o for o in outcomes if o.status != "done"]
    if failed:
        raise RunFailed(f"sweep point {failed[0].point.name} {failed[0].status}: {failed[0].note}")
    by_name = {o.point.name: o.seconds for o in outcomes}
    return [run_record(p.run_dir, by_name[p.name]) for p in points], total


def warm_relaunch(first: sweep.Point, work: Path) -> dict:
    """The first fresh launch again (2 steps, a new run directory) on the compiler cache that launch populated."""
    args = [*first.train_args[:-6], *TTFS_OVERRIDES,  # less the sweep's run name, output directory and resume
            "--job.output_dir", str(work), "--job.run_name", f"{first.name}_warm", "--checkpoint.resume", "false"]
    seconds = launch(args, clean_env(work / "cache" / first.name), work / "logs" / f"{first.name}_warm.log")
    return run_record(work / f"{first.name}_warm", seconds)


def ttfs_cold_warm(model: str, work: Path) -> dict:
    """A 2-step run of ``model`` (benchmarks/bench_common.py's speed point) twice on one compiler cache: empty, then
    populated by the first."""
    config, settings, _, _ = settings_argv(model, None)
    out = {}
    for phase in ("cold", "warm"):
        run_dir = work / f"{model}_{phase}"
        args = ["--config", str(REPO / config), *settings, *TTFS_OVERRIDES, "--job.output_dir", str(work),
                "--job.run_name", run_dir.name, "--checkpoint.resume", "false"]
        seconds = launch(args, clean_env(work / "cache"), work / "logs" / f"{run_dir.name}.log")
        out[phase] = run_record(run_dir, seconds)
    return out


def prepare_data(point: sweep.Point) -> None:
    """The token shards the runs read, built now if missing (the embedded corpus is built on first use), so that
    no timed launch pays for building them."""
    ensure_dataset_from(REPO, point.config.data, build_tokenizer(point.config.tokenizer))


def measure(args: argparse.Namespace, overrides: list[str], models: list[str]) -> dict:
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    fresh_points = points_for(args, overrides, args.workdir / "fresh")
    sweep_points = points_for(args, overrides, args.workdir / "sweep")
    prepare_data(fresh_points[0])
    record = {"benchmark": "bench_sweep", "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "torch": torch.__version__, "device": device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
              "commit": git_commit(), "mode": args.mode, "skip": args.skip,
              "sweep_file": str(args.sweep_file) if args.sweep_file else "debug (--quick)", "n": args.n,
              "parallel": args.parallel, "prestart": args.prestart, "steps": fresh_points[0].steps, "overrides": overrides}
    if args.mode in ("both", "fresh"):
        start = time.perf_counter()
        fresh = run_fresh(fresh_points, args.workdir / "fresh")
        record["fresh"] = {"total_s": round(time.perf_counter() - start, 2), "runs": fresh}
    if args.mode in ("both", "sweep"):
        swept, sweep_total = run_sweep(sweep_points, args.workdir / "sweep", args.parallel, args.prestart)
        record["sweep"] = {"total_s": round(sweep_total, 2), "runs": swept}
    ttfs = {}
    if "fresh" in record and args.skip == 0:  # the first fresh launch is the cold one; relaunched on its cache
        first = fresh_points[0]
        ttfs[first.config.model.flavor] = {"cold": fresh[0], "warm": warm_relaunch(first, args.workdir / "fresh")}
    ttfs.update({m: ttfs_cold_warm(m, args.workdir / f"ttfs_{m}") for m in models if m not in ttfs})
    if ttfs:
        record["ttfs"] = {m: {"cold_s": r["cold"]["ttfs_s"], "warm_s": r["warm"]["ttfs_s"], "runs": r}
                          for m, r in ttfs.items()}
    if args.mode != "both":
        return record
    return {**record, "speedup": round(record["fresh"]["total_s"] / record["sweep"]["total_s"], 3),
            "goal_speedup": GOAL_SPEEDUP}


def read_part(path: Path) -> dict:
    try:
        part = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BenchError(f"--combine {path}: cannot read a bench_sweep record ({err}); give files written by --output") from None
    if not isinstance(part, dict) or part.get("benchmark") != "bench_sweep" or part.get("mode") not in ("fresh", "sweep"):
        raise BenchError(f"--combine {path}: not a part record (bench_sweep --mode fresh or sweep); measure it again")
    return part


def combine(paths: list[Path]) -> dict:
    """One record from part records: the sweep part's points, each launched fresh in exactly one fresh part."""
    parts = [read_part(path) for path in paths]  # a file given twice counts twice (and is refused below)
    for key in SHARED_KEYS:
        values = {json.dumps(part[key]) for part in parts}
        if len(values) > 1:
            raise BenchError(f"--combine: the parts differ in {key} ({', '.join(sorted(values))}); "
                             "combine parts of one measurement only")
    sweeps = [part for part in parts if part["mode"] == "sweep"]
    if len(sweeps) != 1:
        raise BenchError(f"--combine: {len(sweeps)} sweep parts among {len(paths)} files; give exactly one")
    (swept,) = sweeps
    fresh_runs = [run for part in parts if part["mode"] == "fresh" for run in part["fresh"]["runs"]]
    names, fresh_names = [run["name"] for run in swept["sweep"]["runs"]], [run["name"] for run in fresh_runs]
    if sorted(names) != sorted(fresh_names):
        problems = ([f"{n} is not launched" for n in names if n not in fresh_names]
                    + [f"{n} is launched twice" for n in sorted(set(fresh_names)) if fresh_names.count(n) > 1]
                    + [f"{n} is not a point of the sweep part" for n in fresh_names if n not in names])
        raise BenchError(f"--combine: the fresh parts must launch each of the sweep's {len(names)} points once; "
                         f"{problems[0]}; measure the parts again with --mode fresh --skip K --n N")
    fresh_total = round(sum(part["fresh"]["total_s"] for part in parts if part["mode"] == "fresh"), 2)
    return {**{key: swept[key] for key in ("benchmark", *SHARED_KEYS)}, "mode": "combined",
            "n": len(names), "parallel": swept["parallel"], "prestart": swept.get("prestart", 0), "parts": [str(path) for path in paths],
            "dates": sorted(part["date"] for part in parts),
            "fresh": {"total_s": fresh_total, "runs": fresh_runs}, "sweep": swept["sweep"],
            "speedup": round(fresh_total / swept["sweep"]["total_s"], 3), "goal_speedup": GOAL_SPEEDUP,
            **combined_ttfs(parts, paths)}


def combined_ttfs(parts: list[dict], paths: list[Path]) -> dict:
    """``{"ttfs": {model: pair}}`` from the parts that measured one (none: ``{}``); a model measured twice is refused."""
    ttfs, source = {}, {}
    for part, path in zip(parts, paths):
        for model, pair in part.get("ttfs", {}).items():
            if model in ttfs:
                raise BenchError(f"--combine: time to first step of {model} is in both {source[model]} and {path}; "
                                 "give one of them")
            ttfs[model], source[model] = pair, path
    return {"ttfs": ttfs} if ttfs else {}


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    try:
        if args.combine:
            record = combine(args.combine)
        else:
            models = check(args, overrides)
            record = measure(args, overrides, models)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    text = json.dumps(record, indent=1)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    for line in summary_lines(record):
        print(line, file=sys.stderr)
    return 0


def summary_lines(record: dict) -> list[str]:
    """Each mode's means per launch and how many runs were in their training loops on average (the loops' summed
    seconds over the mode's total), time to first step, and the speed-up."""
    lines = []
    for mode in ("fresh", "sweep"):
        if mode in record:
            runs, total = record[mode]["runs"], record[mode]["total_s"]
            mean = {key: sum(run.get(key, 0.0) for run in runs) / len(runs)
                    for key in ("launch_s", "loop_s", "first_step_s", "wait_s", "ttfs_s")}
            lines.append(f"{mode}: {len(runs)} launches in {total:.1f} s; per launch, means: launch to exit "
                         f"{mean['launch_s']:.1f} s, training loop {mean['loop_s']:.1f} s, first step "
                         f"{mean['first_step_s']:.2f} s, wait for a slot {mean['wait_s']:.1f} s, time to first step "
                         f"{mean['ttfs_s']:.1f} s; runs in their loops on average "
                         f"{sum(run['loop_s'] for run in runs) / total:.2f}")
    for model, pair in record.get("ttfs", {}).items():
        lines.append(f"time to first step, {model}: cold {pair['cold_s']:.1f} s, warm {pair['warm_s']:.1f} s")
    if "speedup" in record:
        lines.append(f"fresh {record['fresh']['total_s']:.1f} s, sweep {record['sweep']['total_s']:.1f} s: "
                     f"speed-up {record['speedup']:.2f}x (goal >= {GOAL_SPEEDUP}x)")
    return lines


if __name__ == "__main__":
    sys.exit(main())
