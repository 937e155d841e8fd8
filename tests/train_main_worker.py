"""Run train.py's ``main()`` for several cases in one interpreter (one process start instead of many).

Usage: ``python tests/train_main_worker.py '<JSON list of cases>'``, each case
``{"argv": [train.py args], "crash_in_save_of": "<checkpoints>/.tmp_step_N"}`` or
``{"argv": [...], "kill_after_save_of": "<checkpoints>/step_N"}`` (the keys optional).
Each call is a complete ``python train.py ...`` run (a world of one whose process group is
destroyed at its end) with its stderr captured; after each call one stdout line
``RESULT {"rc": int, "stderr": str}`` is printed and flushed.

``crash_in_save_of`` simulates a save killed half-way: DCP's coordinator writes ``.metadata`` in
``FileSystemWriter.finish`` after every rank wrote its data files, and at that point of the save
into that directory the process ``os._exit(9)``s, leaving data files without metadata. Such a
case must be the last one.

``kill_after_save_of`` SIGKILLs the process as soon as a synchronous save has made ``step_N`` complete
(renamed into place), before anything else of that step runs: the moment between a checkpoint and
whatever the trainer does after it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
from pathlib import Path

from torch.distributed.checkpoint import FileSystemWriter

import train
from components.checkpoint import Checkpointer

CRASH_EXIT_CODE = 9


def die_in_save_into(doomed: Path) -> None:
    """Make the process exit when a DCP save into ``doomed`` is about to write its .metadata."""
    original_finish = FileSystemWriter.finish

    def finish(self, metadata, results):
        if Path(str(self.path)).resolve() == doomed.resolve():
            os._exit(CRASH_EXIT_CODE)
        return original_finish(self, metadata, results)

    FileSystemWriter.finish = finish


def kill_after_save_of(complete: Path) -> None:
    """SIGKILL this process once a save has made ``complete`` (a ``step_N`` directory) exist."""
    original_save = Checkpointer.save

    def save(self, step, blocking=False):
        blocked_s = original_save(self, step, blocking)
        if complete.is_dir():
            os.kill(os.getpid(), signal.SIGKILL)
        return blocked_s

    Checkpointer.save = save


def main(cases: list[dict]) -> None:
    if any("crash_in_save_of" in case or "kill_after_save_of" in case for case in cases[:-1]):
        raise ValueError("only the last case may crash (the process dies there)")
    for case in cases:
        if "crash_in_save_of" in case:
            die_in_save_into(Path(case["crash_in_save_of"]))
        if "kill_after_save_of" in case:
            kill_after_save_of(Path(case["kill_after_save_of"]))
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = train.main(case["argv"])
        print("RESULT " + json.dumps({"rc": rc, "stderr": err.getvalue()}), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
