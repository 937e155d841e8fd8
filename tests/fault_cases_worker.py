"""Several ``train.py`` runs in one interpreter, each optionally under a fault: for tests/test_faults.py.

Usage: ``python tests/fault_cases_worker.py CASES.json RESULTS.json``. CASES.json is a JSON list of
``{"argv": [...], "fsize": N, "inf_after_update": S}`` (the last two optional):

- ``fsize``: the case runs under a real per-process file-size limit of N bytes (``RLIMIT_FSIZE``; a write
  past it fails with EFBIG, as on a full quota), restored afterwards;
- ``inf_after_update``: right after the optimizer update of step S, the first element of layer 1's
  ``attn.q`` weight becomes +inf (what an overflowing update does), so that step's save sees it;
- ``unchecked_saves``: saves skip the non-finite check, as the trainer did before it had one.

RESULTS.json receives ``{"argv", "rc", "stdout", "stderr", "seconds"}`` per case, as
tests/train_cases_worker.py writes them.
"""

from __future__ import annotations

import json
import resource
import sys
import traceback
from pathlib import Path

import torch

import train
from components import checkpoint
from components.weight_stats import local_shard
from tests.train_cases_worker import run_case

POISONED = "layers.1.attn.q.weight"


def poison_update_of(step: int):
    """Make build_optimizer return optimizers whose update of ``step`` leaves an inf in POISONED."""
    build = train.build_optimizer

    def build_poisoned(model, *args, **kwargs):
        optimizer = build(model, *args, **kwargs)
        calls = {"n": 0}

        def after_step(*_):
            calls["n"] += 1
            if calls["n"] == step:
                with torch.no_grad():
                    local_shard(dict(model.named_parameters())[POISONED]).view(-1)[0] = float("inf")

        optimizer.register_step_post_hook(after_step)
        return optimizer

    return build_poisoned


def run_faulty_case(case: dict) -> dict:
    original_build, limits = train.build_optimizer, resource.getrlimit(resource.RLIMIT_FSIZE)
    original_check = checkpoint.first_nonfinite
    if case.get("unchecked_saves"):
        checkpoint.first_nonfinite = lambda model: None
    if case.get("inf_after_update"):
        train.build_optimizer = poison_update_of(case["inf_after_update"])
    if case.get("fsize") is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (case["fsize"], limits[1]))
    try:
        return run_case(case["argv"])
    except BaseException:  # an escaped exception is what `python train.py` would print as a traceback
        return {"argv": case["argv"], "rc": None, "stdout": "", "stderr": traceback.format_exc(), "seconds": 0.0}
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        train.build_optimizer = original_build
        checkpoint.first_nonfinite = original_check


def main(cases_path: Path, results_path: Path) -> None:
    torch.set_num_threads(1)
    cases = json.loads(cases_path.read_text())
    results_path.write_text(json.dumps([run_faulty_case(case) for case in cases]))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
