"""Sweeps: a base config x a grid of any config keys x named arms -> one run directory per point, run and summarised.

A sweep file (TOML)::

    [sweep]
    base = "base.toml"                  # the family's config, relative to this file
    output_dir = "outputs/lr_sweep"     # optional; default outputs/<sweep file stem>

    [grid]                              # every combination of these values is a point
    optimizer.lr = [1e-3, 3e-3]
    job.seed = [0, 1, 2]

    [arms.depth_aware]                  # optional named bundles of keys; each arm x the grid
    init.scheme = "depth_aware"
    [arms.depth_aware_emb002]
    init.scheme = "depth_aware"
    init.std_overrides = {tok_embedding = 0.02}
    [arms.mitchell]
    config = "mitchell.toml"            # an arm may name its own config file instead of the base

``python scripts/sweep.py --config A.toml --config B.toml`` makes one arm of each file, named by its stem.
Keys are ``section.key`` of train.py's config (TOML dotted or quoted keys). The command line can add or
replace grid axes (``--grid optimizer.lr=1e-3,3e-3``), select arms (``--arms a,b``) and set any key for
every point (``--section.key value``). A point's run directory is ``<output_dir>/<name>``, its name made of
its arm and coordinates, the seed last: ``depth_aware_emb002_lr0.001_seed0`` (numbers ``<label><value>``,
strings ``<label>-<value>``, where the label is the key's last part; characters other than letters, digits,
``.``, ``+``, ``_`` and ``-`` become ``-``), so runs of one arm sort together and ``scripts/compare_runs.py
<output_dir>/*`` groups the seeds of a point. Console output goes to ``<output_dir>/.sweep/logs/<name>.log``;
compiler caches (inductor, triton) to ``<output_dir>/.sweep/cache/``, shared by all points so that later
points reuse the compiled graphs of earlier ones; the outcome of each point of the latest invocation to
``<output_dir>/.sweep/summary.json``.

A point whose run directory holds ``finished.json`` for its step count is skipped (after checking that the
run was trained with the same config: a finished run whose settings differ is a failed point, never
silently reused); one whose training diverged (train.py's non-finite stop, exit 1) gets ``diverged.json``
(step and error line) and is skipped too, as a result; any other directory is continued by train.py's
``checkpoint.resume = auto`` (resume the newest checkpoint, or start over an attempt that saved none).

Before it starts a point the sweep checks the free disk space under the output directory against the largest
run directory it has seen finish (final weights and checkpoints: 0.8 GB a llama_150m run with final weights):
if starting one more, with those already running, would leave less than ``keep_free_bytes`` free, it starts
nothing more and reports the point as failed, with the figures and the ways out, instead of letting runs die
on a full disk.

A point that fails with CUDA's out-of-memory error while other points were running is not a result of its config
but of ``parallel``: it goes back to the front of the queue and the sweep runs at most ``min(parallel - 1, the
points still running)`` at once from then on (one console line says so). A point out of memory with nothing else
running is an ordinary failure, so each retry lowers ``parallel`` and a sweep cannot loop.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components import config as config_mod
from components import training_slots
from components.run_dir import (
    CONFIG_FILE,
    DIVERGED_FILE,
    FINISHED_FILE,
    INIT_STDS_FILE,
    METRICS_FILE,
    RunDir,
)

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
# The sweep's own files, in a dot-folder so that <output_dir>/* is only run directories.
LOG_DIR, CACHE_DIR, SUMMARY_FILE = ".sweep/logs", ".sweep/cache", ".sweep/summary.json"
SLOT_DIR = ".sweep/slots"  # training slots of a sweep with prestart (components/training_slots.py)
# Keys the sweep sets per point; a grid, an arm or an override may not set them.
MANAGED_KEYS = ("job.run_name", "job.output_dir", "checkpoint.resume")
NONFINITE_PATTERN = re.compile(r"non-finite at step (\d+)")
# CUDA's out-of-memory error as train.py's console shows it (torch.OutOfMemoryError's message).
OOM_PATTERN = re.compile(r"CUDA out of memory|OutOfMemoryError")
KILL_GRACE_S = 30.0  # after the deadline's SIGTERM, seconds until a point that has not stopped is killed
ARM_CONFIG = "config"  # an arm's key naming its own config file (instead of [sweep] base)


class SweepError(ValueError):
    """A bad sweep file or command line; its message is one line naming the culprit and a fix."""


@dataclass
class SweepSpec:
    """What to run: the base config, axes (key -> values), arms (name -> {key: value}), fixed overrides."""

    base: Path | None  # None: every arm names its own config
    output_dir: Path
    grid: dict[str, list[Any]] = field(default_factory=dict)
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)  # --section.key value pairs for every point


@dataclass(frozen=True)
class Point:
    """One run of the sweep: its name, run directory, coordinates, train.py arguments and step count."""

    name: str
    run_dir: Path
    coords: dict[str, Any]
    train_args: list[str]
    steps: int
    config: config_mod.Config


def flatten(table: dict[str, Any], where: str) -> dict[str, Any]:
    """``{"optimizer": {"lr": v}}`` or ``{"optimizer.lr": v}`` -> ``{"optimizer.lr": v}`` (values kept as they are)."""
    flat = {}
    for key, value in table.items():
        if "." in key:
            flat[key] = value
        elif isinstance(value, dict):
            flat.update({f"{key}.{sub}": v for sub, v in value.items()})
        else:
            raise SweepError(f"{where}: key {key!r} is not section.key (e.g. optimizer.lr)")
    for key in flat:
        if key in MANAGED_KEYS:
            raise SweepError(f"{where}: {key} is set by the sweep per point; remove it")
    return flat


def load_sweep_file(path: Path) -> SweepSpec:
    """Parse a sweep file (module docstring) into a SweepSpec; one-line SweepError on anything unexpected."""
    if not path.is_file():
        raise SweepError(f"sweep file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise SweepError(f"{path}: invalid TOML: {err}") from None
    unknown = set(data) - {"sweep", "grid", "arms"}
    if unknown:
        raise SweepError(f"{path}: unknown table [{sorted(unknown)[0]}]; a sweep file has [sweep], [grid], [arms.<name>]")
    head = data.get("sweep", {})
    extra = set(head) - {"base", "output_dir"}
    if extra:
        raise SweepError(f"{path}: [sweep] has base = \"<config>.toml\" and output_dir; unknown key {sorted(extra)[0]}")
    grid = flatten(data.get("grid", {}), f"{path} [grid]")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path} [grid]: {key} must be a non-empty list of values, e.g. [1e-3, 3e-3]")
    arms = {}
    for name, table in data.get("arms", {}).items():
        config = table.pop("config", None) if isinstance(table, dict) else None
        arms[name] = flatten(table, f"{path} [arms.{name}]")
        if config is not None:  # the arm's own config file instead of the base
            arms[name][ARM_CONFIG] = (path.parent / config).resolve()
    output_dir = Path(head.get("output_dir", Path("outputs") / path.stem))
    base = (path.parent / head["base"]).resolve() if "base" in head else None
    return SweepSpec(base, output_dir, grid, arms)


def parse_axis(text: str) -> tuple[str, list[str]]:
    """``optimizer.lr=1e-3,3e-3`` -> ("optimizer.lr", ["1e-3", "3e-3"]) (values parsed later by the config types);
    an integer range ``job.seed=0-2`` is 0, 1, 2."""
    key, eq, values = text.partition("=")
    items = []
    for item in (v.strip() for v in values.split(",") if v.strip()):
        low, dash, high = item.partition("-")
        items += [str(i) for i in range(int(low), int(high) + 1)] if dash and low.isdigit() and high.isdigit() else [item]
    if not eq or "." not in key or not items:
        raise SweepError(f"--grid {text!r}: write section.key=value1,value2 (e.g. --grid optimizer.lr=1e-3,3e-3)")
    if key in MANAGED_KEYS:
        raise SweepError(f"--grid {key} is set by the sweep per point; use --output-dir instead")
    return key, items


def select_arms(arms: dict[str, dict[str, Any]], names: str) -> dict[str, dict[str, Any]]:
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    for name in wanted:
        if name not in arms:
            raise SweepError(f"--arms: no arm {name!r}; arms: {', '.join(arms) or 'none (the sweep file has no [arms])'}")
    return {name: arms[name] for name in wanted}


def cli_value(value: Any) -> str:
    """A TOML value as train.py's command line reads it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return ",".join(f"{k}={cli_value(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ",".join(cli_value(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def coordinate_label(key: str, value: Any) -> str:
    """``optimizer.lr``, 0.001 -> ``lr0.001``; ``init.scheme``, "mitchell" -> ``scheme-mitchell``; filesystem-safe."""
    label = key.rsplit(".", 1)[1]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        text = f"{label}-{cli_value(value)}"
    else:
        text = f"{label}{value:g}" if isinstance(value, float) else f"{label}{value}"
    return re.sub(r"[^A-Za-z0-9.+_-]", "-", text)


def resolved(cfg: config_mod.Config, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name)


def plan(spec: SweepSpec) -> list[Point]:
    """Every arm x grid point, each resolved by the config system. Run order: the seed outermost, then the other
    axes as given, the arms innermost, so a sweep cut short has every arm of each value it reached (paired)."""
    for arm, keys in spec.arms.items():
        shared = sorted(set(keys) & set(spec.grid))
        if shared:
            raise SweepError(f"arm {arm!r} sets {shared[0]}, which is also a grid axis; set it in one place")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+_-]*", arm):
            raise SweepError(f"arm name {arm!r}: use letters, digits, '.', '+', '_', '-' (it names run directories)")
    axes = sorted(spec.grid, key=lambda k: k == "job.seed")  # the seed last: compare_runs strips _seed<k>
    points, names = [], {}
    for values in itertools.product(*(spec.grid[k] for k in axes)):
        coords = dict(zip(axes, values))
        for arm, keys in (spec.arms or {"": {}}).items():
            points.append(make_point(spec, arm, keys, coords))
            other = names.setdefault(points[-1].name, coords)
            if other is not coords:
                raise SweepError(f"two points share the run name {points[-1].name!r} ({other} and {coords}); "
                                 "give the values distinct spellings")
    if "job.seed" in spec.grid:  # run order: every point of the first seed, then the next seed (names unchanged)
        seeds = spec.grid["job.seed"]
        points.sort(key=lambda p: seeds.index(p.coords["job.seed"]))
    return points


def make_point(spec: SweepSpec, arm: str, arm_keys: dict[str, Any], coords: dict[str, Any]) -> Point:
    settings = [(k, v) for k, v in arm_keys.items() if k != ARM_CONFIG] + list(coords.items())
    config = arm_keys.get(ARM_CONFIG, spec.base)
    if config is None or not Path(config).is_file():
        raise SweepError(f"config file not found: {config} ({'arm ' + arm if arm else '[sweep] base'})")
    args = ["--config", str(config)]
    for key, value in settings:
        args += [f"--{key}", cli_value(value)]
    args += spec.overrides
    probe = [*args, "--job.run_name", "probe", "--job.output_dir", str(spec.output_dir)]
    try:
        cfg = config_mod.load_config(probe)[0]
    except config_mod.ConfigError as err:
        where = ", ".join(f"{k}={cli_value(v)}" for k, v in settings) or "the base config"
        raise SweepError(f"point {arm or ''}{' ' if arm else ''}({where}): {err}") from None
    name = "_".join([arm] * bool(arm) + [coordinate_label(k, resolved(cfg, k)) for k in coords]) or "base"
    args += ["--job.run_name", name, "--job.output_dir", str(spec.output_dir), "--checkpoint.resume", "auto"]
    cfg.job.run_name = name
    return Point(name, spec.output_dir / name, {"arm": arm, **coords}, args, cfg.training.steps, cfg)


# ------------------------------------------------------------------------------------------ state
def point_state(point: Point) -> tuple[str, str]:
    """(state, note): absent | finished | diverged | unfinished | mismatch (a finished run of another config, or
    one whose files cannot be read: the note says which)."""
    try:
        return _point_state(point)
    except (config_mod.ConfigError, ValueError, KeyError, OSError) as err:
        return "mismatch", f"cannot read {point.run_dir}: {err}; delete it or choose another --output-dir"


def _point_state(point: Point) -> tuple[str, str]:
    run = RunDir(point.run_dir)
    if not run.path.exists():
        return "absent", ""
    diverged = run.diverged_record()
    if diverged is not None:
        return "diverged", diverged.get("error", "")
    finished = run.path / FINISHED_FILE
    if finished.is_file() and int(json.loads(finished.read_text()).get("steps", 0)) >= point.steps:
        diff = config_difference(run, point.config)
        return ("mismatch", diff) if diff else ("finished", "")
    return "unfinished", ""


def config_difference(run: RunDir, cfg: config_mod.Config) -> str:
    """'' when the run's last config equals ``cfg`` but for placement keys, else the first differing key, one line."""
    saved = config_mod.load_config(["--config", str(run.latest_config())])[0]
    before, now = config_mod.flat_config(saved), config_mod.flat_config(cfg)
    for key, value in now.items():
        if key not in config_mod.PLACEMENT_KEYS and key != "training.steps" and before.get(key) != value:
            return (f"{run.path} finished with {key} = {before.get(key)!r}, the sweep asks {value!r}; delete it or "
                    "choose another --output-dir")
    return ""


def last_attempt(log: Path) -> str:
    """The console output of a point's latest launch: its log after the last ``$ command`` line (a log holds every
    launch of its point, one after the other)."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    return text[text.rfind("\n$ ") + 1:] if "\n$ " in text else text


def error_line(output: str) -> str:
    """The last ``error:`` line of a launch's console ``output``, else its last non-empty line (a traceback's
    exception); the sweep's own ``$ command`` lines are not output."""
    lines = [line.strip() for line in output.splitlines() if line.strip() and not line.startswith("$ ")]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1]


def record_divergence(point: Point, line: str) -> None:
    """``diverged.json`` in the run directory: train.py stopped on a non-finite loss/gradient (a result)."""
    match = NONFINITE_PATTERN.search(line)
    record = {"step": int(match.group(1)) if match else None, "error": line, "lr": point.config.optimizer.lr}
    RunDir(point.run_dir).mark_diverged(record)


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(this script's arguments, ``--section.key value`` pairs for every point (or run)): an option whose name has a dot
    is train.py's, with its value (``--a.b=v`` or ``--a.b v``), wherever it stands."""
    own, overrides, i = [], [], 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name.startswith("--") and "." in name:
            if "=" in argv[i]:
                overrides += [name, argv[i].split("=", 1)[1]]
            else:
                overrides += argv[i:i + 2]
                i += 1
        else:
            own.append(argv[i])
        i += 1
    return own, overrides


# ------------------------------------------------------------------------------------------ launch
CACHE_DIR_VARS = {"TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton"}  # variable -> folder in a cache


def compiler_cache_env(cache: Path) -> dict[str, str]:
    """The environment variables that put inductor's and Triton's caches (graphs and autograd too) under ``cache``."""
    return {**{var: str(cache / folder) for var, folder in CACHE_DIR_VARS.items()},
            "TORCHINDUCTOR_FX_GRAPH_CACHE": "1", "TORCHINDUCTOR_AUTOGRAD_CACHE": "1"}


def cache_env(output_dir: Path) -> dict[str, str]:
    """Compiler caches under the sweep, shared by its points (variables already set in the environment win)."""
    wanted = compiler_cache_env((output_dir / CACHE_DIR).resolve())
    return {**wanted, **{k: os.environ[k] for k in wanted if k in os.environ}}


def command(point: Point, launcher: list[str]) -> list[str]:
    return [*launcher, str(REPO / "train.py"), *point.train_args]


def start(point: Point, launcher: list[str], output_dir: Path, slots: Path | None = None) -> subprocess.Popen:
    log_dir = output_dir / LOG_DIR
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = command(point, launcher)
    log = (log_dir / f"{point.name}.log").open("a")
    log.write(f"$ {shlex.join(cmd)}\n")
    log.flush()
    env = {**os.environ, **cache_env(output_dir)}
    env.pop(training_slots.ENV_VAR, None)  # (a sweep's own slots only, never the caller's)
    if slots is not None:
        env[training_slots.ENV_VAR] = str(slots)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    log.close()  # the child holds its own descriptor
    return proc


GIB = 1024 ** 3


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (not following links)."""
    return sum(entry.stat(follow_symlinks=False).st_size for entry in path.rglob("*")
               if entry.is_file() and not entry.is_symlink())


@dataclass
class DiskGuard:
    """Refuses to start a point that the disk under ``output_dir`` may not hold (module docstring)."""

    output_dir: Path
    keep_free_bytes: int
    run_bytes: int = 0  # the largest finished run directory seen so far (0: none yet, no check)

    def observe(self, run_dir: Path) -> None:
        if run_dir.is_dir():
            self.run_bytes = max(self.run_bytes, tree_bytes(run_dir))

    def refusal(self, running: int) -> str:
        """'' if one more run fits beside ``running`` ones; else the one-line reason and the ways out."""
        if not self.run_bytes:
            return ""
        free = shutil.disk_usage(self.output_dir).free  # (it exists: a run in it has finished)
        need = self.run_bytes * (running + 1)
        if free - need >= self.keep_free_bytes:
            return ""
        return (f"disk: {self.output_dir} has {free / GIB:.2f} GiB free; a finished run here takes "
                f"{self.run_bytes / GIB:.2f} GiB and {running} are running, which would leave less than the "
                f"{self.keep_free_bytes / GIB:g} GiB kept free (--keep-free-gb); free space, or keep no final weights "
                f"(--checkpoint.final_weights false), then rerun the same command: finished points are skipped")


@dataclass
class Outcome:
    point: Point
    status: str  # done | skipped | diverged | failed | interrupted (stopped at the deadline)
    note: str = ""
    seconds: float = 0.0
    # CUDA's out-of-memory error anywhere in the launch's output, not only its last line (a launcher such as
    # torchrun prints its own summary after it)
    out_of_memory: bool = False


def finish(point: Point, returncode: int, seconds: float, output_dir: Path) -> Outcome:
    """Classify an ended train.py from its launch's output: done (finished.json), diverged (non-finite stop) or
    failed (noting whether it ran out of GPU memory)."""
    output = last_attempt(output_dir / LOG_DIR / f"{point.name}.log")
    line = error_line(output)
    state, note = point_state(point)
    if returncode == 0 and state == "finished":
        return Outcome(point, "done", "", seconds)
    if returncode == 1 and NONFINITE_PATTERN.search(line):
        record_divergence(point, line)
        return Outcome(point, "diverged", line, seconds)
    return Outcome(point, "failed", f"exit {returncode}: {note or line}", seconds,
                   out_of_memory=bool(OOM_PATTERN.search(output)))


def oom_retry_parallel(outcome: Outcome, others: int, parallel: int) -> int:
    """How many points may run at once for a retry of ``outcome``'s point, or 0 for no retry: only a point that
    failed out of GPU memory beside ``others`` > 0 running points is retried, with fewer at once than before."""
    if outcome.status != "failed" or not outcome.out_of_memory or others == 0 or parallel == 1:
        return 0
    return max(1, min(parallel - 1, others))


def execute(points: list[Point], launcher: list[str], output_dir: Path, parallel: int = 1,
            fail_fast: bool = False, say=print, deadline_s: float | None = None,
            start_by_s: float | None = None, keep_free_bytes: int = GIB, prestart: int = 0) -> list[Outcome]:
    """Run what is not done, up to ``parallel`` points at once, one console line per point; every outcome.

    ``prestart`` > 0 starts up to that many more processes, whose start-up runs while ``parallel`` others train:
    each waits, once built, for one of ``parallel`` training slots (components/training_slots.py, the folder
    ``.sweep/slots``).

    ``start_by_s`` after the start no point is started, the running ones go on (to their end or the deadline): a
    run that could not finish before the deadline is not begun, and the sweep ends when the last one ends.

    ``deadline_s`` after the start no point is started and the running ones get SIGTERM (train.py stops at its
    next step boundary, saving a checkpoint if checkpointing is on), and SIGKILL ``KILL_GRACE_S`` later if they
    have not stopped: they are "interrupted", resumable later.

    A point the disk may not hold (``DiskGuard``, ``keep_free_bytes``) is not started: it is "failed" with the
    reason, and no point is started after it. A point out of GPU memory beside others is retried with fewer at
    once (``oom_retry_parallel``; the module docstring).
    """
    outcomes: list[Outcome] = []
    retried: dict[int, str] = {}  # point index -> why it was retried (its final outcome's note, if it has none)
    disk = DiskGuard(output_dir, keep_free_bytes)
    queue, running = list(enumerate(points, start=1)), {}
    stop, t_start, terminated = False, time.monotonic(), None
    slots = output_dir / SLOT_DIR if prestart > 0 else None
    if slots is not None:
        training_slots.write_count(slots, parallel)
    while queue or running:
        now = time.monotonic()
        if deadline_s is not None and now - t_start >= deadline_s and terminated is None:
            stop, terminated = True, now
            say(f"deadline of {deadline_s:g} s reached: stopping {len(running)} running point(s), "
                f"{len(queue)} not started")
            for _, proc, _, _ in running.values():
                proc.terminate()
        if terminated is not None and now - terminated > KILL_GRACE_S:  # e.g. still compiling its first step
            for _, proc, _, _ in running.values():
                proc.kill()
        if start_by_s is not None and now - t_start >= start_by_s and queue and not stop:
            stop = True
            say(f"start-by time of {start_by_s:g} s reached: starting none of the {len(queue)} point(s) left, "
                f"{len(running)} still running")
        while queue and len(running) < parallel + prestart and not stop:
            index, point = queue.pop(0)
            tag = f"[{index}/{len(points)}] {point.name}:"
            state, note = point_state(point)
            if state in ("finished", "diverged", "mismatch"):
                status = {"finished": "skipped", "diverged": "skipped", "mismatch": "failed"}[state]
                outcomes.append(Outcome(point, status, note or f"{state} earlier"))
                say(f"{tag} {state}, {'skipped' if status == 'skipped' else 'not run'}{': ' + note if note else ''}")
                stop = stop or (fail_fast and status == "failed")
                disk.observe(point.run_dir)
                continue
            refusal = disk.refusal(len(running))
            if refusal:
                outcomes.append(Outcome(point, "failed", f"not started: {refusal}"))
                say(f"{tag} not started: {refusal}")
                stop = True
                break
            running[index] = (point, start(point, launcher, output_dir, slots), time.monotonic(), tag)
            say(f"{tag} {'resuming' if state == 'unfinished' else 'started'}")
        for index, (point, proc, t0, tag) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[index]
            outcome = finish(point, proc.returncode, time.monotonic() - t0, output_dir)
            if terminated is not None and outcome.status == "failed":
                outcome.status = "interrupted"
            fewer = 0 if stop else oom_retry_parallel(outcome, len(running), parallel)
            if fewer:
                retried[index] = f"retried after running out of GPU memory beside {len(running)} running point(s)"
                say(f"{tag} out of GPU memory beside {len(running)} running point(s) after {outcome.seconds:.0f} s: "
                    f"back in the queue; at most {fewer} at once from now on (--parallel {parallel} does not fit)")
                parallel = fewer
                if slots is not None:
                    training_slots.write_count(slots, parallel)
                queue.insert(0, (index, point))
                continue
            outcome.note = outcome.note or retried.get(index, "")
            outcomes.append(outcome)
            disk.observe(point.run_dir)
            say(f"{tag} {outcome.status} ({outcome.seconds:.0f} s){': ' + outcome.note if outcome.note else ''}")
            stop = stop or (fail_fast and outcome.status == "failed")
        if stop:
            queue = []
        if running:
            time.sleep(0.2)
    return outcomes


def summary(outcomes: list[Outcome], planned: int, output_dir: Path) -> list[str]:
    """The closing lines: counts, then each failed point with its one-line error and log."""
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "diverged", "failed", "interrupted")}
    not_run = planned - len(outcomes)
    lines = [f"sweep {output_dir}: {planned} points: {counts['done']} done, {counts['skipped']} skipped, "
             f"{counts['diverged']} diverged, {counts['failed']} failed"
             + (f", {counts['interrupted']} interrupted" if counts["interrupted"] else "")
             + (f", {not_run} not run" if not_run else "")]
    for o in outcomes:
        if o.status == "failed":
            lines.append(f"  failed {o.point.name}: {o.note} (log {output_dir / LOG_DIR / (o.point.name + '.log')})")
    return lines


def write_summary(outcomes: list[Outcome], output_dir: Path) -> Path:
    """``<output_dir>/.sweep/summary.json``: per point its coordinates, status, note and seconds (this invocation)."""
    path = output_dir / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"name": o.point.name, "coords": o.point.coords, "status": o.status, "note": o.note,
             "seconds": round(o.seconds, 1)} for o in outcomes]
    path.write_text(json.dumps(rows, indent=1) + "\n")
    return path


# ------------------------------------------------------------------------------ carrying results
# The small files of a run directory (no checkpoints, no TensorBoard events): what a report needs.
SMALL_FILES = (CONFIG_FILE, "config.resume_*.toml", METRICS_FILE, FINISHED_FILE, DIVERGED_FILE, INIT_STDS_FILE)


def small_files(output_dir: Path) -> list[Path]:
    """The small files of every run directory under ``output_dir``, plus the sweep's summary and logs (relative)."""
    found = []
    for run_dir in sorted(p for p in output_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for pattern in SMALL_FILES:
            found += sorted(run_dir.glob(pattern))
    found += sorted((output_dir / LOG_DIR).glob("*.log")) + [p for p in [output_dir / SUMMARY_FILE] if p.is_file()]
    return [p.relative_to(output_dir) for p in found]


def write_archive(output_dir: Path, archive: Path) -> int:
    """A .tar.gz of :func:`small_files` (paths relative to ``output_dir``); returns the number of files."""
    import tarfile

    files = small_files(output_dir)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for rel in files:
            tar.add(output_dir / rel, arcname=str(rel))
    return len(files)


def import_previous(source: Path, output_dir: Path) -> list[str]:
    """Copy the finished or diverged run directories of an earlier call (a folder of run directories, or an
    archive from :func:`write_archive`) into ``output_dir``, so this sweep skips them; returns their names.
    The earlier console logs come along (every point's, finished or not), so that this sweep's launches are
    appended to them and its archive holds every launch. A run directory or log already present in
    ``output_dir`` is left as it is."""
    import shutil
    import tarfile
    import tempfile

    if not source.exists():
        raise SweepError(f"--previous {source} does not exist; give a folder of run directories or a .tar.gz")
    with tempfile.TemporaryDirectory() as tmp:
        if source.is_file():
            with tarfile.open(source) as tar:
                try:
                    tar.extractall(tmp, filter="data")  # no links or paths out of tmp (Python >= 3.11.4)
                except TypeError:  # an older Python: its members are checked by hand instead
                    if any(m.issym() or m.islnk() or m.name.startswith("/") or ".." in m.name for m in tar):
                        raise SweepError(f"--previous {source}: the archive holds links or paths outside it") from None
                    tar.extractall(tmp)
            source = Path(tmp)
        names = []
        for run_dir in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
            done = RunDir(run_dir).marked_finished or RunDir(run_dir).marked_diverged
            if done and not (output_dir / run_dir.name).exists():
                shutil.copytree(run_dir, output_dir / run_dir.name)
                names.append(run_dir.name)
        logs = output_dir / LOG_DIR
        for log in sorted((source / LOG_DIR).glob("*.log")):
            logs.mkdir(parents=True, exist_ok=True)
            if not (logs / log.name).exists():
                shutil.copyfile(log, logs / log.name)
    return names

