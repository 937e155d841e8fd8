"""components/checkpoint.py: exact resume after kill -9, resharding, atomic saves, seed checkpoints, bad inputs.

The end-to-end tests run train.py itself (torchrun, 2 CPU ranks on gloo, or one plain process)
on a 2-layer Llama (d=64, vocab 513) for 12 steps with a checkpoint every 4 steps; one
uninterrupted 2-rank run is the reference. Oracles: its metrics.jsonl losses (bitwise for the
same world size, <= 1e-3 relative across world sizes) and directory listings with mtimes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed.checkpoint as dcp

from components.checkpoint import (
    Checkpointer,
    CheckpointError,
    check_model_shapes,
    complete_steps,
    partial_dirs,
    prune_checkpoints,
    read_checkpoint_metadata,
    stager_outlives_a_stage,
)
from components.config import Checkpoint as CheckpointConfig
from tests.launch import REPO, alive, children, python, torchrun

STEPS, INTERVAL = 12, 4


def train_args(output_dir: Path, run_name: str, *extra: str) -> list[str]:
    return ["--model.name", "llama", "--model.flavor", "debug", "--model.n_layers", "2", "--model.dim", "64",
            "--tokenizer.max_vocab", "512", "--training.steps", str(STEPS), "--training.seq_len", "32",
            "--training.global_batch_size", "4", "--lr_scheduler.warmup_steps", "2",
            "--job.output_dir", str(output_dir), "--job.run_name", run_name, "--checkpoint.enable", "true",
            "--checkpoint.interval", str(INTERVAL), "--metrics.log_freq", "1", "--metrics.val_freq", "0",
            "--metrics.log_weight_std", "false", "--init.scheme", "normal", *extra]


def logged_losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss/train) of every metrics.jsonl line, in file order (duplicates kept, to be caught)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(record["step"], record["loss/train"]) for record in map(json.loads, lines)]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file and directory under ``root``, but the run-directory
    locks: a refused launch may leave an empty ``.lock`` (components/run_dir.py), which holds no data."""
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.name != ".lock"}


def resume_args(run_dir: Path, *extra: str) -> list[str]:
    """Resume ``run_dir`` with its config.toml (named explicitly: a copied run's config names the original)."""
    return ["train.py", "--config", str(run_dir / "config.toml"), "--checkpoint.resume", "true",
            "--job.output_dir", str(run_dir.parent), "--job.run_name", run_dir.name, *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 2-rank run with checkpoints at steps 4, 8 and 12."""
    out = tmp_path_factory.mktemp("reference")
    torchrun(["train.py", *train_args(out, "ref")], nproc=2)
    return out / "ref"


# ------------------------------------------------------------------------------ end to end
def start_torchrun(tmp_path: Path, run_name: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
           *train_args(tmp_path, run_name)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def freeze_ranks_after_checkpoint(job: subprocess.Popen, folder: Path, step: int = 4) -> list[int]:
    """Wait for ``folder/step_<step>``, then SIGSTOP the job's ranks (so a signal lands before the run ends)."""
    deadline = time.monotonic() + 300
    while not (folder / f"step_{step}").is_dir() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    ranks = children(job.pid)
    assert len(ranks) == 2 and job.poll() is None, "the job ended before its checkpoint"
    for pid in ranks:
        os.kill(pid, signal.SIGSTOP)
    return ranks


def assert_bitwise_the_reference(reference: Path, run_dir: Path) -> None:
    ref, resumed = logged_losses(reference), logged_losses(run_dir)
    assert [step for step, _ in resumed] == list(range(1, STEPS + 1))  # no duplicated or missing step
    assert resumed == ref  # every loss bitwise equal (JSON floats round-trip exactly)


def kill9_whole_job(root: Path) -> dict:
    """kill -9 the whole 2-rank torchrun job (agent and ranks) after the step-4 checkpoint."""
    job = start_torchrun(root, "killed")
    for pid in [*freeze_ranks_after_checkpoint(job, root / "killed" / "checkpoints"), job.pid]:
        os.kill(pid, signal.SIGKILL)  # no chance to clean up
    job.communicate()
    return {"steps": complete_steps(root / "killed" / "checkpoints")}


def sigterm_job(root: Path) -> dict:
    """SIGTERM to torchrun (a scheduler's preemption): it forwards it, the ranks agree, save step N and stop."""
    job = start_torchrun(root, "preempted")
    ranks = freeze_ranks_after_checkpoint(job, root / "preempted" / "checkpoints")
    job.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # the agent forwards SIGTERM to the frozen ranks: pending until they continue
    for pid in ranks:
        os.kill(pid, signal.SIGCONT)
    _, stderr = job.communicate(timeout=120)
    folder = root / "preempted" / "checkpoints"
    return {"steps": complete_steps(folder), "partial": partial_dirs(folder), "stderr": stderr,
            "logged_steps": [step for step, _ in logged_losses(root / "preempted")]}


def kill9_launcher(root: Path) -> dict:
    """kill -9 of torchrun alone: its ranks, re-parented, notice at the next step boundary, save and exit."""
    job = start_torchrun(root, "orphaned")
    ranks = freeze_ranks_after_checkpoint(job, root / "orphaned" / "checkpoints")
    job.kill()
    job.wait()
    for pid in ranks:
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 120
    while any(alive(pid) for pid in ranks) and time.monotonic() < deadline:
        time.sleep(0.05)
    ranks_alive = [pid for pid in ranks if alive(pid)]
    job.communicate()  # the ranks held the agent's pipes open until they exited
    folder = root / "orphaned" / "checkpoints"
    return {"ranks_alive": ranks_alive, "steps": complete_steps(folder), "partial": partial_dirs(folder)}


@pytest.fixture(scope="module")
def interrupted(reference, one_process_runs, tmp_path_factory) -> dict:
    """2-rank jobs stopped after their step-4 checkpoint (kill -9 of the job, SIGTERM, kill -9 of the launcher)
    and the one-process run killed inside its step-8 save; then every one of them resumed on 2 ranks, one after
    another in one torchrun launch (tests/train_cases_worker.py). Returns what each stop left, then the resumes."""
    root = tmp_path_factory.mktemp("interrupted")
    stops = {"killed": kill9_whole_job(root), "preempted": sigterm_job(root), "orphaned": kill9_launcher(root)}
    crashed = one_process_runs["root"] / "crashed"
    stops["crashed"] = {"steps": complete_steps(crashed / "checkpoints"), "partial": partial_dirs(crashed / "checkpoints"),
                        "partial_files": sorted(p.name for p in (crashed / "checkpoints" / ".tmp_step_8").iterdir())}
    cases = {name: resume_args(root / name)[1:] for name in ("killed", "preempted", "orphaned")}
    cases["crashed"] = resume_args(crashed, "--checkpoint.keep_last", "1")[1:]
    (root / "cases.json").write_text(json.dumps(list(cases.values())))
    torchrun(["tests/train_cases_worker.py", str(root / "cases.json"), str(root / "results.json")], nproc=2)
    for rank_file in ("results.json", "results.json.rank1"):
        for name, result in zip(cases, json.loads((root / rank_file).read_text())):
            assert result["rc"] == 0, (name, rank_file, result["stderr"][-3000:])
    return {"stops": stops, "run_dirs": {**{name: root / name for name in cases}, "crashed": crashed}}


@pytest.mark.multiprocess
def test_kill9_mid_run_then_resume_is_bitwise_exact(reference, interrupted):
    """kill -9 the whole 2-rank torchrun job (agent and ranks) after the step-4 checkpoint; resumed on 2 ranks,
    every loss is bitwise the reference's."""
    assert interrupted["stops"]["killed"]["steps"][-1] < STEPS
    run_dir = interrupted["run_dirs"]["killed"]
    assert_bitwise_the_reference(reference, run_dir)
    assert complete_steps(run_dir / "checkpoints") == [4, 8, 12] and partial_dirs(run_dir / "checkpoints") == []


@pytest.mark.multiprocess
def test_sigterm_saves_one_checkpoint_at_a_step_boundary_and_resume_is_bitwise(reference, interrupted):
    """SIGTERM to torchrun (a scheduler's preemption): it forwards it, the ranks agree, save step N and stop."""
    stop = interrupted["stops"]["preempted"]
    stopped = stop["steps"][-1]
    assert 4 < stopped < STEPS and stop["partial"] == [], stop["stderr"][-3000:]
    assert f"initlab: stopped at step {stopped}/{STEPS} on SIGTERM; saved checkpoint step_{stopped}" in stop["stderr"]
    assert stop["logged_steps"][-1] == stopped  # the stop step was logged and flushed
    assert_bitwise_the_reference(reference, interrupted["run_dirs"]["preempted"])


@pytest.mark.multiprocess
def test_kill9_of_the_launcher_stops_its_orphaned_ranks_which_save_and_free_the_lock(reference, interrupted):
    """kill -9 of torchrun alone: its ranks, re-parented, notice at the next step boundary, save and exit."""
    stop = interrupted["stops"]["orphaned"]
    assert stop["ranks_alive"] == []
    assert 4 < stop["steps"][-1] < STEPS and stop["partial"] == []
    assert_bitwise_the_reference(reference, interrupted["run_dirs"]["orphaned"])  # also proves the lock was released


@pytest.fixture(scope="module")
def one_process_runs(reference, tmp_path_factory) -> dict:
    """Every single-process train.py run of this module, in one interpreter (tests/train_main_worker.py).

    Cases: a seed checkpoint, a resume from it and a fresh run to compare with; the reference
    resumed from its step-8 checkpoint on one rank (2 -> 1 reshard); each bad resume input; last,
    a run whose save of step 8 is killed half-way.
    """
    root = tmp_path_factory.mktemp("one_process")
    resharded = root / "resharded"
    shutil.copytree(reference, resharded, ignore=shutil.ignore_patterns("finished.json"))  # stopped after step 8
    shutil.rmtree(resharded / "checkpoints" / "step_12")
    no_ckpt = root / "no_ckpt"
    (no_ckpt / "checkpoints" / ".tmp_step_4").mkdir(parents=True)
    (no_ckpt / "checkpoints" / ".tmp_step_4" / "__0_0.distcp").write_bytes(b"partial")
    for name in ("config.toml", "metrics.jsonl"):
        shutil.copy(reference / name, no_ckpt / name)
    corrupt_data, corrupt_meta, other_shape = root / "corrupt_data", root / "corrupt_meta", root / "other_shape"
    for copy in (corrupt_data, corrupt_meta, other_shape):
        shutil.copytree(reference, copy, ignore=shutil.ignore_patterns("finished.json"))  # as if still running
    data_file = corrupt_data / "checkpoints" / "step_12" / "__1_0.distcp"
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    meta_file = corrupt_meta / "checkpoints" / "step_12" / ".metadata"
    meta_file.write_bytes(meta_file.read_bytes()[:100])
    bad = {"no_ckpt": no_ckpt, "corrupt_data": corrupt_data, "corrupt_meta": corrupt_meta, "other_shape": other_shape}
    before = {name: snapshot(path) for name, path in bad.items()}
    cases = {
        "seed_create": train_args(root, "seed", "--training.steps", "3", "--checkpoint.create_seed_checkpoint", "true"),
        "seed_resume": [*resume_args(root / "seed")[1:], "--checkpoint.create_seed_checkpoint", "false"],
        "fresh": train_args(root, "fresh", "--training.steps", "3"),
        "resharded": resume_args(resharded)[1:],
        "no_ckpt": resume_args(no_ckpt)[1:],
        "corrupt_data": resume_args(corrupt_data)[1:],
        "corrupt_meta": resume_args(corrupt_meta)[1:],
        "other_shape": [*resume_args(other_shape)[1:], "--model.ffn_dim", "96"],
        "crashed": train_args(root, "crashed"),
    }
    worker_cases = [{"argv": argv} for argv in cases.values()]
    worker_cases[-1]["crash_in_save_of"] = str(root / "crashed" / "checkpoints" / ".tmp_step_8")
    proc = python(["tests/train_main_worker.py", json.dumps(worker_cases)], check=False)
    results = [json.loads(line.removeprefix("RESULT ")) for line in proc.stdout.splitlines()
               if line.startswith("RESULT ")]
    assert len(results) == len(cases) - 1 and proc.returncode == 9, proc.stderr[-3000:]
    return {"root": root, "results": dict(zip(cases, results)), "bad": bad, "before": before}


@pytest.mark.multiprocess
def test_resume_on_one_rank_reshards_a_two_rank_checkpoint(reference, one_process_runs):
    """2 -> 1 ranks: the 2-rank step-8 checkpoint resumes on one process; losses within 1e-3 relative."""
    run_dir = one_process_runs["root"] / "resharded"
    assert one_process_runs["results"]["resharded"]["rc"] == 0
    assert complete_steps(run_dir / "checkpoints") == [4, 8, 12]  # step 12 was trained and saved again
    ref, resumed = dict(logged_losses(reference)), logged_losses(run_dir)
    assert [step for step, _ in resumed] == list(range(1, STEPS + 1))
    for step, loss in resumed[8:]:
        assert abs(loss - ref[step]) <= 1e-3 * abs(ref[step]), (step, loss, ref[step])


@pytest.mark.multiprocess
def test_save_killed_halfway_keeps_previous_checkpoint_and_is_cleaned_up(reference, interrupted):
    """The process died inside the step-8 save (1 rank); resume on 2 ranks (1 -> 2 reshard) from step 4."""
    stop, run_dir = interrupted["stops"]["crashed"], interrupted["run_dirs"]["crashed"]
    folder = run_dir / "checkpoints"
    assert stop["steps"] == [4]
    assert stop["partial"] == [folder / ".tmp_step_8"]
    assert stop["partial_files"] and ".metadata" not in stop["partial_files"]  # data written, metadata not

    assert complete_steps(folder) == [STEPS] and partial_dirs(folder) == []  # keep_last 1 pruned 4 and 8
    ref, resumed = dict(logged_losses(reference)), logged_losses(run_dir)
    assert [step for step, _ in resumed] == list(range(1, STEPS + 1))
    for step, loss in resumed:
        assert abs(loss - ref[step]) <= 1e-3 * abs(ref[step]), (step, loss, ref[step])


@pytest.mark.multiprocess
def test_seed_checkpoint_holds_the_initial_weights_only_and_resumes_like_a_fresh_run(one_process_runs):
    """step_0 = model only; resuming from it gives a run bitwise equal to a fresh run with the same seed."""
    results, root = one_process_runs["results"], one_process_runs["root"]
    assert results["seed_create"]["rc"] == 0 and results["seed_resume"]["rc"] == 0 and results["fresh"]["rc"] == 0
    metadata = read_checkpoint_metadata(root / "seed" / "checkpoints" / "step_0")
    assert {key.split(".")[0] for key in metadata.state_dict_metadata} == {"model"}
    seeded, fresh = logged_losses(root / "seed"), logged_losses(root / "fresh")
    assert [step for step, _ in seeded] == [1, 2, 3]
    assert seeded == fresh


@pytest.mark.multiprocess
@pytest.mark.parametrize("case, message", [
    ("no_ckpt", "holds no complete checkpoint (only partial saves: .tmp_step_4)"),
    ("corrupt_data", "step_12/__1_0.distcp is truncated"),
    ("corrupt_meta", "step_12/.metadata is corrupt"),
    ("other_shape", "with a different experiment (model.ffn_dim: None -> 96)"),  # refused before any load
])
def test_bad_resume_input_is_one_line_error_and_changes_nothing(one_process_runs, case, message):
    result = one_process_runs["results"][case]
    assert result["rc"] == 2
    errors = [line for line in result["stderr"].splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result["stderr"][-2000:]
    assert "Traceback" not in result["stderr"]
    path = one_process_runs["bad"][case]
    assert snapshot(path) == one_process_runs["before"][case]


# ------------------------------------------------------------------------------- units
def make_dirs(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).mkdir(parents=True)


def test_complete_and_partial_directories_are_told_apart(tmp_path):
    make_dirs(tmp_path, ["step_8", "step_12", ".tmp_step_16", ".del_step_4", "step_x", "notes"])
    (tmp_path / "step_20").write_text("a file, not a checkpoint")
    assert complete_steps(tmp_path) == [8, 12]  # numeric order, not lexical
    assert [p.name for p in partial_dirs(tmp_path)] == [".del_step_4", ".tmp_step_16"]
    assert complete_steps(tmp_path / "missing") == []


def test_prune_keeps_the_newest_and_the_seed_checkpoint(tmp_path):
    make_dirs(tmp_path, ["step_0", "step_4", "step_8", "step_12"])
    assert prune_checkpoints(tmp_path, keep_last=2) == [4]
    assert complete_steps(tmp_path) == [0, 8, 12] and partial_dirs(tmp_path) == []
    assert prune_checkpoints(tmp_path, keep_last=0) == []  # 0 = keep all
    assert complete_steps(tmp_path) == [0, 8, 12]


def test_due_every_interval_and_at_the_last_step():
    model = torch.nn.Linear(2, 2)
    checkpointer = Checkpointer(Path("unused"), CheckpointConfig(enable=True, interval=4), env=None,
                                states={"model": model})
    assert [s for s in range(1, 11) if checkpointer.due(s, total_steps=10)] == [4, 8, 10]
    disabled = Checkpointer(Path("unused"), CheckpointConfig(enable=False, interval=4), env=None,
                            states={"model": model})
    assert not any(disabled.due(s, total_steps=10) for s in range(1, 11))


def test_shape_check_names_the_first_mismatched_tensor(tmp_path):
    dcp.save({"model": {"a.weight": torch.zeros(4, 3), "b.weight": torch.zeros(5)}}, checkpoint_id=str(tmp_path),
             no_dist=True)
    metadata = read_checkpoint_metadata(tmp_path)
    check_model_shapes({"a.weight": (4, 3), "b.weight": (5,)}, metadata, tmp_path)  # equal: no error
    with pytest.raises(CheckpointError, match=r"tensor a\.weight is \[4, 3\] in the checkpoint but \[4, 2\]"):
        check_model_shapes({"a.weight": (4, 2), "b.weight": (6,)}, metadata, tmp_path)
    with pytest.raises(CheckpointError, match=r"tensor c\.weight \[1\] is missing from the checkpoint"):
        check_model_shapes({"a.weight": (4, 3), "b.weight": (5,), "c.weight": (1,)}, metadata, tmp_path)
    with pytest.raises(CheckpointError, match=r"tensor b\.weight of the checkpoint does not exist in the model"):
        check_model_shapes({"a.weight": (4, 3)}, metadata, tmp_path)
    check_model_shapes({"a.weight": (4, 3), "c.weight": (1,)}, metadata, tmp_path, allow_missing=True)


def test_metadata_check_rejects_missing_and_truncated_files(tmp_path):
    with pytest.raises(CheckpointError, match="no .metadata file"):
        read_checkpoint_metadata(tmp_path)
    dcp.save({"model": {"w": torch.arange(1000.0)}}, checkpoint_id=str(tmp_path), no_dist=True)
    data_file = next(tmp_path.glob("*.distcp"))
    data_file.write_bytes(data_file.read_bytes()[:-1])
    with pytest.raises(CheckpointError, match=f"{data_file.name} is truncated"):
        read_checkpoint_metadata(tmp_path)
    data_file.unlink()
    with pytest.raises(CheckpointError, match=f"{data_file.name} is missing"):
        read_checkpoint_metadata(tmp_path)


def test_save_is_atomic_refuses_overwrite_and_reports_write_errors(tmp_path, monkeypatch):
    """One process, no process group: the seed checkpoint (step 0) path of Checkpointer.save."""
    env = SimpleNamespace(is_main=True, rank=0, world_size=1, device=torch.device("cpu"))
    model = torch.nn.Linear(3, 2)
    checkpointer = Checkpointer(tmp_path / "checkpoints", CheckpointConfig(), env, {"model": model})
    checkpointer.save(0)
    folder = tmp_path / "checkpoints"
    assert complete_steps(folder) == [0] and partial_dirs(folder) == []
    metadata = read_checkpoint_metadata(folder / "step_0")
    assert sorted(metadata.state_dict_metadata) == ["model.bias", "model.weight"]
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="step_0 already exists; refusing to overwrite"):
        checkpointer.save(0)
    assert snapshot(tmp_path) == before

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dcp, "save", disk_full)
    other = Checkpointer(tmp_path / "other", CheckpointConfig(), env, {"model": model})
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint (.*\.tmp_step_0): no space left on \1: the disk is full"):
        other.save(0)
    assert complete_steps(tmp_path / "other") == []  # never renamed: not a checkpoint


def self_closing(stage):
    """torch 2.11's ``DefaultStager._stage`` (torch/distributed/checkpoint/staging.py) made of this torch's ``stage``:
    the stage, then its StateDictStager closed."""
    def closing_stage(self, state_dict, **kwargs):
        staged = stage(self, state_dict, **kwargs)
        self._state_dict_stager.close()
        return staged
    return closing_stage


# train.py, run as its command line does, with torch 2.11's stager planted on this torch
SELF_CLOSING_STAGER = """
import runpy, sys
from torch.distributed.checkpoint import staging
from tests.test_checkpoint import self_closing
staging.DefaultStager._stage = self_closing(staging.DefaultStager._stage)
if sys.argv[1] == "--reuse-the-stager":  # the planted defect: one stager kept for the whole run regardless
    import components.checkpoint
    components.checkpoint.stager_outlives_a_stage = lambda: True
    sys.argv.pop(1)
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""


def test_the_stager_probe_tells_a_stager_that_closes_itself(monkeypatch):
    if tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 13):
        assert stager_outlives_a_stage()
    from torch.distributed.checkpoint import staging
    monkeypatch.setattr(staging.DefaultStager, "_stage", self_closing(staging.DefaultStager._stage))
    assert not stager_outlives_a_stage()


@pytest.mark.multiprocess
def test_async_saves_go_on_with_a_stager_that_closes_itself_after_each_stage(tmp_path):
    """Three async saves in one run on torch 2.11's stager behaviour: each save gets a stager of its own. With one
    stager kept for the run (the planted defect) the second save fails as it did on a GPU with torch 2.11."""
    def run(name: str, *flag: str):
        return python(["-c", SELF_CLOSING_STAGER, *flag, *train_args(tmp_path, name, "--checkpoint.async_mode", "async",
                                                                     "--training.steps", "6", "--checkpoint.interval",
                                                                     "2")], check=False)

    fixed = run("fixed")
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert complete_steps(tmp_path / "fixed" / "checkpoints") == [2, 4, 6]
    broken = run("broken", "--reuse-the-stager")
    assert broken.returncode == 2
    assert "cannot write checkpoint" in broken.stderr and "KeyError: <class 'type'>" in broken.stderr
    assert complete_steps(tmp_path / "broken" / "checkpoints") == [2]
