"""scripts/coord_check.py: under μP a small Llama's activations stay flat in width over Adam steps; under SP they grow."""

from __future__ import annotations

import pytest
import torch

from scripts import coord_check

# Hidden coordinates whose size μP keeps Θ(1) in width after updates (TP5 §7.1): residual stream,
# branch outputs, MLP pre-activations, and the logits.
HIDDEN = ("act_rms/residual/layer_", "act_rms/attn_out/", "act_rms/mlp_out/", "act_std/mlp_pre/", "logits_rms")
MUP_FLAT = 0.3  # |log-log slope| bound under μP: widths 32..256 give -0.26..0.00
SP_GROWS = 0.7  # slope lower bound under SP: widths 32..256 give 0.85..2.7


@pytest.fixture(scope="module")
def width_slopes() -> dict:
    """Slopes at step 2 (after two AdamW steps at lr 1e-2), 2-block Llama, widths 32..256, base 32 (~10 s)."""
    opts = coord_check.parse_args(["--widths", "32,64,128,256", "--base-width", "32", "--seeds", "1",
                                   "--steps", "2", "--batch", "2"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these matmuls are too small to split; on a shared CPU threads only contend
    try:
        rows = coord_check.run_scan(opts)
    finally:
        torch.set_num_threads(threads)
    return {p: by_step[2] for p, by_step in coord_check.slopes(rows).items()}


def hidden(slopes: dict[str, float]) -> dict[str, float]:
    return {metric: slope for metric, slope in slopes.items() if metric.startswith(HIDDEN)}


@pytest.mark.slow
def test_mup_coordinates_stay_flat_in_width(width_slopes):
    mup = hidden(width_slopes["mup"])
    assert len(mup) == 9 and all(abs(s) < MUP_FLAT for s in mup.values()), mup
    # Attention logits at init are q.k / d_head of independent q, k: Θ(d^-1/2), not yet the Θ(1) of the updates.
    assert all(s <= 0 for m, s in width_slopes["mup"].items() if m.startswith("attn_logit_max")), width_slopes["mup"]


@pytest.mark.slow
def test_sp_coordinates_grow_with_width(width_slopes):
    sp = hidden(width_slopes["sp"])
    assert len(sp) == 9 and all(s > SP_GROWS for s in sp.values()), sp
    assert all(s > SP_GROWS for m, s in width_slopes["sp"].items() if m.startswith("attn_logit_max"))


def test_loglog_slope_recovers_a_power_law():
    assert coord_check.loglog_slope([32, 64, 128], [3 * 32 ** 0.5, 3 * 64 ** 0.5, 3 * 128 ** 0.5]) == pytest.approx(0.5)
