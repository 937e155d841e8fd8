"""Run several complete single-process ``train.py`` runs in one interpreter (one torch import for all).

Usage: ``python tests/train_cases_worker.py CASES.json RESULTS.json`` where CASES.json is a JSON
list of train.py argv lists. Each case is what ``python train.py <argv>`` does: ``train.main(argv)``
in a world of one whose process group is created and destroyed inside the call. Its stdout and
stderr are captured; RESULTS.json receives one object per case, in order:
``{"argv": [...], "rc": int, "stdout": str, "stderr": str, "seconds": float}``.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from pathlib import Path

import torch

import train


def run_case(argv: list[str]) -> dict:
    """``train.main(argv)`` with stdout/stderr captured; the return code as ``python train.py`` exits with."""
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = train.main(argv)
    return {"argv": argv, "rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue(),
            "seconds": time.perf_counter() - start}


def main(cases_path: Path, results_path: Path) -> None:
    torch.set_num_threads(1)  # the test machine's cores are shared; results do not depend on it
    cases = json.loads(cases_path.read_text())
    results_path.write_text(json.dumps([run_case(argv) for argv in cases]))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
