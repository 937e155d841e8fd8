"""A torchrun worker for tests/test_env.py: one ``distributed_session`` ending as argv[2] says.

argv: <out_dir> <ok | all_fail | one_fail>. Each rank writes ``<out_dir>/rank_<R>.json`` with what it
saw after the session (or the error it raised), and at exit ``<out_dir>/threads_<R>.json``: the
names of the threads besides the main one still running once every other exit handler has run.
"""

from __future__ import annotations

import atexit
import json
import os
import sys

import torch
import torch.distributed as dist

import distributed.env as dist_env
from components.build import build_model_and_init
from components.config import load_config


def write_thread_names(path: str) -> None:
    """Names of this process's threads other than the main one (whose task id is the pid)."""
    names = sorted(open(f"/proc/self/task/{task}/comm").read().strip() for task in os.listdir("/proc/self/task")
                   if int(task) != os.getpid())
    with open(path, "w") as f:
        json.dump(names, f)


def main(out_dir: str, mode: str) -> None:
    dist_env.FAILED_TEARDOWN_WAIT_S = 2.0  # keep the one-rank failure case short
    rank = int(os.environ["RANK"])
    atexit.register(write_thread_names, os.path.join(out_dir, f"threads_{rank}.json"))  # runs after the session's
    report = {"rank": rank}
    try:
        with dist_env.distributed_session("cpu") as env:
            total = torch.ones(1)
            dist.all_reduce(total)  # the group works inside the session
            report["world_sum"] = total.item()
            if mode == "all_fail" or (mode == "one_fail" and rank == 1):
                raise ValueError(f"rank {rank} failed on purpose")
            if mode == "one_fail":
                dist.all_reduce(total)  # blocks: rank 1 never joins; torchrun stops this rank
            report["mesh"] = list(env.mesh.shape)
            # An FSDP2-sharded model and a gather fill torch.distributed's caches with this mesh.
            cfg, _ = load_config(["--model.n_layers", "1"])
            model, _, _ = build_model_and_init(cfg, 64, env)
            report["full_sum"] = model.final_norm.weight.full_tensor().sum().item()
    except ValueError as e:
        report["error"] = str(e)
    report["initialized_after"] = dist.is_initialized()
    with open(os.path.join(out_dir, f"rank_{rank}.json"), "w") as f:
        json.dump(report, f)
    if "error" in report:
        sys.exit(3)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
