"""Run several complete ``train.py`` runs in one interpreter (one torch import for all).

Usage: ``python tests/train_cases_worker.py CASES.json RESULTS.json`` where CASES.json is a JSON
list of train.py argv lists. Each case is what ``python train.py <argv>`` does: ``train.main(argv)``
in a world of one whose process group is created and destroyed inside the call. Its stdout and
stderr are captured; RESULTS.json receives one object per case, in order:
``{"argv": [...], "rc": int, "stdout": str, "stderr": str, "seconds": float}``.

Under ``torchrun`` every rank runs the cases in the same order, each case what ``torchrun train.py
<argv>`` does (its own process group, created and destroyed inside the call, so one launch serves
several runs); rank R > 0 writes its results to ``RESULTS.json.rank<R>``. torch.distributed names a new
default group's store keys as it named the destroyed one's, so from the second case on the group joins
through the same rendezvous store under a prefix of its own (``initlab_case_<i>/``): no case reads a
previous case's keys.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.rendezvous import rendezvous

import train

_init_process_group = dist.init_process_group


def rendezvous_under(prefix: str):
    """``dist.init_process_group`` whose env:// rendezvous store keys all start with ``prefix``."""

    def init_process_group(backend=None, init_method=None, timeout=None, world_size=-1, rank=-1, store=None,
                           **kwargs):
        if store is None:
            options = {} if timeout is None else {"timeout": timeout}
            store, rank, world_size = next(rendezvous(init_method or "env://", rank, world_size, **options))
            store = dist.PrefixStore(prefix, store)
        return _init_process_group(backend, timeout=timeout, world_size=world_size, rank=rank, store=store, **kwargs)

    return init_process_group


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
    results = []
    for i, argv in enumerate(cases):
        if i > 0 and "RANK" in os.environ:
            dist.init_process_group = rendezvous_under(f"initlab_case_{i}/")
        results.append(run_case(argv))
    results = json.dumps(results)
    rank = int(os.environ.get("RANK", "0"))
    (results_path if rank == 0 else results_path.with_name(f"{results_path.name}.rank{rank}")).write_text(results)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
