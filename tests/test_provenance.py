"""components/provenance.py: the commit and dirty state of a real git checkout, outside one, and overridden."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch

from components.provenance import UNKNOWN, Timeline, git_state, header_comment, start_record
from tests.launch import REPO


def git(repo, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_commit_and_dirty_state_of_a_checkout_and_of_a_plain_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("INITLAB_COMMIT", raising=False)
    monkeypatch.delenv("INITLAB_DIRTY", raising=False)
    assert git_state(tmp_path) == (UNKNOWN, None)  # not a git checkout
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    (tmp_path / "untracked.txt").write_text("outputs are not code\n")
    assert git_state(tmp_path) == (git(tmp_path, "rev-parse", "--short", "HEAD"), False)
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_state(tmp_path) == (git(tmp_path, "rev-parse", "--short", "HEAD"), True)
    monkeypatch.setenv("INITLAB_COMMIT", "abc1234")  # a copied tree names its commit; dirty unknown unless told
    assert git_state(tmp_path) == ("abc1234", None)
    monkeypatch.setenv("INITLAB_DIRTY", "0")
    assert git_state(tmp_path) == ("abc1234", False)


def test_start_record_and_its_config_header(monkeypatch):
    monkeypatch.setenv("INITLAB_COMMIT", "abc1234")
    monkeypatch.setenv("INITLAB_DIRTY", "1")
    record = start_record(torch.device("cpu"), 2, resumed_from=40)
    assert (record["commit"], record["dirty"], record["world_size"], record["resumed_from"], record["ended"]) == (
        "abc1234", True, 2, 40, None)
    first, second = header_comment(record).splitlines()
    assert first == f"# initlab abc1234 (with uncommitted changes), torch {torch.__version__}, CUDA " + (
        torch.version.cuda or "none")
    assert second == f"# 2 x cpu on {record['hostname']}, started {record['started']}"


def test_process_age_counts_from_the_process_start_to_the_tick():
    # A child that sleeps 1 s before it asks: its age is >= 1 s and <= the parent's wall time around it.
    code = "import time; time.sleep(1.0); from components.provenance import process_age_s; print(process_age_s())"
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    wall = time.monotonic() - t0
    assert 1.0 <= float(out) <= wall + 0.02, (out, wall)  # 0.02: the clock tick of the start time (10 ms)


def test_timeline_marks_grow_and_a_finished_debug_run_records_them(tmp_path):
    timeline = Timeline()
    timeline.mark("a")
    time.sleep(0.05)
    timeline.mark("b")
    assert list(timeline.marks) == ["a", "b"] and 0.03 <= timeline.marks["b"] - timeline.marks["a"] < 1
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "train.py", "--config", "train_configs/debug.toml", "--training.steps", "2",
                    "--model.n_layers", "1", "--metrics.val_freq", "0", "--job.output_dir", str(tmp_path),
                    "--job.run_name", "r"], cwd=REPO, env=env, capture_output=True, check=True)
    finished = json.loads((tmp_path / "r" / "finished.json").read_text())
    marks = finished["timeline_s"]
    assert list(marks) == ["claimed", "built", "slot", "loop_start", "loop_end", "closed"]
    ages = list(marks.values())
    assert ages == sorted(ages) and ages[0] > 0.5  # torch's import alone takes longer than that
    # wall_s is the loop's own clock, from the loop's start to the end records (after final weights)
    assert marks["loop_end"] - marks["loop_start"] - 0.1 <= finished["wall_s"] <= marks["closed"] - marks["loop_start"] + 0.1
