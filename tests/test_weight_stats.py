"""components/weight_stats.py: packed one-all-reduce statistics vs full-tensor references.

The distributed cases run tests/dist_weight_stats_worker.py under torchrun (2 gloo ranks, FSDP2
and HSDP) and as a plain process (a world of one); the numerics run in-process.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from components.weight_stats import WeightStats, combine_moments, local_moments, std_from_moments
from models import build_model, make_model_args
from tests.launch import python, side_by_side, torchrun

WORKER = "tests/dist_weight_stats_worker.py"
N_LAYERS = 4  # the debug flavors
BLOCK_ROLES = {"gpt2": ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.up", "mlp.out"),
               "llama": ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.gate", "mlp.up", "mlp.out")}
OUTER_ROLES = {"gpt2": ("tok_embedding", "pos_embedding", "lm_head"),
               "gpt2_hsdp": ("tok_embedding", "pos_embedding"),  # tied head: no lm_head tensor
               "llama": ("tok_embedding", "lm_head")}
TOLERANCE = 1e-5  # relative, measured vs full-tensor float64 references


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> dict[int, dict]:
    """World size -> the worker's JSON (2 ranks under torchrun, 1 as a plain process)."""
    out = tmp_path_factory.mktemp("weight_stats")
    side_by_side(lambda: torchrun([WORKER, str(out / "two.json")], nproc=2, timeout=300),
                 lambda: python([WORKER, str(out / "one.json")], timeout=300, env={"OMP_NUM_THREADS": "1"}))
    return {n: json.loads((out / f"{name}.json").read_text()) for n, name in ((2, "two"), (1, "one"))}


CASES = [(2, "gpt2"), (2, "llama"), (2, "gpt2_hsdp"), (1, "gpt2"), (1, "llama")]


def relative_error(measured: float, expected: float) -> float:
    return abs(measured - expected) / abs(expected)


@pytest.mark.multiprocess
@pytest.mark.parametrize("world,case", CASES)
def test_every_metric_matches_full_tensor_reference(worlds, world, case):
    result = worlds[world][case]
    assert worlds[world]["world_size"] == world
    measured, expected = result["measured"], result["expected"]
    # Per tensor: weight_std = full_tensor().std(), grad_norm = ||full grad||, grad_rms = ||full grad|| / sqrt(numel),
    # update_ratio = ||dW|| / ||W||.
    assert {k.split("/")[0] for k in expected} == {"weight_std", "grad_norm", "grad_rms", "update_ratio"}
    errors = {name: relative_error(measured[name], value) for name, value in expected.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, f"{worst}: {measured[worst]} vs {expected[worst]}"


@pytest.mark.multiprocess
@pytest.mark.parametrize("world,case", CASES)
def test_exactly_one_all_reduce_per_compute(worlds, world, case):
    # The worker counts dist.all_reduce calls during compute() with full_tensor() made to raise.
    assert worlds[world][case]["all_reduce_calls"] == 1


@pytest.mark.multiprocess
@pytest.mark.parametrize("world,case", CASES)
def test_names_cover_every_layer_and_role(worlds, world, case):
    family = case.split("_")[0]
    blocks, outer = BLOCK_ROLES[family], OUTER_ROLES[case]
    per_layer = {f"{role}/layer_{layer:02d}" for role in blocks for layer in range(N_LAYERS)}
    expected_names = ({f"{fam}/{s}" for fam in ("weight_std", "grad_norm", "grad_rms", "update_ratio")
                       for s in per_layer | set(outer)}
                      | {f"weight_std/{role}/mean_over_layers" for role in blocks})
    result = worlds[world][case]
    assert set(result["measured"]) == expected_names
    assert result["roles_to_layers"] == {**{r: list(range(N_LAYERS)) for r in blocks}, **{r: [] for r in outer}}


@pytest.mark.multiprocess
@pytest.mark.parametrize("world,case", CASES)
def test_mean_over_layers_is_mean_of_layer_stds(worlds, world, case):
    measured, expected = worlds[world][case]["measured"], worlds[world][case]["expected"]
    for role in BLOCK_ROLES[case.split("_")[0]]:
        reference = sum(expected[f"weight_std/{role}/layer_{i:02d}"] for i in range(N_LAYERS)) / N_LAYERS
        assert relative_error(measured[f"weight_std/{role}/mean_over_layers"], reference) <= TOLERANCE


@pytest.mark.multiprocess
def test_shard_group_follows_placements(worlds):
    # FSDP2 shards Shard(0); HSDP adds a Replicate() dim that must not be summed (grad norms would be x sqrt 2).
    assert worlds[2]["gpt2"]["placements"] == ["S(0)"]
    assert worlds[2]["gpt2_hsdp"]["placements"] == ["R", "S(0)"]
    assert "gpt2_hsdp" not in worlds[1]


@pytest.mark.multiprocess
@pytest.mark.parametrize("world", [1, 2])
def test_first_nonfinite_agrees_across_ranks(worlds, world):
    # components.metrics.first_nonfinite under real process groups: a NaN in the LAST rank's grad shard.
    answers = worlds[world]["gpt2"]["nonfinite"]
    assert answers["clean"] == [None] * world
    assert answers["planted"] == ["layers.02 mlp.out grad (layers.2.mlp.out.weight)"] * world


def test_std_of_tiny_spread_large_mean_is_accurate():
    generator = torch.Generator().manual_seed(0)
    x = 5.0 + 1e-3 * torch.randn(1_000_003, generator=generator)  # fp32, mean 5, std 1e-3
    reference = x.double().std().item()
    shards = [x[:400_000], x[400_000:], x[:0]]  # uneven, one empty (as an uneven Shard(0) can give)
    measured = std_from_moments(combine_moments(torch.stack([local_moments([s]) for s in shards]))).item()
    assert relative_error(measured, reference) <= 1e-6
    # The same data through a naive fp32 sum of squares has no correct digit: the case is a real test.
    n, total, sumsq = x.numel(), x.sum(), (x * x).sum()
    naive = ((sumsq - total * total / n) / (n - 1)).clamp_min(0).sqrt().item()
    assert relative_error(naive, reference) > 1e-2


def test_moments_of_bfloat16_are_not_rounded_to_bfloat16():
    x = (3.0 + torch.linspace(-1e-2, 1e-2, 1001)).bfloat16()
    exact = x.double()
    moments = local_moments([x])[0].tolist()
    assert moments[0] == 1001
    assert relative_error(moments[1], exact.mean().item()) <= 1e-7
    assert relative_error(std_from_moments(local_moments([x])).item(), exact.std().item()) <= 1e-5


def plain_gpt2() -> nn.Module:
    torch.manual_seed(0)
    return build_model(make_model_args("gpt2", "debug", 97, 16, {"tie_embeddings": False}))


def test_plain_model_needs_no_process_group():
    model = plain_gpt2()
    stats = WeightStats(model)
    assert stats.group is None  # full tensors on every rank: no reduction, no process group needed
    values = stats.compute()
    assert values["weight_std/attn.q/layer_03"] == pytest.approx(model.layers["3"].attn.q.weight.std().item(),
                                                                 rel=TOLERANCE)
    assert values["weight_std/lm_head"] == pytest.approx(model.lm_head.weight.std().item(), rel=TOLERANCE)
    assert not any(name.startswith(("grad_norm", "grad_rms", "update_ratio")) for name in values)


def test_snapshot_gives_update_ratio_once_and_missing_grads_count_zero():
    model = plain_gpt2()
    stats = WeightStats(model, grad_stats=True)
    stats.snapshot()
    weight = model.layers["1"].mlp.out.weight
    with torch.no_grad():
        weight.add_(1e-3)  # an "update" of 1e-3 on every element of one tensor
    values = stats.compute()
    expected_ratio = 1e-3 * math.sqrt(weight.numel()) / weight.norm().item()
    assert values["update_ratio/mlp.out/layer_01"] == pytest.approx(expected_ratio, rel=1e-4)
    assert values["update_ratio/mlp.out/layer_00"] == 0.0
    assert values["grad_norm/mlp.out/layer_01"] == 0.0  # no backward ran: grads are None
    assert not any(name.startswith("update_ratio") for name in stats.compute())  # the snapshot was consumed


def test_model_without_weights_is_rejected():
    with pytest.raises(ValueError, match="no weight tensors besides norms/biases"):
        WeightStats(nn.ModuleDict({"final_norm": nn.LayerNorm(8)}))
