"""Worker for tests/test_weight_stats.py: WeightStats on FSDP2 models vs full-tensor references.

Run as ``torchrun --nproc_per_node=N tests/dist_weight_stats_worker.py OUT.json`` or as a plain
process (a world of one). For debug GPT-2 (untied head, odd vocab and seq_len so Shard(0) is
uneven), debug Llama and, with 2+ ranks, HSDP (replicate x shard) GPT-2, it takes one SGD step
with ``snapshot()`` before it, then records ``compute()`` (counting its all_reduce calls, with
``full_tensor`` made to raise) next to references from gathered full tensors. It also plants a
NaN in the last rank's shard of one grad and records every rank's ``first_nonfinite`` answer.
Rank 0 writes everything as JSON to OUT.json.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed import distributed_c10d
from torch.distributed.tensor import DTensor

from components.build import build_model_and_init
from components.config import load_config
from components.metrics import first_nonfinite
from components.weight_stats import WeightStats
from distributed.env import distributed_session, init_distributed

VOCAB = 501  # odd: 2 ranks get 251 and 250 embedding rows
SEQ_LEN = 33
CASES = {  # name -> (config argv, data-parallel replicate degree)
    "gpt2": (["--model.name", "gpt2", "--model.tie_embeddings", "false"], 1),
    "llama": (["--model.name", "llama"], 1),
    "gpt2_hsdp": (["--model.name", "gpt2", "--parallelism.data_parallel_replicate_degree", "2"], 2),
}


@contextmanager
def counted_collectives(counter: dict):
    """Count all_reduce calls (both public entry points) and make DTensor.full_tensor raise."""
    originals = (dist.all_reduce, distributed_c10d.all_reduce, DTensor.full_tensor)

    def counting_all_reduce(*args, **kwargs):
        counter["all_reduce"] += 1
        return originals[1](*args, **kwargs)

    def forbidden_full_tensor(self, *args, **kwargs):
        raise AssertionError("WeightStats.compute called full_tensor()")

    dist.all_reduce = distributed_c10d.all_reduce = counting_all_reduce
    DTensor.full_tensor = forbidden_full_tensor
    try:
        yield
    finally:
        dist.all_reduce, distributed_c10d.all_reduce, DTensor.full_tensor = originals


def full_weights(stats: WeightStats) -> list[torch.Tensor]:
    return [t.param.full_tensor().detach().double().clone() for t in stats.tracked]


def run_case(argv: list[str], replicate: int) -> dict:
    """One model: one SGD step between snapshot() and compute(); measured values and references."""
    env = init_distributed("cpu", replicate=replicate)
    cfg, _ = load_config([*argv, "--init.scheme", "normal", "--training.seq_len", str(SEQ_LEN)])
    model, _, _ = build_model_and_init(cfg, VOCAB, env)
    stats = WeightStats(model, grad_stats=True)
    generator = torch.Generator().manual_seed(1000 + env.rank)  # different data per rank
    tokens = torch.randint(0, VOCAB, (2, SEQ_LEN), generator=generator)
    loss = F.cross_entropy(model(tokens)[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    before = full_weights(stats)
    stats.snapshot()
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    counter = {"all_reduce": 0}
    with counted_collectives(counter):
        measured = stats.compute()
    after = full_weights(stats)
    expected = {}
    for t, w_before, w_after in zip(stats.tracked, before, after):
        expected[t.tag("weight_std")] = w_after.std().item()
        full_grad = t.param.grad.full_tensor().double()
        expected[t.tag("grad_norm")] = full_grad.norm().item()
        expected[t.tag("grad_rms")] = full_grad.square().mean().sqrt().item()
        expected[t.tag("update_ratio")] = ((w_after - w_before).norm() / w_after.norm()).item()
    placements = [str(p) for p in stats.tracked[0].param.placements]
    return {"measured": measured, "expected": expected, "all_reduce_calls": counter["all_reduce"],
            "roles_to_layers": stats.roles_to_layers(), "placements": placements,
            "nonfinite": nonfinite_answers(model, env.world_size)}


def nonfinite_answers(model: torch.nn.Module, world_size: int) -> dict:
    """Every rank's first_nonfinite before and after a NaN is planted in the last rank's shard of one grad."""
    clean = first_nonfinite(model)
    grad = model.layers["2"].mlp.out.weight.grad.to_local()
    if dist.get_rank() == world_size - 1:
        grad[0, 0] = float("nan")
    planted = first_nonfinite(model)
    answers = [None] * world_size
    dist.all_gather_object(answers, [clean, planted])
    return {"clean": [a[0] for a in answers], "planted": [a[1] for a in answers]}


def main(out_path: str) -> None:
    with distributed_session("cpu") as env:
        results = {"world_size": env.world_size}
        for name, (argv, replicate) in CASES.items():
            if env.world_size % replicate == 0:
                results[name] = run_case(argv, replicate)  # a mesh of this shape on the same process group
        if env.is_main:
            with open(out_path, "w") as f:
                json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1])
