"""scripts/compare_runs.py (and the run-directory reading of components/run_dir.py and reporting/) on synthetic runs.

Run directories are built in tmp_path: config.toml from the config system, metrics.jsonl with
planted numbers, so every table cell has a known expected value.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from components.config import load_config, to_toml
from components.run_dir import read_metrics
from reporting import compare, groups, tables
from reporting.layers import final_layer_std, layer_std_matrix
from reporting.runs import load_run
from scripts import compare_runs
from tests.launch import python

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GPT2_RUN = ["--model.name", "gpt2", "--model.n_layers", "3", "--model.dim", "32", "--model.n_heads", "2",
            "--model.vocab_size", "64", "--training.seq_len", "16", "--training.global_batch_size", "4",
            "--training.steps", "40"]
LLAMA_RUN = ["--model.name", "llama", "--model.n_layers", "2", "--model.dim", "32", "--model.n_heads", "4",
             "--model.n_kv_heads", "2", "--model.vocab_size", "96", "--training.seq_len", "32",
             "--training.global_batch_size", "8", "--training.steps", "50"]


def std_keys(roles: list[str], n_layers: int, step: int) -> dict[str, float]:
    """Plausible per-layer std: 0.02 at step 1, growing with step, faster in shallow layers."""
    keys = {}
    for r, role in enumerate(roles):
        for layer in range(n_layers):
            keys[f"weight_std/{role}/layer_{layer:02d}"] = 0.02 + 1e-4 * step / (layer + 1) + 1e-3 * r
        keys[f"weight_std/{role}/mean_over_layers"] = 0.02
    return keys


def write_run(root: Path, name: str, cli: list[str], records: list[dict]) -> Path:
    """A run directory with the resolved config of ``cli`` and ``records`` as metrics.jsonl lines."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(to_toml(load_config(cli)[0]))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


GPT2_ROLES = ["attn.q", "attn.k", "attn.v", "attn.out", "mlp.up", "mlp.out"]
LLAMA_ROLES = ["attn.q", "attn.k", "attn.v", "attn.out", "mlp.gate", "mlp.up", "mlp.out"]


def gpt2_records() -> list[dict]:
    """Steps 1..40 of run A; validation at 20 and 40 on separate lines (merged by step when read)."""
    train = {1: 4.16, 10: 3.5, 20: 3.1, 30: 2.9, 40: 2.8}
    tput = {1: 1000.0, 10: 5000.0, 20: 5200.0, 30: 5100.0, 40: 5300.0}
    records = [{"step": s, "loss/train": loss, "lr": 1e-3, "grad_norm_total": 1.0,
                "throughput/tokens_per_sec": tput[s], **std_keys(GPT2_ROLES, 3, s)} for s, loss in train.items()]
    return records + [{"step": 20, "loss/val": 3.25}, {"step": 40, "loss/val": 2.95}]


def llama_records() -> list[dict]:
    """Run B: the loss goes NaN at step 30 (the trainer stops there)."""
    train = {1: 4.6, 10: 4.0, 20: 3.7, 30: math.nan}
    return [{"step": s, "loss/train": loss, "throughput/tokens_per_sec": 800.0 + s,
             **std_keys(LLAMA_ROLES, 2, s)} for s, loss in train.items()]


@pytest.fixture
def two_runs(tmp_path: Path) -> list[Path]:
    run_a = write_run(tmp_path / "family", "mitchell_bug", [
        *GPT2_RUN, "--init.scheme", "mitchell", "--init.scale_all_projections", "true"], gpt2_records())
    run_b = write_run(tmp_path / "family", "depth_flat", [
        *LLAMA_RUN, "--init.scheme", "depth_aware", "--init.depth_init", "false", "--init.base_std", "0.01"],
        llama_records())
    return [run_a, run_b]


def gpt2_param_formula(V: int, T: int, d: int, L: int) -> int:
    """Tied GPT-2 with biases: embeddings + L x (q,k,v,out + 2 LayerNorms + MLP d->4d->d) + final LayerNorm."""
    block = 4 * (d * d + d) + 2 * 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return V * d + T * d + L * block + 2 * d


def llama_param_formula(V: int, d: int, L: int, kv_dim: int, ffn: int) -> int:
    """Untied Llama without biases: embedding + L x (q, k, v, out, gate/up/out, 2 RMSNorms) + norm + head."""
    block = d * d + 2 * d * kv_dim + d * d + 3 * d * ffn + 2 * d
    return V * d + L * block + d + V * d


def read_rows(path: Path) -> dict[str, dict]:
    with path.open() as handle:
        return {row["run"]: row for row in csv.DictReader(handle)}


def test_report_table_numbers_and_figures(two_runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert compare_runs.main([*map(str, two_runs), "--out", str(out), "--title", "Tiny ablation"]) == 0
    report = (out / "report.md").read_text()
    assert capsys.readouterr().out.strip() == report.strip()
    lines = {line.split(" | ")[0].strip("| "): line for line in report.splitlines() if line.startswith("| ")}
    # Run A: params by formula (V=64, T=16, d=32, L=3) = 40,736 -> "40.7k"; tokens 40 x 4 x 16 = 2560.
    assert lines["mitchell_bug"] == ("| mitchell_bug | 0 | mitchell + scale_all_projections | 40.7k | 2.56k | 2.8000 | "
                                     "2.9500 | 3.5000 | 3.1000 | 2.9000 | 5.15k | no | 40/40 | finished | unknown |")
    # Run B: llama ffn = ceil64(int(2*4*32/3)) = 128; tokens 30 x 8 x 32; 75% of 50 steps -> nearest step 30.
    assert lines["depth_flat"] == ("| depth_flat | 0 | depth_aware (base_std=0.01, depth_init=false) | 37k | 7.68k | "
                                   "nan | n/a | 4.0000 | 3.7000 | nan | 820 | yes: loss/train = nan at step 30 | 30/50 | diverged | "
                                   "unknown |")
    rows = read_rows(out / "summary.csv")
    assert int(rows["mitchell_bug"]["params"]) == gpt2_param_formula(64, 16, 32, 3) == 40736
    assert int(rows["depth_flat"]["params"]) == llama_param_formula(96, 32, 2, 16, 128) == 37024
    assert int(rows["mitchell_bug"]["tokens"]) == 2560 and int(rows["depth_flat"]["tokens"]) == 7680
    assert float(rows["mitchell_bug"]["train_loss_at_50pct"]) == 3.1 and rows["mitchell_bug"]["step_at_50pct"] == "20"
    assert float(rows["mitchell_bug"]["final_val_loss"]) == 2.95
    # Median over steps 10..40 (step 1 skipped): median(5000, 5200, 5100, 5300) = 5150.
    assert float(rows["mitchell_bug"]["tokens_per_sec_median"]) == 5150.0
    assert float(rows["depth_flat"]["tokens_per_sec_median"]) == 820.0  # median(810, 820, 830)
    for name in ("loss_curves", "final_layer_std"):
        data = (out / f"{name}.png").read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
        assert (out / f"{name}.pdf").read_bytes()[:4] == b"%PDF"


def test_existing_report_is_not_overwritten(two_runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert compare_runs.main([str(two_runs[0]), "--out", str(out)]) == 0
    before = (out / "report.md").read_text()
    capsys.readouterr()
    assert compare_runs.main([*map(str, two_runs), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "report.md already exists" in err and "\n" not in err
    assert (out / "report.md").read_text() == before
    assert compare_runs.main([*map(str, two_runs), "--out", str(out), "--overwrite"]) == 0
    assert "depth_flat" in (out / "report.md").read_text()


def test_loss_at_fraction_nearest_step_earlier_on_tie():
    steps, losses = [1, 10, 20, 30, 40, 50], [5.0, 4.0, 3.0, 2.5, 2.2, 2.0]
    assert compare.loss_at_fraction(steps, losses, 50, 0.25) == (10, 4.0)  # 12.5 -> 10
    assert compare.loss_at_fraction(steps, losses, 50, 0.5) == (20, 3.0)  # 25: tie 20/30 -> 20
    assert compare.loss_at_fraction(steps, losses, 50, 0.75) == (40, 2.2)  # 37.5 -> 40


def test_divergence_from_rising_loss(tmp_path):
    records = [{"step": 1, "loss/train": 3.0}, {"step": 10, "loss/train": 2.0}, {"step": 20, "loss/train": 3.5}]
    run = load_run(write_run(tmp_path, "rising", GPT2_RUN, records))
    assert compare.divergence(run) == "yes: final train loss 3.5000 > initial 3.0000"
    run.records[-1]["loss/train"] = 2.9
    assert compare.divergence(run) == ""
    run.records[1]["loss/val"] = math.inf
    assert compare.divergence(run) == "yes: loss/val = inf at step 10"


@pytest.mark.parametrize("init_table, expected", [
    ({"scheme": "depth_aware", "depth_init": True, "scale_up_proj": True}, "depth_aware"),
    ({"scheme": "depth_aware", "depth_init": False}, "depth_aware (depth_init=false)"),
    ({"scheme": "lingua", "scale_all_projections": True, "std_factor": "current_depth"},
     "lingua + scale_all_projections (std_factor=current_depth)"),
])
def test_init_description(init_table, expected):
    assert compare.init_description(init_table) == expected


def test_fmt_count():
    assert [tables.fmt_count(v) for v in (None, 512, 1500, 999_999, 1_048_576, 124_439_808, 2.1e9)] == [
        "n/a", "512", "1.5k", "1M", "1.05M", "124M", "2.1B"]


def test_metrics_reading_merges_steps_and_parses_nan(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2, "loss/train": NaN, "weight_std/attn.q/layer_01": 0.5}\n'
                    '{"step": 1, "loss/train": 4.0, "weight_std/attn.q/layer_00": 0.1}\n'
                    '{"step": 2, "loss/val": 3.0, "weight_std/attn.q/layer_00": 0.2}\n'
                    '{"step": 3, "loss/tr')  # a line cut by a kill mid-write
    records = read_metrics(path)
    assert [r["step"] for r in records] == [1, 2]
    assert math.isnan(records[1]["loss/train"]) and records[1]["loss/val"] == 3.0
    steps, layers, std = layer_std_matrix(records, "attn.q")
    assert steps == [1, 2] and layers == [0, 1]
    assert std[0] == [0.1, 0.2] and math.isnan(std[1][0]) and std[1][1] == 0.5
    assert final_layer_std(records) == {"attn.q": {0: 0.2, 1: 0.5}}
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not valid JSON"):
        read_metrics(path)
    path.write_text('{"step": 1, "grad_norm": 2.5, "grad_norm/attn.q/layer_00": 0.5}\n')  # a run of older code
    assert read_metrics(path) == [{"step": 1, "grad_norm_total": 2.5, "grad_norm/attn.q/layer_00": 0.5}]


def test_bad_and_unfinished_inputs(two_runs, tmp_path, capsys):
    """A missing path stops with one line; a run that logged nothing is left out; a non-run folder is skipped."""
    assert compare_runs.main([str(two_runs[0]), str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and "does not exist" in err and str(tmp_path / "nope") in err
    assert not (tmp_path / "r").exists()  # nothing written for a bad input
    no_metrics = tmp_path / "bad" / "no_metrics"
    no_metrics.mkdir(parents=True)
    (no_metrics / "config.toml").write_text(to_toml(load_config(GPT2_RUN)[0]))
    empty = write_run(tmp_path / "bad", "empty", GPT2_RUN, [])
    (tmp_path / "bad" / "plots").mkdir()
    argv = [str(two_runs[0]), str(no_metrics), str(empty), str(tmp_path / "bad" / "plots")]
    assert compare_runs.main([*argv, "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert (f"note: skipped {tmp_path / 'bad' / 'plots'} holds neither config.toml nor metrics.jsonl" in err)
    assert (f"warning: left out 2 unfinished run(s) (pass --include-unfinished to include them at their last common "
            f"step): {no_metrics} (step 0/40), {empty} (step 0/40)") in err
    report = (tmp_path / "r" / "report.md").read_text()
    assert f"- left out (unfinished, step 0/40): `{empty}`" in report and "| mitchell_bug |" in report
    assert compare_runs.main([str(no_metrics), "--out", str(tmp_path / "r2")]) == 2  # nothing left to compare
    assert capsys.readouterr().err.splitlines()[-1] == ("error: no finished or diverged run among the 1 path(s) given; "
                                                        "pass --include-unfinished to compare unfinished runs")


@pytest.mark.multiprocess
def test_cli_error_exit_status(tmp_path):
    proc = python(["scripts/compare_runs.py", str(tmp_path / "absent"), "--out", str(tmp_path / "r")], check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == (f"error: run directory {tmp_path / 'absent'} does not exist; "
                                   "pass a run directory written by train.py (outputs/<run_name>/)")


# ----------------------------------------------------------------------------- seed groups
def seeded_run(root: Path, name: str, scheme: str, seed: int, final_train: float, final_val: float) -> Path:
    """A 3-step run of ``scheme`` and ``seed`` whose final train/val losses are planted."""
    records = [{"step": 1, "loss/train": 4.0, "grad_norm_total": 1.0 + seed},
               {"step": 20, "loss/train": 3.5 + 0.1 * seed, "loss/val": 3.9},
               {"step": 40, "loss/train": final_train, "loss/val": final_val, "grad_norm_total": 0.5 + seed}]
    return write_run(root, name, [*GPT2_RUN, "--init.scheme", scheme, "--job.seed", str(seed),
                                  "--job.run_name", name], records)


# Planted final (train, val) per seed. normal: train 3.0/3.2/3.1 (mean 3.1, s = 0.1); scaled_output
# 2.5/2.8/2.6, so B - A = -0.5/-0.4/-0.5 (mean -0.4667, s = 0.05774); val differences +0.05/-0.15/+0.10
# (mean 0, s = 0.1323).
PLANTED = {"normal": [(3.0, 3.5), (3.2, 3.6), (3.1, 3.4)], "scaled_output": [(2.5, 3.55), (2.8, 3.45), (2.6, 3.5)]}


@pytest.fixture
def seed_family(tmp_path: Path) -> list[Path]:
    family = tmp_path / "family"
    paths = [seeded_run(family, f"{scheme}_seed{seed}", scheme, seed, *losses)
             for scheme, per_seed in PLANTED.items() for seed, losses in enumerate(per_seed)]
    return [*paths, seeded_run(family, "mitchell_seed0", "mitchell", 0, 2.0, 3.0)]


def test_seed_groups_intervals_and_paired_verdicts(seed_family, tmp_path):
    out = tmp_path / "report"
    assert compare_runs.main([*map(str, reversed(seed_family)), "--out", str(out), "--metric", "grad_norm_total"]) == 0
    report = (out / "report.md").read_text()
    t2 = 4.302652729911275  # t(0.975, 2 dof), from any t table
    half_a = t2 * 0.1 / math.sqrt(3)  # 0.24841
    assert f"| normal | normal | 0,1,2 | 3.1000 ± {half_a:.4f} |" in report
    # grad_norm's final values are 0.5, 1.5, 2.5 (s = 1): 1.5 ± t2/sqrt(3).
    assert f"| 1.5 ± {t2 / math.sqrt(3):.4g} | 0/3 |" in report
    assert "| mitchell | mitchell | 0 | 2.0000 | 3.0000 | 0.5 | 0/1 |" in report  # one seed: values alone
    rows = {(r["a"], r["b"], r["quantity"]): r for r in csv.DictReader((out / "differences.csv").open())}
    assert len(rows) == 3 * 3  # 3 pairs x (train, val, grad_norm)
    train = rows[("mitchell", "scaled_output", "final train")]  # groups in order of first appearance (reversed)
    assert train["shared_seeds"] == "1" and train["verdict"] == "no verdict (1 seed)"
    pair = [k for k in rows if {k[0], k[1]} == {"normal", "scaled_output"} and k[2] == "final train"][0]
    sign = 1 if pair[0] == "normal" else -1  # B - A
    diff = rows[pair]
    half_d = t2 * 0.05773502691896258 / math.sqrt(3)  # 0.14342
    assert float(diff["mean_b_minus_a"]) == pytest.approx(sign * -7 / 15, abs=1e-12)
    assert float(diff["ci95_half_width"]) == pytest.approx(half_d, rel=1e-9)
    assert diff["shared_seeds"] == "3" and diff["verdict"] == "differs"
    val = rows[(pair[0], pair[1], "final val")]
    assert float(val["mean_b_minus_a"]) == pytest.approx(0.0, abs=1e-12) and val["verdict"] == "not resolved"
    assert (out / "loss_curves.png").read_bytes()[:8] == PNG_MAGIC


def test_group_key_ignores_run_identity_only(seed_family):
    runs = [load_run(path) for path in seed_family]
    keys = [groups.experiment_key(run) for run in runs]
    assert keys[0] == keys[1] == keys[2] != keys[3] == keys[4] == keys[5] != keys[6]


def test_repeated_config_and_seed_is_an_error(seed_family, tmp_path, capsys):
    twin = seeded_run(tmp_path / "other", "normal_seed1", "normal", 1, 3.0, 3.0)
    assert compare_runs.main([*map(str, seed_family), str(twin), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "have the same config and job.seed 1" in err and str(twin) in err


def test_unknown_metric_is_an_error(seed_family, tmp_path, capsys):
    assert compare_runs.main([*map(str, seed_family), "--metric", "grad_nrom", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --metric grad_nrom: no run logged it") and err.count("\n") == 1


def test_group_curve_band_matches_interval(seed_family):
    runs = [load_run(path) for path in seed_family[:3]]
    [group] = groups.group_runs(runs)
    steps, intervals = groups.group_curve(group, "loss/train")
    assert steps == [1, 20, 40]
    # step 20: 3.5, 3.6, 3.7 -> mean 3.6, s = 0.1
    assert intervals[1].mean == pytest.approx(3.6)
    assert intervals[1].high - intervals[1].mean == pytest.approx(4.302652729911275 * 0.1 / math.sqrt(3))
    assert intervals[0].high == intervals[0].low == 4.0  # every seed starts at 4.0
    _, ranges = groups.group_curve(group, "loss/train", "minmax")
    assert (ranges[1].low, ranges[1].high) == (3.5, pytest.approx(3.7))  # the seeds' range at step 20
    _, errors = groups.group_curve(group, "loss/train", "se")
    assert errors[1].high - errors[1].mean == pytest.approx(0.1 / math.sqrt(3))


def plant_commit(run_dir: Path, commit: str) -> None:
    """provenance.json as the trainer writes it: one record per start."""
    (run_dir / "provenance.json").write_text(json.dumps({"starts": [{"commit": commit, "dirty": False}]}))


def test_unfinished_runs_are_left_out_or_cut_at_the_common_step(seed_family, tmp_path, capsys):
    """A seed at step 20 of 40 would drag its group's final loss (3.1 over seeds 0-2) towards its step-20 loss."""
    family = seed_family[0].parent
    late = write_run(family, "normal_seed3", [*GPT2_RUN, "--init.scheme", "normal", "--job.seed", "3",
                                               "--job.run_name", "normal_seed3"],
                     [{"step": 1, "loss/train": 4.0}, {"step": 20, "loss/train": 3.8, "loss/val": 3.9}])
    for path in seed_family[:3]:
        plant_commit(path, "aaaaaaa")
    for path in seed_family[3:6]:
        plant_commit(path, "bbbbbbb")
    (family / "plots").mkdir()
    t2, t3 = 4.302652729911275, 3.182446305284263  # t(0.975, 2 dof), t(0.975, 3 dof)
    args = [*map(str, seed_family), str(late), str(family / "plots")]
    assert compare_runs.main([*args, "--out", str(tmp_path / "default")]) == 0
    err = capsys.readouterr().err
    assert f"left out 1 unfinished run(s) (pass --include-unfinished to include them at their last common step): {late} (step 20/40)" in err
    assert "warning: the runs come from different commits (aaaaaaa, bbbbbbb, unknown)" in err
    report = (tmp_path / "default" / "report.md").read_text()
    assert f"| normal | normal | 0,1,2 | 3.1000 ± {t2 * 0.1 / math.sqrt(3):.4f} |" in report
    assert report.count("| aaaaaaa |") == 1 + 3 and "| mitchell | mitchell | 0 | 2.0000 | 3.0000 | 0/1 | unknown |" in report
    assert "| normal_seed0 | 0 | normal |" in report and "| 40/40 | finished | aaaaaaa |" in report
    assert "**the runs come from different commits** (aaaaaaa, bbbbbbb, unknown)" in report
    assert compare_runs.main([*args, "--out", str(tmp_path / "cut"), "--include-unfinished"]) == 0
    assert "every run's values are taken at step 20" in capsys.readouterr().err
    groups_csv = {(r["group"], r["quantity"]): r for r in csv.DictReader((tmp_path / "cut" / "groups.csv").open())}
    train = groups_csv[("normal", "final train")]  # step 20: 3.5, 3.6, 3.7 (seeds 0-2) and 3.8 (seed 3)
    assert (train["seeds"], train["n"]) == ("0 1 2 3", "4") and float(train["mean"]) == pytest.approx(3.65)
    assert float(train["ci95_half_width"]) == pytest.approx(t3 * math.sqrt(0.05 / 3) / 2)
    assert float(groups_csv[("normal", "final val")]["mean"]) == pytest.approx(3.9)
    rows = read_rows(tmp_path / "cut" / "summary.csv")
    assert (rows["normal_seed3"]["steps_done"], rows["normal_seed3"]["status"]) == ("20", "unfinished")
    assert (rows["normal_seed0"]["steps_done"], rows["normal_seed0"]["tokens"]) == ("40", str(20 * 4 * 16))


def test_loss_panels_and_the_band_option(seed_family, two_runs, tmp_path, capsys):
    """A validation panel only where a run logged loss/val; --band names its band in the report."""
    no_val = write_run(tmp_path / "nv", "train_only", GPT2_RUN, [{"step": s, "loss/train": 4.0 - 0.01 * s}
                                                                 for s in (0, 1, 20, 40)])
    assert compare.loss_panels(groups.group_runs([load_run(no_val)])) == ["loss/train"]
    assert compare.loss_panels(groups.group_runs([load_run(p) for p in two_runs])) == ["loss/train", "loss/val"]
    assert compare.init_loss(groups.group_runs([load_run(no_val)])[0], "ci95") == [4.0]  # the step-0 train loss
    assert compare.init_loss(groups.group_runs([load_run(two_runs[0])])[0], "ci95") == []  # no step 0 logged
    out = tmp_path / "se"
    assert compare_runs.main([*map(str, seed_family), "--band", "se", "--out", str(out)]) == 0
    assert "bands the ± 1 standard error over them" in (out / "report.md").read_text()
    assert (out / "loss_curves.pdf").read_bytes()[:4] == b"%PDF"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        compare_runs.main([*map(str, seed_family), "--band", "sd"])
    assert "invalid choice: 'sd'" in capsys.readouterr().err
