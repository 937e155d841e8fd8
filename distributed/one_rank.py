"""FSDP2 on a shard group of one rank (one GPU, or replicas of one rank each) without the copies it makes there.

On a one-rank group FSDP2 (torch 2.11-2.14, ``torch/distributed/fsdp/_fully_shard/``) runs no all-gather and no
reduce-scatter, but keeps their staging copies:

- unshard (``FSDPParamGroup.wait_for_unshard``, its ``world_size == 1`` branch): each fp32 weight is cast to a new
  bf16 tensor (``FSDPParam.all_gather_inputs``), which is then copied into the gathered parameter;
- gradients of a step's micro-batches (``set_requires_gradient_sync(False)`` before the last): the first one's bf16
  gradients are cast to new fp32 tensors (``to_accumulated_grad_if_needed``), the next ones added to them, and at
  the last micro-batch ``foreach_reduce`` packs them into the reduce-scatter input (``_chunk_cat``), one more
  read and write of every fp32 gradient;
- the reduce-scatter itself: the input is copied into a new output (:class:`OneRankReduceScatter` removes that).

With ``parallelism.one_rank_in_place`` (:func:`install_in_place`; on by default for a world of one on CUDA) the weights are cast straight into the gathered
parameters; the first micro-batch's bf16 gradients are kept as autograd made them, and the second's are summed with
them into the packed buffer in one pass (:func:`sum_into`: FSDP2's cast and addition, one fp32 rounding), later
micro-batches adding there, so the packing finds them in place and is skipped. The numbers are the same bitwise (the
same casts and additions, in the same order, into other memory). Memory traffic per parameter and step with bf16
weights, fp32 gradients and two micro-batches: 14 bytes instead of 34 (weights: a cast of 6 instead of 6 + a copy of
4; gradients: 2 + 2 read and 4 written instead of a cast of 6, an addition of 10 and the packing's 8), 30 GB less
per llama_1b step; the kept bf16 gradients also take half the memory of FSDP2's fp32 ones between micro-batches.
Without mixed precision (CPU, float32) nothing is cast or kept, so nothing changes.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.fsdp._fully_shard import _fsdp_collectives
from torch.distributed.fsdp._fully_shard._fsdp_param import FSDPParam, ShardedState


class OneRankReduceScatter:
    """FSDP2's reduce-scatter (its ``ReduceScatter`` interface: ``allocate`` + ``__call__``,
    torch/distributed/fsdp/_fully_shard/_fsdp_api.py) for a shard group of one rank, without a copy.

    There FSDP2 (torch >= 2.11, ``_fsdp_collectives.foreach_reduce``) allocates the reduce-scatter
    input [n], packs the fp32 gradients into it, allocates an output [n] and copies the input into it
    instead of calling the collective: one more read and write of every gradient (12 GB per step for
    a 1.5 B-parameter model, ~4 ms on an H200). Here the output's allocation returns the input's
    buffer, so that copy finds the same data and returns at once (``Tensor.copy_`` does nothing for
    identical views) and the sharded gradients are views of the packed input. One instance per FSDP
    module: its reduction allocates input, then output, once per step.

    ``accumulated`` is the packed buffer into which :class:`InPlaceParam` accumulates this step's gradients
    (None without ``one_rank_in_place``); the input's allocation hands it out when its size and dtype match.
    """

    def __init__(self) -> None:
        self._input: torch.Tensor | None = None
        self.accumulated: torch.Tensor | None = None

    def allocate(self, size, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        if self._input is None:  # the reduce-scatter input
            packed, self.accumulated = self.accumulated, None  # a step's buffer serves one reduction only
            fits = packed is not None and packed.shape == torch.Size(size) and packed.dtype == dtype
            self._input = packed if fits else torch.empty(*size, dtype=dtype, device=device)
            return self._input
        output, self._input = self._input, None  # its output: on one rank, the same numbers
        if output.shape != torch.Size(size) or output.dtype != dtype:
            raise RuntimeError(f"OneRankReduceScatter: output {tuple(size)} {dtype} does not match the input "
                               f"{tuple(output.shape)} {output.dtype}; is the shard group larger than one rank?")
        return output

    def __call__(self, output_tensor, input_tensor, group, op, async_op: bool = False):
        raise RuntimeError(f"OneRankReduceScatter was asked to reduce over {group.size()} ranks; it is installed "
                           "only on one-rank shard groups, where FSDP2 copies instead of calling it")


class InPlaceParam(FSDPParam):
    """An ``FSDPParam`` of a one-rank group (its class swapped in by :func:`install_in_place`): gathered weights
    cast in one copy, accumulated gradients held in the group's packed buffer at their packing offset."""

    _packing: tuple[OneRankReduceScatter, int, int]  # (the group's reduce-scatter, this offset, the group's numel)
    _first_grad: torch.Tensor | None = None  # the first micro-batch's gradient (param dtype), until the second's

    @property
    def all_gather_inputs(self) -> list[torch.Tensor]:
        # The fp32 shard itself: wait_for_unshard's copy_ into the (param-dtype) gathered tensor is the cast.
        if self.sharded_state == ShardedState.SHARDED:
            return [self._sharded_param_data]
        return FSDPParam.all_gather_inputs.fget(self)

    def init_all_gather_outputs(self, all_gather_input_numels, all_gather_input_dtypes, *args, **kwargs) -> None:
        # FSDP2's own, in the param dtype; the rest passed on as given (torch 2.11-2.12's ``force_recreate``:
        # recreate the outputs even if made, here in the param dtype too)
        dtypes = [self.param_dtype or dtype for dtype in all_gather_input_dtypes]
        super().init_all_gather_outputs(all_gather_input_numels, dtypes, *args, **kwargs)

    def to_accumulated_grad_if_needed(self) -> None:
        grad = self._unsharded_param.grad
        if self.reduce_dtype is None or grad is None or grad.dtype == self.reduce_dtype:
            return  # FSDP2's own conditions: nothing to upcast
        self._unsharded_param.grad = None  # (autograd would add the next micro-batch's to it in the param dtype)
        self._first_grad = grad  # FSDP2 casts it to a new reduce-dtype tensor here; cast with the next one's instead

    def accumulate_unsharded_grad_if_needed(self) -> None:
        first, self._first_grad = self._first_grad, None
        if first is None:  # a third micro-batch on: += into the packed slot, as FSDP2 does
            return super().accumulate_unsharded_grad_if_needed()
        slot, grad = packed_slot(self), self._unsharded_param.grad
        if grad is None:  # this micro-batch left the parameter unused
            slot.copy_(first)
        else:
            sum_into(slot, first, grad)
            self._unsharded_param.grad = None
        self.unsharded_accumulated_grad = slot


def packed_slot(param: InPlaceParam) -> torch.Tensor:
    """``param``'s gradient in its group's packed buffer of this step (allocated by the group's first call)."""
    comm, offset, numel = param._packing
    if comm.accumulated is None:
        comm.accumulated = torch.empty(numel, dtype=param.reduce_dtype, device=param.device)
    return comm.accumulated[offset:offset + param._orig_size.numel()].view(param._orig_size)


def sum_into(out: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> None:
    """``out = fp32(first) + fp32(second)``, FSDP2's ``first.to(fp32)`` then ``+= second`` (one fp32 rounding, the
    same bits), in one pass on a GPU (reads 2 + 2 bytes, writes 4 per element instead of 6 + 10)."""
    kernel = fused_sum_kernel() if out.is_cuda else None
    if kernel is None or not (out.is_contiguous() and first.is_contiguous() and second.is_contiguous()):
        torch.add(first.to(out.dtype), second, out=out)
        return
    n = out.numel()
    kernel[(triton_cdiv(n, SUM_BLOCK),)](first, second, out, n, BLOCK=SUM_BLOCK, num_warps=4)


SUM_BLOCK = 2048  # elements per Triton program: 8 per thread of 4 warps (16-byte bf16 loads)


def triton_cdiv(n: int, block: int) -> int:
    return -(-n // block)


@functools.cache
def fused_sum_kernel():
    """The Triton kernel of :func:`sum_into` (compiled on first use), or None without Triton."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def fused_sum(first_ptr, second_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        first = tl.load(first_ptr + offsets, mask=mask).to(tl.float32)
        second = tl.load(second_ptr + offsets, mask=mask).to(tl.float32)
        tl.store(out_ptr + offsets, first + second, mask=mask)

    return fused_sum


_fsdp_copy_in = _fsdp_collectives.foreach_reduce_scatter_copy_in


def packed_in_place(grads: list[torch.Tensor], packed: torch.Tensor) -> bool:
    """Whether ``grads`` are ``packed`` already: contiguous views of its storage at their packing offsets, in order."""
    itemsize, address = packed.element_size(), packed.data_ptr()
    for grad in grads:
        if (grad.dtype != packed.dtype or not grad.is_contiguous()
                or grad.untyped_storage().data_ptr() != packed.untyped_storage().data_ptr() or grad.data_ptr() != address):
            return False
        address += grad.numel() * itemsize
    return address == packed.data_ptr() + packed.numel() * itemsize


def copy_in_unless_in_place(unsharded_grads: list[torch.Tensor], reduce_scatter_input: torch.Tensor,
                            world_size: int) -> None:
    """FSDP2's packing of the gradients into the reduce-scatter input, skipped when they are there already."""
    if world_size == 1 and packed_in_place(unsharded_grads, reduce_scatter_input):
        return
    storage = reduce_scatter_input.untyped_storage().data_ptr()
    if any(grad.untyped_storage().data_ptr() == storage for grad in unsharded_grads):  # never read what is written
        unsharded_grads = [grad.clone() for grad in unsharded_grads]
    _fsdp_copy_in(unsharded_grads, reduce_scatter_input, world_size)


# The FSDP2 functions this module overrides or calls, with their parameters (annotations left out) in the torch
# versions it was written for, read from their sources: torch 2.11 and 2.12 have the first init_all_gather_outputs
# (force_recreate: recreate the outputs even if made; torch 2.11 passes True only under compiled autograd), torch 2.13
# and 2.14 the second; the others are alike in all four.
WRITTEN_FOR: dict[str, tuple[str, ...]] = {
    "FSDPParam.all_gather_inputs": ("(self)",),
    "FSDPParam.init_all_gather_outputs": (
        "(self, all_gather_input_numels, all_gather_input_dtypes, world_size, device, force_recreate=False)",
        "(self, all_gather_input_numels, all_gather_input_dtypes, world_size, device)"),
    "FSDPParam.to_accumulated_grad_if_needed": ("(self)",),
    "FSDPParam.accumulate_unsharded_grad_if_needed": ("(self)",),
    "foreach_reduce_scatter_copy_in": ("(unsharded_grads, reduce_scatter_input, world_size)",),
    "FSDPModule._get_fsdp_state": ("(self)",),
}


# The attributes of an FSDPParam (after fully_shard; its param_dtype and reduce_dtype come at its first forward) that
# this module reads.
PARAM_ATTRIBUTES = ("is_dtensor", "offload_to_cpu", "_sharded_local_tensor", "_orig_size",
                    "sharded_state", "_sharded_param_data", "unsharded_accumulated_grad", "all_gather_outputs", "device")


def torch_internals() -> dict[str, object]:
    """The FSDP2 functions of :data:`WRITTEN_FOR` in this torch (of a property, its getter); None where one is missing."""
    getter = getattr(getattr(FSDPParam, "all_gather_inputs", None), "fget", None)
    return {"FSDPParam.all_gather_inputs": getter,
            **{f"FSDPParam.{name}": getattr(FSDPParam, name, None)
               for name in ("init_all_gather_outputs", "to_accumulated_grad_if_needed",
                            "accumulate_unsharded_grad_if_needed")},
            "foreach_reduce_scatter_copy_in": _fsdp_copy_in,
            "FSDPModule._get_fsdp_state": getattr(FSDPModule, "_get_fsdp_state", None)}


def parameters_of(function) -> str:
    """``function``'s signature without annotations, e.g. ``(self, world_size, device=None)``."""
    signature = inspect.signature(function)
    return str(signature.replace(parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
                                 return_annotation=signature.empty))


def internals_differ(module: nn.Module | None = None) -> list[str]:
    """What of the FSDP2 internals this module overrides or calls differs from what it was written for
    (:data:`WRITTEN_FOR`), and which attributes it reads the FSDP params of ``module`` (fully_shard applied) lack;
    [] when nothing does."""
    found = {name: parameters_of(function) if callable(function) else "missing"
             for name, function in torch_internals().items()}
    other = [name + found[name].replace("missing", " missing")
             for name, known in WRITTEN_FOR.items() if found[name] not in known]
    if module is not None and not other:
        group = module._get_fsdp_state()._fsdp_param_group
        params = group.fsdp_params if group is not None else []
        other = [f"FSDPParam.{name} missing" for name in PARAM_ATTRIBUTES if not all(hasattr(p, name) for p in params)]
    return other


def check_torch_internals(module: nn.Module | None = None) -> None:
    """:func:`internals_differ` finds nothing; else one line naming the switch and its fix, at start-up rather than a
    TypeError in a step."""
    other = internals_differ(module)
    if other:
        raise ValueError(f"parallelism.one_rank_in_place = true relies on FSDP2 internals that this torch "
                         f"{torch.__version__} has otherwise ({'; '.join(other)}); set "
                         "parallelism.one_rank_in_place = false (FSDP2's own path, the same numbers)")


def install_in_place(module: nn.Module, comm: OneRankReduceScatter) -> None:
    """Swap the FSDP params of ``module`` (fully_shard on a one-rank group, ``comm`` installed) to
    :class:`InPlaceParam`, and FSDP2's packing to one that skips gradients already in place."""
    check_torch_internals(module)
    _fsdp_collectives.foreach_reduce_scatter_copy_in = copy_in_unless_in_place  # global, exact check: harmless elsewhere
    group = module._get_fsdp_state()._fsdp_param_group
    if group is None:
        return  # no parameters of its own
    plain = [p for p in group.fsdp_params
             if not p.is_dtensor and not p.offload_to_cpu and not hasattr(p._sharded_local_tensor, "fsdp_pre_all_gather")]
    if len(plain) != len(group.fsdp_params):
        return  # tensor parallelism, CPU offload or an all-gather extension: FSDP2's own path
    offset, total = 0, sum(p._orig_size.numel() for p in plain)
    for param in plain:
        param.__class__ = InPlaceParam
        param._packing = (comm, offset, total)
        offset += param._orig_size.numel()
