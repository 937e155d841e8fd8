"""Process group and device mesh, the same code path for plain ``python`` and ``torchrun``.

A plain ``python train.py`` run is a world of one: it still gets a (gloo or NCCL) process group
and a 1-rank mesh, so FSDP2, DCP and the packed metric reductions run the same code as N ranks.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import functools
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mesh: DeviceMesh  # 1-D ("dp_shard",) or 2-D ("dp_replicate", "dp_shard") for HSDP

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dp_rank(self) -> int:
        """Index of this rank's slice of the global batch (every rank is a data-parallel rank)."""
        return self.rank

    @property
    def dp_size(self) -> int:
        return self.world_size


def resolve_device_type(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("training.device = 'cuda' but no CUDA device is visible; use --training.device cpu")
    return requested


def mesh_shape(world_size: int, replicate: int, shard: int) -> tuple[int, int]:
    """(replicate, shard) degrees; shard = -1 takes what replication leaves."""
    if shard == -1:
        if world_size % replicate:
            raise ValueError(f"parallelism.data_parallel_replicate_degree = {replicate} does not divide "
                             f"the world size {world_size}")
        shard = world_size // replicate
    if replicate * shard != world_size:
        raise ValueError(f"parallelism replicate x shard = {replicate} x {shard} != world size {world_size}; "
                         "set data_parallel_shard_degree = -1")
    return replicate, shard


def init_distributed(device_type: str, replicate: int = 1, shard: int = -1,
                     timeout_s: float = 1800) -> DistEnv:
    """Join (or, for a plain process, create) the default process group and build the DP mesh."""
    device_type = resolve_device_type(device_type)
    backend = "nccl" if device_type == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    device = torch.device(device_type, local_rank) if device_type == "cuda" else torch.device("cpu")
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        if "RANK" in os.environ:
            dist.init_process_group(backend, timeout=timeout,
                                    device_id=device if device_type == "cuda" else None)
        else:  # a world of one, no rendezvous needed
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    world_size, rank = dist.get_world_size(), dist.get_rank()
    rep, shd = mesh_shape(world_size, replicate, shard)
    if rep > 1:
        mesh = init_device_mesh(device_type, (rep, shd), mesh_dim_names=("dp_replicate", "dp_shard"))
    else:
        mesh = init_device_mesh(device_type, (shd,), mesh_dim_names=("dp_shard",))
    return DistEnv(rank, world_size, local_rank, device, mesh)


# How long a failing rank waits for its peers before tearing down alone.
FAILED_TEARDOWN_WAIT_S = 10.0
_sessions_opened = 0  # every rank opens the same sessions in the same order: a common store-key namespace


@contextlib.contextmanager
def distributed_session(device_type: str, replicate: int = 1, shard: int = -1,
                        timeout_s: float = 1800) -> Iterator[DistEnv]:
    """``init_distributed`` for the body of a ``with``, then a teardown in which the ranks leave together.

    A gloo process that exits while a peer still holds its connections open can die in
    ``std::terminate`` (SIGABRT, seen on torch 2.13 with 4 ranks on 2 cores), turning a finished
    job into a failed one. So on a clean exit every rank meets at a barrier before destroying the
    process group. An error is often raised on every rank alike (a bad run directory, a non-finite
    loss), but it may be one rank's while the others sit in a collective, so failing ranks meet
    through the rendezvous store instead, for at most ``FAILED_TEARDOWN_WAIT_S``; a rank whose peers
    do not come tears down alone and torchrun stops the rest.
    """
    global _sessions_opened
    if _sessions_opened == 0:
        atexit.register(_release_process_groups)
    _sessions_opened += 1
    session = _sessions_opened
    try:
        env = init_distributed(device_type, replicate, shard, timeout_s)
        yield env
    except BaseException:
        if dist.is_initialized():
            _wait_for_failed_peers(f"initlab/session_{session}")
            dist.destroy_process_group()
        raise
    dist.barrier()
    dist.destroy_process_group()


def _release_process_groups() -> None:
    """At exit, free the destroyed process groups while the interpreter is still whole.

    ``destroy_process_group`` does not stop gloo's worker threads: they live as long as the C++
    group, which torch.distributed's own caches keep alive (the sharding-propagation and
    redistribute-planner caches, lru caches keyed by meshes: each entry holds a mesh, each mesh
    its groups). Freed only during interpreter shutdown, a worker thread could be stopped while
    unjoined (``terminate called without an active exception``, SIGABRT) in about 1 of 20 gloo
    launches. Emptying those caches and collecting here joins the threads cleanly. torch 2.11 also keeps a mesh
    alive from a sharding strategy held on its C++ side, out of reach of those clears; every mesh holds its groups
    in ``_pg_registry`` (torch 2.11-2.14), so the meshes let go of them too (the groups are destroyed already).
    """
    from torch.distributed.tensor import _redistribute, debug

    # Private and version-dependent, so looked up softly: a torch without one has nothing to clear there.
    objects = gc.get_objects()
    clears = [getattr(debug, "_clear_sharding_prop_cache", None),
              getattr(_redistribute, "clear_redistribute_planner_cache", None)]
    clears += [cached.cache_clear for cached in objects
               if type(cached) is functools._lru_cache_wrapper  # not isinstance: it would poke deprecated objects
               and (getattr(cached, "__module__", None) or "").startswith("torch.distributed")]
    clears += [registry.clear for mesh in objects if type(mesh) is DeviceMesh
               and isinstance(registry := getattr(mesh, "_pg_registry", None), dict)]
    del objects
    for clear in clears:
        if clear is not None:
            clear()
    gc.collect()


def _wait_for_failed_peers(namespace: str) -> None:
    try:
        store = dist.distributed_c10d._get_default_store()  # no collective: a peer may be stuck inside one
        if store.add(f"{namespace}/failed_ranks", 1) == dist.get_world_size():
            store.set(f"{namespace}/all_failed", "1")
        store.wait([f"{namespace}/all_failed"], datetime.timedelta(seconds=FAILED_TEARDOWN_WAIT_S))
    except RuntimeError:  # a timeout (some peer did not fail: torchrun stops it) or a store already gone
        pass  # the error being raised is the one to report


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def any_and_all(flag_any: bool, flag_all: bool, group: dist.ProcessGroup | None) -> tuple[bool, bool]:
    """(any rank's ``flag_any``, every rank's ``flag_all``) in one all-reduce over ``group``, a CPU (gloo) group,
    so it never waits for the device stream; no collective in a world of one."""
    if group is None or dist.get_world_size(group) == 1:
        return flag_any, flag_all
    flags = torch.tensor([int(flag_any), int(not flag_all)], dtype=torch.int32)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group)
    return bool(flags[0]), not bool(flags[1])


def decided_by_rank0(decide, *errors: type[Exception]):
    """``decide()`` on rank 0 only (it may read and write files), its result shared with every rank.

    An exception of one of ``errors`` raised there is raised on every rank alike (same type and message),
    so all ranks stop together instead of the others waiting in the next collective.
    """
    outcome = [None, None]
    if dist.get_rank() == 0:
        try:
            outcome = [decide(), None]
        except errors as err:
            outcome = [None, err]
    dist.broadcast_object_list(outcome, src=0)
    if outcome[1] is not None:
        raise outcome[1]
    return outcome[0]
