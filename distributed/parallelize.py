"""Apply activation checkpointing, torch.compile and FSDP2 to a model built on ``meta``.

Order as in torchtitan: AC wraps each block, compile compiles each block in place (names
unchanged), then ``fully_shard`` shards each block and finally the root (embeddings, final
norm, head), all on the data-parallel mesh. ``models/`` knows nothing of this.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from distributed.env import DistEnv
from distributed.one_rank import OneRankReduceScatter, install_in_place, internals_differ

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def apply_activation_checkpointing(model: nn.Module, mode: str, every_k: int) -> None:
    """Recompute blocks in backward: every block (full) or blocks with index % every_k == 0 (selective)."""
    if mode == "none":
        return
    for name, block in list(model.layers.items()):
        if mode == "full" or int(name) % every_k == 0:
            model.layers[name] = checkpoint_wrapper(block, preserve_rng_state=False)


def compile_enabled(enable: bool | None, device: torch.device) -> bool:
    return device.type == "cuda" if enable is None else enable


def apply_compile(model: nn.Module) -> None:
    """Compile each block in place (one graph per block, reused across blocks of equal shape)."""
    # Statistics hooks (components/activation_stats.py) store their results as forward side effects; under
    # activation checkpointing Dynamo refuses those in a fullgraph unless the recomputation skips them, which
    # is also what they need (recomputation must not measure twice).
    torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint = True
    for block in model.layers.values():
        block.compile(fullgraph=True)


def mixed_precision(training, device: torch.device) -> MixedPrecisionPolicy:
    """bf16 compute with fp32 reductions on CUDA; CPU (gloo) stays in float32."""
    if device.type != "cuda":
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=DTYPES[training.mixed_precision_param],
                                reduce_dtype=DTYPES[training.mixed_precision_reduce])


def shard_group_size(env: DistEnv) -> int:
    return env.mesh.size(env.mesh.ndim - 1)  # the shard dimension is the last mesh dimension


def reshards_after_forward(parallelism, env: DistEnv) -> bool:
    """``parallelism.reshard_after_forward``, auto (None) resolved: no resharding when a shard group is one rank."""
    if parallelism.reshard_after_forward is not None:
        return parallelism.reshard_after_forward
    return shard_group_size(env) > 1


def in_place_on_one_rank(parallelism, env: DistEnv) -> bool:
    """``parallelism.one_rank_in_place``, auto (None) resolved: on for a world of one on CUDA (mixed precision; where
    it was measured and tested; replicas of one-rank shard groups may set it true) when this torch's FSDP2 internals
    are those distributed/one_rank.py was written for; where they are not, FSDP2's own path (the same numbers) with
    a warning naming what differs."""
    if parallelism.one_rank_in_place is not None:
        return parallelism.one_rank_in_place
    if env.world_size != 1 or env.device.type != "cuda":
        return False
    differs = internals_differ()
    if differs:
        warnings.warn(f"parallelism.one_rank_in_place (auto): off, FSDP2's own path (the same numbers, slower); this "
                      f"torch {torch.__version__}'s FSDP2 internals differ: {'; '.join(differs)}", stacklevel=2)
    return not differs


def apply_fsdp(model: nn.Module, env: DistEnv, mp: MixedPrecisionPolicy, reshard_after_forward: bool,
               one_rank_in_place: bool = False) -> None:
    """fully_shard each block, then the root; on a 2-D mesh this is HSDP (replicate x shard). On a one-rank shard
    group the reduce-scatter aliases its output (distributed/one_rank.py), and with ``one_rank_in_place`` the
    weights' casts and the gradients' accumulation skip FSDP2's staging copies too."""
    blocks = list(model.layers.values())
    for i, block in enumerate(blocks):
        # The last block's parameters are needed again at once by backward: keep them gathered.
        fully_shard(block, mesh=env.mesh, mp_policy=mp,
                    reshard_after_forward=reshard_after_forward and i < len(blocks) - 1)
    fully_shard(model, mesh=env.mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    if shard_group_size(env) == 1:
        for module in (*blocks, model):
            comm = OneRankReduceScatter()
            module.set_custom_reduce_scatter(comm)
            if one_rank_in_place:
                install_in_place(module, comm)


def start_micro_batch(model: nn.Module, is_last: bool, keep_gathered: bool) -> None:
    """FSDP2 before each micro-batch of a step: reduce-scatter the gradients only after the last; with
    ``keep_gathered`` (no resharding after forward) also keep the gathered parameters until then, so the
    step all-gathers once instead of once per micro-batch (they are resharded before the optimizer step)."""
    model.set_requires_gradient_sync(is_last)
    if keep_gathered:
        model.set_reshard_after_backward(is_last)


def parallelize(model: nn.Module, env: DistEnv, parallelism, training, compile_cfg, ac_cfg) -> nn.Module:
    """AC -> compile -> FSDP2, in place; returns the model."""
    apply_activation_checkpointing(model, ac_cfg.mode, ac_cfg.every_k)
    if compile_enabled(compile_cfg.enable, env.device):
        apply_compile(model)
    apply_fsdp(model, env, mixed_precision(training, env.device), reshards_after_forward(parallelism, env),
               in_place_on_one_rank(parallelism, env))
    return model
