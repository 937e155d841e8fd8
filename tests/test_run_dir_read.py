"""components/run_dir.py's read side, ``RunDir``: a real tiny train.py run (finished), the same run cut short
(unfinished), a diverged run, an old run without finished.json, provenance present and absent."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from components.config import load_config, to_toml
from components.run_dir import NotARunDir, RunDir, header_provenance
from tests.launch import python

STEPS = 3


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A 3-step debug run trained by train.py (one process, one thread)."""
    out = tmp_path_factory.mktemp("runs")
    python(["train.py", "--config", "train_configs/debug.toml", "--job.output_dir", str(out), "--job.run_name", "tiny",
            "--training.steps", str(STEPS), "--metrics.log_freq", "1", "--metrics.val_freq", "0",
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
    assert run.commit is None or len(run.commit) >= 7  # a commit where the trainer records one
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
    assert (old.status, old.steps_done, old.commit, old.provenance) == ("finished", 10, None, {})
    diverged = RunDir.open(planted(tmp_path, "nan", [{"step": 1, "loss/train": 4.0}, {"step": 4, "loss/train": math.nan}]))
    assert diverged.status == "diverged" and diverged.diverged == "loss/train = nan at step 4"
    assert diverged.steps_done == 4
    stopped = RunDir.open(planted(tmp_path, "stopped", [{"step": 1, "loss/train": 4.0}, {"step": 5, "loss/train": 3.5}]))
    assert (stopped.status, stopped.steps_done, stopped.steps_planned) == ("unfinished", 5, 10)
    assert stopped.truncated(1).records == [{"step": 1, "loss/train": 4.0}] and len(stopped.records) == 2
    header = "# initlab run config\n# commit: 0123abcd\n# dirty = true\n"
    new = RunDir.open(planted(tmp_path, "new", [{"step": 10, "loss/train": 3.0}], header=header,
                              finished={"steps": 10, "provenance": {"host": "h1"}}))
    assert new.commit == "0123abcd" and new.provenance == {"commit": "0123abcd", "dirty": "true", "host": "h1"}
    top = RunDir.open(planted(tmp_path, "top", [{"step": 10, "loss/train": 3.0}], finished={"steps": 10, "git_commit": "feed"}))
    assert top.commit == "feed"


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


def test_header_provenance_stops_at_the_first_table() -> None:
    text = "# commit: abc\n# a sentence with spaces: no\n[job]\n# later: ignored\n"
    assert header_provenance(text) == {"commit": "abc"}
