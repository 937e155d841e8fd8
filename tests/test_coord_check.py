"""scripts/coord_check.py through train.py's trainer: the check passes μP and CompleteP and fails SP and planted defects.

Each scan trains real runs (train.py's loop, in this process) for 11 steps (10 updates) at widths 32..256
(8x) or depths 2..16, and judges the log-log slopes of the logged activation statistics against width or
depth (``coord_check.verdict``). The mutations replace one rule function of init_schemes/parametrization.py
for the duration of a scan, so the trainer builds the wrong μP exactly as a bug there would.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

import init_schemes.parametrization as rules
from roles import PROJECTION_ROLES
from scripts import coord_check

WIDTH_ARGS = ["--widths", "32,64,128,256", "--base-width", "32", "--seeds", "1", "--steps", "11", "--batch", "2"]
DEPTH_ARGS = ["--mode", "depth", "--depths", "2,4,8,16", "--width", "32", "--base-width", "32", "--base-depth", "2",
              "--seeds", "1", "--steps", "11", "--batch", "2"]
ORIGINAL_MULTIPLIERS, ORIGINAL_RULE = rules.forward_multipliers, rules.param_rule


def readout_one_over_sqrt_m(opts, args, base):
    """Mutation (a): logits x output_multiplier / sqrt(m_d) instead of / m_d."""
    values = ORIGINAL_MULTIPLIERS(opts, args, base)
    if opts.name != "sp":
        values["logit_multiplier"] = opts.output_multiplier / math.sqrt(rules.width_mult(args, base))
    return values


def sp_attention_scale(opts, args, base):
    """Mutation (b): SP's 1 / sqrt(d_head) attention scale under μP."""
    values = ORIGINAL_MULTIPLIERS(opts, args, base)
    if opts.name != "sp":
        values["attn_scale"] = opts.attn_multiplier / math.sqrt(args.head_dim)
    return values


def unscaled_hidden_lr(role, layer_id, args, base, opts):
    """Mutation (c): hidden matrices keep the base lr (no 1 / m_N)."""
    rule = ORIGINAL_RULE(role, layer_id, args, base, opts)
    return replace(rule, lr=1.0) if role in PROJECTION_ROLES else rule


MUTATIONS = {"readout_1/sqrt(m)": ("forward_multipliers", readout_one_over_sqrt_m),
             "attention_1/sqrt(d_head)": ("forward_multipliers", sp_attention_scale),
             "hidden_lr_unscaled": ("param_rule", unscaled_hidden_lr)}


def scan(argv: list[str], mutation: tuple | None = None) -> dict[str, dict[int, dict[str, float]]]:
    """parametrization -> step -> metric -> slope, with ``mutation`` (attribute, function) planted."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these matmuls are too small to split; on a shared CPU threads only contend
    try:
        with pytest.MonkeyPatch.context() as patch:
            if mutation:
                patch.setattr(rules, *mutation)
            return coord_check.slopes(coord_check.run_scan(coord_check.parse_args(argv)))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def width_slopes() -> dict:
    return scan([*WIDTH_ARGS, "--parametrizations", "sp,mup"])


@pytest.mark.slow
def test_mup_passes_the_width_check_and_sp_fails_it(width_slopes):
    assert coord_check.verdict(width_slopes["mup"], "width") == []
    sp = coord_check.verdict(width_slopes["sp"], "width")
    assert any(f.startswith("act_rms/residual after 10 updates") for f in sp), sp
    # The numbers behind the verdicts: after 10 updates SP's branch outputs grow ~ d^2 (Adam's Θ(lr) updates summed
    # over fan_in correlated coordinates, twice), μP's stay flat; at init μP's logits fall as d^-1/2.
    trained_sp, trained_mup = (coord_check.family_slopes(width_slopes[p][11]) for p in ("sp", "mup"))
    assert trained_sp["act_rms/mlp_out"] > 1.5 and abs(trained_mup["act_rms/mlp_out"]) < 0.3
    assert coord_check.family_slopes(width_slopes["mup"][1])["act_rms/logits"] == pytest.approx(-0.5, abs=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_each_planted_mup_defect_fails_the_width_check(mutation):
    failures = coord_check.verdict(scan([*WIDTH_ARGS, "--parametrizations", "mup"], MUTATIONS[mutation])["mup"],
                                   "width")
    expected = {"readout_1/sqrt(m)": "act_rms/logits at init", "attention_1/sqrt(d_head)": "attn_logit_max at init",
                "hidden_lr_unscaled": "act_rms/mlp_out after 10 updates"}[mutation]
    assert any(f.startswith(expected) for f in failures), failures


@pytest.mark.slow
def test_completep_passes_the_depth_check_and_plain_mup_fails_it():
    slopes = scan([*DEPTH_ARGS, "--parametrizations", "mup,completep"])
    assert coord_check.verdict(slopes["completep"], "depth") == []
    mup = coord_check.verdict(slopes["mup"], "depth")
    assert any(f.startswith("act_rms/residual/last after 10 updates") for f in mup), mup


def test_verdict_names_each_coordinate_off_its_expected_slope():
    flat = {"act_rms/residual/layer_00": 0.1, "act_rms/attn_out/layer_00": 0.0, "act_rms/mlp_out/layer_00": 0.0,
            "act_std/mlp_pre/layer_00": 0.0, "attn_logit_max/layer_00": -0.5, "act_rms/logits": -0.5}
    grown = dict(flat, **{"act_rms/mlp_out/layer_00": 0.9, "act_rms/mlp_out/layer_01": 0.5, "act_rms/logits": 0.1})
    assert coord_check.verdict({1: flat, 11: dict(flat, **{"act_rms/logits": 0.0})}, "width") == []
    assert coord_check.verdict({1: flat, 11: grown}, "width") == [
        "act_rms/mlp_out after 10 updates: slope +0.70 vs width, expected +0.0 ± 0.3"]
    with pytest.raises(ValueError, match="log_variance_stats"):
        coord_check.verdict({1: {}, 2: {}}, "width")


def test_loglog_slope_recovers_a_power_law():
    assert coord_check.loglog_slope([32, 64, 128], [3 * 32 ** 0.5, 3 * 64 ** 0.5, 3 * 128 ** 0.5]) == pytest.approx(0.5)
