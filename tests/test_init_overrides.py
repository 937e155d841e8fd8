"""init.std_overrides: one role's std replaced, every other tensor bitwise the scheme's; config, record, inspect_init."""

from __future__ import annotations

import importlib.util
import json
import math
import tomllib

import pytest
import torch

from components.config import ConfigError, Init, load_config, to_toml
from init_schemes import WeightInitializer
from init_schemes.base import InitSpec, truncation_shrink, with_std
from models import build_model, make_model_args
from roles import DRAWN_ROLES
from tests.launch import REPO

VOCAB, SEQ = 301, 32


def init_model(opts: Init, seed: int = 0):
    """meta build -> to_empty -> init_weights on one process, as training does."""
    args = make_model_args("llama", "debug", VOCAB, SEQ, {"n_layers": 2})
    with torch.device("meta"):
        model = build_model(args)
    model.to_empty(device="cpu")
    initializer = WeightInitializer(opts, args, seed)
    model.init_weights(initializer, buffer_device=torch.device("cpu"))
    return dict(model.named_parameters()), initializer


@pytest.mark.parametrize("role, scheme", [("tok_embedding", "depth_aware"), ("lm_head", "depth_aware"),
                                          ("attn.out", "mitchell")])
def test_an_override_changes_its_role_only(role, scheme):
    plain, plain_init = init_model(Init(scheme=scheme))
    over, over_init = init_model(Init(scheme=scheme, std_overrides={role: 0.02}))
    changed = [name for name in plain if not torch.equal(plain[name], over[name])]
    assert changed and all(over_init.applied[name][0] == role for name in changed)
    assert len(changed) == sum(r == role for r, _, _ in plain_init.applied.values())
    for name in changed:
        before, after = plain_init.applied[name][2], over_init.applied[name][2]
        assert after.dist == before.dist and after.std == 0.02
        if after.dist == "trunc_normal":  # the cutoff stays at the same number of sigmas
            assert after.b / after.std == pytest.approx(before.b / before.std, rel=1e-12)
        n = over[name].numel()
        assert over[name].double().std().item() == pytest.approx(after.realized_std, abs=5 * 0.02 / math.sqrt(2 * n))


def test_lm_head_truncation_keeps_three_sigma_and_correct_truncation_restores_the_nominal_std():
    _, plain = init_model(Init(scheme="depth_aware", std_overrides={"lm_head": 0.02}))
    spec = plain.applied["lm_head.weight"][2]
    assert (spec.a, spec.b) == pytest.approx((-0.06, 0.06)) and spec.realized_std == pytest.approx(
        0.02 * truncation_shrink(-3, 3))
    _, corrected = init_model(Init(scheme="depth_aware", std_overrides={"lm_head": 0.02}, correct_truncation=True))
    assert corrected.applied["lm_head.weight"][2].realized_std == pytest.approx(0.02, rel=1e-12)


def test_with_std_on_every_family():
    assert with_std(InitSpec("normal", 1.0), 0.02) == InitSpec("normal", 0.02)
    assert with_std(InitSpec("uniform", 0.1), 0.05) == InitSpec("uniform", 0.05)
    assert with_std(InitSpec("trunc_normal", 0.02, -2.0, 2.0), 0.01) == InitSpec("trunc_normal", 0.01, -1.0, 1.0)
    assert with_std(InitSpec("constant", value=0.0), 0.02) == InitSpec("normal", 0.02)  # zero_output's outputs
    assert with_std(InitSpec("normal", 0.02), 0.0) == InitSpec("constant", value=0.0)


def test_record_lists_every_tensor_by_role():
    params, initializer = init_model(Init(scheme="depth_aware", std_overrides={"tok_embedding": 0.02}))
    record = json.loads(json.dumps(initializer.record()))  # what init_stds.json holds
    assert record["scheme"] == "depth_aware" and record["std_overrides"] == {"tok_embedding": 0.02}
    assert sum(len(entries) for entries in record["roles"].values()) == len(params)
    assert record["roles"]["tok_embedding"] == [{"param": "tok_embedding.weight", "layer": None, "dist": "normal",
                                                 "std": 0.02, "realized_std": 0.02}]
    outs = {e["layer"]: e["std"] for e in record["roles"]["attn.out"]}
    assert outs == pytest.approx({0: 0.02 / math.sqrt(2), 1: 0.02 / math.sqrt(4)})
    assert record["roles"]["lm_head"][0]["b"] == pytest.approx(3 * 128 ** -0.5)


def test_config_table_command_line_and_round_trip(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[init]\nscheme = "depth_aware"\nstd_overrides = {tok_embedding = 0.02}\n')
    cfg = load_config(["--config", str(toml)])[0]
    assert cfg.init.std_overrides == {"tok_embedding": 0.02}
    cli = load_config(["--config", str(toml), "--init.std_overrides", "lm_head=0.02, attn.q=1e-3"])[0]
    assert cli.init.std_overrides == {"lm_head": 0.02, "attn.q": 0.001}
    assert tomllib.loads(to_toml(cli))["init"]["std_overrides"] == {"lm_head": 0.02, "attn.q": 0.001}
    with pytest.raises(ConfigError, match=r"init.std_overrides must be name=value pairs, e.g. tok_embedding=0.02"):
        load_config(["--init.std_overrides", "tok_embedding"])
    with pytest.raises(ConfigError, match=r"init.std_overrides.lm_head must be a number; got 'big'"):
        load_config(["--init.std_overrides", "lm_head=big"])


@pytest.mark.parametrize("value, message", [
    ("embedding=0.02", "init.std_overrides: unknown role 'embedding'; valid roles: " + ", ".join(DRAWN_ROLES)),
    ("norm=0.5", "unknown role 'norm'"),
    ("lm_head=-0.1", "init.std_overrides: lm_head = -0.1; a std must be >= 0"),
])
def test_bad_overrides_are_one_line_config_errors(value, message):
    with pytest.raises(ConfigError) as err:
        load_config(["--config", "train_configs/debug.toml", "--init.std_overrides", value])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_inspect_init_marks_the_overridden_rows(capsys):
    spec = importlib.util.spec_from_file_location("inspect_init", REPO / "scripts" / "inspect_init.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = ["--config", "train_configs/debug.toml", "--tokenizer.max_vocab", "256", "--model.n_layers", "1",
            "--init.scheme", "depth_aware", "--init.std_overrides", "tok_embedding=0.02"]
    assert script.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "# std_overrides (rows marked *): tok_embedding=0.02"
    rows = {line.split()[0]: line.split() for line in lines[4:]}
    assert rows["tok_embedding.weight"][4] == "N*" and rows["tok_embedding.weight"][6] == "0.02"
    assert rows["lm_head.weight"][4] == "TN±3σ"  # not overridden: no mark
