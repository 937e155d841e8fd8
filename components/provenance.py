"""Where a run came from: code version, software, hardware and time of each start (docs/design.md §9).

One record per start of a run (``provenance.json`` in its run directory, written by components/run_dir.py)::

    {"commit": "1a2b3c4" | "unknown",   short git hash of the code (INITLAB_COMMIT overrides it)
     "dirty": true | false | null,      tracked files changed since that commit (null: unknown)
     "torch": "2.13.0", "cuda": "12.8" | null, "device": "NVIDIA H200" | "cpu",
     "world_size": 8, "hostname": "node7",
     "started": "2026-12-06T05:00:00+00:00", "ended": "...+00:00" | null (still running, or killed),
     "resumed_from": 0 (a fresh start) | N (the checkpoint step this start resumed)}

``Timeline`` marks how far into its process a start got at named points (seconds since the process began, from
the operating system's record of its start: the interpreter's own start-up and the imports count too), which
train.py writes into ``finished.json`` as ``timeline_s``; reporting/sweep_timing.py reads it.

``INITLAB_COMMIT`` names the commit of a tree that is not a git checkout (a copy on another machine, as
the benchmarks use it); the dirty flag is then unknown unless ``INITLAB_DIRTY`` is ``0`` or ``1``.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
COMMIT_ENV, DIRTY_ENV = "INITLAB_COMMIT", "INITLAB_DIRTY"
UNKNOWN = "unknown"


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _git(args: list[str], repo: Path) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True,
                              timeout=10).stdout
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None


def git_state(repo: Path = REPO) -> tuple[str, bool | None]:
    """(short commit hash or "unknown", whether tracked files differ from it or None when unknown)."""
    dirty_env = {"0": False, "1": True}.get(os.environ.get(DIRTY_ENV, ""))
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV], dirty_env
    commit = _git(["rev-parse", "--short", "HEAD"], repo)
    if not commit:
        return UNKNOWN, dirty_env
    status = _git(["status", "--porcelain", "--untracked-files=no"], repo)
    return commit.strip(), dirty_env if status is None else bool(status.strip())


def process_age_s() -> float | None:
    """Seconds since this process started: Linux's /proc/self/stat start time (field 22, clock ticks after boot)
    against CLOCK_BOOTTIME, to the tick (10 ms); None where either is missing."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()  # after "(command name)": field 3 on
        return time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class Timeline:
    """Named points of one start, each the process's age in seconds then (``process_age_s``; empty where unknown)."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        age = process_age_s()
        if age is not None:
            self.marks[name] = round(age, 2)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def start_record(device: torch.device, world_size: int, resumed_from: int | None) -> dict[str, Any]:
    """This start's provenance (see the module docstring); ``ended`` is filled in when it ends."""
    commit, dirty = git_state()
    return {"commit": commit, "dirty": dirty, "torch": torch.__version__, "cuda": torch.version.cuda,
            "device": device_name(device), "world_size": world_size, "hostname": socket.gethostname(),
            "started": now_utc(), "ended": None, "resumed_from": resumed_from or 0}


def header_comment(record: dict[str, Any]) -> str:
    """Two TOML comment lines naming the code and machine of a start, for the top of its config file."""
    dirty = {True: " (with uncommitted changes)", False: "", None: " (uncommitted changes unknown)"}[record["dirty"]]
    return (f"# initlab {record['commit']}{dirty}, torch {record['torch']}, CUDA {record['cuda'] or 'none'}\n"
            f"# {record['world_size']} x {record['device']} on {record['hostname']}, started {record['started']}\n")


HEADER_COMMIT = re.compile(r"^# initlab (?P<commit>[0-9a-f]{7,40}|unknown)\b")  # header_comment's first line


def header_commit(text: str) -> str | None:
    """The commit named by a config.toml's provenance header (``# initlab <commit>...`` before its first table)."""
    for line in text.splitlines():
        if line.startswith("["):
            break
        match = HEADER_COMMIT.match(line)
        if match:
            return match["commit"]
    return None
