"""scripts/lr_sensitivity.py on a planted sweep (lr x arm x seed): real config.toml / metrics.jsonl / finished.json /
diverged.json files with known numbers, an unfinished run and a folder that is no run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from components.config import load_config, to_toml
from components.run_dir import RunDir
from reporting.lr_sensitivity import build_arms, geometric_curve, plot_activations, plot_sensitivity
from scripts import lr_sensitivity

PNG_MAGIC, PDF_MAGIC = b"\x89PNG\r\n\x1a\n", b"%PDF"
TINY = ["--model.name", "gpt2", "--model.n_layers", "2", "--model.dim", "32", "--model.n_heads", "2",
        "--model.vocab_size", "64", "--training.seq_len", "16", "--training.global_batch_size", "4",
        "--training.steps", "40"]
T2 = 4.302652729911275  # t(0.975, 2 dof)
LN64 = math.log(64)
# Final loss/val per (arm, lr) and seed 0, 1, 2; None: diverged (details in planted_run).
FINALS = {("normal", 1e-3): [3.00, 3.10, 3.05], ("normal", 3e-3): [2.80, 2.90, 2.85], ("normal", 1e-2): [3.40, 3.50, 3.45],
          ("mitchell", 1e-3): [2.95, 3.00, 2.90], ("mitchell", 3e-3): [2.70, 2.72, 2.74],
          ("mitchell", 1e-2): [None, None, 4.50]}


def activation_keys(lr: float, seed: int) -> dict[str, float]:
    return {"attn_logit_max/layer_00": 2.0 + 1000 * lr, "attn_logit_max/layer_01": 3.0 + 1000 * lr,
            "act_rms/residual/layer_00": 0.5, "act_rms/residual/layer_01": 1.0 + 100 * lr + 0.01 * seed}


def planted_run(root: Path, arm: str, lr: float, seed: int, final: float | None, steps_done: int = 40) -> Path:
    """A run as train.py leaves it. normal: step-0 val 4.2 (its loss at init); mitchell: step-1 train loss 4.1,
    except lr 1e-2 seed 2, logged from step 10 on (so ln(64)); mitchell lr 1e-2: seed 0 logs a NaN at step 20,
    seed 1 stopped at step 12 with diverged.json (the sweep's record), seed 2 finishes above ln(64)."""
    name = f"{arm}_lr{lr:g}_seed{seed}"
    run_dir = root / name
    run_dir.mkdir(parents=True)
    cli = [*TINY, "--init.scheme", arm, "--optimizer.lr", str(lr), "--job.seed", str(seed), "--job.run_name", name]
    (run_dir / "config.toml").write_text(to_toml(load_config(cli)[0]))
    records = [{"step": 0, "loss/val": 4.2}] if arm == "normal" else []
    if not (arm == "mitchell" and lr == 1e-2 and seed == 2):
        records.append({"step": 1, "loss/train": 4.1})
    records += [{"step": 10, "loss/train": 3.6}, {"step": 20, "loss/train": 3.3, "loss/val": 3.4}]
    if arm == "mitchell" and lr == 1e-2 and seed == 0:
        records[-1]["loss/train"] = math.nan
    elif arm == "mitchell" and lr == 1e-2 and seed == 1:
        records = records[:-1]
        (run_dir / "diverged.json").write_text(json.dumps({"step": 12, "error": "error: ... non-finite at step 12"}))
    elif steps_done == 40:
        records.append({"step": 40, "loss/train": final - 0.1, "loss/val": final, **activation_keys(lr, seed)})
        (run_dir / "finished.json").write_text(json.dumps({"steps": 40}))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


@pytest.fixture
def sweep(tmp_path: Path) -> list[Path]:
    root = tmp_path / "sweep"
    paths = [planted_run(root, arm, lr, seed, final)
             for (arm, lr), finals in FINALS.items() for seed, final in enumerate(finals)]
    unfinished = planted_run(root, "normal", 1e-3, 3, None, steps_done=20)
    (root / "plots").mkdir()
    return [*paths, unfinished, root / "plots"]


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_best_lr_sensitivity_divergence_and_paired_differences(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert lr_sensitivity.main([*map(str, sweep), "--out", str(out), "--title", "Planted sweep"]) == 0
    err = capsys.readouterr().err
    assert "left out 1 unfinished run(s)" in err and f"{sweep[-2]} (step 20/40)" in err
    assert f"note: skipped {sweep[-1]} holds neither" in err
    arms = {row["arm"]: row for row in read_csv(out / "arms.csv")}
    assert sorted(arms) == ["mitchell", "normal"]  # the one differing key, init.scheme, makes the arms
    normal, mitchell = arms["normal"], arms["mitchell"]
    assert float(normal["best_lr"]) == 3e-3 and float(mitchell["best_lr"]) == 3e-3
    assert float(normal["mean_at_best"]) == pytest.approx(2.85)
    assert float(normal["ci95_half_width"]) == pytest.approx(T2 * 0.05 / math.sqrt(3))
    # Sensitivity per seed = mean over the 3 lrs of the capped loss - its minimum.
    assert float(normal["sensitivity"]) == pytest.approx(0.8 / 3) and float(normal["sensitivity_ci95"]) == 0.0
    per_seed = [(2.95 + 2.70 + 4.1) / 3 - 2.70, (3.00 + 2.72 + 4.1) / 3 - 2.72, (2.90 + 2.74 + LN64) / 3 - 2.74]
    assert float(mitchell["sensitivity"]) == pytest.approx(sum(per_seed) / 3)
    assert normal["lowest_divergent_lr"] == "" and float(mitchell["lowest_divergent_lr"]) == 1e-2
    [diff] = read_csv(out / "differences.csv")
    assert (diff["a"], diff["b"], diff["shared_seeds"], diff["verdict"]) == ("normal", "mitchell", "3", "differs")
    d = [2.70 - 2.80, 2.72 - 2.90, 2.74 - 2.85]  # mean -0.13, s = sqrt(0.0019)
    assert float(diff["mean_b_minus_a"]) == pytest.approx(sum(d) / 3)
    assert float(diff["ci95_half_width"]) == pytest.approx(T2 * math.sqrt(0.0019) / math.sqrt(3))
    # lr* from the other two seeds is 3e-3 for every seed of both arms: the same differences.
    assert (diff["loso_seeds"], diff["loso_verdict"]) == ("3", "differs")
    assert float(diff["loso_mean_b_minus_a"]) == pytest.approx(sum(d) / 3)
    runs = {(r["arm"], float(r["lr"]), int(r["seed"])): r for r in read_csv(out / "lr_sensitivity.csv")}
    assert len(runs) == 18  # the unfinished seed 3 left out
    assert (runs["mitchell", 1e-2, 0]["capped"], runs["mitchell", 1e-2, 0]["init_loss_source"]) == ("4.1", "step-1 loss/train")
    assert runs["mitchell", 1e-2, 1]["status"] == "diverged" and runs["mitchell", 1e-2, 1]["capped"] == "4.1"
    assert float(runs["mitchell", 1e-2, 2]["capped"]) == pytest.approx(LN64)  # 4.5 capped; finished, not diverged
    assert runs["mitchell", 1e-2, 2]["init_loss_source"] == "ln(vocab)" and runs["mitchell", 1e-2, 2]["diverged"] == "no"
    assert runs["normal", 3e-3, 1]["init_loss_source"] == "step-0 loss/val"
    assert float(runs["normal", 3e-3, 1]["attn_logit_max"]) == pytest.approx(6.0)
    assert float(runs["normal", 3e-3, 1]["residual_rms"]) == pytest.approx(1.31)
    assert float(runs["normal", 3e-3, 1]["peak_train_loss"]) == 4.1  # step 1's, the highest logged
    assert float(runs["mitchell", 1e-2, 0]["peak_train_loss"]) == 4.1  # the NaN at step 20 is not a peak
    report = (out / "lr_sensitivity.md").read_text()
    assert f"| normal | 0.003 | 0: 0.003, 1: 0.003, 2: 0.003 | 2.8500 ± {T2 * 0.05 / math.sqrt(3):.4f} |" in report
    assert "| mitchell | 0.01 | 0,1,2 | " in report and "| 2/3 |" in report
    # Best lr vs its neighbours, paired by seed: normal 1e-3 is 0.2 above 3e-3 in every seed; mitchell's 1e-2 is
    # capped at 4.1, 4.1 and ln(64).
    assert "| normal | 0.003 | 0.001 | 3 | 0.2000 | [0.2000, 0.2000] | differs |" in report
    assert "| normal | 0.003 | 0.01 | 3 | 0.6000 | [0.6000, 0.6000] | differs |" in report
    up = [4.1 - 2.70, 4.1 - 2.72, LN64 - 2.74]
    assert f"| mitchell | 0.003 | 0.01 | 3 | {sum(up) / 3:.4f} |" in report
    assert report.count("| lr 0.01 seed 2 |") == 1  # mitchell's finite run that ended above ln(64)
    for name in ("lr_sensitivity", "lr_activations"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC and (out / f"{name}.pdf").read_bytes()[:4] == PDF_MAGIC


def test_a_sweep_folder_and_the_init_loss_option(sweep, tmp_path, capsys):
    """The sweep's output folder stands for its run directories; --init-loss ln-vocab caps every run at ln(64)."""
    assert lr_sensitivity.main([str(sweep[0].parent), "--init-loss", "ln-vocab", "--out", str(tmp_path / "f")]) == 0
    assert f"note: skipped {sweep[-1]} holds neither" in capsys.readouterr().err
    arms = {row["arm"]: row for row in read_csv(tmp_path / "f" / "arms.csv")}
    per_seed = [(2.95 + 2.70 + LN64) / 3 - 2.70, (3.00 + 2.72 + LN64) / 3 - 2.72, (2.90 + 2.74 + LN64) / 3 - 2.74]
    assert float(arms["mitchell"]["sensitivity"]) == pytest.approx(sum(per_seed) / 3)
    assert {row["init_loss_source"] for row in read_csv(tmp_path / "f" / "lr_sensitivity.csv")} == {"ln(vocab)"}


def test_arm_keys_option_and_bad_inputs(sweep, tmp_path, capsys):
    runs = [str(p) for p in sweep[:-2]]
    assert lr_sensitivity.main([*runs, "--arm-keys", "init.scheme", "--out", str(tmp_path / "a")]) == 0
    assert {row["arm"] for row in read_csv(tmp_path / "a" / "arms.csv")} == {"normal", "mitchell"}
    capsys.readouterr()
    assert lr_sensitivity.main([*runs, "--arm-keys", "model.dim", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the runs also differ in init.scheme (") and "add it to --arm-keys" in err
    assert err.count("\n") == 1 and not (tmp_path / "b").exists()
    assert lr_sensitivity.main([*runs, "--arm-keys", "init.shceme", "--out", str(tmp_path / "c")]) == 2
    assert "no such config key" in capsys.readouterr().err
    assert lr_sensitivity.main([*runs, "--metric", "loss/vall", "--out", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err.startswith("error: --metric loss/vall: no run logged it")
    twin = planted_run(tmp_path / "other", "normal", 1e-3, 0, 3.0)
    assert lr_sensitivity.main([*runs, str(twin), "--out", str(tmp_path / "e")]) == 2
    assert "are both arm normal, lr 0.001, seed 0" in capsys.readouterr().err


def test_arms_are_named_after_the_sweeps_run_names(sweep, tmp_path):
    renamed = []
    for path in sweep[:-2]:  # the sweep would name the mitchell arm "olmo": olmo_lr0.001_seed0, ...
        target = tmp_path / "renamed" / path.name.replace("mitchell_", "olmo_")
        target.parent.mkdir(exist_ok=True)
        path.rename(target)
        renamed.append(RunDir.open(target))
    keys, arms = build_arms(renamed, None, "loss/val")
    assert keys == ["init.scheme"] and [arm.name for arm in arms] == ["normal", "olmo"]
    assert arms[1].setting == {"init.scheme": "mitchell"} and arms[1].lrs == [1e-3, 3e-3, 1e-2]
    (tmp_path / "renamed" / "olmo_lr0.001_seed0").rename(tmp_path / "renamed" / "other_lr0.001_seed0")
    _, arms = build_arms([RunDir.open(p) for p in sorted((tmp_path / "renamed").iterdir())], None, "loss/val")
    assert sorted(arm.name for arm in arms) == ["mitchell", "normal"]  # two stems for one arm: named by setting


def test_activation_bands_are_geometric(sweep):
    """Residual RMS of normal at lr 1e-2 over seeds 0-2: 2.00, 2.01, 2.02 (planted); the band is exp(mean ± t·s/√n)
    of their logs."""
    _, arms = build_arms([RunDir.open(p) for p in sweep[:-2]], None, "loss/val")
    normal = next(arm for arm in arms if arm.name == "normal")
    logs = [math.log(v) for v in (2.00, 2.01, 2.02)]
    mean = sum(logs) / 3
    half = T2 * math.sqrt(sum((x - mean) ** 2 for x in logs) / 2) / math.sqrt(3)
    band = geometric_curve(normal, "residual_rms")[normal.lrs.index(1e-2)]
    assert (band.mean, band.low, band.high, band.n) == (pytest.approx(math.exp(mean)), pytest.approx(math.exp(mean - half)),
                                                        pytest.approx(math.exp(mean + half)), 3)


def test_single_seed_lrs_keep_a_multi_seed_sensitivity(sweep, tmp_path):
    """Seed 0 alone at lr 3e-2 (both arms) and a missing seed: the sensitivity over all lrs rests on seed 0 and has
    no interval; over the lrs every arm ran with more than one seed (1e-3..1e-2) it is the 3-seed value."""
    root = sweep[0].parent
    planted_run(root, "normal", 3e-2, 0, 3.9)
    planted_run(root, "mitchell", 3e-2, 0, 3.8)
    out = tmp_path / "r"
    assert lr_sensitivity.main([str(root), "--out", str(out)]) == 0
    arms = {row["arm"]: row for row in read_csv(out / "arms.csv")}
    normal, mitchell = arms["normal"], arms["mitchell"]
    assert normal["sensitivity_seeds"] == "0" and normal["sensitivity_ci95"] == "nan"
    assert float(normal["sensitivity"]) == pytest.approx((3.00 + 2.80 + 3.40 + 3.9) / 4 - 2.80)
    assert normal["multiseed_lrs"] == "0.001 0.003 0.01" and normal["multiseed_sensitivity_seeds"] == "0 1 2"
    assert float(normal["multiseed_sensitivity"]) == pytest.approx(0.8 / 3)
    per_seed = [(2.95 + 2.70 + 4.1) / 3 - 2.70, (3.00 + 2.72 + 4.1) / 3 - 2.72, (2.90 + 2.74 + LN64) / 3 - 2.74]
    assert float(mitchell["multiseed_sensitivity"]) == pytest.approx(sum(per_seed) / 3)
    report = (out / "lr_sensitivity.md").read_text()
    assert "LR sensitivity over 0.001–0.01 | seeds (0.001–0.01) |" in report
    assert f"| {float(normal['multiseed_sensitivity']):.4f} ± " in report
    assert (out / "lr_sensitivity.png").read_bytes()[:8] == PNG_MAGIC


def test_width_of_the_good_lr_range(sweep, tmp_path, capsys):
    """normal: seed means 3.05, 2.85, 3.45 at lr 1e-3, 3e-3, 1e-2; within 0.1 of 2.85 from halfway (in log lr)
    between 1e-3 and 3e-3 to 1/6 of the way from 3e-3 to 1e-2."""
    _, arms = build_arms([RunDir.open(p) for p in sweep[:-2]], None, "loss/val")
    normal = next(arm for arm in arms if arm.name == "normal")
    x0, x1, x2 = math.log10(1e-3), math.log10(3e-3), -2.0
    left, right = x0 + 0.5 * (x1 - x0), x2 + (2.95 - 3.45) / (2.85 - 3.45) * (x1 - x2)
    assert normal.tolerance_width(0.1) == (pytest.approx(right - left), False)
    assert normal.tolerance_width(1.0) == (pytest.approx(x2 - x0), True)  # the whole grid: a lower bound
    assert lr_sensitivity.main([str(sweep[0].parent), "--tolerance", "0", "--out", str(tmp_path / "t")]) == 2
    assert capsys.readouterr().err.startswith("error: --tolerance 0.0 must be > 0")


def test_each_seeds_width_of_the_good_lr_range(sweep):
    """mitchell's seeds end at (2.95, 2.70, 4.1), (3.00, 2.72, 4.1), (2.90, 2.74, ln 64) at lr 1e-3, 3e-3, 1e-2 (the
    last capped at ℓ0): each seed's own width within 0.1 of its own best, then mean ± t-interval over the seeds."""
    from reporting.lr_sensitivity import window_width

    _, arms = build_arms([RunDir.open(p) for p in sweep[:-2]], None, "loss/val")
    mitchell = next(arm for arm in arms if arm.name == "mitchell")
    x = [math.log10(1e-3), math.log10(3e-3), -2.0]
    widths = []
    for low, best, high in [(2.95, 2.70, 4.1), (3.00, 2.72, 4.1), (2.90, 2.74, LN64)]:
        left = x[0] + (best + 0.1 - low) / (best - low) * (x[1] - x[0])
        right = x[2] + (best + 0.1 - high) / (best - high) * (x[1] - x[2])
        assert window_width([1e-3, 3e-3, 1e-2], [low, best, high], 0.1) == (pytest.approx(right - left), False)
        widths.append(right - left)
    interval, at_edge, seeds = mitchell.seed_tolerance_widths(0.1, [1e-3, 3e-3, 1e-2])
    mean = sum(widths) / 3
    std = math.sqrt(sum((w - mean) ** 2 for w in widths) / 2)
    assert (interval.mean, interval.half_width) == (pytest.approx(mean), pytest.approx(T2 * std / math.sqrt(3)))
    assert (at_edge, seeds) == (False, [0, 1, 2])
    assert mitchell.seed_tolerance_widths(1.0, [1e-3, 3e-3])[1] is True  # both lrs within 1 nat: reaches the edge


def test_runs_on_different_devices_are_named(sweep, tmp_path, capsys, monkeypatch):
    """normal's three lr-1e-2 runs record an H200 (one resumed there after an H100); the others no device: the report,
    its warning, both figures' titles and the per-run CSV say so. One device everywhere: no such line."""
    starts = {0: [{"device": "NVIDIA H200"}], 1: [{"device": "NVIDIA H200"}],
              2: [{"device": "NVIDIA H100 80GB HBM3"}, {"device": "NVIDIA H200"}]}
    for seed, records in starts.items():
        (sweep[0].parent / f"normal_lr0.01_seed{seed}" / "provenance.json").write_text(json.dumps({"starts": records}))
    out = tmp_path / "mixed"
    assert lr_sensitivity.main([*map(str, sweep[:-2]), "--out", str(out)]) == 0
    mix = "unknown: 15 runs, NVIDIA H200: 2 runs, NVIDIA H100 80GB HBM3 + NVIDIA H200: 1 run"
    assert f"warning: the runs ran on different devices ({mix})" in capsys.readouterr().err
    assert f"- **the runs ran on different devices** ({mix})" in (out / "lr_sensitivity.md").read_text()
    devices = {(r["arm"], float(r["lr"]), int(r["seed"])): r["device"] for r in read_csv(out / "lr_sensitivity.csv")}
    assert devices["normal", 1e-2, 2] == "NVIDIA H100 80GB HBM3 + NVIDIA H200" and devices["normal", 1e-3, 0] == "unknown"
    titles = []  # (axes title, figure title) of each figure drawn

    def draw() -> None:
        arms = build_arms([RunDir.open(p) for p in sweep[:-2]], None, "loss/val")[1]
        plot_sensitivity(arms, "loss/val", "T", out / "x")
        assert plot_activations(arms, "T", out / "y")

    monkeypatch.setattr("reporting.figures.save_figure", lambda fig, path, pdf: titles.append(
        (fig.axes[0].get_title(), fig._suptitle.get_text() if fig._suptitle else "")))
    draw()
    for title in (titles[0][0], titles[1][1]):  # the note's own lines, wrapped to fit the narrower figure
        lines = title.split("\n")
        start = next(i for i, line in enumerate(lines) if line.startswith("runs on different devices"))
        assert " ".join(lines[start:]) == f"runs on different devices ({mix})"
        assert len(lines) - start == 2 and max(map(len, lines[start:])) <= 80
    for seed in starts:
        (sweep[0].parent / f"normal_lr0.01_seed{seed}" / "provenance.json").unlink()
    draw()
    assert "devices" not in titles[2][0] + titles[3][1]
    same = tmp_path / "same"
    assert lr_sensitivity.main([*map(str, sweep[:-2]), "--out", str(same)]) == 0
    assert "different devices" not in capsys.readouterr().err + (same / "lr_sensitivity.md").read_text()
    assert {r["device"] for r in read_csv(same / "lr_sensitivity.csv")} == {"unknown"}


# A later study of the same arms (e.g. longer runs) against the fixture's sweep as its baseline: the gap of mitchell
# to normal at own best lr shrinks (baseline -0.130 over seeds 0-2; here -0.017 +- small), and both arms' best lr
# moves from 3e-3 down to 1e-3, beyond half this grid's step (10^0.25 = 1.78).
LATER = {("normal", 1e-3): [2.50, 2.52, 2.51], ("normal", 3e-3): [2.60, 2.62, 2.61], ("normal", 1e-2): [3.00, 3.01, 3.02],
         ("mitchell", 1e-3): [2.49, 2.50, 2.49], ("mitchell", 3e-3): [2.55, 2.56, 2.57],
         ("mitchell", 1e-2): [None, None, 4.50]}


def test_a_later_study_against_its_baseline(sweep, tmp_path, capsys):
    later = [planted_run(tmp_path / "later", arm, lr, seed, final)
             for (arm, lr), finals in LATER.items() for seed, final in enumerate(finals)]
    out = tmp_path / "report"
    argv = [*map(str, later), "--baseline", *map(str, sweep[:-2]), "--reference", "normal", "--out", str(out)]
    assert lr_sensitivity.main(argv) == 0
    rows = {row["arm"]: row for row in read_csv(out / "baseline.csv")}
    mitchell = rows["mitchell"]
    assert float(mitchell["baseline_gap"]) == pytest.approx(((2.70 - 2.80) + (2.72 - 2.90) + (2.74 - 2.85)) / 3)
    assert float(mitchell["study_gap"]) == pytest.approx(((2.49 - 2.50) + (2.50 - 2.52) + (2.49 - 2.51)) / 3)
    assert mitchell["gap_verdict"] == "shrank" and rows["normal"]["gap_verdict"] == "reference"
    assert [(r["baseline_best_lr"], r["study_best_lr"], r["lr_verdict"]) for r in rows.values()] == \
        [("0.003", "0.001", "down")] * 2
    report = (out / "lr_sensitivity.md").read_text()
    assert "## Against the baseline study (" in report and "beyond a factor 1.78" in report
    assert "| mitchell | -0.130 [" in report and "(3 seeds) | shrank | 0.003 | 0.001 (0: 0.001, 1: 0.001, 2: 0.001) | down |" in report
    # Run again into the same folder without --baseline: no stale comparison is left behind.
    assert lr_sensitivity.main([*map(str, later), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "baseline.csv").exists()
    capsys.readouterr()
    # Bad input: a reference arm the runs do not have; nothing is written.
    assert lr_sensitivity.main([*argv[:-2], "--reference", "xavier", "--out", str(tmp_path / "bad")]) == 2
    assert capsys.readouterr().err.strip() == ("error: --reference xavier: no such arm in the baseline (normal, "
                                                "mitchell); name one of the arms both studies ran")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(("baseline", "study", "verdict"), [
    ((0.30, 0.10, 3), (0.10, 0.05, 3), "shrank"), ((0.30, 0.10, 3), (0.50, 0.10, 3), "grew"),
    ((0.30, 0.10, 3), (0.25, 0.20, 3), "not resolved"), ((0.30, 0.10, 3), (0.10, 0.05, 2), "no verdict (2 seeds < 3)"),
    ((-0.30, 0.10, 3), (-0.50, 0.10, 3), "grew"), ((-0.30, 0.10, 3), (-0.05, 0.02, 5), "shrank"),
    ((0.30, 0.10, 3), (-0.50, 0.10, 3), "not resolved"),  # the sign flipped and the gap is larger: neither
])
def test_gap_verdicts(baseline, study, verdict):
    from reporting.lr_baseline import gap_verdict
    from reporting.stats import Interval

    assert gap_verdict(Interval(*baseline), Interval(*study)) == verdict


def test_best_lr_move_verdicts():
    from reporting.lr_baseline import lr_move_verdict

    assert [lr_move_verdict(3e-3, lr, 3, 2.37) for lr in (1e-3, 1.5e-3, 5.6e-3, 1e-2)] == ["down", "not resolved",
                                                                                          "not resolved", "up"]
    assert lr_move_verdict(3e-3, 1e-4, 1, 2.37) == "no verdict (1 seed < 3)"


def test_a_seed_missing_an_lr_has_no_best_lr_and_does_not_pick_the_arms(tmp_path):
    # seed 2 of mitchell lacks lr 1e-3 (a run lost, say): over the lrs it has, its argmin would be 3e-3, and its
    # 2.0 at 3e-3 would pull 3e-3's mean (2.51) below 1e-3's (2.515); the arm's best lr must come from seeds 0, 1.
    finals = {("normal", 1e-3): [2.50, 2.52, 2.51], ("normal", 3e-3): [2.60, 2.62, 2.61],
              ("mitchell", 1e-3): [2.51, 2.52, None], ("mitchell", 3e-3): [2.76, 2.77, 2.00]}
    runs = [planted_run(tmp_path / "later", arm, lr, seed, final) for (arm, lr), values in finals.items()
            for seed, final in enumerate(values) if final is not None]
    arms = {arm.name: arm for arm in build_arms([RunDir.open(r) for r in runs], None, "loss/val")[1]}
    mitchell = arms["mitchell"]
    assert mitchell.complete_seeds() == [0, 1] and mitchell.incomplete_seeds() == {2: 1}
    assert mitchell.seed_best() == {0: 1e-3, 1: 1e-3}  # no argmin for seed 2 (it would say 3e-3)
    assert mitchell.best()[0] == 1e-3 and mitchell.best()[1].n == 2  # the interval: the seeds at that lr
    out = tmp_path / "report"
    base = [planted_run(tmp_path / "base", arm, lr, seed, final)
            for (arm, lr), values in FINALS.items() for seed, final in enumerate(values)]
    assert lr_sensitivity.main([*map(str, runs), "--baseline", *map(str, base), "--reference", "normal",
                                "--out", str(out)]) == 0
    report = (out / "lr_sensitivity.md").read_text()
    assert "| mitchell | 0.001 | 0: 0.001, 1: 0.001, 2: none (1 of 2 lrs) |" in report
    rows = {row["arm"]: row for row in read_csv(out / "baseline.csv")}
    # L7 counts the seeds with a whole curve: 2 here, so no verdict, though 3e-3 had 3 seeds.
    assert rows["mitchell"]["lr_verdict"] == "no verdict (2 seeds < 3)" and rows["normal"]["lr_verdict"] == "down"


def test_each_runs_final_value_per_seed(sweep, tmp_path):
    """The per-seed table: uncapped finals, seeds side by side, a diverged run named, the best lr in bold."""
    out = tmp_path / "report"
    assert lr_sensitivity.main([*map(str, sweep), "--out", str(out)]) == 0
    text = (out / "lr_sensitivity.md").read_text()
    table = text.split("## Each run's final loss/val, per seed\n\n")[1].split("\n\n")[0].splitlines()
    assert table[0] == "| arm, loss/val of seeds 0 / 1 / 2 | 0.001 | 0.003 | 0.01 |"
    assert table[3] == "| mitchell | 2.950 / 3.000 / 2.900 | **2.700 / 2.720 / 2.740** | diverged / diverged / 4.500 |"
    assert table[2] == "| normal | 3.000 / 3.100 / 3.050 | **2.800 / 2.900 / 2.850** | 3.400 / 3.500 / 3.450 |"
