"""components/run_dir.py's read side, ``RunDir``: a real tiny train.py run (finished), the same run cut short
(unfinished), a diverged run, an old run without finished.json, provenance present and absent."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from components.config import load_config, to_toml
from components.provenance import header_commit
from components.run_dir import NotARunDir, RunDir
from tests.launch import python

STEPS = 3


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A 3-step debug run trained by train.py (one process, one thread)."""
    out = tmp_path_factory.mktemp("runs")
    python(["train.py", "--config", "train_configs/debug.toml", "--job.output_dir", str(out), "--job.run_name", "tiny",
            "--training.steps", str(STEPS), "--metrics.log_freq", "1", "--metrics.val_freq", str(STEPS),
            "--model.n_layers", "1", "--training.global_batch_size", "2", "--training.seq_len", "32"],
           env={"OMP_NUM_THREADS": "1"}, timeout=300)
    return out / "tiny"


@pytest.mark.multiprocess
def test_a_finished_train_py_run_reads_back(real_run: Path, tmp_path: Path) -> None:
    run = RunDir.open(real_run)
    assert run.status == "finished" and run.finished and not run.diverged
    assert (run.steps_done, run.steps_planned) == (STEPS, STEPS)
    assert run.summary["steps"] == STEPS and run.config.training.steps == STEPS and run.config.model.n_layers == 1
    assert run.records[-1]["step"] == STEPS and math.isfinite(run.records[-1]["loss/train"])
    assert run.tables["model"]["n_layers"] == 1
    [start] = run.starts  # provenance.json: one start, its commit also in config.toml's header
    assert run.commits == [start["commit"] + (" (uncommitted changes)" if start["dirty"] else "")]
    assert start["commit"] == header_commit(run.config_text) and start["torch"] and start["ended"]
    assert run.records[0]["step"] == 0 and math.isfinite(run.records[0]["loss/val"])  # the loss at init
    # The same run killed after step 2: no finished.json, the last line cut mid-write.
    cut = tmp_path / "cut"
    shutil.copytree(real_run, cut, ignore=shutil.ignore_patterns("checkpoints"))
    (cut / "finished.json").unlink()
    lines = (cut / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["step"] <= 2]
    (cut / "metrics.jsonl").write_text("\n".join(kept) + '\n{"step": 3, "loss/tr')
    partial = RunDir.open(cut)
    assert (partial.status, partial.steps_done, partial.steps_planned) == ("unfinished", 2, STEPS)


def planted(root: Path, name: str, records: list[dict], steps: int = 10, header: str = "",
            finished: dict | None = None) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    cfg = load_config(["--training.steps", str(steps), "--model.vocab_size", "64"])[0]
    (run_dir / "config.toml").write_text(header + to_toml(cfg))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if finished is not None:
        (run_dir / "finished.json").write_text(json.dumps(finished))
    return run_dir


def test_status_steps_and_provenance_of_planted_runs(tmp_path: Path) -> None:
    old = RunDir.open(planted(tmp_path, "old", [{"step": 1, "loss/train": 4.0}, {"step": 10, "loss/train": 3.0}]))
    assert (old.status, old.steps_done, old.commits, old.starts) == ("finished", 10, ["unknown"], [])
    diverged = RunDir.open(planted(tmp_path, "nan", [{"step": 1, "loss/train": 4.0}, {"step": 4, "loss/train": math.nan}]))
    assert diverged.status == "diverged" and diverged.diverged == "loss/train = nan at step 4"
    assert diverged.steps_done == 4
    stopped = RunDir.open(planted(tmp_path, "stopped", [{"step": 1, "loss/train": 4.0}, {"step": 5, "loss/train": 3.5}]))
    assert (stopped.status, stopped.steps_done, stopped.steps_planned) == ("unfinished", 5, 10)
    (stopped.path / "diverged.json").write_text('{"step": 6, "error": "error: loss ... non-finite at step 6"}')
    assert RunDir(stopped.path).status == "diverged"  # the sweep's record of a stop before any nan was logged
    assert RunDir(stopped.path).diverged == "stopped on a non-finite loss or gradient at step 6 (diverged.json)"
    assert stopped.truncated(1).records == [{"step": 1, "loss/train": 4.0}] and len(stopped.records) == 2
    header = "# initlab 0123abcd (with uncommitted changes), torch 2.13.0, CUDA none\n# 1 x cpu on h1\n"
    assert RunDir.open(planted(tmp_path, "header", [{"step": 10, "loss/train": 3.0}], header=header)).commits == [
        "0123abcd"]
    starts = [{"commit": "0123abcd", "dirty": False}, {"commit": "4567ef01", "dirty": True}]
    both = RunDir.open(planted(tmp_path, "resumed", [{"step": 10, "loss/train": 3.0}], header=header,
                               finished={"steps": 10, "provenance": {"starts": starts}}))
    assert both.commits == ["0123abcd", "4567ef01 (uncommitted changes)"]
    (both.path / "provenance.json").write_text(json.dumps({"starts": starts[:1]}))
    assert RunDir(both.path).commits == ["0123abcd"]  # provenance.json is the record; finished.json its copy


def test_non_run_folders_and_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "plots").mkdir()
    with pytest.raises(NotARunDir, match="holds neither config.toml nor metrics.jsonl"):
        RunDir.open(tmp_path / "plots")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(NotARunDir, match="is not a directory"):
        RunDir.open(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RunDir.open(tmp_path / "absent")
    run_dir = planted(tmp_path, "bad", [{"step": 10, "loss/train": 3.0}], finished={"steps": 10})
    (run_dir / "finished.json").write_text("{")
    with pytest.raises(ValueError, match="finished.json is not valid JSON"):
        _ = RunDir.open(run_dir).status
    (run_dir / "config.toml").write_text("[model\n")
    with pytest.raises(ValueError, match="config.toml is not valid TOML"):
        RunDir.open(run_dir)


def test_header_commit_stops_at_the_first_table() -> None:
    assert header_commit("# initlab 1a2b3c4, torch 2.13.0\n[job]\n") == "1a2b3c4"
    assert header_commit("# initlab unknown (uncommitted changes unknown), torch 2.13.0\n") == "unknown"
    assert header_commit("[job]\n# initlab 1a2b3c4\n") is None and header_commit("# a comment\n") is None
