"""components/optim.py: weight-decay groups by role, AdamW kernels, DTensor-correct gradient clipping."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.distributed.tensor import DTensor, Partial, Replicate

from components.build import build_model_and_init
from components.config import Optimizer, load_config
from components.optim import build_optimizer, clip_grad_norm_, param_groups
from distributed.env import init_distributed
from models import build_model, make_model_args
from models.common import count_params
from tests.clip_grad_worker import forbid_host_sync
from tests.launch import torchrun

VOCAB = 256

# Every parameter of a 1-layer model, by the flag that decides its decay (literal names).
GPT2_1L = {
    "matrices": ["layers.0.attn.q.weight", "layers.0.attn.k.weight", "layers.0.attn.v.weight",
                 "layers.0.attn.out.weight", "layers.0.mlp.up.weight", "layers.0.mlp.out.weight"],
    "embeddings": ["tok_embedding.weight", "pos_embedding.weight"],
    "norms": ["layers.0.attn_norm.weight", "layers.0.mlp_norm.weight", "final_norm.weight"],
    "biases": ["layers.0.attn_norm.bias", "layers.0.attn.q.bias", "layers.0.attn.k.bias", "layers.0.attn.v.bias",
               "layers.0.attn.out.bias", "layers.0.mlp_norm.bias", "layers.0.mlp.up.bias", "layers.0.mlp.out.bias",
               "final_norm.bias"],
}
LLAMA_1L = {
    "matrices": ["layers.0.attn.q.weight", "layers.0.attn.k.weight", "layers.0.attn.v.weight",
                 "layers.0.attn.out.weight", "layers.0.mlp.gate.weight", "layers.0.mlp.up.weight",
                 "layers.0.mlp.out.weight", "lm_head.weight"],
    "embeddings": ["tok_embedding.weight"],
    "norms": ["layers.0.attn_norm.weight", "layers.0.mlp_norm.weight", "final_norm.weight"],
    "biases": [],
}
FLAG_OF_KIND = {"embeddings": "decay_embeddings", "norms": "decay_norms", "biases": "decay_biases"}


@pytest.fixture(scope="module")
def env():
    return init_distributed("cpu")


def config(*overrides: str):
    cfg, _ = load_config(["--init.scheme", "normal", "--training.seq_len", "16", *overrides])
    return cfg


def sharded_model(env, *overrides: str):
    model, _, _ = build_model_and_init(config(*overrides), VOCAB, env)
    return model


def names_by_group(model, groups) -> dict[str, list[str]]:
    name_of = {id(p): name for name, p in model.named_parameters()}
    return {group["name"]: sorted(name_of[id(p)] for p in group["params"]) for group in groups}


FLAG_CASES = [
    {},  # defaults: embeddings decayed, norms and biases not
    {"decay_embeddings": False},
    {"decay_norms": True},
    {"decay_biases": True},
    {"decay_norms": True, "decay_biases": True, "decay_embeddings": False},
]


@pytest.mark.parametrize("family, expected", [("gpt2", GPT2_1L), ("llama", LLAMA_1L)])
@pytest.mark.parametrize("flags", FLAG_CASES)
def test_param_groups_put_each_name_in_its_group(env, family, expected, flags):
    cfg = config("--model.name", family, "--model.n_layers", "1",
                 *[arg for key, value in flags.items() for arg in (f"--optimizer.{key}", str(value))])
    model = sharded_model(env, "--model.name", family, "--model.n_layers", "1")
    groups = param_groups(model, cfg.optimizer)
    decayed = {kind: getattr(cfg.optimizer, flag) for kind, flag in FLAG_OF_KIND.items()}
    expect_decay = expected["matrices"] + [n for kind, on in decayed.items() if on for n in expected[kind]]
    expect_no_decay = [n for kind, on in decayed.items() if not on for n in expected[kind]]
    want = {"decay": sorted(expect_decay), "no_decay": sorted(expect_no_decay)}
    assert names_by_group(model, groups) == {k: v for k, v in want.items() if v}
    wd = {group["name"]: group["weight_decay"] for group in groups}
    assert wd == {k: {"decay": 0.1, "no_decay": 0.0}[k] for k in want if want[k]}


def test_all_flags_on_gives_a_single_decay_group(env):
    cfg = config("--model.name", "llama", "--optimizer.decay_norms", "true")
    groups = param_groups(sharded_model(env, "--model.name", "llama"), cfg.optimizer)
    assert [group["name"] for group in groups] == ["decay"]


@pytest.mark.parametrize("overrides, separate_head", [
    (("--model.name", "gpt2"), False),  # debug: 4 layers, biases, LayerNorm, tied embedding
    (("--model.name", "gpt2", "--model.tie_embeddings", "false"), True),
    (("--model.name", "llama"), True),
])
def test_param_groups_cover_every_parameter_once(env, overrides, separate_head):
    model = sharded_model(env, *overrides)
    groups = param_groups(model, config(*overrides).optimizer)
    grouped = [p for group in groups for p in group["params"]]
    assert len({id(p) for p in grouped}) == len(grouped)  # no parameter twice
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters()}
    assert sum(p.numel() for p in grouped) == count_params(model)
    names = names_by_group(model, groups)
    # Independent rule on the names: biases, norm weights (default flags) and nothing else undecayed.
    assert names["no_decay"] == sorted(n for n, _ in model.named_parameters() if n.endswith(".bias") or "norm." in n)
    assert ("lm_head.weight" in names["decay"]) == separate_head
    assert "tok_embedding.weight" in names["decay"]


@pytest.mark.parametrize("implementation, fused, foreach", [
    ("auto", False, True), ("fused", True, False), ("foreach", False, True), ("for-loop", False, False)])
def test_build_optimizer_kernel_and_decoupled_decay(env, implementation, fused, foreach):
    """One step with zero gradients: decayed weights shrink by exactly (1 - lr*wd), others stay put."""
    cfg = config("--model.name", "gpt2", "--optimizer.implementation", implementation,
                 "--optimizer.lr", "0.01", "--optimizer.betas", "[0.8,0.9]", "--optimizer.eps", "1e-7")
    model = sharded_model(env, "--model.name", "gpt2")
    optimizer = build_optimizer(model, cfg.optimizer, torch.device("cpu"))
    assert (optimizer.defaults["fused"], optimizer.defaults["foreach"]) == (fused, foreach)
    assert (optimizer.defaults["lr"], optimizer.defaults["betas"], optimizer.defaults["eps"]) == (0.01, (0.8, 0.9), 1e-7)
    before = {id(p): p.detach().to_local().clone() for p in model.parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for group in optimizer.param_groups:
        shrink = 1 - 0.01 * group["weight_decay"]
        for p in group["params"]:
            torch.testing.assert_close(p.detach().to_local(), before[id(p)] * shrink, rtol=1e-6, atol=0)
    assert {g["name"]: g["weight_decay"] for g in optimizer.param_groups} == {"decay": 0.1, "no_decay": 0.0}


def test_build_optimizer_rejects_wrong_device_and_missing_fused_kernel():
    cfg = config("--model.name", "llama", "--optimizer.implementation", "fused")
    args = make_model_args("llama", "debug", VOCAB, 16)
    with torch.device("meta"):
        meta_model = build_model(args)
    with pytest.raises(ValueError, match=r"optimizer\.implementation = 'fused': torch has no fused AdamW for torch.float32 parameters on meta"):
        build_optimizer(meta_model, cfg.optimizer, torch.device("meta"))
    with pytest.raises(ValueError, match=r"parameters are on meta but the optimizer was asked for cpu"):
        build_optimizer(meta_model, cfg.optimizer, torch.device("cpu"))


def test_bad_optimizer_inputs_name_the_culprit(env):
    model = build_model(make_model_args("llama", "debug", VOCAB, 16))
    with pytest.raises(ValueError, match=r"optimizer\.name = 'sgd' is not supported"):
        build_optimizer(model, Optimizer(name="sgd"), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"optimizer\.implementation = 'fast' is unknown"):
        build_optimizer(model, Optimizer(implementation="fast"), torch.device("cpu"))
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="Llama has no trainable parameters"):
        param_groups(model, Optimizer())
    param = torch.nn.Parameter(DTensor.from_local(torch.ones(2), env.mesh, [Replicate()]))
    param.grad = DTensor.from_local(torch.ones(2), env.mesh, [Partial()])  # an unreduced gradient
    with pytest.raises(ValueError, match="gradient with a Partial placement"):
        clip_grad_norm_([param], 1.0)


def plain_model_with_grads(seed: int = 0):
    """An unsharded debug GPT-2 on CPU after one backward; returns (params, saved grads)."""
    torch.manual_seed(seed)
    model = build_model(make_model_args("gpt2", "debug", VOCAB, 16))
    tokens = torch.randint(0, VOCAB, (2, 16))  # [B, T]
    F.cross_entropy(model(tokens)[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).backward()
    params = list(model.parameters())
    return params, [p.grad.clone() for p in params]


def restore(params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()


@pytest.mark.parametrize("foreach", [None, False])
@pytest.mark.parametrize("fraction", [0.1, 10.0])  # max_norm as a fraction of the norm: clip / no clip
def test_clip_matches_torch_on_a_plain_model(foreach, fraction):
    params, grads = plain_model_with_grads()
    max_norm = fraction * torch.nn.utils.get_total_norm(grads).item()
    expected_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    expected_grads = [p.grad.clone() for p in params]
    restore(params, grads)
    norm = clip_grad_norm_(params, max_norm, foreach=foreach)
    assert isinstance(norm, torch.Tensor) and norm.dim() == 0 and norm.dtype == torch.float32
    torch.testing.assert_close(norm, expected_norm, rtol=1e-6, atol=0)
    for p, want in zip(params, expected_grads):
        torch.testing.assert_close(p.grad, want, rtol=1e-6, atol=1e-9)


def test_clip_max_norm_zero_measures_without_scaling():
    params, grads = plain_model_with_grads()
    norm = clip_grad_norm_(params, 0.0)
    torch.testing.assert_close(norm, torch.nn.utils.get_total_norm(grads), rtol=1e-6, atol=0)
    assert all(torch.equal(p.grad, g) for p, g in zip(params, grads))


@pytest.mark.parametrize("bad_value", [float("inf"), float("nan")])
def test_clip_leaves_grads_alone_when_norm_is_not_finite(bad_value):
    params, _ = plain_model_with_grads()
    params[3].grad[0] = bad_value
    before = [p.grad.clone() for p in params]
    norm = clip_grad_norm_(params, 1e-3)
    assert not torch.isfinite(norm)
    assert all(torch.equal(p.grad, g) for p, g in zip(params[4:], before[4:]))
    torch.testing.assert_close(params[3].grad, before[3], equal_nan=True)


def test_clip_counts_a_repeated_tensor_once_and_handles_no_grads():
    params, grads = plain_model_with_grads()
    norm = clip_grad_norm_([params[0], params[0]], 0.0)
    torch.testing.assert_close(norm, torch.linalg.vector_norm(grads[0]), rtol=1e-6, atol=0)
    assert clip_grad_norm_(torch.zeros(3, requires_grad=True), 1.0).item() == 0.0
    with pytest.raises(ValueError, match="max_norm must be >= 0"):
        clip_grad_norm_(params, -1.0)


def test_clip_makes_no_host_sync():
    params, grads = plain_model_with_grads()
    with forbid_host_sync(), pytest.raises(AssertionError, match="host sync"):
        torch.ones(()).item()  # the guard does catch a conversion
    with forbid_host_sync():
        norm = clip_grad_norm_(params, 0.5)
    torch.testing.assert_close(norm, torch.nn.utils.get_total_norm(grads), rtol=1e-6, atol=0)


def run_worker(tmp_path, family: str, replicate: int, nproc: int) -> dict:
    out = tmp_path / "clip.json"
    torchrun(["tests/clip_grad_worker.py", str(out), family, str(replicate)], nproc=nproc, timeout=300)
    return json.loads(out.read_text())


def check_sharded_clip(result: dict) -> None:
    ref = result["ref_norm"]
    for key in ("norm_only", "norm_for_loop", "norm_large_max", "norm_clipped_call"):
        assert result[key] == pytest.approx(ref, rel=1e-5), key
    assert result["norm_on_every_rank"] == [result["norm_clipped_call"]] * result["world_size"]
    assert result["norm_only_changed_grads"] == 0.0 and result["large_max_changed_grads"] == 0.0
    assert result["norm_after_clip"] == pytest.approx(result["max_norm"], rel=1e-5)
    assert result["clip_scale_error"] < 1e-7
    assert (result["returned_type"], result["returned_dim"]) == ("Tensor", 0)
    assert result["norm_nonfinite_on_every_rank"] == [float("inf")] * result["world_size"]
    assert result["nonfinite_grads_unchanged"]


@pytest.mark.multiprocess
def test_clip_on_fsdp2_two_ranks_equals_unsharded_norm(tmp_path):
    result = run_worker(tmp_path, "gpt2", replicate=1, nproc=2)
    assert result["mesh_shape"] == [2] and result["placements"] == ["(Shard(dim=0),)"]
    check_sharded_clip(result)


@pytest.mark.multiprocess
def test_clip_on_hsdp_four_ranks_counts_replicas_once(tmp_path):
    result = run_worker(tmp_path, "llama", replicate=2, nproc=4)
    assert result["mesh_shape"] == [2, 2] and result["placements"] == ["(Replicate(), Shard(dim=0))"]
    check_sharded_clip(result)
