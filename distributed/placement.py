"""Sharded tensors and the collectives over them: the one place that reads DTensor placements.

FSDP2 places every parameter (and its gradient) ``Shard(0)`` on a 1-D mesh, or ``(Replicate(), Shard(0))``
on HSDP's 2-D mesh, where the replicas hold identical shards. Row shards follow ``torch.chunk``: ceil-sized
chunks, the last ones short or empty. What this module offers, all without gathering a full tensor:

- :func:`local_shard` / :func:`local_rows`: this rank's part of a tensor (and its first global row);
- :func:`is_row_placement` / :func:`unsupported_placement`: whether a placement is one of those two;
- :func:`shard_dims` / :func:`reduction_layout` / :func:`shard_group`: the mesh dimensions (process group)
  over which per-rank partial results must be summed, replicas excluded (summing over the replicate
  dimension would count every element once per replica);
- the collectives that the training loop and the statistics use: :func:`sum_over_mesh_dims_`,
  :func:`stack_over_ranks` (one all-reduce as an all-gather), :func:`all_ranks_max_`, :func:`global_sum`,
  :func:`global_mean`, :func:`global_max`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.placement_types import Placement


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (no communication); a plain tensor as it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def is_row_placement(placement: Placement) -> bool:
    """Whether ``placement`` is FSDP2/HSDP's: ``Replicate()`` or ``Shard(0)`` exactly (not a strided or
    tensor-parallel shard)."""
    return type(placement) is Replicate or (type(placement) is Shard and placement.dim == 0)


def unsupported_placement(tensor: torch.Tensor) -> Placement | None:
    """The first placement of ``tensor`` that is not a row placement; None for a plain tensor or FSDP2/HSDP's."""
    if isinstance(tensor, DTensor):
        for placement in tensor.placements:
            if not is_row_placement(placement):
                return placement
    return None


def local_rows(param: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(local tensor, global index of its first row) for a plain tensor or a dim-0-sharded DTensor."""
    if not isinstance(param, DTensor):
        return param, 0
    if (placement := unsupported_placement(param)) is not None:
        raise NotImplementedError(f"init of placement {placement} (only Shard(0)/Replicate are supported)")
    start = 0
    rows = param.shape[0]
    for mesh_dim, placement in enumerate(param.placements):
        if isinstance(placement, Replicate):
            continue
        # torch.chunk semantics, as FSDP2 uses: ceil-sized chunks, the last ones short or empty.
        n, coord = param.device_mesh.size(mesh_dim), param.device_mesh.get_local_rank(mesh_dim)
        chunk = math.ceil(rows / n)
        start += min(coord * chunk, rows)
        rows = max(0, min(rows, (coord + 1) * chunk) - min(coord * chunk, rows))
    local = param.to_local()
    if local.shape[0] != rows:
        raise RuntimeError(f"local shard has {local.shape[0]} rows, expected {rows}")
    return local, start


def shard_dims(tensor: DTensor) -> tuple[int, ...]:
    """Mesh dimensions over which ``tensor`` is sharded (its local partial sums must be summed over them)."""
    dims = []
    for mesh_dim, placement in enumerate(tensor.placements):
        if placement.is_partial():
            raise ValueError(f"clip_grad_norm_ got a gradient with a Partial placement {tensor.placements}; "
                             "reduce gradients (FSDP does) before clipping")
        if placement.is_shard():
            dims.append(mesh_dim)
    return tuple(dims)


def reduction_layout(tensor: torch.Tensor) -> tuple[DeviceMesh | None, tuple[int, ...]]:
    """(mesh, shard dims) of a DTensor; (None, ()) for a plain tensor (held whole, so nothing to sum)."""
    if isinstance(tensor, DTensor):
        return tensor.device_mesh, shard_dims(tensor)
    return None, ()


def shard_group(tensors: Iterable[torch.Tensor]) -> dist.ProcessGroup | None:
    """The group whose ranks hold disjoint pieces of every one of ``tensors``; None when nothing is sharded.

    Replicas (HSDP's first mesh dimension) hold identical shards, so only the mesh dimension that shards
    ("dp_shard") must be summed.
    """
    layouts = set()
    for tensor in tensors:
        if isinstance(tensor, DTensor):
            layouts.add((tensor.device_mesh, tuple(i for i, p in enumerate(tensor.placements) if p.is_shard())))
        else:
            layouts.add(None)
    if len(layouts) > 1:
        raise ValueError("tracked weights are not all sharded alike (e.g. plain tensors next to DTensors); "
                         "pass WeightStats(process_group=...) naming the group that partitions them")
    (layout,) = layouts
    if layout is None or not layout[1]:
        return None  # every rank holds full tensors: local statistics are already global
    mesh, dims = layout
    if len(dims) > 1:
        raise ValueError(f"weights are sharded over mesh dims {dims} of {mesh}; "
                         "pass WeightStats(process_group=...) with one group covering all shards")
    return mesh.get_group(dims[0])


def sum_over_mesh_dims_(value: torch.Tensor, mesh: DeviceMesh | None, dims: tuple[int, ...]) -> torch.Tensor:
    """Sum ``value`` in place over the ranks of each mesh dimension in ``dims`` (none: unchanged)."""
    for mesh_dim in dims:
        dist.all_reduce(value, op=dist.ReduceOp.SUM, group=mesh.get_group(mesh_dim))
    return value


def stack_over_ranks(local: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """[group size, *local.shape]: every rank's ``local`` in rank order, from ONE all-reduce (each rank fills its
    own slot of zeros, so the SUM is a gather). ``group`` None = every rank; without a process group: local[None]."""
    if not (dist.is_available() and dist.is_initialized()):
        return local.unsqueeze(0)
    per_rank = local.new_zeros(dist.get_world_size(group), *local.shape)
    per_rank[dist.get_rank(group)] = local
    dist.all_reduce(per_rank, op=dist.ReduceOp.SUM, group=group)
    return per_rank


def all_ranks_max_(values: torch.Tensor) -> torch.Tensor:
    """Element-wise max of ``values`` over every rank, in place (unchanged without a process group)."""
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def global_sum(value: torch.Tensor) -> float:
    """Sum of a per-rank scalar over all ranks, in float32 (a host sync)."""
    value = value.detach().clone().float()
    dist.all_reduce(value)
    return value.item()


def global_mean(value: torch.Tensor) -> float:
    """Mean of a per-rank scalar over all ranks (a host sync: logging steps only); gloo has no AVG."""
    return global_sum(value) / dist.get_world_size()


def global_max(value: torch.Tensor) -> float:
    """Max of a per-rank scalar over all ranks (a host sync)."""
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value.item()
