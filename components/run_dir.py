"""The run directory around the checkpoints: one writer at a time, requeue-safe starts, checked resumes.

Layout of ``<output_dir>/<run_name>/``::

    .lock                    flock()ed by rank 0 for the whole run; holds the holder's host, pid, job id, start
    config.toml              the resolved config of the run's first start (a comment header names its provenance)
    config.resume_<N>.toml   the resolved config of each later start that resumed from step N (header likewise)
    metrics.jsonl, events.*  metrics and TensorBoard events (components/metrics.py)
    checkpoints/step_<N>/    DCP checkpoints (components/checkpoint.py)
    weights/step_<N>/        without checkpoints: the final weights, model only (checkpoint.final_weights)
    init_stds.json           the init actually drawn: scheme, std_overrides, per role every tensor's std (fresh start)
    provenance.json          {"starts": [...]}: code version, software, machine and times of every start
                             (components/provenance.py has the record's keys)
    finished.json            written once the run has trained all its steps; its "provenance" is provenance.json's,
                             its "timeline_s" the last start's process age (s) at claimed, built, slot (a training
                             slot held: components/training_slots.py), loop_start, loop_end and closed
                             (components/provenance.py Timeline; {} off Linux)
    diverged.json            written by a sweep when train.py stopped the run on a non-finite loss: step, error, lr
    abandoned/<UTC time>/    files of an earlier attempt that died before its first checkpoint

``RunDir`` is the one object of a run directory. Its write side is train.py's lifecycle: a fresh name,
the lock, the decision fresh / resume / finished (with the identity check of a resumed or finished run),
the files of each start, its end and the finish mark; components/sweep.py marks a diverged run. Its read
side serves the report code, export and the sweep: config, metrics, finished or not, provenance.

The lock is an advisory ``flock`` on ``.lock``: the kernel drops it when its holder exits, however it
exits (kill -9 included), so a stale lock never blocks a restart; a live holder (e.g. ranks orphaned
by a killed torchrun, still training) blocks a second job, which stops naming the holder. ``flock``
works across the nodes of NFSv4 and of Lustre mounted with ``-o flock``; on a filesystem without
it, give each job its own ``job.run_name``.
"""

from __future__ import annotations

import copy
import datetime
import fcntl
import functools
import json
import math
import os
import socket
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.checkpoint import complete_steps, partial_dirs
from components.config import (
    LAUNCH_KEYS,
    Config,
    ConfigError,
    config_from_dict,
    describe_changes,
    flat_config,
    is_identity_key,
    load_config,
    to_toml,
)
from components.provenance import UNKNOWN as UNKNOWN_COMMIT
from components.provenance import header_comment, header_commit

LOCK_FILE = ".lock"
FINISHED_FILE = "finished.json"
DIVERGED_FILE = "diverged.json"  # written by components/sweep.py (RunDir.mark_diverged) when train.py stopped on a non-finite loss
PROVENANCE_FILE = "provenance.json"  # {"starts": [{"commit": ..., "dirty": ..., ...}, ...]}, one record per start
INIT_STDS_FILE = "init_stds.json"
CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
ABANDONED_DIR = "abandoned"
# Entries of a run directory that are not an attempt's files.
NOT_ATTEMPT_FILES = (LOCK_FILE, ABANDONED_DIR)

class RunDirLocked(ConfigError):
    """Another live process holds the run directory."""


@dataclass
class RunStart:
    """How this launch uses its run directory (decided by rank 0, then shared with every rank)."""

    mode: str  # "fresh" | "resume" | "finished"
    note: str = ""  # a line for the console (what was found, what was moved)
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)  # resume: (key, old, new) applied


def _write_json(path: Path, value: Any) -> None:
    """Replace ``path`` atomically: readers see the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(tmp, path)


def _resume_configs(path: Path) -> list[Path]:
    """``config.resume_<N>.toml`` files of a run directory, oldest (smallest N) first."""
    return sorted(path.glob("config.resume_*.toml"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))


# ------------------------------------------------------------------------------------------ read
TORCHTITAN_TABLE = "torchtitan"
FOREIGN_TABLES = (TORCHTITAN_TABLE,)
"""config.toml tables that are no initlab option (integrations/torchtitan/config.py writes ``[torchtitan]``): left out
of the resolved config; in ``RunDir.tables`` they set such a run apart from train.py's runs."""
LOSS_KEYS = ("loss/train", "loss/val")


RENAMED_TAGS = {"grad_norm": "grad_norm_total"}
"""Tags that older runs logged under another name -> today's (the global gradient norm was ``grad_norm``, the
prefix of the per-layer ``grad_norm/<role>/layer_NN`` tags): read under today's name."""


class NotARunDir(FileNotFoundError):
    """A path that is not a run directory (no config.toml and no metrics.jsonl): skipped by readers of many runs."""


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl (docs/design.md §8), merged per step (later keys win) and sorted by step.

    NaN/Infinity literals (a diverged loss) parse as float nan/inf. A malformed last line (a run killed
    mid-write) is skipped with a warning on stderr; a malformed earlier line is an error.
    """
    lines = path.read_text().splitlines()
    by_step: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                print(f"warning: {path}:{number}: skipping a truncated last line ({exc.msg})", file=sys.stderr)
                continue
            raise ValueError(f"{path}:{number} is not valid JSON ({exc.msg}); fix or delete that line") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path}:{number} has no integer \"step\"; every line must be "
                             "a JSON object with a step (docs/design.md §8)")
        by_step.setdefault(record["step"], {}).update({RENAMED_TAGS.get(key, key): v for key, v in record.items()})
    return [by_step[step] for step in sorted(by_step)]


class RunDir:
    """A run directory written by train.py (or the torchtitan extension).

    Read side: what it is (resolved config), what it logged (metrics), whether it finished, and where it
    came from (provenance); files are read on first use and cached. ``status`` is "finished" (finished.json, or, for runs written
    before it existed, a logged step >= ``training.steps``), "diverged" (a non-finite loss logged, the
    trainer's stop) or "unfinished" (stopped or still running before its last step). ``RunDir.open`` checks
    the files a reader needs and raises one-line errors; ``NotARunDir`` for a folder of neither file.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = self.path.resolve().name  # display name; readers may change it to tell runs apart
        self.original = self  # a truncated view's full run
        self._lock_fd: int | None = None  # acquire_lock() .. release_lock()
        self._lock_made: list[Path] = []  # directories acquire_lock() created, deepest first

    @classmethod
    def open(cls, path: str | Path, need_metrics: bool = True) -> RunDir:
        """A checked run directory: it exists, holds a config.toml (and a non-empty metrics.jsonl if asked)."""
        run = cls(path)
        hint = "pass a run directory written by train.py (outputs/<run_name>/)"
        if not run.path.exists():
            raise FileNotFoundError(f"run directory {run.path} does not exist; {hint}")
        if not run.path.is_dir():
            raise NotARunDir(f"{run.path} is not a directory; {hint}")
        metrics, config = run.path / METRICS_FILE, run.path / CONFIG_FILE
        if not metrics.is_file() and not config.is_file():
            raise NotARunDir(f"{run.path} holds neither {CONFIG_FILE} nor {METRICS_FILE}; {hint}")
        if not config.is_file():
            raise FileNotFoundError(f"{config} is missing; {hint} (train.py writes the resolved config there)")
        _ = run.tables  # parse now, so a damaged file is reported here
        if need_metrics:
            if not metrics.is_file():
                raise FileNotFoundError(f"{metrics} is missing; {hint} that has logged at least one step")
            if not run.records:
                raise ValueError(f"{metrics} has no records; the run has not logged a step yet")
        return run

    @functools.cached_property
    def config_text(self) -> str:
        return (self.path / CONFIG_FILE).read_text()

    @functools.cached_property
    def tables(self) -> dict[str, Any]:
        """config.toml as written (raw TOML tables, foreign ones included)."""
        try:
            return tomllib.loads(self.config_text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{self.path / CONFIG_FILE} is not valid TOML ({exc}); restore the file train.py "
                             "wrote") from None

    @functools.cached_property
    def config(self) -> Config:
        """The resolved config through the config system (validated, defaults filled in, foreign tables left out)."""
        tables = {section: table for section, table in self.tables.items() if section not in FOREIGN_TABLES}
        return config_from_dict(tables, origin=str(self.path / CONFIG_FILE))

    @property
    def flat_config(self) -> dict[str, Any]:
        """The resolved config as ``{"section.key": value}``."""
        return flat_config(self.config)

    def config_value(self, section: str, key: str) -> Any:
        """``[section].key`` of config.toml, or the config system's default when the file omits it."""
        table = self.tables.get(section, {})
        return table[key] if key in table else getattr(getattr(Config(), section), key)

    @functools.cached_property
    def records(self) -> list[dict[str, Any]]:
        """metrics.jsonl's records merged per step (``read_metrics``); [] when the file is absent."""
        path = self.path / METRICS_FILE
        return read_metrics(path) if path.is_file() else []

    @functools.cached_property
    def summary(self) -> dict[str, Any] | None:
        """finished.json (the trainer's end-of-run summary), or None while the run has not finished."""
        path = self.path / FINISHED_FILE
        if not path.is_file():
            return None
        try:
            summary = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc.msg}); delete it and resubmit the run") from None
        if not isinstance(summary, dict):
            raise ValueError(f"{path} is not a JSON object; delete it and resubmit the run")
        return summary

    @property
    def steps_planned(self) -> int:
        """``training.steps`` of the newest start (a resume may raise it)."""
        resumes = _resume_configs(self.path)
        if resumes:
            try:
                return int(tomllib.loads(resumes[-1].read_text()).get("training", {}).get("steps"))
            except (tomllib.TOMLDecodeError, TypeError, ValueError):
                pass
        return int(self.config_value("training", "steps"))

    @property
    def steps_done(self) -> int:
        """The last logged step (0 before any), or finished.json's step count when it says more."""
        logged = self.records[-1]["step"] if self.records else 0
        finished = self.summary.get("steps") if self.summary else None
        return max(logged, finished) if isinstance(finished, int) else logged

    @property
    def last_step(self) -> int:
        return self.records[-1]["step"]

    @property
    def finished(self) -> bool:
        return self.steps_done >= self.steps_planned and (self.summary is not None or bool(self.records))

    @property
    def diverged(self) -> str:
        """'' or why the run counts as diverged: diverged.json (the sweep's record of train.py's non-finite stop,
        which may come before any non-finite value is logged), else the first non-finite loss logged."""
        if (self.path / DIVERGED_FILE).is_file():
            try:
                record = self.diverged_record()
            except json.JSONDecodeError:
                record = {}
            step = record.get("step") if isinstance(record, dict) else None
            return f"stopped on a non-finite loss or gradient{f' at step {step}' if step else ''} ({DIVERGED_FILE})"
        for record in self.records:
            for key in LOSS_KEYS:
                value = record.get(key, 0.0)
                if value is None or not math.isfinite(value):
                    return f"{key} = {value} at step {record['step']}"
        return ""

    @property
    def status(self) -> str:
        if self.finished:
            return "finished"
        return "diverged" if self.diverged else "unfinished"

    @functools.cached_property
    def starts(self) -> list[dict[str, Any]]:
        """Provenance records of the run's starts (code version, software, machine): provenance.json, else
        finished.json's copy, else the commit of config.toml's header; [] for runs from before provenance."""
        for source in (self._provenance_file(), (self.summary or {}).get("provenance")):
            if isinstance(source, dict) and isinstance(source.get("starts"), list) and source["starts"]:
                return [start for start in source["starts"] if isinstance(start, dict)]
        config = self.path / CONFIG_FILE
        commit = header_commit(self.config_text) if config.is_file() else None
        return [{"commit": commit}] if commit else []

    def _provenance_file(self) -> dict[str, Any] | None:
        try:
            return self.read_provenance()
        except json.JSONDecodeError:
            return None  # a damaged provenance.json: finished.json's copy or the config header still tell

    @property
    def commits(self) -> list[str]:
        """Distinct commits of the run's starts in start order ("unknown" where a start could not tell), with
        `` (uncommitted changes)`` where a start ran a changed tree; ["unknown"] when nothing was recorded."""
        labels = [f"{start.get('commit') or UNKNOWN_COMMIT}{' (uncommitted changes)' if start.get('dirty') else ''}"
                  for start in self.starts]
        return list(dict.fromkeys(labels)) or [UNKNOWN_COMMIT]

    def truncated(self, step: int) -> RunDir:
        """A view of this run whose records stop at ``step`` (``original`` is the full run)."""
        view = copy.copy(self)
        view.__dict__["records"] = [record for record in self.records if record["step"] <= step]
        return view

    # ----------------------------------------------------------------------------------- naming
    @staticmethod
    def new_name(output_dir: str, config_path: str | None, now: datetime.datetime | None = None) -> str:
        """``<config stem>_<YYYYmmdd-HHMMSS>`` (UTC), a new directory per launch (``-2``, ``-3``... if that second
        is taken)."""
        stem = Path(config_path).stem if config_path else "run"
        now = now or datetime.datetime.now(datetime.UTC)
        name = f"{stem}_{now:%Y%m%d-%H%M%S}"
        suffix = 1
        while (Path(output_dir) / (name if suffix == 1 else f"{name}-{suffix}")).exists():
            suffix += 1
        return name if suffix == 1 else f"{name}-{suffix}"

    # ------------------------------------------------------------------------------------- lock
    def acquire_lock(self) -> None:
        """Lock the directory (creating it) for this process: exclusive and kill-safe, held by rank 0 for the
        whole run; RunDirLocked names a live holder."""
        lock = self.path / LOCK_FILE
        self._lock_made = [d for d in (self.path, *self.path.parents) if not d.exists()]
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "an unknown process"
            os.close(fd)
            raise RunDirLocked(f"run directory {self.path} is in use by {holder}; wait for it to end, stop "
                               "it, or choose another --job.run_name") from None
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "job": os.environ.get("SLURM_JOB_ID", ""),
                  "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
        self._lock_fd = fd  # before writing: a failed write (a full disk) still unlocks and cleans up in release
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)

    def release_lock(self) -> None:
        """Unlock (nothing to do where this object holds no lock). The file stays (unlinking a lock file lets two
        processes lock two different inodes), except in a directory the lock created that holds nothing else:
        a launch that stopped at once leaves no trace (nor the output directories created for it)."""
        if self._lock_fd is None:
            return
        os.ftruncate(self._lock_fd, 0)
        if self._lock_made and [p.name for p in self.path.iterdir()] == [LOCK_FILE]:
            (self.path / LOCK_FILE).unlink()
            for directory in self._lock_made:  # the run dir, then the output dirs the lock made for it
                if any(directory.iterdir()):
                    break
                directory.rmdir()
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
        self._lock_fd = None

    # ------------------------------------------------------------------------------------ start
    def claim(self, cfg: Config) -> RunStart:
        """Lock the directory and decide how this launch (``cfg``) uses it (rank 0, before anything expensive is
        built): a second job on a locked directory, or a resume (or a relaunch of a finished run) that would
        change the experiment, stops with a one-line reason."""
        if cfg.checkpoint.resume == "true" and not self.path.is_dir():
            raise ConfigError(f"--checkpoint.resume true but run directory {self.path} does not exist; check "
                              "--job.output_dir/--job.run_name, or use --checkpoint.resume auto to start it")
        self.acquire_lock()
        resume = "false" if cfg.checkpoint.create_seed_checkpoint else cfg.checkpoint.resume
        start = self.plan_start(resume, cfg.training.steps)
        if start.mode in ("resume", "finished"):  # a finished run relaunched as another experiment is refused too
            start.changes = self.config_changes(cfg)
        return start

    def attempt_files(self) -> list[Path]:
        """The files of the current attempt (everything but the lock and earlier attempts set aside)."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if p.name not in NOT_ATTEMPT_FILES)

    def plan_start(self, resume: str, total_steps: int) -> RunStart:
        """Decide fresh / resume / finished for ``checkpoint.resume`` = auto | true | false (no file is touched).

        auto resumes the newest complete checkpoint; without one, a directory holding only an attempt that
        never saved is reused (its files are moved to ``abandoned/`` by :meth:`set_aside_attempt`). A run that
        already trained all ``total_steps`` is "finished": the same command resubmitted does nothing; asked for
        more steps, it continues from its last checkpoint, or is refused if it kept none.
        """
        run_dir = self.path
        checkpoints = complete_steps(run_dir / "checkpoints")
        files = self.attempt_files()
        finished = self.finished_steps()
        if resume == "false":
            if files:
                raise ConfigError(f"run directory {run_dir} already exists; use --checkpoint.resume auto to continue "
                                  "it, or choose another --job.run_name")
            return RunStart("fresh")
        if finished is not None and finished >= total_steps:
            more = "raise --training.steps to continue it" if checkpoints else "it kept no checkpoint to continue from"
            return RunStart("finished", f"run {run_dir} already trained all {finished} steps; nothing to do ({more})")
        if checkpoints:
            return RunStart("resume")
        if resume == "true":
            partial = ", ".join(p.name for p in partial_dirs(run_dir / "checkpoints"))
            raise ConfigError(f"--checkpoint.resume true but {run_dir / 'checkpoints'} holds no complete checkpoint"
                              f"{f' (only partial saves: {partial})' if partial else ''}; use --checkpoint.resume "
                              "auto to start there, or choose another --job.run_name")
        if finished is not None:
            raise ConfigError(f"run {run_dir} finished {finished} steps without a checkpoint to continue from to "
                              f"{total_steps}; choose another --job.run_name")
        if files:
            return RunStart("fresh", f"{run_dir} holds no complete checkpoint (an earlier attempt stopped before "
                                     f"its first save): its files move to {run_dir / ABANDONED_DIR}/ and the run "
                                     "starts over")
        return RunStart("fresh")

    def finished_steps(self) -> int | None:
        """finished.json's step count (None without the file), for deciding a start: a damaged file is an error."""
        path = self.path / FINISHED_FILE
        if not path.is_file():
            return None
        try:
            return int(json.loads(path.read_text())["steps"])
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{path} is damaged ({type(err).__name__}); delete it and resubmit") from None

    def set_aside_attempt(self) -> Path | None:
        """Move an attempt's files (metrics, events, config, partial saves) to ``abandoned/<UTC time>/`` (rank 0)."""
        files = self.attempt_files()
        if not files:
            return None
        target = self.path / ABANDONED_DIR / datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S-%f")
        target.mkdir(parents=True)
        for path in files:
            path.rename(target / path.name)
        return target

    def start_fresh(self, start: RunStart, cfg: Config, record: dict[str, Any], init_stds: dict[str, Any]) -> None:
        """A fresh start's files (rank 0): the abandoned attempt that ``start`` found set aside, config.toml (after
        ``record``'s provenance header), the start's provenance record and init_stds.json (the initializer's
        record)."""
        if start.note:
            self.set_aside_attempt()
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / CONFIG_FILE).write_text(header_comment(record) + to_toml(cfg))
        self.record_start(record)
        (self.path / INIT_STDS_FILE).write_text(json.dumps(init_stds, indent=1) + "\n")

    def start_resumed(self, step: int, cfg: Config, record: dict[str, Any]) -> Path:
        """A resumed start's files (rank 0): ``config.resume_<step>.toml`` and the start's provenance record."""
        path = self.record_resume(step, cfg, header_comment(record))
        self.record_start(record)
        return path

    # ----------------------------------------------------------------------------------- resume
    def config_changes(self, cfg: Config) -> list[tuple[str, Any, Any]]:
        """(key, value the run was last started with, value now) for every setting that differs.

        Compared with the newest of ``config.toml`` / ``config.resume_<N>.toml``. Raises ConfigError with a
        one-line diff when an identity setting changed (model, init, parametrization, data, tokenizer, seed,
        sequence length, global batch).
        """
        before, now = flat_config(self.last_config()), flat_config(cfg)
        changes = [(key, before[key], now[key]) for key in now
                   if key in before and before[key] != now[key] and key not in LAUNCH_KEYS]
        refused = [change for change in changes if is_identity_key(change[0])]
        if refused:
            raise ConfigError(f"cannot resume {self.path} with a different experiment ({describe_changes(refused)}); "
                              "restore those settings or start a new run with another --job.run_name")
        return changes

    def last_config(self) -> Config:
        """The config of the newest start (:meth:`latest_config`), loaded as a config file."""
        saved_path = self.latest_config()
        try:
            return load_config(["--config", str(saved_path)])[0]
        except ConfigError as err:
            raise ConfigError(f"cannot compare with the run's {saved_path.name}: {err}") from None

    def latest_config(self) -> Path:
        """The newest of ``config.toml`` / ``config.resume_<N>.toml``."""
        resumes = _resume_configs(self.path)
        path = resumes[-1] if resumes else self.path / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(f"{self.path} has checkpoints but no config.toml; it was not written by train.py")
        return path

    def record_resume(self, step: int, cfg: Config, header: str = "") -> Path:
        """``config.resume_<step>.toml``: the config this start resumed step ``step`` with, after ``header``
        (TOML comment lines) (rank 0)."""
        path = self.path / f"config.resume_{step}.toml"
        path.write_text(header + to_toml(cfg))
        return path

    # ------------------------------------------------------------------------- provenance, end
    def read_provenance(self) -> dict[str, list[dict[str, Any]]]:
        """``{"starts": [record, ...]}`` of provenance.json (no starts for a run from before it existed)."""
        path = self.path / PROVENANCE_FILE
        return json.loads(path.read_text()) if path.is_file() else {"starts": []}

    def record_start(self, record: dict[str, Any]) -> None:
        """Append this start's record (components/provenance.py: start_record) to provenance.json (rank 0)."""
        provenance = self.read_provenance()
        provenance["starts"].append(record)
        _write_json(self.path / PROVENANCE_FILE, provenance)

    def record_end(self, ended: str) -> None:
        """Set the latest start's ``ended`` time (it finished, stopped or failed with an error) (rank 0)."""
        provenance = self.read_provenance()
        if provenance["starts"]:
            provenance["starts"][-1]["ended"] = ended
            _write_json(self.path / PROVENANCE_FILE, provenance)

    def mark_finished(self, summary: dict[str, Any]) -> None:
        """``finished.json``: ``summary`` plus ``"provenance"``, the run's provenance.json (every start)."""
        _write_json(self.path / FINISHED_FILE, {**summary, "provenance": self.read_provenance()})

    def mark_diverged(self, record: dict[str, Any]) -> None:
        """``diverged.json``: train.py stopped this run on a non-finite loss/gradient (``record``: step, error, lr)."""
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / DIVERGED_FILE).write_text(json.dumps(record, indent=1) + "\n")

    @property
    def marked_finished(self) -> bool:
        """Whether train.py marked the run finished (finished.json)."""
        return (self.path / FINISHED_FILE).is_file()

    @property
    def marked_diverged(self) -> bool:
        """Whether the run is marked diverged (diverged.json: a sweep's record of train.py's non-finite stop)."""
        return (self.path / DIVERGED_FILE).is_file()

    def diverged_record(self) -> dict[str, Any] | None:
        """diverged.json as written (None without the file; a damaged file raises json.JSONDecodeError)."""
        path = self.path / DIVERGED_FILE
        return json.loads(path.read_text()) if path.is_file() else None
