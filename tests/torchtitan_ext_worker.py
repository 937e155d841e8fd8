"""torchrun worker for tests/test_torchtitan_ext.py: torchtitan's llama3 under FSDP2, initialized by the extension.

Usage: ``torchrun --nproc_per_node=N tests/torchtitan_ext_worker.py OUT.pt ARG ...`` where ARGs are
torchtitan command-line options. Every rank parses them with torchtitan's ConfigManager, builds the
model through the registered TrainSpec on meta, shards each block and the root with FSDP2 over all
ranks, then ``to_empty`` + ``init_weights`` (each rank draws its shards only). Rank 0 saves the full
tensors (gathered for the comparison only), the weight std of the shards (initlab's tags) and the
one-line error that a tensor-parallel placement (Shard(1), as TP gives ``wo``/``w2``) gets.
"""

from __future__ import annotations

import sys

import torch
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Shard, distribute_tensor

from distributed.env import distributed_session
from integrations.torchtitan.metrics import torchtitan_weight_stats
from integrations.torchtitan.spec import check_placements
from tests.test_torchtitan_ext import build_on_meta, parse_job_config


def main(out_path: str, argv: list[str]) -> None:
    with distributed_session("cpu") as env:
        model = build_on_meta(parse_job_config(argv))
        for block in model.layers.values():
            fully_shard(block, mesh=env.mesh)
        fully_shard(model, mesh=env.mesh)
        model.to_empty(device="cpu")
        with torch.no_grad():
            model.init_weights()
        weight_std = torchtitan_weight_stats([model]).compute()  # collective: one packed all-reduce
        state = {name: p.full_tensor() for name, p in model.named_parameters()}
        try:
            check_placements("layers.0.attention.wo.weight", distribute_tensor(torch.zeros(4, 4), env.mesh, [Shard(1)]))
            refusal = ""
        except ValueError as error:
            refusal = str(error)
        if env.is_main:
            torch.save({"state": state, "weight_std": weight_std, "refusal": refusal, "world_size": env.world_size},
                       out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
