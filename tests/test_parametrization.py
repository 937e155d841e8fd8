"""init_schemes/parametrization.py: μP against microsoft's ``mup`` package, CompleteP's rules, export folding."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from components import hf_convert
from components.build import model_args_from_config, parametrization_of
from components.config import load_config
from components.optim import param_groups
from init_schemes import WeightInitializer
from models import build_model
from roles import canonical_name, layer_of, role_of
from tests.launch import python

mup = pytest.importorskip("mup")  # test-only oracle (requirements-dev.txt)

VOCAB = 256
LR, WD, EPS = 0.01, 0.1, 1e-8
TOKENS = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
# Width 128 against a base of 64 (m_N = 2; llama's SwiGLU 384 against 192), 2 blocks.
FAMILIES = {
    "llama_gqa_lora": ["--model.name", "llama", "--model.n_kv_heads", "2", "--model.lora_rank", "4",
                       "--model.lora_targets", "attn.q,attn.v,mlp.out"],
    "gpt2_tied": ["--model.name", "gpt2"],
}


def config(*argv: str, dim: int = 128):
    cfg, _ = load_config(["--model.n_layers", "2", "--model.dim", str(dim), "--model.n_heads", "4",
                          "--training.seq_len", "16", "--optimizer.lr", str(LR), "--optimizer.weight_decay", str(WD),
                          "--optimizer.eps", str(EPS), "--init.scheme", "normal",
                          "--parametrization.base_width", "64", "--parametrization.base_depth", "1", *argv])
    return cfg


def plain_model(cfg, seed: int = 0):
    """Built and initialized on one process, no FSDP; returns (model, args, initializer)."""
    args = model_args_from_config(cfg, VOCAB)
    with torch.device("meta"):
        model = build_model(args)
    model.to_empty(device="cpu")
    initializer = WeightInitializer(cfg.init, args, seed, parametrization_of(cfg, args))
    model.init_weights(initializer, buffer_device=torch.device("cpu"))
    return model.eval(), args, initializer


def groups_by_name(model, groups) -> dict[str, dict]:
    name_of = {id(p): canonical_name(n) for n, p in model.named_parameters()}
    return {name_of[id(p)]: group for group in groups for p in group["params"]}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_mup_learning_rates_and_weight_decay_equal_mup_muadamw(family):
    """Every tensor's AdamW lr equals MuAdamW's on the same model with base shapes from the width-64 model;
    weight decay too wherever initlab decays (MuAdamW decays every tensor: it has no role flags)."""
    cfg = config(*FAMILIES[family], "--parametrization.name", "mup")
    model, _, initializer = plain_model(cfg)
    base, _, _ = plain_model(config(*FAMILIES[family], "--parametrization.name", "mup", dim=64))
    mup.set_base_shapes(model, base, rescale_params=False, do_assert=False)
    theirs = groups_by_name(model, mup.MuAdamW(model.parameters(), lr=LR, weight_decay=WD).param_groups)
    ours = groups_by_name(model, param_groups(model, cfg.optimizer, initializer.parametrization))
    assert set(ours) == set(theirs)
    hidden_lrs = set()
    for name, group in ours.items():
        assert group.get("lr", LR) == pytest.approx(theirs[name]["lr"], rel=1e-12), name
        if group["weight_decay"]:
            assert group["weight_decay"] == pytest.approx(theirs[name]["weight_decay"], rel=1e-12), name
        if theirs[name]["lr"] != LR:
            hidden_lrs.add(role_of(name))
    assert hidden_lrs == {"attn.q", "attn.k", "attn.v", "attn.out", "mlp.up", "mlp.out"} | (
        {"mlp.gate"} if family.startswith("llama") else set())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_mup_init_factor_equals_mup_init_and_logits_equal_mureadout(family):
    """mup.init.normal_ draws std / sqrt(m_N) for matrix-like tensors and std for the rest: initlab's
    factor on the scheme's std is the same for every tensor. MuReadout / MuSharedReadout over the same
    weight and final-norm output gives initlab's logits (output_mult / width_mult)."""
    extra = ["--parametrization.output_multiplier", "3", "--parametrization.input_multiplier", "2"]
    cfg = config(*FAMILIES[family], "--parametrization.name", "mup", *extra)
    model, args, initializer = plain_model(cfg)
    base, _, _ = plain_model(config(*FAMILIES[family], "--parametrization.name", "mup", *extra, dim=64))
    mup.set_base_shapes(model, base, rescale_params=False, do_assert=False)
    for name, param in model.named_parameters():
        name = canonical_name(name)
        mup_factor = param.infshape.width_mult() ** -0.5 if param.infshape.ninf() == 2 else 1.0
        rule = initializer.parametrization.rule(role_of(name), layer_of(name))
        assert rule.init == pytest.approx(mup_factor, rel=1e-12), name
        if role_of(name) == "attn.q":
            assert initializer.applied[name][2].std == pytest.approx(0.02 * mup_factor, rel=1e-12)
    final = {}
    model.final_norm.register_forward_hook(lambda module, inputs, out: final.setdefault("h", out))
    with torch.no_grad():
        ours = model(TOKENS)
    head = model.lm_head if model.lm_head is not None else None
    weight = model.tok_embedding.weight if head is None else head.weight
    readout = (mup.MuSharedReadout(weight, bias=False, output_mult=3.0) if head is None
               else mup.MuReadout(args.dim, VOCAB, bias=False, output_mult=3.0))
    if head is not None:
        readout.weight = weight
    assert readout.width_mult() == 2.0 and args.logit_multiplier == 1.5
    with torch.no_grad():
        assert torch.allclose(readout(final["h"]), ours, rtol=1e-5, atol=1e-6)


def test_completep_rules_follow_dey_et_al_reference():
    """L = 4 on a base depth 1 (m_L = 4), width 128 on 64 (m_N = 2), alpha 0.5: the nanoGPT-mup reference's
    lr / weight decay / eps per group and its branch multiplier m_L^-alpha."""
    cfg = config("--model.name", "gpt2", "--model.n_layers", "4", "--parametrization.name", "completep",
                 "--parametrization.alpha", "0.5")
    model, args, initializer = plain_model(cfg)
    assert args.residual_multiplier == 0.5 and args.logit_multiplier == 0.5 and args.attn_scale == 1 / 32
    ours = groups_by_name(model, param_groups(model, cfg.optimizer, initializer.parametrization))
    depth_lr = 4 ** -0.5
    expected = {  # name: (lr, weight decay)
        "layers.3.attn.q.weight": (LR / 2 * depth_lr, WD * 2), "layers.0.mlp.out.weight": (LR / 2 * depth_lr, WD * 2),
        "layers.1.attn_norm.weight": (LR * depth_lr, 0.0), "layers.2.mlp.up.bias": (LR * depth_lr, 0.0),
        "tok_embedding.weight": (LR, WD), "pos_embedding.weight": (LR, WD), "final_norm.weight": (LR, 0.0),
    }
    for name, (lr, wd) in expected.items():
        assert (ours[name]["lr"], ours[name]["weight_decay"]) == pytest.approx((lr, wd), rel=1e-12), name
    assert [group["eps"] for group in ours.values()] == pytest.approx([EPS / (2 * 4 ** 0.5)] * len(ours), rel=1e-12)
    # The scheme sees the base model (1 block): normal's sigma0 / sqrt(m_N) on hidden matrices, at every depth.
    assert initializer.applied["layers.3.mlp.out.weight"][2].std == pytest.approx(0.02 / math.sqrt(2), rel=1e-12)


def test_sp_is_the_identity():
    cfg = config("--model.name", "llama")
    model, args, initializer = plain_model(cfg)
    assert (args.embedding_multiplier, args.logit_multiplier, args.attn_scale, args.residual_multiplier) == (
        1.0, 1.0, None, 1.0)
    assert [g["name"] for g in param_groups(model, cfg.optimizer, initializer.parametrization)] == [
        "decay", "no_decay"]
    for name, (role, layer, spec) in initializer.applied.items():
        assert spec == initializer.scheme.spec(role, layer, args, cfg.init), name


@pytest.mark.parametrize("argv", [
    ["--model.name", "gpt2", "--parametrization.name", "mup", "--parametrization.input_multiplier", "2.5",
     "--parametrization.output_multiplier", "3", "--parametrization.attn_multiplier", "1.7"],
    ["--model.name", "llama", "--model.n_kv_heads", "2", "--model.n_layers", "3", "--parametrization.name",
     "completep", "--parametrization.input_multiplier", "0.5", "--parametrization.alpha", "0.75"],
    ["--model.name", "gpt2", "--model.tie_embeddings", "false", "--parametrization.attn_multiplier", "2"],
], ids=["gpt2_tied_mup", "llama_gqa_completep", "gpt2_untied_sp_attn"])
def test_export_folds_multipliers_so_transformers_logits_equal(argv):
    """std 0.2 weights so attention and every multiplier matter; the folded HF model gives initlab's logits."""
    import transformers

    model, args, _ = plain_model(config(*argv, "--init.base_std", "0.2"))
    hf_state = hf_convert.to_hf({canonical_name(k): v for k, v in model.state_dict().items()}, args)
    theirs = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**hf_convert.hf_config(args))).eval()
    missing, unexpected = theirs.load_state_dict(hf_state, strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}
    with torch.no_grad():
        ours = model(TOKENS)
        diff = (ours - theirs(TOKENS).logits).abs().max().item()
        unfolded = transformers.AutoModelForCausalLM.from_config(theirs.config).eval()
        unfolded.load_state_dict(hf_convert.to_hf({canonical_name(k): v for k, v in model.state_dict().items()},
                                                  _without_multipliers(args)), strict=False)
        folding_effect = (ours - unfolded(TOKENS).logits).abs().max().item()
    assert diff <= 1e-4 and folding_effect > 1e-2, (diff, folding_effect)


def _without_multipliers(args):
    from dataclasses import replace

    return replace(args, embedding_multiplier=1.0, logit_multiplier=1.0, attn_scale=None, residual_multiplier=1.0)


@pytest.mark.multiprocess
def test_mup_run_checkpoints_resumes_and_exports(tmp_path, monkeypatch):
    """train.py under completep (constant lr after warmup, so a 2-step run is the start of a 3-step one): 2 steps
    + resume to 3 give the loss of 3 straight steps (the per-group lrs and eps survive the checkpoint); the export's
    logits equal the checkpoint's in transformers."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    common = ["--model.name", "llama", "--model.n_layers", "2", "--model.dim", "64", "--tokenizer.max_vocab", "256",
              "--training.seq_len", "16", "--training.global_batch_size", "2", "--lr_scheduler.warmup_steps", "1",
              "--lr_scheduler.decay_type", "constant", "--metrics.log_freq", "1", "--metrics.val_freq", "0", "--metrics.log_weight_std", "false",
              "--parametrization.name", "completep", "--parametrization.base_width", "32",
              "--parametrization.base_depth", "1", "--parametrization.output_multiplier", "2",
              "--job.output_dir", str(tmp_path), "--checkpoint.enable", "true", "--checkpoint.interval", "1"]
    cases = [{"argv": [*common, "--job.run_name", "straight", "--training.steps", "3"]},
             {"argv": [*common, "--job.run_name", "resumed", "--training.steps", "2"]},
             {"argv": [*common, "--job.run_name", "resumed", "--training.steps", "3", "--checkpoint.resume", "true"]}]
    proc = python(["tests/train_main_worker.py", json.dumps(cases)])
    results = [json.loads(line.removeprefix("RESULT ")) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert [r["rc"] for r in results] == [0, 0, 0], results
    losses = {run: _losses(tmp_path / run) for run in ("straight", "resumed")}
    assert losses["straight"][3] == pytest.approx(losses["resumed"][3], rel=1e-5), losses
    from scripts import export
    from tests.test_export import hf_model, initlab_model_from_checkpoint

    assert export.main([str(tmp_path / "straight")]) == 0
    ours = initlab_model_from_checkpoint(tmp_path / "straight", vocab=VOCAB + 1)
    assert ours.args.residual_multiplier == 0.5 and ours.args.logit_multiplier == 1.0
    with torch.no_grad():
        diff = (ours(TOKENS) - hf_model(tmp_path / "straight" / "export")(TOKENS).logits).abs().max().item()
    assert diff <= 1e-4, diff


def _losses(run_dir: Path) -> dict[int, float]:
    """step -> train loss from the run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss/train"] for row in rows if "loss/train" in row}


@pytest.mark.multiprocess
def test_inspect_init_prints_the_resolved_rules():
    """debug Llama (d = 128) under mup on a base width 64: hidden lr / 2, weight decay x 2, logits x 1/2."""
    proc = python(["scripts/inspect_init.py", "--config", "train_configs/debug.toml", "--rules", "--tokenizer.max_vocab",
                   "256", "--parametrization.name", "mup", "--parametrization.base_width", "64"])
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[3:]}
    # parameter, role, layer, init std, fwd mult, lr, weight decay, eps
    assert rows["layers.1.attn.v.weight"][3:] == ["0.0141421", "1", "0.0015", "0.2", "1e-08"]
    assert rows["lm_head.weight"][3:] == ["0.02", "0.5", "0.003", "0.1", "1e-08"]
    assert rows["final_norm.weight"][3:] == ["=1", "1", "0.003", "0", "1e-08"]
    assert "attention scale 0.03125" in proc.stdout  # 1 / d_head, d_head = 32
