"""scripts/run_ablation.py: real tiny runs (debug model, a few steps, one process), skipping, one-line errors."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest

from components.config import load_config, to_toml
from scripts import compare_runs, run_ablation
from scripts.stats import mean_interval
from tests.launch import python

TINY = ["--training.steps", "2", "--metrics.log_freq", "1", "--metrics.val_freq", "2", "--model.n_layers", "1",
        "--training.global_batch_size", "2", "--training.seq_len", "32"]


def final_train_loss(run_dir: Path) -> float:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss/train"] for r in records if "loss/train" in r][-1]


@pytest.mark.multiprocess
def test_family_x_seeds_runs_then_skips_and_compares(tmp_path):
    out = tmp_path / "family"
    argv = ["scripts/run_ablation.py", "--configs", "train_configs/debug.toml", "--seeds", "0,1",
            "--output-dir", str(out), *TINY]
    first = python(argv, env={"OMP_NUM_THREADS": "1"})
    assert [line.split(":")[0] for line in first.stdout.splitlines()[:2]] == ["[1/2] debug_seed0", "[2/2] debug_seed1"]
    assert "finished (" in first.stdout and f"compare_runs.py {out}/*" in first.stdout
    seeds = {p.name: tomllib.loads((p / "config.toml").read_text())["job"]["seed"] for p in out.iterdir()
             if not p.name.startswith(".")}
    assert seeds == {"debug_seed0": 0, "debug_seed1": 1}
    assert (out / ".logs" / "debug_seed0.log").read_text().count("$ ") == 1
    second = python(argv)  # everything done: nothing launched
    assert second.stdout.splitlines()[:2] == ["[1/2] debug_seed0: finished, skipped", "[2/2] debug_seed1: finished, skipped"]
    assert (out / ".logs" / "debug_seed0.log").read_text().count("$ ") == 1
    finals = [final_train_loss(out / f"debug_seed{s}") for s in (0, 1)]
    assert finals[0] != finals[1]  # another seed: another init and other batches
    report = tmp_path / "report"
    run_dirs = sorted(str(p) for p in out.iterdir() if not p.name.startswith("."))  # what the shell glob out/* gives
    assert compare_runs.main([*run_dirs, "--out", str(report)]) == 0
    expected = mean_interval(finals)
    assert f"| debug | scaled_output | 0,1 | {expected.mean:.4f} ± {expected.half_width:.4f} |" in (
        report / "report.md").read_text()


def write_metrics(run_dir: Path, losses: dict[int, float]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss/train": v}) + "\n"
                                                   for s, v in losses.items()))


def test_run_states_and_how_an_unfinished_run_continues(tmp_path):
    assert run_ablation.run_state(tmp_path / "absent", 10) == "absent"
    write_metrics(tmp_path / "done", {1: 5.0, 10: 4.0})
    assert run_ablation.run_state(tmp_path / "done", 10) == "finished"
    write_metrics(tmp_path / "nan", {1: 5.0, 5: math.nan})
    assert run_ablation.run_state(tmp_path / "nan", 10) == "diverged"
    write_metrics(tmp_path / "cut", {1: 5.0, 5: 4.5})
    assert run_ablation.run_state(tmp_path / "cut", 10) == "unfinished"
    (tmp_path / "empty").mkdir()
    assert run_ablation.run_state(tmp_path / "empty", 10) == "unfinished"
    plan = run_ablation.PlannedRun("cut", tmp_path / "cut", [], 10)
    assert run_ablation.resume_args(plan, supports_auto=True) == ["--checkpoint.resume", "auto"]
    with pytest.raises(ValueError, match=r"cut is unfinished and holds no checkpoint to continue; delete it"):
        run_ablation.resume_args(plan, supports_auto=False)
    (tmp_path / "cut" / "checkpoints" / "step_5").mkdir(parents=True)
    assert run_ablation.resume_args(plan, supports_auto=False) == ["--checkpoint.resume", "true"]


def test_plan_names_and_arguments(tmp_path):
    plans = run_ablation.plan_runs([Path("train_configs/debug.toml")], [0, 2], tmp_path, ["--training.steps", "7"])
    assert [(p.name, p.run_dir, p.steps) for p in plans] == [
        ("debug_seed0", tmp_path / "debug_seed0", 7), ("debug_seed2", tmp_path / "debug_seed2", 7)]
    assert plans[1].train_args == ["--config", "train_configs/debug.toml", "--training.steps", "7", "--job.seed", "2",
                                   "--job.run_name", "debug_seed2", "--job.output_dir", str(tmp_path)]
    assert run_ablation.parse_seeds("0-2,5") == [0, 1, 2, 5]


@pytest.mark.parametrize("extra, phrase", [
    (["--seeds", "0,x"], "--seeds '0,x' is not a list of integers"),
    (["--training.stepz", "3"], "unknown key training.stepz (command line); did you mean 'steps'?"),
    (["--job.seed", "3"], "--job.seed is set by run_ablation.py per run"),
    (["--training.steps"], "--training.steps has no value"),
])
def test_bad_inputs_are_one_line_errors(extra, phrase, tmp_path, capsys):
    assert run_ablation.main(["--configs", "train_configs/debug.toml", "--output-dir", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and phrase in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_unfinished_run_without_a_way_to_continue_stops_before_launching(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run_ablation, "resume_supports_auto", lambda: False)
    write_metrics(tmp_path / "debug_seed1", {1: 8.0})
    argv = ["--configs", "train_configs/debug.toml", "--seeds", "0,1", "--output-dir", str(tmp_path)]
    assert run_ablation.main(argv) == 2
    assert "debug_seed1 is unfinished and holds no checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "debug_seed0").exists()  # seed 0 was not launched either


def test_duplicate_config_stems_are_refused(tmp_path, capsys):
    other = tmp_path / "elsewhere" / "debug.toml"
    other.parent.mkdir()
    other.write_text(to_toml(load_config(["--config", "train_configs/debug.toml"])[0]))
    assert run_ablation.main(["--configs", "train_configs/debug.toml", str(other), "--output-dir", str(tmp_path)]) == 2
    assert "two configs share the stem 'debug'" in capsys.readouterr().err
