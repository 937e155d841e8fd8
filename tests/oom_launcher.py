"""A sweep launcher for tests: a GPU with room for OOM_LIMIT runs at once, on a CPU.

``python tests/oom_launcher.py train.py ARGS...`` claims one of OOM_LIMIT slots (files created atomically in the
folder OOM_SLOTS, so exactly OOM_LIMIT claims succeed however many start together) and runs ``python train.py
ARGS...`` in it, freeing the slot when that ends; with every slot taken it fails as train.py under torchrun fails
on a full GPU: torch.OutOfMemoryError's message, then a launcher's summary line, exit 1. Every attempt is appended to OOM_SLOTS/attempts.log.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def claim(slots: Path, limit: int) -> Path | None:
    for i in range(limit):
        path = slots / f"slot{i}"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL))
            return path
        except FileExistsError:
            continue
    return None


def main() -> int:
    slots, limit = Path(os.environ["OOM_SLOTS"]), int(os.environ["OOM_LIMIT"])
    slots.mkdir(parents=True, exist_ok=True)
    slot = claim(slots, limit)
    name = sys.argv[sys.argv.index("--job.run_name") + 1]
    with open(slots / "attempts.log", "a") as log:
        log.write(f"{name} {'ran' if slot else 'oom'}\n")
    if slot is None:
        print("[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.00 GiB. (every slot of "
              f"{slots} is taken)", flush=True)
        print("ChildFailedError: train.py FAILED (a launcher's summary after the child's error)", flush=True)
        return 1
    try:
        return subprocess.call([sys.executable, *sys.argv[1:]])
    finally:
        slot.unlink()


if __name__ == "__main__":
    sys.exit(main())
