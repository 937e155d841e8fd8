"""Run a script under torchrun with N CPU ranks (gloo) for the distributed tests."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def torchrun(args: list[str], nproc: int, timeout: float = 600, env: dict | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=nproc <args>`` from the repo root; returns the process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def python(args: list[str], timeout: float = 600, env: dict | None = None,
           check: bool = True) -> subprocess.CompletedProcess:
    """``python <args>`` from the repo root (a single process, as a newcomer would run it)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"python failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def pythons_side_by_side(commands: list[list[str]], timeout: float = 600,
                         env: dict | None = None) -> list[subprocess.CompletedProcess]:
    """``python <args>`` of each command, as many at once as the machine has cores (each process is meant to
    use one thread); every one must succeed. Returns the processes in the order of ``commands``."""
    with ThreadPoolExecutor(max_workers=max(1, min(len(commands), os.cpu_count() or 1))) as pool:
        return list(pool.map(lambda args: python(args, timeout=timeout, env=env), commands))


def children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (Linux /proc), e.g. the rank processes of a torchrun agent."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its new parent, counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
