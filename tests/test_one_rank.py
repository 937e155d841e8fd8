"""distributed/one_rank.py: FSDP2 on a one-rank group with weights cast in one copy and gradients accumulated in
place in the packed reduce-scatter buffer (``parallelism.one_rank_in_place``) gives FSDP2's own numbers bitwise.

The lever acts only under mixed precision (bf16 weights, fp32 gradients), which train.py uses on CUDA only, so
these CPU tests ask FSDP2 for that policy (gloo runs no collective on one rank)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect

import pytest
import torch
from torch.distributed.fsdp import MixedPrecisionPolicy

import distributed.one_rank as one_rank
import distributed.parallelize as parallelize
from components.config import load_config
from distributed.env import distributed_session
from distributed.parallelize import apply_fsdp, start_micro_batch
from tests.test_parallelize import TwoBlocks
from train import Trainer

BF16_FP32 = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def gradients_of_two_steps(model, batches) -> list[dict[str, torch.Tensor]]:
    steps = []
    for _ in range(2):
        for i, x in enumerate(batches):
            start_micro_batch(model, is_last=i == len(batches) - 1, keep_gathered=True)
            model(x).float().square().mean().backward()
        steps.append({name: p.grad.full_tensor().clone() for name, p in model.named_parameters()})
        model.zero_grad(set_to_none=True)
    return steps


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU (NCCL world of one)"))])
def test_in_place_gradients_are_fsdp2s_bitwise_and_never_repacked(monkeypatch, device):
    """Two steps of two micro-batches: every gradient equals FSDP2's own path's bitwise, and FSDP2's packing
    (``foreach_reduce_scatter_copy_in``) never ran with the lever: the gradients were in the packed buffer."""
    packings = []
    original = one_rank._fsdp_copy_in
    counted = functools.wraps(original)(lambda *args: packings.append(1) or original(*args))  # (its signature)
    monkeypatch.setattr(one_rank, "_fsdp_copy_in", counted)
    torch.manual_seed(0)
    reference, batches = TwoBlocks(), [torch.randn(5, 6) for _ in range(2)]
    grads, packed = {}, {}
    with distributed_session(device) as env:
        batches = [x.to(env.device) for x in batches]
        for in_place in (True, False):
            model = copy.deepcopy(reference).to(env.device)
            apply_fsdp(model, env, BF16_FP32, reshard_after_forward=False, one_rank_in_place=in_place)
            params = [p for m in (*model.layers.values(), model) for p in m._get_fsdp_state()._fsdp_param_group.fsdp_params]
            assert all(isinstance(p, one_rank.InPlaceParam) == in_place for p in params)
            packings.clear()
            grads[in_place] = gradients_of_two_steps(model, batches)
            packed[in_place] = len(packings)
    for own, in_place in zip(grads[False], grads[True]):
        assert own.keys() == in_place.keys() and all(torch.equal(own[k], in_place[k]) for k in own)
    assert packed == {True: 0, False: 2 * 3}  # FSDP2's own path packs once per step and FSDP module


TINY = ["--config", "train_configs/debug.toml", "--model.n_layers", "2", "--training.seq_len", "32",
        "--training.global_batch_size", "4", "--training.local_batch_size", "2", "--tokenizer.max_vocab", "512",
        "--metrics.val_freq", "0", "--training.device", "cpu", "--compile.enable", "false"]
STEPS = 3


def trained(tmp_path, in_place: bool) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Losses of STEPS optimizer steps (2 micro-batches each) of train.py's Trainer, and its final weights."""
    cfg, _ = load_config([*TINY, "--job.output_dir", str(tmp_path), "--job.run_name", f"in_place_{in_place}",
                          "--parallelism.one_rank_in_place", str(in_place).lower()])
    with distributed_session("cpu") as env:
        trainer = Trainer(cfg, env)
        losses = []
        for step in range(1, STEPS + 1):
            losses.append(trainer.train_step(step, logging=False)[0].item())
            trainer.optimizer.zero_grad(set_to_none=True)
        weights = {name: p.full_tensor().clone() for name, p in trainer.model.named_parameters()}
    return losses, weights


@pytest.fixture
def bf16_on_cpu(monkeypatch):
    """train.py's CUDA policy (bf16 weights, fp32 gradient reduction) on CPU."""
    monkeypatch.setattr(parallelize, "mixed_precision", lambda training, device: BF16_FP32)


def test_train_runs_with_and_without_the_lever_are_bitwise_equal(tmp_path, bf16_on_cpu, monkeypatch):
    """Real Trainer runs (debug Llama, embedded corpus, 3 steps of 2 micro-batches, bf16 weights): the same
    losses and final weights bitwise; a planted defect (every gradient at the packed buffer's start instead of
    its offset) changes the losses, so the comparison can fail."""
    own_losses, own_weights = trained(tmp_path, in_place=False)
    losses, weights = trained(tmp_path, in_place=True)
    assert losses == own_losses and len(set(losses)) == STEPS
    assert own_weights.keys() == weights.keys() and all(torch.equal(own_weights[k], weights[k]) for k in weights)

    def slot_at_start(param):
        comm, _, numel = param._packing
        if comm.accumulated is None:
            comm.accumulated = torch.empty(numel, dtype=param.reduce_dtype, device=param.device)
        return comm.accumulated[:param._orig_size.numel()].view(param._orig_size)

    monkeypatch.setattr(one_rank, "packed_slot", slot_at_start)
    planted, _ = trained(tmp_path, in_place=True)
    assert planted[0] == own_losses[0] and planted[1:] != own_losses[1:]  # step 1's loss precedes any update


def test_fused_sum_kernel_is_fsdp2s_cast_then_add_bitwise(monkeypatch):
    """The GPU kernel of sum_into, run by Triton's CPU interpreter: fp32(first) + fp32(second) with FSDP2's bits
    (``first.to(fp32)``, then ``+= second``) at sizes around its block, tails included; a sum rounded to bf16 first
    (what ``torch.add(first, second, out=fp32)`` computes) differs, so the comparison can tell them apart."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    one_rank.fused_sum_kernel.cache_clear()
    try:
        kernel = one_rank.fused_sum_kernel()
        torch.manual_seed(0)
        for n in (1, one_rank.SUM_BLOCK - 1, one_rank.SUM_BLOCK, 2 * one_rank.SUM_BLOCK + 3):
            first, second = torch.randn(n).bfloat16(), torch.randn(n).bfloat16()
            out = torch.full((n,), float("nan"))
            kernel[(one_rank.triton_cdiv(n, one_rank.SUM_BLOCK),)](first, second, out, n, BLOCK=one_rank.SUM_BLOCK)
            fsdp2 = first.to(torch.float32)
            fsdp2 += second
            assert torch.equal(out, fsdp2), n
        rounded_to_bf16 = torch.empty(n)
        torch.add(first, second, out=rounded_to_bf16)
        assert not torch.equal(rounded_to_bf16, fsdp2)
    finally:
        one_rank.fused_sum_kernel.cache_clear()  # a later CUDA use compiles the kernel for the GPU


def test_internals_check_stops_an_unknown_torch_at_start_up_with_one_line(tmp_path, monkeypatch, capsys):
    """This torch passes; a planted FSDP2 change (init_all_gather_outputs with another parameter, as torch 2.11 has
    against 2.13, or a method gone) stops train.py before its first step with one line naming the switch and its
    fix, not a TypeError in a step."""
    from torch.distributed.fsdp._fully_shard._fsdp_param import FSDPParam

    import train

    one_rank.check_torch_internals()
    argv = [*TINY, "--job.output_dir", str(tmp_path), "--parallelism.one_rank_in_place", "true"]

    def init_all_gather_outputs(self, all_gather_input_numels, all_gather_input_dtypes, world_size, device, stream):
        raise AssertionError("never called: the check stops the run first")

    monkeypatch.setattr(FSDPParam, "init_all_gather_outputs", init_all_gather_outputs)
    assert train.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: parallelism.one_rank_in_place = true relies on FSDP2")
    assert ("FSDPParam.init_all_gather_outputs(self, all_gather_input_numels, all_gather_input_dtypes, world_size, "
            "device, stream)" in lines[0]) and "set parallelism.one_rank_in_place = false" in lines[0]
    monkeypatch.undo()
    monkeypatch.delattr(FSDPParam, "to_accumulated_grad_if_needed")
    with pytest.raises(ValueError, match=r"\(FSDPParam.to_accumulated_grad_if_needed missing\); set parallelism"):
        one_rank.check_torch_internals()


def test_gathered_outputs_are_fsdp2s_in_the_param_dtype_with_this_torchs_arguments():
    """InPlaceParam.init_all_gather_outputs takes every argument this torch's FSDPParam's takes (torch 2.11-2.12:
    ``force_recreate``) and does what FSDP2 does with it (kept once made; recreated when forced), in bf16 where
    FSDP2 makes the all-gather input's dtype (fp32: the unsharded weight the lever casts into)."""
    from torch.distributed.fsdp._fully_shard._fsdp_param import FSDPParam

    forced = "force_recreate" in inspect.signature(FSDPParam.init_all_gather_outputs).parameters
    with distributed_session("cpu") as env:
        model = TwoBlocks()
        apply_fsdp(model, env, BF16_FP32, reshard_after_forward=False, one_rank_in_place=True)
        model(torch.randn(5, 6))  # FSDP2's lazy initialization: the params' dtypes
        param = model.layers["0"]._get_fsdp_state()._fsdp_param_group.fsdp_params[0]
        assert isinstance(param, one_rank.InPlaceParam)
        made = {}
        for cls in (FSDPParam, one_rank.InPlaceParam):
            param.all_gather_outputs = []
            cls.init_all_gather_outputs(param, [4], [torch.float32], 1, env.device)
            first = param.all_gather_outputs[0]
            cls.init_all_gather_outputs(param, [8], [torch.float32], 1, env.device)  # made already: kept
            assert param.all_gather_outputs[0] is first and first.shape == (4,)
            if forced:
                cls.init_all_gather_outputs(param, [8], [torch.float32], 1, env.device, force_recreate=False)
                assert param.all_gather_outputs[0] is first
                cls.init_all_gather_outputs(param, [8], [torch.float32], 1, env.device, force_recreate=True)
                assert param.all_gather_outputs[0] is not first and param.all_gather_outputs[0].shape == (8,)
            made[cls] = [t.dtype for t in param.all_gather_outputs]
    assert made == {FSDPParam: [torch.float32], one_rank.InPlaceParam: [torch.bfloat16]}


def test_auto_is_on_for_a_world_of_one_on_cuda_only_and_off_with_a_warning_where_internals_differ(monkeypatch):
    """parallelism.one_rank_in_place omitted: on for a world of one on CUDA, off on CPU (float32: CPU runs keep
    FSDP2's own path) and on more ranks; an explicit value wins; where this torch's FSDP2 internals differ (planted: a method gone), auto
    falls back to FSDP2's own path with a warning naming what differs instead of stopping the run."""
    from torch.distributed.fsdp._fully_shard._fsdp_param import FSDPParam

    from components.config import Parallelism

    with distributed_session("cpu") as env:
        on_cuda = dataclasses.replace(env, device=torch.device("cuda", 0))  # (the resolution reads the device's type)
        auto = Parallelism()
        assert auto.one_rank_in_place is None
        assert parallelize.in_place_on_one_rank(auto, env) is False
        assert parallelize.in_place_on_one_rank(auto, on_cuda) is True
        two_replicas = dataclasses.replace(on_cuda, world_size=2)  # (one-rank shard groups, replicated)
        assert parallelize.in_place_on_one_rank(auto, two_replicas) is False
        assert parallelize.in_place_on_one_rank(Parallelism(one_rank_in_place=True), two_replicas) is True
        assert parallelize.in_place_on_one_rank(Parallelism(one_rank_in_place=False), on_cuda) is False
        assert parallelize.in_place_on_one_rank(Parallelism(one_rank_in_place=True), env) is True
        monkeypatch.delattr(FSDPParam, "to_accumulated_grad_if_needed")
        with pytest.warns(UserWarning, match=r"one_rank_in_place \(auto\): off, FSDP2's own path \(the same numbers, "
                                             r"slower\); this torch .* FSDPParam.to_accumulated_grad_if_needed missing"):
            assert parallelize.in_place_on_one_rank(auto, on_cuda) is False
