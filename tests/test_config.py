"""Config system: precedence, includes, type checks and one-line errors naming the key."""

from __future__ import annotations

import tomllib

import pytest

from components.config import (
    SECTIONS,
    Config,
    ConfigError,
    config_from_dict,
    field_docs,
    help_text,
    load_config,
    to_toml,
)
from tests.launch import python

CONTRACT_OPTIONS = ["model.name", "model.flavor", "init.scheme", "init.base_std", "init.scale_all_projections",
                    "training.steps", "training.seq_len", "optimizer.lr", "job.seed", "job.output_dir",
                    "job.run_name", "metrics.log_freq", "checkpoint.interval", "checkpoint.resume"]


def test_every_field_is_documented_and_contract_names_exist():
    for section, cls in SECTIONS.items():
        docs = field_docs(cls)
        fields = set(cls.__dataclass_fields__)
        assert fields == set(docs), f"[{section}] undocumented: {fields - set(docs)}"
    for dotted in CONTRACT_OPTIONS:
        section, key = dotted.split(".")
        assert key in SECTIONS[section].__dataclass_fields__
    assert "--training.steps" in help_text()


def test_precedence_cli_over_toml_over_defaults(tmp_path):
    base = tmp_path / "base.toml"
    base.write_text('[training]\nsteps = 7\nseq_len = 64\n[optimizer]\nlr = 0.5\n')
    child = tmp_path / "child.toml"
    child.write_text('base = "base.toml"\n[training]\nsteps = 9\n')
    cfg, _ = load_config(["--config", str(child), "--training.steps", "20", "--init.base_std=0.01"])
    assert cfg.training.steps == 20  # CLI beats the child TOML
    assert cfg.training.seq_len == 64  # inherited from the base file
    assert cfg.optimizer.lr == 0.5
    assert cfg.init.base_std == 0.01
    assert cfg.training.global_batch_size == Config().training.global_batch_size  # default


def test_cli_parsing_of_types():
    cfg, flags = load_config(["--optimizer.betas", "0.8,0.99", "--init.scale_all_projections", "true",
                              "--compile.enable", "auto", "--model.n_layers", "3", "--dry-run"], flags=("dry-run",))
    assert cfg.optimizer.betas == [0.8, 0.99]
    assert cfg.init.scale_all_projections is True
    assert cfg.compile.enable is None
    assert cfg.model.n_layers == 3
    assert flags == {"dry-run"}


def test_cli_string_lists_accept_brackets_and_quotes():
    for spelled in ("attn.q,mlp.out", "[attn.q, mlp.out]", '["attn.q", "mlp.out"]'):
        cfg, _ = load_config(["--model.lora_targets", spelled])
        assert cfg.model.lora_targets == ["attn.q", "mlp.out"], spelled


@pytest.mark.parametrize("argv, message", [
    (["--training.stepz", "3"], "unknown key training.stepz (command line); did you mean 'steps'?"),
    (["--trainin.steps", "3"], "unknown config section [trainin] (command line); did you mean 'training'?"),
    (["--training.steps", "ten"], "training.steps must be an integer; got 'ten'"),
    (["--training.steps", "0"], "training.steps must be >= 1; got 0"),
    (["--init.scheme", "mitchel"], "init.scheme = 'mitchel' is unknown; did you mean 'mitchell'?"),
    (["--model.name", "gpt3"], "model.name = 'gpt3' is not allowed; did you mean 'gpt2'?"),
    (["--optimizer.lr", "-1"], "optimizer.lr must be > 0; got -1.0"),
    (["--init.scale_all_projections", "maybe"], "init.scale_all_projections must be true or false; got 'maybe'"),
    (["--config", "/nonexistent/x.toml"], "config file not found: /nonexistent/x.toml"),
    (["positional"], "unexpected argument 'positional'"),
    (["--model.lora_targets", "attn.q,attn.qq"], "model.lora_targets: 'attn.qq' is not a projection role; "
                                                 "did you mean 'attn.q'?"),
    (["--training.trainable", "lora"], "training.trainable = 'lora' but the model has no adapters; "
                                       "set model.lora_rank > 0"),
    (["--model.lora_rank", "-2"], "model.lora_rank must be >= 0 (0 = no adapters); got -2"),
    (["--init.lora_b_init", "ones"], "init.lora_b_init = 'ones' is not allowed"),
    (["--model.rope_scaling_factor", "0.5"], "model.rope_scaling_factor must be >= 1 (1 = no scaling); got 0.5"),
])
def test_bad_inputs_give_one_line_errors(argv, message):
    with pytest.raises(ConfigError) as err:
        load_config(argv)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_toml_errors_name_the_file_and_key(tmp_path):
    bad_key = tmp_path / "a.toml"
    bad_key.write_text("[optimizer]\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key optimizer.learning_rate .*a.toml"):
        load_config(["--config", str(bad_key)])
    bad_type = tmp_path / "b.toml"
    bad_type.write_text('[training]\nsteps = "many"\n')
    with pytest.raises(ConfigError, match="training.steps must be an integer"):
        load_config(["--config", str(bad_type)])
    cycle = tmp_path / "c.toml"
    cycle.write_text('base = "c.toml"\n')
    with pytest.raises(ConfigError, match="include cycle"):
        load_config(["--config", str(cycle)])
    broken = tmp_path / "d.toml"
    broken.write_text("[training\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(["--config", str(broken)])


def test_config_from_dict_checks_as_a_toml_file_does(tmp_path):
    data = {"training": {"steps": 7, "max_norm": 2}, "model": {"ffn_dim": None}, "checkpoint": {"interval": 5}}
    cfg = config_from_dict(data)
    assert (cfg.training.steps, cfg.training.max_norm, cfg.model.ffn_dim) == (7, 2.0, None)
    assert type(cfg.training.max_norm) is float and cfg.checkpoint.enable  # coerced; an interval implies saving
    toml = tmp_path / "same.toml"
    toml.write_text("[training]\nsteps = 7\nmax_norm = 2\n[checkpoint]\ninterval = 5\n")
    assert cfg == load_config(["--config", str(toml)])[0]
    over = config_from_dict({"optimizer": {"lr": 0.5}}, base=cfg)
    assert (over.optimizer.lr, over.training.steps, cfg.optimizer.lr) == (0.5, 7, Config().optimizer.lr)  # base kept
    for bad, message in [
        ({"optimizer": {"learnin_rate": 0.1}}, "unknown key optimizer.learnin_rate (mine); valid: name, lr,"),
        ({"trainig": {"steps": 1}}, "unknown config section [trainig] (mine); did you mean 'training'?"),
        ({"training": {"steps": "many"}}, "training.steps must be an integer; got 'many'"),
        ({"training": {"steps": None}}, "training.steps must be an integer; got None"),
        ({"training": 3}, "mine: top-level key 'training' must be a [table]"),
        ({"optimizer": {"lr": -1.0}}, "optimizer.lr must be > 0; got -1.0"),
    ]:
        with pytest.raises(ConfigError) as err:
            config_from_dict(bad, origin="mine")
        assert str(err.value).startswith(message), str(err.value)


def test_resolved_config_round_trips(tmp_path):
    cfg, _ = load_config(["--config", "train_configs/debug.toml", "--training.steps", "33"])
    path = tmp_path / "resolved.toml"
    path.write_text(to_toml(cfg))
    again, _ = load_config(["--config", str(path)])
    assert again == cfg


def test_older_val_batches_becomes_the_same_number_of_val_tokens(tmp_path):
    """A run directory's config.toml from before metrics.val_tokens (val_batches = 4) still loads: 4 global batches
    of 8 x 64 tokens are 2,048 held-out tokens; the resolved config round-trips without the older key."""
    old = tmp_path / "config.toml"
    old.write_text("[training]\nseq_len = 64\nglobal_batch_size = 8\n[metrics]\nval_batches = 4\n")
    cfg, _ = load_config(["--config", str(old)])
    assert (cfg.metrics.val_tokens, cfg.metrics.val_batches) == (2048, 0)
    assert load_config(["--config", str(old), "--metrics.val_batches", "1"])[0].metrics.val_tokens == 512
    (tmp_path / "resolved.toml").write_text(to_toml(cfg))
    assert load_config(["--config", str(tmp_path / "resolved.toml")])[0] == cfg


def test_every_shipped_config_loads():
    from pathlib import Path
    configs = [p for p in Path("train_configs").rglob("*.toml")  # sweep files (scripts/sweep.py) are not configs
               if p.name != "base.toml" and "sweep" not in tomllib.loads(p.read_text())]
    assert len(configs) >= 15
    for path in configs:
        load_config(["--config", str(path)])


@pytest.mark.multiprocess
def test_train_py_bad_config_exits_nonzero_with_one_line(tmp_path):
    proc = python(["train.py", "--config", "train_configs/debug.toml", "--training.stepz", "3",
                   "--job.output_dir", str(tmp_path)], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown key training.stepz (command line); did you mean 'steps'?"
    assert list(tmp_path.iterdir()) == []


def test_an_explicit_checkpoint_interval_turns_saving_on_unless_enable_false_outranks_it(tmp_path):
    assert load_config(["--checkpoint.interval", "50"])[0].checkpoint.enable  # CLI interval, default enable
    toml = tmp_path / "off.toml"
    toml.write_text("[checkpoint]\nenable = false\n")
    assert load_config(["--config", str(toml), "--checkpoint.interval", "50"])[0].checkpoint.enable  # CLI > TOML
    both = tmp_path / "both.toml"
    both.write_text("[checkpoint]\nenable = false\ninterval = 50\n")
    assert not load_config(["--config", str(both)])[0].checkpoint.enable  # the TOML says both: enable wins
    assert not load_config(["--checkpoint.interval", "50", "--checkpoint.enable", "false"])[0].checkpoint.enable
    assert not load_config([])[0].checkpoint.enable  # the default interval alone saves nothing


def test_resume_accepts_toml_booleans_and_the_auto_mode(tmp_path):
    toml = tmp_path / "r.toml"
    toml.write_text("[checkpoint]\nresume = true\n")
    assert load_config(["--config", str(toml)])[0].checkpoint.resume == "true"
    assert load_config([])[0].checkpoint.resume == "auto"
    with pytest.raises(ConfigError, match=r"checkpoint.resume = 'sometimes' is not allowed"):
        load_config(["--checkpoint.resume", "sometimes"])
