"""components/run_dir.py and components/preemption.py through train.py: the lock, requeue-safe starts,
checked resumes, stop signals, out-of-space saves, checksums and the non-finite culprit.

Real processes and files: ``python train.py`` (a world of one) on the 2-layer Llama of
tests/test_checkpoint.py, killed, signalled, size-limited or resumed; the lock is held by real processes.
"""

from __future__ import annotations

import datetime
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from components.checkpoint import IDENTITY, MANIFEST, complete_steps, partial_dirs
from components.config import ConfigError, load_config, to_toml
from components.lr_schedule import lr_factor
from components.preemption import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE
from components.provenance import header_comment
from components.run_dir import RunDir
from tests.launch import REPO, python
from tests.test_checkpoint import logged_losses, snapshot, train_args

STEPS = 12


def start_train(output_dir: Path, run_name: str, *extra: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "train.py", *train_args(output_dir, run_name, *extra)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def wait_for(predicate, job: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert job.poll() is None, "the run ended before the event the test waits for"


def signal_after_checkpoint(job: subprocess.Popen, folder: Path, sig: int) -> tuple[str, str]:
    """Freeze the run once step_4 exists, send ``sig``, let it continue; (stdout, stderr) at its end."""
    wait_for(lambda: (folder / "step_4").is_dir(), job)
    job.send_signal(signal.SIGSTOP)
    job.send_signal(sig)
    job.send_signal(signal.SIGCONT)
    return job.communicate(timeout=120)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One uninterrupted single-process run: checkpoints at 4, 8, 12, the oracle of this module."""
    out = tmp_path_factory.mktemp("finished")
    python(["train.py", *train_args(out, "ref")])
    return out / "ref"


# ------------------------------------------------------------------------------------ signals
@pytest.mark.multiprocess
@pytest.mark.multiprocess
def test_sigterm_saves_exits_75_and_the_same_command_resumes_bitwise(finished_run, tmp_path):
    job = start_train(tmp_path, "run")
    _, stderr = signal_after_checkpoint(job, tmp_path / "run" / "checkpoints", signal.SIGTERM)
    stopped = complete_steps(tmp_path / "run" / "checkpoints")[-1]
    assert job.returncode == PREEMPTED_EXIT_CODE and 4 < stopped < STEPS
    assert stderr.strip().splitlines()[-1] == (f"initlab: stopped at step {stopped}/{STEPS} on SIGTERM; saved "
                                               f"checkpoint step_{stopped}; the same command resumes it")
    again = python(["train.py", *train_args(tmp_path, "run")])  # the requeued job: same command, resume auto
    assert f"resuming {tmp_path / 'run'} from step {stopped}/{STEPS}" in again.stdout
    assert logged_losses(tmp_path / "run") == logged_losses(finished_run)


@pytest.mark.multiprocess
@pytest.mark.multiprocess
def test_ctrl_c_is_one_line_exit_130_and_a_checkpoint(tmp_path):
    job = start_train(tmp_path, "run")
    _, stderr = signal_after_checkpoint(job, tmp_path / "run" / "checkpoints", signal.SIGINT)
    stopped = complete_steps(tmp_path / "run" / "checkpoints")[-1]
    assert job.returncode == INTERRUPTED_EXIT_CODE and "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("initlab:")] == [
        f"initlab: stopped at step {stopped}/{STEPS} on SIGINT; saved checkpoint step_{stopped}; the same command "
        "resumes it"]


# ------------------------------------------------------------------------------- lock, starts
@pytest.mark.multiprocess
@pytest.mark.multiprocess
def test_a_live_lock_holder_stops_a_second_job_at_once_and_a_killed_one_does_not(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from components.run_dir import RunDir; "
                               f"RunDir({str(run_dir)!r}).acquire_lock(); print('locked', flush=True); time.sleep(600)"],
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    before = snapshot(tmp_path)
    second = python(["train.py", *train_args(tmp_path, "run")], check=False)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert second.stderr.strip() == (f"error: run directory {run_dir} is in use by " + (run_dir / ".lock").read_text()
                                     + "; wait for it to end, stop it, or choose another --job.run_name")
    assert f'"pid": {holder.pid}' in second.stderr and snapshot(tmp_path) == before
    holder.kill()  # kill -9: the kernel drops the flock, no stale lock remains
    holder.wait()
    run = RunDir(run_dir)
    run.acquire_lock()
    run.release_lock()


@pytest.mark.multiprocess
@pytest.mark.multiprocess
def test_a_run_killed_before_its_first_checkpoint_is_restarted_by_the_same_command(tmp_path):
    command = train_args(tmp_path, "run", "--checkpoint.interval", "100")  # the only save: the last step
    job = start_train(tmp_path, "run", "--checkpoint.interval", "100")
    metrics = tmp_path / "run" / "metrics.jsonl"
    wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3, job)
    job.kill()
    job.communicate()
    first = metrics.read_text()
    rerun = python(["train.py", *command])
    abandoned = list((tmp_path / "run" / "abandoned").iterdir())
    assert len(abandoned) == 1 and (abandoned[0] / "metrics.jsonl").read_text() == first
    assert "holds no complete checkpoint (an earlier attempt stopped before its first save)" in rerun.stdout
    assert [step for step, _ in logged_losses(tmp_path / "run")] == list(range(1, STEPS + 1))
    third = python(["train.py", *command])  # resubmitted once more: the run is complete, nothing to do
    assert f"already trained all {STEPS} steps; nothing to do" in third.stdout
    assert [step for step, _ in logged_losses(tmp_path / "run")] == list(range(1, STEPS + 1))


def test_plan_start_for_every_directory_state(tmp_path):
    empty = tmp_path / "empty"
    assert RunDir(empty).plan_start("auto", 10).mode == "fresh"
    with pytest.raises(ConfigError, match="holds no complete checkpoint; use --checkpoint.resume auto"):
        RunDir(empty).plan_start("true", 10)
    attempt = tmp_path / "attempt"
    (attempt / "checkpoints" / ".tmp_step_4").mkdir(parents=True)
    (attempt / "metrics.jsonl").write_text('{"step": 1}\n')
    assert RunDir(attempt).plan_start("auto", 10).note.endswith("the run starts over")
    with pytest.raises(ConfigError, match=r"\(only partial saves: \.tmp_step_4\)"):
        RunDir(attempt).plan_start("true", 10)
    with pytest.raises(ConfigError, match="already exists; use --checkpoint.resume auto"):
        RunDir(attempt).plan_start("false", 10)
    (attempt / "checkpoints" / "step_8").mkdir()
    assert RunDir(attempt).plan_start("auto", 10).mode == "resume"
    (attempt / "finished.json").write_text('{"steps": 8}')
    assert RunDir(attempt).plan_start("auto", 8).mode == "finished"
    assert RunDir(attempt).plan_start("auto", 10).mode == "resume"  # more steps asked: continue the finished run
    shutil.rmtree(attempt / "checkpoints")
    assert RunDir(attempt).plan_start("auto", 8).note.endswith("nothing to do (it kept no checkpoint to continue from)")
    with pytest.raises(ConfigError, match="finished 8 steps without a checkpoint to continue from to 10"):
        RunDir(attempt).plan_start("auto", 10)


def test_run_dir_writes_a_start_its_end_and_the_finish_and_reads_them_back(tmp_path):
    """The write side on real files: claim (lock + plan) a fresh start, its files, the end, the finish mark; a
    relaunch of the finished run plans "finished"; a sweep's divergence mark is read back."""
    cfg, _ = load_config(train_args(tmp_path, "run"))
    record = {"commit": "abc1234", "dirty": False, "torch": "2.13.0", "cuda": None, "world_size": 1, "device": "cpu",
              "hostname": "host", "started": "2026-12-06T08:00:00+00:00", "ended": None, "resumed_from": None}
    run = RunDir(tmp_path / "run")
    start = run.claim(cfg)
    run.start_fresh(start, cfg, record, {"scheme": "normal"})
    run.record_end("2026-12-06T08:01:00+00:00")
    run.mark_finished({"steps": STEPS})
    run.release_lock()
    assert (start.mode, (run.path / "config.toml").read_text()) == ("fresh", header_comment(record) + to_toml(cfg))
    assert json.loads((run.path / "init_stds.json").read_text()) == {"scheme": "normal"}
    ended = {"starts": [{**record, "ended": "2026-12-06T08:01:00+00:00"}]}
    assert run.read_provenance() == ended and RunDir(run.path).starts == ended["starts"]
    assert json.loads((run.path / "finished.json").read_text()) == {"steps": STEPS, "provenance": ended}
    again = RunDir(run.path)
    assert (again.marked_finished, again.finished_steps(), again.claim(cfg).mode) == (True, STEPS, "finished")
    again.release_lock()
    assert (again.marked_diverged, again.diverged_record()) == (False, None)
    again.mark_diverged({"step": 3, "error": "error: loss or gradient norm became non-finite at step 3", "lr": 1.0})
    assert RunDir(run.path).marked_diverged and RunDir(run.path).diverged_record()["step"] == 3
    assert RunDir(run.path).diverged == "stopped on a non-finite loss or gradient at step 3 (diverged.json)"


def test_default_run_names_are_new_directories(tmp_path):
    import datetime

    when = datetime.datetime(2026, 11, 29, 5, 6, 7, tzinfo=datetime.UTC)
    assert RunDir.new_name(str(tmp_path), "configs/debug.toml", when) == "debug_20261129-050607"
    (tmp_path / "debug_20261129-050607").mkdir()
    assert RunDir.new_name(str(tmp_path), "configs/debug.toml", when) == "debug_20261129-050607-2"


def test_resume_refuses_identity_changes_with_a_diff_and_reports_the_others(tmp_path):
    cfg, _ = load_config(train_args(tmp_path, "run"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.toml").write_text(to_toml(cfg))
    changed, _ = load_config(train_args(tmp_path, "run", "--init.scheme", "mitchell", "--job.seed", "3"))
    with pytest.raises(ConfigError, match=r"different experiment \(job.seed: 0 -> 3; init.scheme: 'normal' -> "
                                          r"'mitchell'\)"):
        RunDir(tmp_path / "run").config_changes(changed)
    longer, _ = load_config(train_args(tmp_path, "run", "--training.steps", "20", "--optimizer.lr", "0.002",
                                       "--checkpoint.resume", "true"))
    assert RunDir(tmp_path / "run").config_changes(longer) == [("training.steps", 12, 20), ("optimizer.lr", 0.001, 0.002)]


@pytest.mark.multiprocess
def test_a_finished_run_relaunched_as_another_experiment_is_refused_with_the_diff(finished_run, tmp_path):
    """The finished run, relaunched under its name: the same identity does nothing (exit 0); another seed, init
    scheme or model width is refused (exit 2, the resume's one-line diff); nothing in the directory changes."""
    shutil.copytree(finished_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))
    before = snapshot(tmp_path / "run")
    results = run_cases(tmp_path, {
        "same": train_args(tmp_path, "run", "--metrics.log_freq", "3"),  # not an identity setting
        "seed": train_args(tmp_path, "run", "--job.seed", "1"),
        "scheme": train_args(tmp_path, "run", "--init.scheme", "mitchell"),
        "width": train_args(tmp_path, "run", "--model.dim", "128"),
    })
    assert results["same"]["rc"] == 0 and results["same"]["stderr"] == ""
    assert f"run {tmp_path / 'run'} already trained all {STEPS} steps; nothing to do" in results["same"]["stdout"]
    for case, diff in [("seed", "job.seed: 0 -> 1"), ("scheme", "init.scheme: 'normal' -> 'mitchell'"),
                       ("width", "model.dim: 64 -> 128")]:
        assert results[case]["rc"] == 2, (case, results[case]["stdout"][-1000:])
        assert results[case]["stderr"].strip() == (
            f"error: cannot resume {tmp_path / 'run'} with a different experiment ({diff}); restore those "
            "settings or start a new run with another --job.run_name"), case
        assert "nothing to do" not in results[case]["stdout"]
    assert snapshot(tmp_path / "run") == before


# ------------------------------------------------------------------------------- resume checks
def run_cases(root: Path, argv: dict[str, list[str]]) -> dict[str, dict]:
    """train.py runs in one interpreter (tests/train_cases_worker.py): {name: {rc, stdout, stderr}}."""
    (root / "cases.json").write_text(json.dumps(list(argv.values())))
    python(["tests/train_cases_worker.py", str(root / "cases.json"), str(root / "results.json")])
    return dict(zip(argv, json.loads((root / "results.json").read_text())))


def resume_argv(run_dir: Path, *extra: str) -> list[str]:
    return ["--config", str(run_dir / "config.toml"), "--job.output_dir", str(run_dir.parent),
            "--job.run_name", run_dir.name, *extra]


@pytest.mark.multiprocess
@pytest.mark.multiprocess
def test_resume_applies_a_new_lr_and_length_and_refuses_corrupt_bytes(finished_run, tmp_path):
    data_file = "__0_0.distcp"
    for name in ("longer", "bitflip", "bitflip_unchecked"):
        shutil.copytree(finished_run, tmp_path / name, ignore=shutil.ignore_patterns(".lock", "finished.json"))
    for name in ("bitflip", "bitflip_unchecked"):
        target = tmp_path / name / "checkpoints" / "step_12" / data_file
        raw = bytearray(target.read_bytes())
        raw[len(raw) // 2] ^= 0x01  # one bit, same size: only the checksum can tell
        target.write_bytes(bytes(raw))
    results = run_cases(tmp_path, {
        "longer": resume_argv(tmp_path / "longer", "--training.steps", "14", "--optimizer.lr", "0.002"),
        "bitflip": resume_argv(tmp_path / "bitflip", "--training.steps", "14"),
        "bitflip_unchecked": resume_argv(tmp_path / "bitflip_unchecked", "--training.steps", "14",
                                         "--checkpoint.verify_checksums", "false"),
    })
    longer = results["longer"]
    assert longer["rc"] == 0, longer["stderr"][-2000:]
    assert "resume changes training.steps: 12 -> 14 (applies from step 13)" in longer["stdout"]
    assert "resume changes optimizer.lr: 0.001 -> 0.002 (applies from step 13)" in longer["stdout"]
    cfg, _ = load_config(["--config", str(tmp_path / "longer" / "config.resume_12.toml")])
    assert cfg.optimizer.lr == 0.002 and cfg.training.steps == 14
    records = [json.loads(line) for line in (tmp_path / "longer" / "metrics.jsonl").read_text().splitlines()]
    lr13 = next(r["lr"] for r in records if r["step"] == 13)
    assert lr13 == pytest.approx(0.002 * lr_factor(13, cfg.lr_scheduler, 14), rel=1e-12)
    folder = tmp_path / "bitflip" / "checkpoints"
    assert results["bitflip"]["rc"] == 2 and results["bitflip"]["stderr"].strip() == (
        f"error: checkpoint {folder / 'step_12'} is corrupt: {data_file} (CRC-32 mismatch: its bytes changed after "
        f"the save); delete {folder / 'step_12'} to fall back to {folder / 'step_8'} (or pass "
        "--checkpoint.verify_checksums false to load it anyway)")
    assert results["bitflip_unchecked"]["rc"] == 0, results["bitflip_unchecked"]["stderr"][-2000:]
    manifest = json.loads((finished_run / "checkpoints" / "step_12" / MANIFEST).read_text())
    assert set(manifest) == {data_file, ".metadata", IDENTITY}


@pytest.mark.multiprocess
def test_an_async_save_killed_mid_write_is_never_loaded_and_the_run_resumes_bitwise(finished_run, tmp_path):
    """async_mode: the process dies in the background thread while step 8 is written (data files, no .metadata)."""
    argv = train_args(tmp_path, "async", "--checkpoint.async_mode", "async")
    doomed = tmp_path / "async" / "checkpoints" / ".tmp_step_8"
    proc = python(["tests/train_main_worker.py", json.dumps([{"argv": argv, "crash_in_save_of": str(doomed)}])],
                  check=False)
    folder = tmp_path / "async" / "checkpoints"
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert complete_steps(folder) == [4] and partial_dirs(folder) == [doomed]
    assert json.loads((folder / "step_4" / MANIFEST).read_text())  # the async save's checksums made it in
    python(["train.py", *argv])  # the requeued job: resumes step 4, removes the partial save
    assert complete_steps(folder) == [4, 8, 12] and partial_dirs(folder) == []
    assert logged_losses(tmp_path / "async") == logged_losses(finished_run)  # async saves restore exactly


@pytest.mark.multiprocess
def test_a_kill_right_after_the_last_checkpoint_loses_no_logged_step(finished_run, tmp_path):
    """SIGKILL the moment step_12 (the last step's checkpoint) is complete, before anything else of the step:
    its metrics row is already on disk; the same command then finishes the run (nothing left to train) with
    every step logged once, bitwise the uninterrupted run's, and the final loss in finished.json."""
    argv, folder = train_args(tmp_path, "run"), tmp_path / "run" / "checkpoints"
    killed = python(["tests/train_main_worker.py", json.dumps([{"argv": argv,
                                                                "kill_after_save_of": str(folder / f"step_{STEPS}")}])],
                    check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert complete_steps(folder) == [4, 8, STEPS] and not (tmp_path / "run" / "finished.json").exists()
    assert logged_losses(tmp_path / "run") == logged_losses(finished_run)  # steps 1 .. 12, each once
    python(["train.py", *argv])  # resumes step 12 of 12
    assert logged_losses(tmp_path / "run") == logged_losses(finished_run)
    finished = json.loads((tmp_path / "run" / "finished.json").read_text())
    assert finished["final"] == {"loss/train": logged_losses(finished_run)[-1][1]}
    killed_start, last_start = finished["provenance"]["starts"]  # the killed start never ended
    assert (killed_start["resumed_from"], killed_start["ended"]) == (0, None)
    assert last_start["resumed_from"] == STEPS and last_start["started"] <= last_start["ended"]
    assert finished["provenance"] == json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert (tmp_path / "run" / f"config.resume_{STEPS}.toml").read_text().startswith(header_comment(last_start))


def test_every_run_directory_records_the_code_software_and_machine_of_its_start(finished_run):
    """provenance.json of a real run: this checkout's commit and dirty state, torch, the device, 1 rank, this
    host, start <= end; finished.json carries it; config.toml begins with the same facts as comments."""
    (start,) = json.loads((finished_run / "provenance.json").read_text())["starts"]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                            text=True)
    expected = (head.stdout.strip(), bool(status.stdout.strip())) if head.returncode == 0 else ("unknown", None)
    assert (start["commit"], start["dirty"]) == expected
    assert {key: start[key] for key in ("torch", "cuda", "device", "world_size", "hostname", "resumed_from")} == {
        "torch": torch.__version__, "cuda": torch.version.cuda, "device": "cpu", "world_size": 1,
        "hostname": socket.gethostname(), "resumed_from": 0}
    started, ended = (datetime.datetime.fromisoformat(start[key]) for key in ("started", "ended"))
    assert started <= ended <= datetime.datetime.now(datetime.UTC)
    assert json.loads((finished_run / "finished.json").read_text())["provenance"] == {"starts": [start]}
    config = (finished_run / "config.toml").read_text()
    assert config.startswith(header_comment(start)) and f"initlab {start['commit']}" in config.splitlines()[0]
    assert load_config(["--config", str(finished_run / "config.toml")])[0].training.steps == STEPS


# ---------------------------------------------------------------------------- failing saves
@pytest.mark.multiprocess
@pytest.mark.multiprocess
def test_a_save_beyond_the_file_size_quota_is_one_line_and_leaves_no_checkpoint(finished_run, tmp_path):
    """(``finished_run`` first builds the token cache, which the quota would stop.) RLIMIT_FSIZE = a real per-process file quota: DCP's write fails (EFBIG) inside its CheckpointException."""
    limit = 256 * 1024  # metrics and config fit; the ~2 MB checkpoint file does not

    def quota():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "train.py", *train_args(tmp_path, "full")], cwd=REPO, env=env,
                          capture_output=True, text=True, preexec_fn=quota, timeout=300)
    folder = tmp_path / "full" / "checkpoints"
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    tmp = folder / ".tmp_step_4"
    assert proc.stderr.strip() == (f"error: cannot write checkpoint {tmp}: no space left on {tmp}: a file reached this "
                                   "process's file-size limit of 262,144 bytes (ulimit -f); free space there or choose "
                                   "another --job.output_dir; the newest complete checkpoint is none (no complete "
                                   "checkpoint) (unchanged)")
    assert complete_steps(folder) == [] and partial_dirs(folder) == [folder / ".tmp_step_4"]


# ------------------------------------------------------------------------------ non-finite
@pytest.mark.multiprocess
@pytest.mark.parametrize("where, culprit", [
    ("weight", "non-finite at step 1; first non-finite: layers.01 attn.q weight (layers.1.attn.q.weight)"),
    ("grad", "non-finite at step 3; first non-finite: layers.00 mlp.out grad (layers.0.mlp.out.weight)"),
])
@pytest.mark.parametrize("implementation", ["foreach", "fused"])
def test_a_nan_is_caught_before_the_update_and_names_its_layer(tmp_path, where, culprit, implementation):
    """foreach: the host checks the norm before the update; fused: the kernel skips the update on device
    (found_inf) and the host checks after queueing it. Either way the culprit is the planted NaN."""
    argv = train_args(tmp_path, where, "--optimizer.implementation", implementation)
    proc = python(["tests/nonfinite_worker.py", where, json.dumps(argv)], check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: loss or gradient norm became " + culprit), proc.stderr[-2000:]
