"""scripts/lr_transfer.py and experiments/train_runs.py: a real lr x width sweep through train.py's trainer."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess

import pytest
import torch

from components import sweep
from experiments import train_runs
from scripts import lr_transfer

TINY = ["--tokenizer.max_vocab", "512", "--training.seq_len", "32", "--training.global_batch_size", "2",
        "--metrics.val_batches", "2"]
SWEEP = ["--sizes", "32,64", "--base-width", "32", "--steps", "4", "--seeds", "1", "--lrs", "0.01,0.1,10",
         "--parametrizations", "mup", "--device", "cpu"]


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: on a shared CPU threads only contend
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_sweep_writes_runs_analysis_and_figures_and_a_rerun_reads_them(tmp_path, one_thread, capsys):
    argv = [*SWEEP, "--out", str(tmp_path), "--", *TINY]
    assert lr_transfer.main(argv) == 0
    rows = list(csv.DictReader(open(tmp_path / "lr_width.csv")))
    assert len(rows) == 2 * 3 and len(list((tmp_path / "runs").iterdir())) == 6
    # lr 10 blows the loss up past its value at init: diverged, never the optimum; 0.1 is then the grid's usable
    # high edge, which the analysis reports as a bound instead of fitting through the divergence.
    assert all((r["diverged"] == "True") == (r["lr"] == "10.0") for r in rows), rows
    assert all(float(r["val_loss"]) > float(r["init_loss"]) + 0.1 for r in rows if r["lr"] == "10.0")
    result = json.loads((tmp_path / "optima_width.json").read_text())
    assert result["mup"]["optimum_log2_lr"]["64"]["at_edge"] == "high"
    assert result["mup"]["optimum_log2_lr"]["64"]["value"] == pytest.approx(math.log2(0.1))
    assert result["mup"]["drift_octaves"]["at_edge"] == "proxy high, target high"
    assert result["mup"]["at_proxy_lr"]["lr"] == 0.1
    report = (tmp_path / "report_width.md").read_text()
    assert "| mup | 2^-3.32 (at the high edge) | 2^-3.32 (at the high edge) |" in report
    for name in ("lr_width", "optimum_width"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000 and (tmp_path / f"{name}.pdf").is_file()
    capsys.readouterr()
    assert lr_transfer.main(argv) == 0  # every run directory is finished: read back, nothing retrained
    assert "initlab: " in capsys.readouterr().out
    again = list(csv.DictReader(open(tmp_path / "lr_width.csv")))
    assert [r["val_loss"] for r in again] == [r["val_loss"] for r in rows]
    assert all(float(r["seconds"]) < 5 for r in again)
    assert sorted(p.name for p in (tmp_path / "runs").glob("*/diverged.json")) == []  # lr 10: finite, but worse
    # --runs analyses run directories (here this sweep's; scripts/sweep.py's are read the same way) into the
    # same optima, without training.
    runs_out = tmp_path / "from_runs"
    assert lr_transfer.main(["--runs", str(tmp_path / "runs"), "--out", str(runs_out)]) == 0
    assert json.loads((runs_out / "optima_width.json").read_text()) == result
    # scripts/sweep.py's marks: diverged.json is a diverged result; a directory without finished.json is skipped.
    picked = tmp_path / "picked"
    for name in ("mup_width32_lr0.01_seed0", "mup_width32_lr0.1_seed0", "mup_width64_lr0.01_seed0"):
        shutil.copytree(tmp_path / "runs" / name, picked / name)
    (picked / "mup_width32_lr0.1_seed0" / "diverged.json").write_text('{"step": 3, "error": "error: non-finite"}')
    (picked / "mup_width64_lr0.01_seed0" / "finished.json").unlink()
    rows = lr_transfer.rows_from_runs(picked, "width")
    assert [(r["size"], r["lr"], r["diverged"], r["val_loss"]) for r in rows] == [
        (32, 0.01, False, pytest.approx(float(next(r["val_loss"] for r in again if r["lr"] == "0.01" and r["size"] == "32")))),
        (32, 0.1, True, math.inf)]


@pytest.mark.slow
def test_subprocess_and_inprocess_launchers_run_the_same_trainer(tmp_path, one_thread):
    args = ["--config", "train_configs/debug.toml", "--model.dim", "32", "--model.n_layers", "1",
            "--training.steps", "3", "--metrics.log_freq", "1", "--metrics.val_freq", "0",
            "--training.device", "cpu", *TINY]
    inproc = train_runs.run_training(args, tmp_path / "in", "inprocess")
    sub = train_runs.run_training(args, tmp_path / "sub", "subprocess")
    assert not inproc.diverged and not sub.diverged
    assert inproc.series("loss/train") == sub.series("loss/train") and len(sub.series("loss/train")) == 3


def test_parametrization_labels_and_bad_input():
    assert train_runs.parametrization_args("completep:0.5") == ["--parametrization.name", "completep",
                                                                 "--parametrization.alpha", "0.5"]
    assert train_runs.parametrization_args("mup") == ["--parametrization.name", "mup"]
    with pytest.raises(ValueError, match="only completep takes an alpha"):
        train_runs.parametrization_args("mup:0.5")
    with pytest.raises(ValueError, match="launcher 'ssh' is unknown"):
        train_runs.run_training([], train_runs.REPO / "outputs" / "never", "ssh")


@pytest.mark.parametrize("study, arms, sizes", [("width", 2, [128, 256, 512, 1024]), ("depth", 4, [2, 4, 8, 16])])
def test_hp_transfer_sweep_files_hold_the_documented_design(study, arms, sizes):
    spec = sweep.load_sweep_file(train_runs.REPO / f"train_configs/hp_transfer/{study}_sweep.toml")
    grid = spec.grid  # docs/hp_transfer/README.md's design table: sizes x 6 lrs 2x apart x 3 seeds x arms
    assert grid["model.dim" if study == "width" else "model.n_layers"] == sizes and grid["job.seed"] == [0, 1, 2]
    lrs = grid["optimizer.lr"]
    assert len(lrs) == 6 and all(b == 2 * a for a, b in zip(lrs, lrs[1:])) and len(spec.arms) == arms
    labels = set()
    for arm, keys in spec.arms.items():  # each arm at the largest size and lr resolves to a valid config
        cfg = sweep.make_point(spec, arm, keys, {k: v[-1] for k, v in grid.items()}).config
        flat = {"parametrization": vars(cfg.parametrization), "training": {"steps": 1}, "model": vars(cfg.model),
                "optimizer": {"lr": lrs[-1]}, "job": {"seed": 2}}
        labels.add(lr_transfer.row_of_run(flat, [], False, study)["parametrization"])
    assert labels == ({"sp", "mup"} if study == "width" else {"sp", "mup", "completep:1", "completep:0.5"})


def test_gpu_entry_point_refuses_bad_input_in_one_line(tmp_path):
    script = str(train_runs.REPO / "scripts/hp_transfer_gpu.sh")
    bad_study = subprocess.run(["bash", script, "sideways", str(tmp_path)], capture_output=True, text=True)
    assert bad_study.returncode == 2 and bad_study.stderr.startswith("error: the study is 'width' or 'depth'")
    assert list(tmp_path.iterdir()) == []


GPU_RUNS = train_runs.REPO / "docs/hp_transfer"  # the committed study (README): {width,depth}_runs.tar.xz


@pytest.mark.slow
def test_reports_of_the_committed_gpu_studies_say_their_published_verdicts(tmp_path):
    for study, runs, row in [
            ("width", 144, "| mup | 2^-8.94 [2^-9.13, 2^-8.60] | 2^-8.87 [2^-9.00, 2^-8.61] | 2^-9.03 [2^-9.10, 2^-8.85] "
                           "| 2^-9.04 [2^-9.12, 2^-8.84] | -0.10 [-0.49, +0.10] octaves |"),
            ("depth", 288, "| completep:1 | 2^-9.23 [2^-9.43, 2^-9.08] | 2^-9.07 [2^-9.40, 2^-8.98] | 2^-10.00 (at the low "
                           "edge) | 2^-9.34 [2^-9.46, 2^-9.24] | -0.11 [-0.26, +0.08] octaves |")]:
        out = tmp_path / study
        assert lr_transfer.main(["--mode", study, "--runs", str(GPU_RUNS / f"{study}_runs.tar.xz"), "--out", str(out)]) == 0
        report = (out / f"report_{study}.md").read_text()
        assert report.startswith(f"# lr transfer over {study}: {runs} runs (0 diverged), 3 seeds (0, 1, 2)")
        assert row in report and (out / f"optimum_{study}.png").stat().st_size > 10_000
    # The depth study holds an optimum whose estimate (a grid edge) lies outside its bootstrap interval: the figure
    # above drew it (an error bar around the estimate cannot: matplotlib refuses negative lengths).
    optima = json.loads((tmp_path / "depth" / "optima_depth.json").read_text())
    assert optima["completep:1"]["optimum_log2_lr"]["8"]["value"] < optima["completep:1"]["optimum_log2_lr"]["8"]["low"]


@pytest.mark.slow
def test_report_of_one_seed_prints_no_interval_and_a_second_seed_brings_one(tmp_path, capsys):
    runs = tmp_path / "runs"
    sweep.import_previous(GPU_RUNS / "width_runs.tar.xz", runs)
    for run_dir in runs.glob("*_seed[12]"):
        shutil.rmtree(run_dir)
    assert lr_transfer.main(["--mode", "width", "--runs", str(runs), "--out", str(tmp_path / "one")]) == 0
    report = (tmp_path / "one" / "report_width.md").read_text()
    assert report.startswith("# lr transfer over width: 48 runs (0 diverged), 1 seed (0)")
    assert "1 seed, no interval" in report and "95 %" not in report and "[2^" not in report
    result = json.loads((tmp_path / "one" / "optima_width.json").read_text())
    optima = [o for entry in result.values() for o in entry["optimum_log2_lr"].values()]
    assert len(optima) == 8 and all(o["n_seeds"] == 1 and o["low"] is None for o in optima)
    # Planted: the same runs again as a second seed, 0.05 nats worse at the lowest lr. Now there is an interval,
    # and the report prints it: the one-seed wording above is not printed regardless of the seed count.
    for run_dir in sorted(p for p in runs.iterdir() if not p.name.startswith(".")):  # not the sweep's .sweep/logs
        twin = runs / run_dir.name.replace("seed0", "seed1")
        shutil.copytree(run_dir, twin)
        config = (twin / "config.toml").read_text()
        (twin / "config.toml").write_text(config.replace("[job]\nseed = 0\n", "[job]\nseed = 1\n", 1))
        if "lr0.000976562" in run_dir.name:
            records = [json.loads(line) for line in (twin / "metrics.jsonl").read_text().splitlines()]
            records[-1]["loss/val"] += 0.05
            (twin / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert lr_transfer.main(["--mode", "width", "--runs", str(runs), "--out", str(tmp_path / "two")]) == 0
    report = (tmp_path / "two" / "report_width.md").read_text()
    assert "96 runs (0 diverged), 2 seeds (0, 1)" in report and "[95 % bootstrap interval over the 2 seeds]" in report
    row = next(line for line in report.splitlines() if line.startswith("| mup | 2^"))
    assert row.count(" [2^") == 4 and "1 seed" not in report  # every width of mup bracketed (interior minima)
    (tmp_path / "not_an_archive.tar.xz").write_text("plain text\n")
    capsys.readouterr()
    assert lr_transfer.main(["--runs", str(tmp_path / "not_an_archive.tar.xz"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --runs ") and "is not a readable archive" in err and err.count("\n") == 1
