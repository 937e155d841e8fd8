"""distributed/parallelize.py on a one-rank group: FSDP2's reduce-scatter without its copy."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy

from distributed.env import distributed_session
from distributed.one_rank import OneRankReduceScatter
from distributed.parallelize import apply_fsdp, start_micro_batch


class TwoBlocks(nn.Module):
    """The layout apply_fsdp expects: blocks in ``layers``, plus root parameters (an input and an output map)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.layers = nn.ModuleDict({str(i): nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for i in range(2)})
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.layers.values():
            h = h + block(h)
        return self.head(h)


class RecordingReduceScatter(OneRankReduceScatter):
    """OneRankReduceScatter that keeps what it handed out, in order."""

    def __init__(self, log: list[torch.Tensor]) -> None:
        super().__init__()
        self.log = log

    def allocate(self, size, *, dtype, device):
        self.log.append(super().allocate(size, dtype=dtype, device=device))
        return self.log[-1]


def accumulate_two_micro_batches(model: nn.Module, batches: list[torch.Tensor], fsdp: bool) -> None:
    for i, x in enumerate(batches):
        if fsdp:
            start_micro_batch(model, is_last=i == len(batches) - 1, keep_gathered=True)
        model(x).square().mean().backward()


def test_one_rank_reduce_scatter_leaves_gradients_in_the_packed_input_bitwise():
    """FSDP2 on one rank with the aliasing reduce-scatter: every gradient (two accumulated micro-batches) equals
    plain autograd's bitwise, and lives in the very buffer FSDP2 packed the gradients into (the output's
    allocation returned the input's tensor), so no second buffer was filled."""
    torch.manual_seed(0)
    reference = TwoBlocks()
    batches = [torch.randn(5, 6) for _ in range(2)]
    with distributed_session("cpu") as env:
        model = copy.deepcopy(reference)
        apply_fsdp(model, env, MixedPrecisionPolicy(), reshard_after_forward=False)
        fsdp_modules = (*model.layers.values(), model)
        # installed by apply_fsdp on every FSDP module of a one-rank shard group (FSDP2 keeps it on its param group)
        assert all(isinstance(m._get_fsdp_state()._fsdp_param_group._reduce_scatter_comm, OneRankReduceScatter)
                   for m in fsdp_modules)
        handed_out: list[torch.Tensor] = []
        for module in fsdp_modules:
            module.set_custom_reduce_scatter(RecordingReduceScatter(handed_out))
        accumulate_two_micro_batches(model, batches, fsdp=True)
        grads = {name: p.grad.full_tensor() for name, p in model.named_parameters()}
        storages = {p.grad.to_local().untyped_storage().data_ptr() for p in model.parameters()}
    accumulate_two_micro_batches(reference, batches, fsdp=False)
    for name, p in reference.named_parameters():
        assert torch.equal(grads[name], p.grad), name
    assert len(handed_out) == 2 * 3  # input, then output, once per FSDP module (2 blocks + root)
    for packed_input, output in zip(handed_out[0::2], handed_out[1::2]):
        assert output is packed_input
    assert storages == {t.untyped_storage().data_ptr() for t in handed_out[0::2]}


def test_one_rank_reduce_scatter_refuses_a_collective_and_a_mismatched_output():
    comm = OneRankReduceScatter()
    packed = comm.allocate((4,), dtype=torch.float32, device=torch.device("cpu"))
    with pytest.raises(RuntimeError, match=r"output \(3,\) torch.float32 does not match the input \(4,\)"):
        comm.allocate((3,), dtype=torch.float32, device=torch.device("cpu"))

    class TwoRanks:
        def size(self) -> int:
            return 2

    with pytest.raises(RuntimeError, match="asked to reduce over 2 ranks"):
        comm(packed, packed, TwoRanks(), None)
