"""Adding an init scheme is one edit: a function registered with ``@register`` (README "Adding an init scheme").

The config validates ``init.scheme`` against the registry itself, so a newly registered scheme is
accepted everywhere (training, inspect_init) with no second list to edit, and an unregistered name
is still refused with one line.
"""

from __future__ import annotations

import json
import math

import pytest

from components.config import ConfigError, load_config, scheme_names
from init_schemes import REGISTRY
from init_schemes.base import base_std, normal, register
from tests.launch import python

NAME = "quarter_normal"


def quarter_normal(role, layer_id, args, opts):
    """Every weight role N(0, (sigma0/4)^2); a scheme written for this test only."""
    return normal(base_std(opts) / 4)


def test_config_accepts_exactly_the_registered_schemes():
    argv = ["--config", "train_configs/debug.toml", "--init.scheme", NAME]
    with pytest.raises(ConfigError, match=f"init.scheme = '{NAME}' is unknown"):
        load_config(argv)  # not registered yet: refused
    register(NAME)(quarter_normal)
    try:
        assert NAME in scheme_names()
        cfg, _ = load_config(argv)
        assert cfg.init.scheme == NAME
    finally:
        del REGISTRY[NAME]
    assert NAME not in scheme_names()
    with pytest.raises(ConfigError, match="did you mean 'normal'"):
        load_config(["--config", "train_configs/debug.toml", "--init.scheme", "normall"])


# One process, as a user's module would: register the scheme, inspect the drawn weights, train 2 steps.
DRIVER = """
import contextlib, io, json, runpy, sys
from init_schemes.base import base_std, normal, register

@register("quarter_normal")
def quarter_normal(role, layer_id, args, opts):
    return normal(base_std(opts) / 4)

common = ["--config", "train_configs/debug.toml", "--init.scheme", "quarter_normal",
          "--model.n_layers", "2", "--training.seq_len", "32", "--training.global_batch_size", "4"]
out = io.StringIO()
sys.argv = ["scripts/inspect_init.py", *common, "--json"]
with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
    runpy.run_path("scripts/inspect_init.py", run_name="__main__")
print("INSPECT " + json.dumps(json.loads(out.getvalue())))
import train
sys.exit(train.main([*common, "--training.steps", "2", "--metrics.val_freq", "0", "--metrics.log_freq", "1",
                     "--job.output_dir", OUTPUT_DIR, "--job.run_name", "custom"]))
"""


@pytest.mark.multiprocess
def test_training_and_inspect_use_a_newly_registered_scheme(tmp_path):
    proc = python(["-c", DRIVER.replace("OUTPUT_DIR", repr(str(tmp_path)))], timeout=300)
    report = json.loads(proc.stdout.split("INSPECT ", 1)[1].splitlines()[0])
    weights = [r for r in report if r["role"] != "norm"]
    assert len(weights) == 2 + 2 * 7  # embedding, head, 7 weights in each of 2 Llama blocks
    for r in weights:  # sigma0 = 0.02 (debug.toml leaves base_std to its default)
        assert r["expected_std"] == pytest.approx(0.005), r["name"]
        assert r["std"] == pytest.approx(0.005, rel=0.05), r["name"]
    run = tmp_path / "custom"
    record = json.loads((run / "init_stds.json").read_text())
    assert record["scheme"] == NAME
    drawn = {role: {t["realized_std"] for t in tensors} for role, tensors in record["roles"].items() if role != "norm"}
    assert drawn and all(math.isclose(std, 0.005) for stds in drawn.values() for std in stds), drawn
    losses = [json.loads(line)["loss/train"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if "loss/train" in line]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert (run / "finished.json").exists()
