"""Training slots: how a sweep lets more runs start up than it lets train at once.

A run's start-up (interpreter, imports, tokenizer, data, model, optimizer: about 9 s for llama_150m alone on an H100
with the compiler caches filled, more when several start at once) uses the CPU, hardly the GPU. A sweep started with ``--prestart K`` (components/sweep.py) runs
up to ``parallel + K`` processes and tells each, through the environment variable ``INITLAB_TRAINING_SLOTS`` (a
folder), that only ``parallel`` of them may train at once: after building, a run waits here until it holds one of
the folder's slot files (an exclusive ``flock``, which the kernel releases when the process ends, however it ends),
so its start-up runs while the others train. The folder's ``count`` file says how many slots there are; the sweep
lowers it when runs do not fit the GPU, and waiting runs read it again every poll. Without the variable nothing
waits. Linux (``fcntl``).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

ENV_VAR = "INITLAB_TRAINING_SLOTS"
COUNT_FILE = "count"
POLL_S = 0.2

_held: int | None = None  # this process's slot file descriptor, while it holds one


def write_count(folder: Path, count: int) -> None:
    """Create (or update) a slot folder of ``count`` slots."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{COUNT_FILE}.{os.getpid()}"
    tmp.write_text(f"{count}\n")
    tmp.replace(folder / COUNT_FILE)


def read_count(folder: Path) -> int:
    """The folder's slot count; ValueError naming the file if it is missing or not a positive integer."""
    path = folder / COUNT_FILE
    try:
        count = int(path.read_text())
    except (OSError, ValueError):
        count = 0
    if count < 1:
        raise ValueError(f"{ENV_VAR}: {path} does not hold a positive slot count; unset {ENV_VAR} outside a sweep")
    return count


def try_slot(folder: Path, count: int) -> int | None:
    """The descriptor of a slot file of ``folder`` now locked by this process, or None if all ``count`` are held."""
    for index in range(count):
        fd = os.open(folder / f"slot_{index}", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            os.close(fd)
    return None


def acquire(say=print, stop_requested=lambda: False) -> float:
    """Wait for a training slot if ``INITLAB_TRAINING_SLOTS`` names a folder (else return at once); the seconds waited.
    The slot is held until ``release`` or the end of the process. A stop request (``stop_requested()`` true: the
    sweep's deadline, a signal) ends the wait without a slot, so the run stops at its first step boundary."""
    global _held
    folder = os.environ.get(ENV_VAR)
    if not folder or _held is not None:
        return 0.0
    start, told = time.monotonic(), False
    while (fd := try_slot(Path(folder), count := read_count(Path(folder)))) is None:
        if stop_requested():
            say(f"initlab: stop requested while waiting for a training slot ({time.monotonic() - start:.1f} s)")
            return time.monotonic() - start
        if not told:
            say(f"initlab: built; waiting for a training slot (all {count} in use: {folder})")
            told = True
        time.sleep(POLL_S)
    _held = fd
    waited = time.monotonic() - start
    if told:
        say(f"initlab: training slot after {waited:.1f} s")
    return waited


def release() -> None:
    """Give this process's slot back (nothing if it holds none)."""
    global _held
    if _held is not None:
        os.close(_held)  # closing the descriptor releases its flock
        _held = None
