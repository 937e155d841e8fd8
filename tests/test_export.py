"""scripts/export.py and components/hf_convert.py: HF round trips for GPT-2 and Llama, init.from_checkpoint, bad inputs.

Oracles: transformers' ``GPT2LMHeadModel`` / ``LlamaForCausalLM`` built from the exported files
(logits within 1e-4 of initlab's in float32), the checkpoint's own tensors (bitwise after an
HF round trip), and the mean of the source rows for vocabulary rows a source does not have.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed.checkpoint as dcp

from components import hf_convert
from components.build import model_args_from_config
from components.checkpoint import read_checkpoint_metadata, weight_steps
from components.config import load_config
from components.weights_import import load_initial_weights
from init_schemes import WeightInitializer
from models import build_model
from roles import canonical_name
from scripts import export, plot_layer_std
from tests.launch import python, torchrun

VOCAB = 513  # tokenizer.max_vocab 512 + the EOS token
# Llama-3.2's RoPE, except an original context of 64 tokens, so all three frequency bands matter at 32 tokens.
LLAMA32_ROPE = ["--model.rope_theta", "500000", "--model.rope_scaling_factor", "32",
                "--model.rope_low_freq_factor", "1", "--model.rope_high_freq_factor", "4",
                "--model.rope_original_max_seq_len", "64"]
FAMILY_ARGS = {
    "llama": ["--model.name", "llama", "--model.n_layers", "2", "--model.dim", "64"],
    "gpt2": ["--model.name", "gpt2", "--model.n_layers", "2", "--model.dim", "64"],
}


# The trained runs: each family, plus a Llama with Llama 3 RoPE scaling and non-zero LoRA adapters
# (all parameters trained), whose export must merge the adapters and carry the scaling.
RUN_ARGS = {**FAMILY_ARGS, "llama_lora_rope": [*FAMILY_ARGS["llama"], *LLAMA32_ROPE, "--model.lora_rank", "4",
                                               "--init.lora_b_init", "gaussian"]}
FINAL_WEIGHTS_RUN = "llama_final_weights"


def train_args(output_dir: Path, family: str) -> list[str]:
    """3 steps, one process, a checkpoint at the last step."""
    return [*RUN_ARGS[family], "--model.flavor", "debug", "--tokenizer.max_vocab", "512", "--training.steps", "3",
            "--training.seq_len", "32", "--training.global_batch_size", "2", "--lr_scheduler.warmup_steps", "1",
            "--optimizer.lr", "0.01", "--job.output_dir", str(output_dir), "--job.run_name", family,
            "--checkpoint.enable", "true", "--checkpoint.interval", "3", "--metrics.log_freq", "3",
            "--metrics.val_freq", "0", "--metrics.log_weight_std", "false", "--init.scheme", "normal"]


def final_weights_args(output_dir: Path) -> list[str]:
    """The llama run without checkpoints (checkpoint.enable false): only its final weights are saved."""
    argv = train_args(output_dir, "llama")
    argv[argv.index("--job.run_name") + 1] = FINAL_WEIGHTS_RUN
    return [*argv, "--checkpoint.enable", "false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A trained 3-step run per RUN_ARGS entry (one interpreter for all), each with checkpoints/step_3, and the
    llama run again without checkpoints (FINAL_WEIGHTS_RUN)."""
    out = tmp_path_factory.mktemp("runs")
    cases = [{"argv": train_args(out, f)} for f in RUN_ARGS] + [{"argv": final_weights_args(out)}]
    proc = python(["tests/train_main_worker.py", json.dumps(cases)])
    results = [json.loads(line.removeprefix("RESULT ")) for line in proc.stdout.splitlines()
               if line.startswith("RESULT ")]
    assert [r["rc"] for r in results] == [0] * len(cases), results
    return {family: out / family for family in [*RUN_ARGS, FINAL_WEIGHTS_RUN]}


@pytest.fixture(scope="module")
def exports(runs) -> dict[str, Path]:
    """``scripts/export.py <run_dir>`` of each run, into <run_dir>/export."""
    for run_dir in runs.values():
        assert export.main([str(run_dir)]) == 0
    return {family: run_dir / "export" for family, run_dir in runs.items()}


def initlab_model_from_checkpoint(run_dir: Path, vocab: int = VOCAB):
    """The run's model (plain, one process) with the step_3 weights, read straight from DCP."""
    cfg, _ = load_config(["--config", str(run_dir / "config.toml")])
    args = model_args_from_config(cfg, vocab)
    with torch.device("meta"):
        model = build_model(args)
    model.to_empty(device="cpu")
    model.reset_buffers(torch.device("cpu"))
    dcp.load({"model": model.state_dict()}, checkpoint_id=str(run_dir / "checkpoints" / "step_3"), no_dist=True)
    return model.eval()


def hf_model(export_dir: Path):
    import transformers

    config = json.loads((export_dir / "config.json").read_text())
    cls = getattr(transformers, config["architectures"][0])
    return cls.from_pretrained(str(export_dir), dtype=torch.float32).eval()


@pytest.mark.multiprocess
def test_a_run_without_checkpoints_keeps_its_final_weights_for_export(runs, exports):
    """checkpoint.enable false: no checkpoints/, the model alone (no optimizer) in weights/step_3, which
    export.py turns into the same model.safetensors bytes as the same run's checkpoint; the plot script finds
    it too."""
    run_dir = runs[FINAL_WEIGHTS_RUN]
    assert not (run_dir / "checkpoints").exists() and weight_steps(run_dir) == {3: run_dir / "weights" / "step_3"}
    saved = read_checkpoint_metadata(run_dir / "weights" / "step_3").state_dict_metadata
    assert saved and all(key.startswith("model.") for key in saved)
    assert (exports[FINAL_WEIGHTS_RUN] / "model.safetensors").read_bytes() == \
        (exports["llama"] / "model.safetensors").read_bytes()
    assert json.loads((exports[FINAL_WEIGHTS_RUN] / "config.json").read_text())["initlab"]["step"] == 3
    assert plot_layer_std.newest_checkpoint(run_dir) == run_dir / "weights" / "step_3"


TOKENS = torch.randint(0, 500, (2, 16), generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------ export
@pytest.mark.multiprocess
@pytest.mark.parametrize("family", list(RUN_ARGS))
def test_exported_model_loads_in_transformers_with_equal_logits(runs, exports, family, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = initlab_model_from_checkpoint(runs[family])
    theirs = hf_model(exports[family])
    with torch.no_grad():
        diff = (ours(TOKENS) - theirs(TOKENS).logits).abs().max().item()
    assert diff <= 1e-4, diff
    config = json.loads((exports[family] / "config.json").read_text())
    assert config["vocab_size"] == VOCAB and config["initlab"]["step"] == 3


@pytest.mark.multiprocess
def test_from_checkpoint_loads_dcp_and_hf_weights_into_a_sharded_model(runs, exports, tmp_path, monkeypatch):
    """2 ranks: a step_N DCP dir, an HF dir with a larger model vocab, an HF file."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def argv(family: str, *extra: str) -> list[str]:
        return [*FAMILY_ARGS[family], "--model.vocab_size", str(VOCAB), "--training.seq_len", "32",
                "--init.scheme", "normal", "--job.seed", "7", *extra]

    jobs = [
        {"source": str(runs["llama"] / "checkpoints" / "step_3"), "argv": argv("llama")},
        {"source": str(exports["llama"]), "argv": argv("llama", "--model.vocab_size", "520")},
        {"source": str(exports["gpt2"] / "model.safetensors"), "argv": argv("gpt2")},
    ]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    torchrun(["tests/initial_weights_worker.py", str(tmp_path / "jobs.json"), str(tmp_path / "out.pt")], nproc=2)
    dcp_job, wider, gpt2_job = torch.load(tmp_path / "out.pt", weights_only=False)
    llama = {canonical_name(k): v for k, v in initlab_model_from_checkpoint(runs["llama"]).state_dict().items()}
    gpt2 = {canonical_name(k): v for k, v in initlab_model_from_checkpoint(runs["gpt2"]).state_dict().items()}

    assert dcp_job["report"]["format"] == "dcp" and dcp_job["report"]["kept_init"] == []
    assert all(torch.equal(dcp_job["state"][name], llama[name]) for name in llama)

    assert sorted(wider["report"]["resized"]) == ["lm_head.weight", "tok_embedding.weight"]
    for name in llama:
        if name in wider["report"]["resized"]:
            assert torch.equal(wider["state"][name][:VOCAB], llama[name])
            new_rows = wider["state"][name][VOCAB:]  # [7, d], each the mean of the source's rows
            assert torch.allclose(new_rows, llama[name].mean(dim=0).expand_as(new_rows), atol=1e-7)
        else:
            assert torch.equal(wider["state"][name], llama[name]), name
    with torch.no_grad():
        hf_logits = {family: hf_model(exports[family])(TOKENS).logits for family in exports}
    assert torch.equal(wider["tokens"], TOKENS)
    assert (wider["logits"][..., :VOCAB] - hf_logits["llama"]).abs().max().item() <= 1e-4

    assert gpt2_job["report"]["format"] == "gpt2" and gpt2_job["report"]["kept_init"] == []
    assert all(torch.equal(gpt2_job["state"][name], gpt2[name]) for name in gpt2)
    assert (gpt2_job["logits"] - hf_logits["gpt2"]).abs().max().item() <= 1e-4


@pytest.mark.multiprocess
@pytest.mark.parametrize("case", ["missing_run", "no_checkpoint", "missing_step", "out_not_empty"])
def test_export_bad_input_is_one_line_error_and_writes_nothing(runs, tmp_path, capsys, case):
    run_dir = tmp_path / "run"
    if case == "no_checkpoint":
        run_dir.mkdir()
        shutil.copy(runs["llama"] / "config.toml", run_dir / "config.toml")
    elif case in ("missing_step", "out_not_empty"):
        shutil.copytree(runs["llama"], run_dir, ignore=shutil.ignore_patterns("export"))
    argv = {"missing_run": [str(run_dir)], "no_checkpoint": [str(run_dir)],
            "missing_step": [str(run_dir), "--step", "2"], "out_not_empty": [str(run_dir), "--out", str(run_dir)]}[case]
    before = sorted((str(p), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    assert export.main(argv) == 2
    err = capsys.readouterr().err
    expected = {"missing_run": "does not exist", "no_checkpoint": "has no complete checkpoint",
                "missing_step": "available steps: 3", "out_not_empty": "already exists and is not empty"}[case]
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert sorted((str(p), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


# ------------------------------------------------------------------------------- units
def plain_model(argv: list[str], seed: int = 0):
    """An initialized, unsharded model (one process, no process group)."""
    cfg, _ = load_config([*argv, "--model.vocab_size", str(VOCAB), "--training.seq_len", "32", "--init.scheme",
                          "normal", "--job.seed", str(seed)])
    args = model_args_from_config(cfg, VOCAB)
    with torch.device("meta"):
        model = build_model(args)
    model.to_empty(device="cpu")
    model.init_weights(WeightInitializer(cfg.init, args, seed), buffer_device=torch.device("cpu"))
    return model.eval(), args


@pytest.mark.parametrize("variant", [
    FAMILY_ARGS["gpt2"], [*FAMILY_ARGS["gpt2"], "--model.bias", "false", "--model.tie_embeddings", "false"],
    FAMILY_ARGS["llama"], [*FAMILY_ARGS["llama"], "--model.n_kv_heads", "1"],
    [*FAMILY_ARGS["llama"], *LLAMA32_ROPE],
], ids=["gpt2", "gpt2_untied_no_bias", "llama_gqa2", "llama_mqa", "llama_rope_scaled"])
def test_hf_mapping_matches_transformers_and_inverts_exactly(variant):
    """std 0.2 (sharp attention, so a wrong RoPE row order moves logits by ~10) and perturbed norms/biases."""
    import transformers

    model, args = plain_model([*variant, "--init.base_std", "0.2"])
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)) * 0.2)
    state = {canonical_name(k): v for k, v in model.state_dict().items()}
    hf_state = hf_convert.to_hf(state, args)
    config = transformers.AutoConfig.for_model(**hf_convert.hf_config(args))
    theirs = transformers.AutoModelForCausalLM.from_config(config).eval()
    missing, unexpected = theirs.load_state_dict(hf_state, strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"} and (args.tie_embeddings or not missing)
    with torch.no_grad():
        diff = (model(TOKENS) - theirs(TOKENS).logits).abs().max().item()
    assert diff <= 1e-4, diff
    for name, tensor in state.items():
        link = hf_convert.link_for(name, args)
        assert torch.equal(hf_convert.from_hf_tensor(hf_state[link.hf_name], link), tensor), name


def test_rope_row_permutation_matches_rotate_half_layout():
    """One head, head_dim 4: interleaved pair rows (x0, y0, x1, y1) become halves (x0, x1, y0, y1)."""
    rows = torch.arange(8.0).reshape(4, 2)  # [heads * head_dim, d]
    half = hf_convert.interleaved_to_half(rows, heads=1)
    assert half[:, 0].tolist() == [0.0, 4.0, 2.0, 6.0]
    two_heads = torch.randn(16, 3)
    assert torch.equal(hf_convert.half_to_interleaved(hf_convert.interleaved_to_half(two_heads, 2), 2), two_heads)


def test_from_checkpoint_rejects_bad_sources(tmp_path):
    model, args = plain_model(FAMILY_ARGS["llama"])
    quiet = SimpleNamespace(is_main=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_initial_weights(model, tmp_path / "nope.safetensors", quiet)
    with pytest.raises(FileNotFoundError, match="neither a DCP checkpoint"):
        load_initial_weights(model, tmp_path, quiet)
    from safetensors.torch import save_file

    gpt2_model, gpt2_args = plain_model(FAMILY_ARGS["gpt2"])
    gpt2_state = {canonical_name(k): v for k, v in gpt2_model.state_dict().items()}
    save_file(hf_convert.to_hf(gpt2_state, gpt2_args), str(tmp_path / "gpt2.safetensors"))
    with pytest.raises(ValueError, match="holds gpt2 tensors but the model is llama"):
        load_initial_weights(model, tmp_path / "gpt2.safetensors", quiet)
    narrow, _ = plain_model([*FAMILY_ARGS["gpt2"], "--model.dim", "32"])
    with pytest.raises(ValueError, match=r"tensor tok_embedding\.weight is \[513, 64\] in .* but \[513, 32\]"):
        load_initial_weights(narrow, tmp_path / "gpt2.safetensors", quiet)


def hf_dir(tmp_path: Path, argv: list[str], config_edits: dict | None = None) -> tuple[Path, torch.nn.Module]:
    """A Hugging Face-style directory (model.safetensors + config.json) of a plain model built from ``argv``."""
    from safetensors.torch import save_file

    model, args = plain_model(argv, seed=3)
    source = tmp_path / "hf"
    source.mkdir(exist_ok=True)
    save_file(hf_convert.to_hf({canonical_name(k): v for k, v in model.state_dict().items()}, args),
              str(source / "model.safetensors"))
    (source / "config.json").write_text(json.dumps({**hf_convert.hf_config(args), **(config_edits or {})}))
    return source, model


@pytest.mark.parametrize("family, rank_stabilized", [("llama", "false"), ("gpt2", "false"), ("llama", "true")])
def test_adapters_merge_into_the_exported_weights(family, rank_stabilized):
    """Non-zero adapters (B ~ N(0, 1/r)) on q, v and mlp.out, alpha / r = 2 (rsLoRA: alpha / sqrt(r) = 4):
    transformers' logits equal initlab's."""
    import transformers

    model, args = plain_model([*FAMILY_ARGS[family], "--model.lora_rank", "4", "--model.lora_alpha", "8",
                               "--model.lora_rank_stabilized", rank_stabilized,
                               "--model.lora_targets", "attn.q,attn.v,mlp.out", "--init.lora_b_init", "gaussian"])
    assert args.lora_scale == (4.0 if rank_stabilized == "true" else 2.0)
    hf_state = hf_convert.to_hf({canonical_name(k): v for k, v in model.state_dict().items()}, args)
    assert not [name for name in hf_state if "lora" in name]
    theirs = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**hf_convert.hf_config(args))).eval()
    missing, unexpected = theirs.load_state_dict(hf_state, strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}
    with torch.no_grad():
        ours = model(TOKENS)
        diff = (ours - theirs(TOKENS).logits).abs().max().item()
        for name, param in model.named_parameters():
            if name.endswith(".lora_b"):
                param.zero_()
        adapter_effect = (ours - model(TOKENS)).abs().max().item()
    assert diff <= 1e-4 and adapter_effect > 1e-2, (diff, adapter_effect)


def test_from_checkpoint_into_an_adapted_model_starts_as_the_base(tmp_path):
    """An HF base model plus fresh adapters (B = 0): the adapters keep their init, the logits are the base's."""
    source, base = hf_dir(tmp_path, FAMILY_ARGS["llama"])
    model, _ = plain_model([*FAMILY_ARGS["llama"], "--model.lora_rank", "4"])
    report = load_initial_weights(model, source, SimpleNamespace(is_main=False))
    assert sorted(report["kept_init"]) == sorted(n for n, _ in model.named_parameters() if "lora" in n)
    assert len(report["kept_init"]) == 2 * 2 * 2 and report["unused"] == []
    with torch.no_grad():
        assert torch.equal(model(TOKENS), base(TOKENS))


def test_from_checkpoint_reads_a_hub_style_llama32_config(tmp_path):
    """transformers < 5 layout: top-level rope_theta and a rope_scaling dict (as Llama-3.2-1B's config.json)."""
    source, original = hf_dir(tmp_path, [*FAMILY_ARGS["llama"], *LLAMA32_ROPE], config_edits={
        "rope_parameters": None, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                                  "original_max_position_embeddings": 64, "rope_type": "llama3"}})
    model, _ = plain_model([*FAMILY_ARGS["llama"], *LLAMA32_ROPE])
    report = load_initial_weights(model, source, SimpleNamespace(is_main=False))
    assert report["kept_init"] == [] and report["unused"] == []
    with torch.no_grad():
        assert torch.equal(model(TOKENS), original(TOKENS))


@pytest.mark.parametrize("model_argv, config_edits, message", [
    (LLAMA32_ROPE[:2], {}, r"config.json has rope_scaling.factor = 32.0 but model.rope_scaling_factor = 1.0; "
                           r"set --model.rope_scaling_factor 32.0"),
    ([*LLAMA32_ROPE, "--model.rope_theta", "10000"], {}, r"rope_theta = 500000.0 but model.rope_theta = 10000.0"),
    # Same tensor shapes (q [64, 64], k/v [32, 64]), different heads: only the config can tell.
    ([*LLAMA32_ROPE, "--model.n_heads", "8", "--model.n_kv_heads", "4"], {},
     r"num_attention_heads = 4 but model.n_heads = 8; set --model.n_heads 4"),
    (LLAMA32_ROPE, {"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, r"RoPE type 'yarn'"),
    # Absent keys mean transformers' defaults: rope_theta 10000, rms_norm_eps 1e-6.
    (LLAMA32_ROPE, {"rope_theta": None, "rope_parameters": None, "rope_scaling": None},
     r"rope_theta = 10000.0 but model.rope_theta = 500000.0"),
    (LLAMA32_ROPE, {"rms_norm_eps": None}, r"rms_norm_eps = 1e-06 but model.norm_eps = 1e-05"),
    (LLAMA32_ROPE, {"attention_bias": True}, r"attention_bias = True \(attention biases\); initlab's llama has attention_bias = False only"),
    (LLAMA32_ROPE, {"hidden_act": "gelu"}, r"hidden_act = 'gelu' \(MLP activation\)"),
    (LLAMA32_ROPE, {"model_type": "qwen2"}, r"model_type = 'qwen2' but the model is llama; initlab loads"),
])
def test_from_checkpoint_rejects_a_config_the_model_does_not_match(tmp_path, model_argv, config_edits, message):
    source, _ = hf_dir(tmp_path, [*FAMILY_ARGS["llama"], *LLAMA32_ROPE], config_edits)
    model, _ = plain_model([*FAMILY_ARGS["llama"], *model_argv])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        load_initial_weights(model, source, SimpleNamespace(is_main=False))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "nothing loaded before the error"


def hub_cache(root: Path, repo_id: str, files: Path) -> Path:
    """A Hugging Face hub cache holding ``repo_id`` at one commit (the layout huggingface_hub writes)."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "0123456789abcdef"
    shutil.copytree(files, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    return root


def test_from_checkpoint_takes_a_hub_model_from_the_cache(tmp_path, monkeypatch):
    """hf://owner/name resolves through huggingface_hub (offline here: the cache is the hub)."""
    source, base = hf_dir(tmp_path, FAMILY_ARGS["llama"])
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache(tmp_path / "hub", "initlab-tests/tiny-llama", source)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model, _ = plain_model(FAMILY_ARGS["llama"])
    quiet = SimpleNamespace(is_main=False, local_rank=0)
    report = load_initial_weights(model, "hf://initlab-tests/tiny-llama", quiet)
    assert report["kept_init"] == [] and report["source"].endswith("snapshots/0123456789abcdef")
    with torch.no_grad():
        assert torch.equal(model(TOKENS), base(TOKENS))
    with pytest.raises(FileNotFoundError, match=r"init.from_checkpoint = 'hf://initlab-tests/absent': cannot get "
                                                r"initlab-tests/absent from the Hugging Face hub \("):
        load_initial_weights(model, "hf://initlab-tests/absent", quiet)


def test_from_checkpoint_refuses_to_drop_adapters_of_an_initlab_safetensors(tmp_path):
    from safetensors.torch import save_file

    adapted, _ = plain_model([*FAMILY_ARGS["gpt2"], "--model.lora_rank", "2", "--init.lora_b_init", "gaussian"])
    save_file({canonical_name(k): v.contiguous() for k, v in adapted.state_dict().items()},
              str(tmp_path / "adapted.safetensors"))
    model, _ = plain_model(FAMILY_ARGS["gpt2"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"holds LoRA adapters the model lacks \(layers\.0\.attn\.q\.lora_a, \.\.\.\)"):
        load_initial_weights(model, tmp_path / "adapted.safetensors", SimpleNamespace(is_main=False))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("edit, message", [
    ({"activation_function": "relu"}, r"activation_function = 'relu' \(MLP activation\)"),
    ({"scale_attn_by_inverse_layer_idx": True}, r"scale_attn_by_inverse_layer_idx = True \(attention scaling\)"),
    ({"n_head": 8}, r"n_head = 8 but model.n_heads = 4; set --model.n_heads 8"),
])
def test_from_checkpoint_rejects_a_gpt2_config_with_another_network(tmp_path, edit, message):
    source, _ = hf_dir(tmp_path, FAMILY_ARGS["gpt2"], edit)
    model, _ = plain_model(FAMILY_ARGS["gpt2"])
    with pytest.raises(ValueError, match=message):
        load_initial_weights(model, source, SimpleNamespace(is_main=False))


# ------------------------------------------------------------------------------ tokenizer and generation
SAMPLE_TEXT = ("Hello world! It's 2026; naïve café — 東京 🚀\n\n  indented\tcode = f(x)+1  # comment\r\n"
               "The quick brown fox's 12345 jumps over 7 lazy dogs...   \n\n\n tail  ")


@pytest.mark.multiprocess
def test_export_writes_readable_files_without_warnings(runs, tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert export.main([str(runs["llama"]), "--out", str(tmp_path / "out")]) == 0
    files = {path.name: path.stat().st_mode & 0o777 for path in (tmp_path / "out").iterdir()}
    assert files == dict.fromkeys(["model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                                   "tokenizer_config.json"], 0o644)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert config["eos_token_id"] == generation["eos_token_id"] == VOCAB - 1  # <|endoftext|> after 512 ranks


@pytest.mark.multiprocess
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_exported_tokenizer_and_model_generate_as_initlab(runs, exports, family, monkeypatch):
    """AutoTokenizer gives initlab's ids; transformers' greedy generate() equals initlab's own argmax loop."""
    import transformers

    from components.tokenizer import build_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg, _ = load_config(["--config", str(runs[family] / "config.toml")])
    ours_tok = build_tokenizer(cfg.tokenizer)
    theirs_tok = transformers.AutoTokenizer.from_pretrained(str(exports[family]))
    assert theirs_tok(SAMPLE_TEXT)["input_ids"] == ours_tok.encode(SAMPLE_TEXT)
    assert theirs_tok.eos_token_id == ours_tok.eos_id and theirs_tok.decode(ours_tok.encode(SAMPLE_TEXT)) == SAMPLE_TEXT

    prompt = theirs_tok("The quick brown", return_tensors="pt")
    generated = hf_model(exports[family]).generate(**prompt, max_new_tokens=8, do_sample=False)
    ours, tokens = initlab_model_from_checkpoint(runs[family]), prompt["input_ids"]
    with torch.no_grad():
        for _ in range(8):
            tokens = torch.cat([tokens, ours(tokens)[:, -1:].argmax(dim=-1)], dim=1)
    assert generated.tolist() == tokens.tolist()


@pytest.mark.parametrize("max_vocab", [0, 4096])
def test_tokenizer_json_ids_equal_tiktoken(tmp_path, max_vocab):
    """Full cl100k_base and a slice: HF ``tokenizers`` ids = initlab's on text with digits, Unicode, whitespace."""
    from tokenizers import Tokenizer as HFTokenizer

    from components.config import Tokenizer
    from components.hf_tokenizer import tokenizer_json
    from components.tokenizer import build_tokenizer

    ours = build_tokenizer(Tokenizer(max_vocab=max_vocab))
    theirs = HFTokenizer.from_str(tokenizer_json(ours))
    text = SAMPLE_TEXT + Path("components/hf_convert.py").read_text()
    assert theirs.encode(text).ids == ours.encode(text)
    assert theirs.get_vocab_size() == ours.n_vocab and theirs.token_to_id("<|endoftext|>") == ours.eos_id
