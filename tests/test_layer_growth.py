"""scripts/layer_growth.py on fabricated 4-layer runs: 2 schemes x 3 seeds with planted std growth.

Growth of layer l at the last step is planted as g_l = a_s + b_s * l per seed s, so the slope is
b_s, the shallow-half minus deep-half gap is -2 b_s (layers 0,1 vs 2,3), and the group interval is
mean ± t(0.975, 2) * sd / sqrt(3), t(0.975, 2) = 4.302652729911275 (any t table).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from scripts import layer_growth
from tests.launch import python
from tests.test_compare_runs import LLAMA_RUN, write_run

T_975_2 = 4.302652729911275
STEPS = (1, 10, 20)
N_LAYERS = 4
# Per scheme and seed: (a, b) of the final growth a + b * l, and the init std of every layer.
PLANTED = {"depth_aware": {0: (0.004, -0.001), 1: (0.005, -0.0005), 2: (0.003, -0.0015)},
           "lingua_bug": {0: (0.01, 0.02), 1: (0.01, 0.03), 2: (0.02, 0.025)}}
INIT_STD = {"depth_aware": lambda layer: 0.02, "lingua_bug": lambda layer: 0.02 / math.sqrt(2 * (layer + 1))}


def records(scheme: str, seed: int) -> list[dict]:
    """Std grows linearly in the step to (1 + a + b*l) x its step-1 value; act stats at every step."""
    a, b = PLANTED[scheme][seed]
    out = []
    for step in STEPS:
        frac = (step - STEPS[0]) / (STEPS[-1] - STEPS[0])
        record = {"step": step, "loss/train": 5.0, "act_rms/residual/embedding": 1.0 + seed}
        for layer in range(N_LAYERS):
            for role in ("attn.q", "attn.k", "attn.v"):
                record[f"weight_std/{role}/layer_{layer:02d}"] = INIT_STD[scheme](layer) * (1 + frac * (a + b * layer))
            record[f"act_rms/residual/layer_{layer:02d}"] = step + layer + seed
            record[f"attn_logit_max/layer_{layer:02d}"] = 2.0 * step + seed
        out.append(record)
    return out


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    dirs = []
    for scheme in PLANTED:
        cli = [*LLAMA_RUN, "--model.n_layers", str(N_LAYERS), "--init.scheme", "depth_aware"]
        if scheme == "lingua_bug":
            cli += ["--init.scale_all_projections", "true"]
        for seed in PLANTED[scheme]:
            dirs.append(write_run(tmp_path / "runs", f"{scheme}_seed{seed}", [*cli, "--job.seed", str(seed)],
                                  records(scheme, seed)))
    return dirs


def interval(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return mean, T_975_2 * sd / math.sqrt(len(values))


def test_growth_slope_gap_and_profiles(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert layer_growth.main([*map(str, runs), "--out", str(out)]) == 0
    with open(out / "growth_summary.csv") as f:
        summary = {(r["group"], r["role"], r["quantity"]): r for r in csv.DictReader(f)}
    assert len(summary) == 2 * 3 * 2
    for scheme, seeds in PLANTED.items():
        slopes = [b for _, b in seeds.values()]
        for role in ("attn.q", "attn.k", "attn.v"):
            for quantity, values in ((layer_growth.SLOPE, slopes),
                                     (layer_growth.SHALLOW_MINUS_DEEP, [-2 * b for b in slopes])):
                row = summary[scheme, role, quantity]
                mean, half = interval(values)
                assert int(row["n"]) == 3
                assert float(row["mean"]) == pytest.approx(mean, abs=1e-12)
                assert float(row["ci95_half_width"]) == pytest.approx(half, rel=1e-9)
    with open(out / "growth.csv") as f:
        growth = [r for r in csv.DictReader(f) if r["group"] == "lingua_bug" and r["role"] == "attn.q"
                  and r["seed"] == "1" and r["layer"] == "3"]
    assert float(growth[0]["growth"]) == pytest.approx(0.01 + 0.03 * 3, abs=1e-12)
    assert float(growth[0]["std_first"]) == pytest.approx(0.02 / math.sqrt(8))
    with open(out / "depth_profile.csv") as f:
        profile = {(r["group"], r["statistic"], r["step"], r["layer"]): r for r in csv.DictReader(f)}
    # act_rms/residual at the last step (20), layer 2: 20 + 2 + seed over seeds 0..2 -> 23 ± t * 1 / sqrt(3).
    row = profile["depth_aware", "act_rms/residual", "last", "2"]
    assert float(row["mean"]) == pytest.approx(23.0)
    assert float(row["ci95_half_width"]) == pytest.approx(T_975_2 / math.sqrt(3))
    assert float(profile["lingua_bug", "act_rms/residual", "first", "-1"]["mean"]) == pytest.approx(2.0)
    assert float(profile["lingua_bug", "attn_logit_max", "first", "0"]["mean"]) == pytest.approx(3.0)
    report = (out / "layer_growth.md").read_text()
    assert "| lingua_bug | attn.q | 0,1,2 | 1.33 ± 1.43 % | 8.83 ± 3.99 % |" in report
    assert (out / "layer_growth.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_role_is_a_one_line_error(runs: list[Path], tmp_path: Path) -> None:
    result = python(["scripts/layer_growth.py", str(runs[0]), "--roles", "attn.x", "--out", str(tmp_path / "o")],
                    check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {runs[0]} has no weight_std/attn.x/layer_NN; pass --roles from "
        "attn.q,attn.k,attn.v"]
