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
from concurrent.futures import ThreadPoolExecutor
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


# ------------------------------------------------------------------- stopped runs and their requeued jobs
def stop_with_signal(root: Path, name: str, sig: int) -> dict:
    """A run frozen once step_4 exists, sent ``sig`` and let continue: what the stop left."""
    job = start_train(root, name)
    _, stderr = signal_after_checkpoint(job, root / name / "checkpoints", sig)
    return {"rc": job.returncode, "stderr": stderr, "steps": complete_steps(root / name / "checkpoints")}


def kill_before_first_checkpoint(root: Path) -> dict:
    """kill -9 once 3 metrics rows exist, with the only save at the last step: the metrics it left."""
    job = start_train(root, "early", "--checkpoint.interval", "100")
    metrics = root / "early" / "metrics.jsonl"
    wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3, job)
    job.kill()
    job.communicate()
    return {"metrics": metrics.read_text()}


def crash_in_async_save(root: Path) -> dict:
    """async_mode: the process dies in the background thread while step 8 is written (data files, no .metadata)."""
    doomed = root / "async" / "checkpoints" / ".tmp_step_8"
    argv = train_args(root, "async", "--checkpoint.async_mode", "async")
    proc = python(["tests/train_main_worker.py", json.dumps([{"argv": argv, "crash_in_save_of": str(doomed)}])],
                  check=False)
    folder = root / "async" / "checkpoints"
    manifest = folder / "step_4" / MANIFEST
    return {"rc": proc.returncode, "stderr": proc.stderr, "steps": complete_steps(folder),
            "partial": partial_dirs(folder), "doomed": doomed,
            "manifest": json.loads(manifest.read_text()) if manifest.is_file() else None}


def kill_after_last_checkpoint(root: Path) -> dict:
    """SIGKILL the moment step_12 (the last step's checkpoint) is complete, before anything else of the step."""
    folder = root / "last" / "checkpoints"
    proc = python(["tests/train_main_worker.py", json.dumps([{"argv": train_args(root, "last"),
                                                              "kill_after_save_of": str(folder / f"step_{STEPS}")}])],
                  check=False)
    return {"rc": proc.returncode, "stderr": proc.stderr, "steps": complete_steps(folder),
            "finished": (root / "last" / "finished.json").exists(), "losses": logged_losses(root / "last")}


NAN_CASES = [("weight", "non-finite at step 1; first non-finite: layers.01 attn.q weight (layers.1.attn.q.weight)"),
             ("grad", "non-finite at step 3; first non-finite: layers.00 mlp.out grad (layers.0.mlp.out.weight)")]
IMPLEMENTATIONS = ["foreach", "fused"]


def runs_with_a_nan(root: Path) -> dict[tuple[str, str], dict]:
    """A NaN planted in a weight or a gradient, with either optimizer implementation, all in one interpreter."""
    keys = [(where, implementation) for where, _ in NAN_CASES for implementation in IMPLEMENTATIONS]
    cases = [(where, train_args(root, f"nan_{where}_{implementation}", "--optimizer.implementation", implementation))
             for where, implementation in keys]
    proc = python(["tests/nonfinite_worker.py", json.dumps(cases)], check=False)
    results = [json.loads(line.removeprefix("RESULT ")) for line in proc.stdout.splitlines()
               if line.startswith("RESULT ")]
    assert proc.returncode == 0 and len(results) == len(cases), proc.stderr[-3000:]
    return dict(zip(keys, results))


def run_cases(root: Path, argv: dict[str, list[str]]) -> dict[str, dict]:
    """train.py runs in one interpreter (tests/train_cases_worker.py): {name: {rc, stdout, stderr}}."""
    (root / "cases.json").write_text(json.dumps(list(argv.values())))
    python(["tests/train_cases_worker.py", str(root / "cases.json"), str(root / "results.json")])
    return dict(zip(argv, json.loads((root / "results.json").read_text())))


def resume_argv(run_dir: Path, *extra: str) -> list[str]:
    return ["--config", str(run_dir / "config.toml"), "--job.output_dir", str(run_dir.parent),
            "--job.run_name", run_dir.name, *extra]


CHECKPOINT_DATA_FILE = "__0_0.distcp"


def copies_of_the_finished_run(finished_run: Path, root: Path) -> dict:
    """The finished run copied to be relaunched as it is, and (as if still running) to be resumed: longer, or
    with one bit of its last checkpoint flipped. Returns the relaunched copy's snapshot."""
    shutil.copytree(finished_run, root / "relaunched", ignore=shutil.ignore_patterns(".lock"))
    for name in ("longer", "bitflip", "bitflip_unchecked"):
        shutil.copytree(finished_run, root / name, ignore=shutil.ignore_patterns(".lock", "finished.json"))
    for name in ("bitflip", "bitflip_unchecked"):
        target = root / name / "checkpoints" / "step_12" / CHECKPOINT_DATA_FILE
        raw = bytearray(target.read_bytes())
        raw[len(raw) // 2] ^= 0x01  # one bit, same size: only the checksum can tell
        target.write_bytes(bytes(raw))
    return {"relaunched": snapshot(root / "relaunched")}


@pytest.fixture(scope="module")
def requeued(finished_run, tmp_path_factory) -> dict:
    """The stopped runs of this module, then their requeued jobs.

    First, side by side (one thread each, on the machine's cores): runs stopped by SIGTERM and by SIGINT after
    their step-4 checkpoint, killed before their first checkpoint, killed inside an async save, killed right
    after their last checkpoint, and the NaN runs. Then every follow-up launch, the same command again (or a
    resume of a copy of the finished run), one after another in one interpreter (tests/train_cases_worker.py).
    Returns {"root", "stops": name -> what the stop left, "before": snapshots, "results": name -> result}.
    """
    root = tmp_path_factory.mktemp("requeued")
    jobs = {"sigterm": lambda: stop_with_signal(root, "sigterm", signal.SIGTERM),
            "sigint": lambda: stop_with_signal(root, "sigint", signal.SIGINT),
            "early": lambda: kill_before_first_checkpoint(root), "async": lambda: crash_in_async_save(root),
            "last": lambda: kill_after_last_checkpoint(root), "nan": lambda: runs_with_a_nan(root)}
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        stops = {name: future.result() for name, future in futures.items()}
    before = copies_of_the_finished_run(finished_run, root)
    early = train_args(root, "early", "--checkpoint.interval", "100")
    results = run_cases(root, {
        "sigterm": train_args(root, "sigterm"),  # the requeued job: same command, resume auto
        "early": early,  # the killed run's same command: starts over
        "early_again": early,  # resubmitted once more: the run is complete, nothing to do
        "async": train_args(root, "async", "--checkpoint.async_mode", "async"),  # resumes step 4
        "last": train_args(root, "last"),  # resumes step 12 of 12
        "same": train_args(root, "relaunched", "--metrics.log_freq", "3"),  # not an identity setting
        "seed": train_args(root, "relaunched", "--job.seed", "1"),
        "scheme": train_args(root, "relaunched", "--init.scheme", "mitchell"),
        "width": train_args(root, "relaunched", "--model.dim", "128"),
        "longer": resume_argv(root / "longer", "--training.steps", "14", "--optimizer.lr", "0.002"),
        "bitflip": resume_argv(root / "bitflip", "--training.steps", "14"),
        "bitflip_unchecked": resume_argv(root / "bitflip_unchecked", "--training.steps", "14",
                                         "--checkpoint.verify_checksums", "false"),
    })
    return {"root": root, "stops": stops, "before": before, "results": results}


@pytest.mark.multiprocess
def test_sigterm_saves_exits_75_and_the_same_command_resumes_bitwise(finished_run, requeued):
    stop, run_dir = requeued["stops"]["sigterm"], requeued["root"] / "sigterm"
    stopped = stop["steps"][-1]
    assert stop["rc"] == PREEMPTED_EXIT_CODE and 4 < stopped < STEPS
    assert stop["stderr"].strip().splitlines()[-1] == (f"initlab: stopped at step {stopped}/{STEPS} on SIGTERM; "
                                                       f"saved checkpoint step_{stopped}; the same command resumes it")
    again = requeued["results"]["sigterm"]
    assert again["rc"] == 0, again["stderr"][-2000:]
    assert f"resuming {run_dir} from step {stopped}/{STEPS}" in again["stdout"]
    assert logged_losses(run_dir) == logged_losses(finished_run)


@pytest.mark.multiprocess
def test_ctrl_c_is_one_line_exit_130_and_a_checkpoint(requeued):
    stop = requeued["stops"]["sigint"]
    stopped = stop["steps"][-1]
    assert stop["rc"] == INTERRUPTED_EXIT_CODE and "Traceback" not in stop["stderr"]
    assert [line for line in stop["stderr"].splitlines() if line.startswith("initlab:")] == [
        f"initlab: stopped at step {stopped}/{STEPS} on SIGINT; saved checkpoint step_{stopped}; the same command "
        "resumes it"]


@pytest.mark.multiprocess
def test_a_run_killed_before_its_first_checkpoint_is_restarted_by_the_same_command(requeued):
    run_dir, results = requeued["root"] / "early", requeued["results"]
    rerun, third = results["early"], results["early_again"]
    assert rerun["rc"] == 0 and third["rc"] == 0, rerun["stderr"][-2000:] + third["stderr"][-2000:]
    abandoned = list((run_dir / "abandoned").iterdir())
    assert len(abandoned) == 1 and (abandoned[0] / "metrics.jsonl").read_text() == requeued["stops"]["early"]["metrics"]
    assert "holds no complete checkpoint (an earlier attempt stopped before its first save)" in rerun["stdout"]
    assert f"already trained all {STEPS} steps; nothing to do" in third["stdout"]
    assert [step for step, _ in logged_losses(run_dir)] == list(range(1, STEPS + 1))


@pytest.mark.multiprocess
def test_a_finished_run_relaunched_as_another_experiment_is_refused_with_the_diff(requeued):
    """The finished run, relaunched under its name: the same identity does nothing (exit 0); another seed, init
    scheme or model width is refused (exit 2, the resume's one-line diff); nothing in the directory changes."""
    results, run_dir = requeued["results"], requeued["root"] / "relaunched"
    assert results["same"]["rc"] == 0 and results["same"]["stderr"] == ""
    assert f"run {run_dir} already trained all {STEPS} steps; nothing to do" in results["same"]["stdout"]
    for case, diff in [("seed", "job.seed: 0 -> 1"), ("scheme", "init.scheme: 'normal' -> 'mitchell'"),
                       ("width", "model.dim: 64 -> 128")]:
        assert results[case]["rc"] == 2, (case, results[case]["stdout"][-1000:])
        assert results[case]["stderr"].strip() == (
            f"error: cannot resume {run_dir} with a different experiment ({diff}); restore those "
            "settings or start a new run with another --job.run_name"), case
        assert "nothing to do" not in results[case]["stdout"]
    assert snapshot(run_dir) == requeued["before"]["relaunched"]


@pytest.mark.multiprocess
def test_resume_applies_a_new_lr_and_length_and_refuses_corrupt_bytes(finished_run, requeued):
    results, root = requeued["results"], requeued["root"]
    longer = results["longer"]
    assert longer["rc"] == 0, longer["stderr"][-2000:]
    assert "resume changes training.steps: 12 -> 14 (applies from step 13)" in longer["stdout"]
    assert "resume changes optimizer.lr: 0.001 -> 0.002 (applies from step 13)" in longer["stdout"]
    cfg, _ = load_config(["--config", str(root / "longer" / "config.resume_12.toml")])
    assert cfg.optimizer.lr == 0.002 and cfg.training.steps == 14
    records = [json.loads(line) for line in (root / "longer" / "metrics.jsonl").read_text().splitlines()]
    lr13 = next(r["lr"] for r in records if r["step"] == 13)
    assert lr13 == pytest.approx(0.002 * lr_factor(13, cfg.lr_scheduler, 14), rel=1e-12)
    folder = root / "bitflip" / "checkpoints"
    assert results["bitflip"]["rc"] == 2 and results["bitflip"]["stderr"].strip() == (
        f"error: checkpoint {folder / 'step_12'} is corrupt: {CHECKPOINT_DATA_FILE} (CRC-32 mismatch: its bytes "
        f"changed after the save); delete {folder / 'step_12'} to fall back to {folder / 'step_8'} (or pass "
        "--checkpoint.verify_checksums false to load it anyway)")
    assert results["bitflip_unchecked"]["rc"] == 0, results["bitflip_unchecked"]["stderr"][-2000:]
    manifest = json.loads((finished_run / "checkpoints" / "step_12" / MANIFEST).read_text())
    assert set(manifest) == {CHECKPOINT_DATA_FILE, ".metadata", IDENTITY}


@pytest.mark.multiprocess
def test_an_async_save_killed_mid_write_is_never_loaded_and_the_run_resumes_bitwise(finished_run, requeued):
    """async_mode: the process dies in the background thread while step 8 is written (data files, no .metadata)."""
    stop, run_dir = requeued["stops"]["async"], requeued["root"] / "async"
    assert stop["rc"] == 9, stop["stderr"][-2000:]
    assert stop["steps"] == [4] and stop["partial"] == [stop["doomed"]]
    assert stop["manifest"]  # the async save's checksums made it in
    resumed = requeued["results"]["async"]  # the requeued job: resumes step 4, removes the partial save
    assert resumed["rc"] == 0, resumed["stderr"][-2000:]
    folder = run_dir / "checkpoints"
    assert complete_steps(folder) == [4, 8, 12] and partial_dirs(folder) == []
    assert logged_losses(run_dir) == logged_losses(finished_run)  # async saves restore exactly


@pytest.mark.multiprocess
def test_a_kill_right_after_the_last_checkpoint_loses_no_logged_step(finished_run, requeued):
    """SIGKILL the moment step_12 (the last step's checkpoint) is complete, before anything else of the step:
    its metrics row is already on disk; the same command then finishes the run (nothing left to train) with
    every step logged once, bitwise the uninterrupted run's, and the final loss in finished.json."""
    stop, run_dir = requeued["stops"]["last"], requeued["root"] / "last"
    assert stop["rc"] == -signal.SIGKILL, stop["stderr"][-2000:]
    assert stop["steps"] == [4, 8, STEPS] and not stop["finished"]
    assert stop["losses"] == logged_losses(finished_run)  # steps 1 .. 12, each once
    resumed = requeued["results"]["last"]  # resumes step 12 of 12
    assert resumed["rc"] == 0, resumed["stderr"][-2000:]
    assert logged_losses(run_dir) == logged_losses(finished_run)
    finished = json.loads((run_dir / "finished.json").read_text())
    assert finished["final"] == {"loss/train": logged_losses(finished_run)[-1][1]}
    killed_start, last_start = finished["provenance"]["starts"]  # the killed start never ended
    assert (killed_start["resumed_from"], killed_start["ended"]) == (0, None)
    assert last_start["resumed_from"] == STEPS and last_start["started"] <= last_start["ended"]
    assert finished["provenance"] == json.loads((run_dir / "provenance.json").read_text())
    assert (run_dir / f"config.resume_{STEPS}.toml").read_text().startswith(header_comment(last_start))


@pytest.mark.multiprocess
@pytest.mark.parametrize("where, culprit", NAN_CASES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_nan_is_caught_before_the_update_and_names_its_layer(requeued, where, culprit, implementation):
    """foreach: the host checks the norm before the update; fused: the kernel skips the update on device
    (found_inf) and the host checks after queueing it. Either way the culprit is the planted NaN."""
    result = requeued["stops"]["nan"][(where, implementation)]
    assert result["rc"] == 1 and "Traceback" not in result["stderr"]
    assert result["stderr"].strip().startswith("error: loss or gradient norm became " + culprit), \
        result["stderr"][-2000:]


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


