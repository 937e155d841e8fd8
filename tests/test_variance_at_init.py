"""scripts/variance_at_init.py: the mean-field prediction against measurement where its assumptions hold.

On i.i.d. uniform random tokens (the theory's independent-token assumption) and a model wide
enough for the weight-sampling noise to be small, every predicted per-layer RMS must match the
measured one; the command line writes its three files and refuses an unknown scheme in one line.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from components.config import load_config
from scripts.variance_at_init import measure, predict, uniform_attention_kappa
from tests.launch import python

SEQ_LEN, VOCAB = 64, 4096


def test_uniform_attention_kappa_is_the_mean_of_one_over_position():
    assert uniform_attention_kappa(1) == 1.0
    assert uniform_attention_kappa(2) == pytest.approx((1 + 1 / 2) / 2)
    assert uniform_attention_kappa(4) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def measured_and_predicted(family: str, scheme: str) -> tuple[dict, dict]:
    cfg, _ = load_config(["--config", "train_configs/debug.toml", "--model.name", family, "--model.dim", "256",
                          "--model.n_layers", "3", "--init.scheme", scheme, "--training.seq_len", str(SEQ_LEN)])
    tokens = torch.randint(0, VOCAB, (8, SEQ_LEN + 1), generator=torch.Generator().manual_seed(0))
    measured, args, stds = measure(cfg, VOCAB, [tokens])
    return measured, predict(args, stds, SEQ_LEN, measured["grad_rms/residual"][-1])


def assert_agree(measured: dict, predicted: dict, quantity: str, depths: slice, tolerance: float) -> None:
    pairs = list(zip(measured[quantity], predicted[quantity], strict=True))[depths]
    assert pairs
    for m, p in pairs:
        assert math.isfinite(m) and m > 0
        assert abs(m / p - 1) <= tolerance, f"{quantity}: measured {m:.4g}, predicted {p:.4g}"


@pytest.mark.parametrize("family,scheme", [("llama", "mitchell"), ("gpt2", "normal")])
def test_prediction_holds_where_tokens_are_still_independent(family, scheme):
    measured, predicted = measured_and_predicted(family, scheme)
    every, first = slice(None), slice(0, 1)
    assert_agree(measured, predicted, "act_std/mlp_pre", every, 0.02)  # exact given the norm: d sigma^2
    assert_agree(measured, predicted, "act_rms/mlp_out", every, 0.05)  # per token: c_phi only
    assert_agree(measured, predicted, "act_rms/attn_out", first, 0.05)  # block 0 mixes i.i.d. tokens
    assert_agree(measured, predicted, "act_rms/residual", slice(0, 2), 0.05)
    assert_agree(measured, predicted, "grad_rms/residual", slice(1, None), 0.1)
    # Past block 0 the positions share the tokens block 0 averaged: the value path no longer averages
    # independent vectors and the measured attention output exceeds the independent-token prediction.
    later = [m / p for m, p in zip(measured["act_rms/attn_out"][1:], predicted["act_rms/attn_out"][1:])]
    assert min(later) > 1.3


def test_prediction_holds_at_every_depth_when_the_embedding_dominates():
    measured, predicted = measured_and_predicted("llama", "depth_aware")  # N(0, 1) embeddings: small branches
    for quantity in measured:
        assert_agree(measured, predicted, quantity, slice(None), 0.05)


@pytest.mark.multiprocess
def test_command_line_writes_table_json_and_figure(tmp_path):
    out = tmp_path / "report"
    python(["scripts/variance_at_init.py", "--config", "train_configs/debug.toml", "--model.n_layers", "2",
            "--training.seq_len", "32", "--training.global_batch_size", "2", "--init.scheme", "mitchell,zeros",
            "--out", str(out)], env={"OMP_NUM_THREADS": "1"})
    results = json.loads((out / "results.json").read_text())["results"]
    assert list(results) == ["mitchell", "zeros"]
    assert len(results["mitchell"]["measured"]["act_rms/residual"]) == 3  # embedding + 2 blocks
    assert results["zeros"]["measured"]["act_rms/residual"] == [0.0, 0.0, 0.0]
    table = (out / "table.md").read_text()
    assert "| mitchell |" in table and "## zeros" in table
    assert (out / "rms_vs_depth.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.multiprocess
def test_unknown_scheme_is_one_line_error():
    proc = python(["scripts/variance_at_init.py", "--config", "train_configs/debug.toml", "--init.scheme", "mitchel"],
                  check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "unknown scheme(s) ['mitchel']" in proc.stderr
