"""scripts/sweep.py + components/sweep.py: real debug-model runs on CPU (grid, skip, kill + resume, failures,
divergence) and the planning rules (names, arms, one-line errors) without launching anything."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path

import pytest

from components import sweep
from components.checkpoint import complete_steps
from scripts import sweep as sweep_script
from tests.launch import REPO

TINY = ["--training.steps", "30", "--metrics.log_freq", "10", "--metrics.val_freq", "30", "--model.n_layers", "1",
        "--training.global_batch_size", "2", "--training.seq_len", "32", "--metrics.log_weight_std", "false"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def write_sweep(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "family.toml"
    path.write_text(f'[sweep]\nbase = "{REPO / "train_configs" / "debug.toml"}"\noutput_dir = "{tmp_path / "out"}"\n'
                    + body)
    return path


def run_sweep(argv: list[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/sweep.py", *argv], cwd=REPO, env=env or ENV, capture_output=True,
                          text=True, timeout=900, **kwargs)


GRID = '[grid]\noptimizer.lr = [1e-3, 2e-3]\njob.seed = [0, 1]\n'
NAMES = ["lr0.001_seed0", "lr0.002_seed0", "lr0.001_seed1", "lr0.002_seed1"]  # run order: seed outermost


@pytest.mark.multiprocess
def test_grid_runs_a_killed_point_resumes_and_a_rerun_skips_all(tmp_path):
    family, out = write_sweep(tmp_path, GRID), tmp_path / "out"
    argv = [str(family), *TINY, "--checkpoint.interval", "10"]
    first = subprocess.Popen([sys.executable, "scripts/sweep.py", *argv], cwd=REPO, env=ENV, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not complete_steps(out / NAMES[0] / "checkpoints") and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the sweep and its train.py, mid-run (kill -9: nothing is saved)
    first.wait()
    assert not (out / NAMES[0] / "finished.json").exists() and not (out / NAMES[1]).exists()

    second = run_sweep([*argv, "--parallel", "2"])
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"[1/4] {NAMES[0]}: resuming" in second.stdout
    assert f"sweep {out}: 4 points: 4 done, 0 skipped, 0 diverged, 0 failed" in second.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted([".sweep", *NAMES])
    assert list((out / NAMES[0]).glob("config.resume_*.toml"))  # continued from its checkpoint, not restarted
    for name in NAMES:
        cfg = tomllib.loads((out / name / "config.toml").read_text())
        assert (cfg["optimizer"]["lr"], cfg["job"]["seed"]) == ({"0.001": 1e-3, "0.002": 2e-3}[name[2:7]], int(name[-1]))
        assert json.loads((out / name / "finished.json").read_text())["steps"] == 30
        assert json.loads((out / name / "init_stds.json").read_text())["scheme"] == "scaled_output"

    third = run_sweep(argv)  # nothing left to do: nothing launched
    assert third.returncode == 0 and third.stdout.count("finished, skipped") == 4
    assert (out / ".sweep" / "logs" / f"{NAMES[1]}.log").read_text().count("$ ") == 1

    changed = run_sweep([*argv, "--optimizer.weight_decay", "0.05"])  # finished runs of another config: refused
    assert changed.returncode == 1 and "4 failed" in changed.stdout
    assert ("finished with optimizer.weight_decay = 0.1, the sweep asks 0.05; delete it or choose another "
            "--output-dir") in changed.stdout


@pytest.mark.multiprocess
def test_a_failing_point_is_reported_the_others_run_and_a_divergence_is_a_result(tmp_path):
    family = write_sweep(tmp_path, "[arms.good]\ninit.scheme = 'normal'\n[arms.bad]\nmodel.vocab_size = 100\n"
                                   "[arms.huge_lr]\noptimizer.lr = 1e6\nlr_scheduler.warmup_steps = 0\n")
    out = tmp_path / "out"
    proc = run_sweep([str(family), *TINY, "--training.steps", "4", "--parallel", "3",
                      "--init.std_overrides", "tok_embedding=0.03"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"sweep {out}: 3 points: 1 done, 0 skipped, 1 diverged, 1 failed" in proc.stdout
    assert ("  failed bad: exit 2: error: model.vocab_size = 100 is smaller than the tokenizer's 4097 tokens; "
            f"omit model.vocab_size or raise it (log {out / '.sweep/logs/bad.log'})") in proc.stdout
    assert json.loads((out / "good" / "finished.json").read_text())["steps"] == 4
    stds = json.loads((out / "good" / "init_stds.json").read_text())
    assert stds["std_overrides"] == {"tok_embedding": 0.03} and stds["roles"]["tok_embedding"][0]["std"] == 0.03
    diverged = json.loads((out / "huge_lr" / "diverged.json").read_text())
    assert diverged["step"] == 2 and diverged["lr"] == 1e6 and "non-finite at step 2" in diverged["error"]
    summary = {row["name"]: row["status"] for row in json.loads((out / ".sweep" / "summary.json").read_text())}
    assert summary == {"good": "done", "bad": "failed", "huge_lr": "diverged"}


def spec_of(tmp_path: Path, body: str, *cli: str) -> sweep.SweepSpec:
    args, overrides = sweep_script.parse_args([str(write_sweep(tmp_path, body)), *cli])
    return sweep_script.build_spec(args, overrides)


def test_names_order_arms_and_commands(tmp_path):
    body = GRID + "[arms.da_emb002]\ninit = {scheme = 'depth_aware', std_overrides = {tok_embedding = 0.02}}\n" \
                  "[arms.mitchell]\n'init.scheme' = 'mitchell'\n"
    points = sweep.plan(spec_of(tmp_path, body, "--grid", "job.seed=3,1", "--training.steps", "7"))
    assert [p.name for p in points] == [f"{arm}_lr{lr}_seed{s}" for s in (3, 1) for lr in ("0.001", "0.002")
                                        for arm in ("da_emb002", "mitchell")]
    first = points[0]
    assert first.run_dir == tmp_path / "out" / "da_emb002_lr0.001_seed3" and first.steps == 7
    assert first.config.init.std_overrides == {"tok_embedding": 0.02} and first.config.job.seed == 3
    assert first.train_args[2:] == ["--init.scheme", "depth_aware", "--init.std_overrides", "tok_embedding=0.02",
                                    "--optimizer.lr", "0.001", "--job.seed", "3", "--training.steps", "7",
                                    "--job.run_name", "da_emb002_lr0.001_seed3", "--job.output_dir",
                                    str(tmp_path / "out"), "--checkpoint.resume", "auto"]
    only = sweep.plan(spec_of(tmp_path, body, "--arms", "mitchell", "--grid", "optimizer.lr=3e-4"))
    assert [p.name for p in only] == ["mitchell_lr0.0003_seed0", "mitchell_lr0.0003_seed1"]
    assert sweep.coordinate_label("init.scheme", "depth_aware") == "scheme-depth_aware"
    assert sweep.coordinate_label("init.std_overrides", {"lm_head": 0.02}) == "std_overrides-lm_head-0.02"


def test_cache_environment_points_under_the_sweep(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", "/elsewhere")
    env = sweep.cache_env(tmp_path)
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / ".sweep" / "cache" / "inductor")
    assert env["TRITON_CACHE_DIR"] == "/elsewhere" and env["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "1"


def test_dry_run_lists_points_and_launches_nothing(tmp_path, capsys):
    family = write_sweep(tmp_path, GRID)
    assert sweep_script.main([str(family), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[0].startswith(f"[1/4] {NAMES[0]} (absent): {sys.executable} {REPO / 'train.py'}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("body, cli, phrase", [
    (GRID, ["--grid", "optimizer.lrr=1"], "unknown key optimizer.lrr (command line); did you mean 'lr'?"),
    (GRID, ["--grid", "lr=1"], "--grid 'lr=1': write section.key=value1,value2"),
    (GRID, ["--arms", "x"], "--arms: no arm 'x'; arms: none"),
    (GRID, ["--job.run_name", "x"], "--job.run_name is set by the sweep per point"),
    (GRID, ["--parallel", "0"], "--parallel 0: must be >= 1"),
    (GRID, ["--prestart", "-1"], "--prestart -1: must be >= 0 (points started beyond --parallel)"),
    (GRID, ["--prestart", "1", "--launcher", "torchrun --nproc_per_node=2"],
     "--prestart 1 with --launcher: pre-started runs must be single processes"),
    ("[grid]\noptimizer.lr = 1e-3\n", [], "optimizer.lr must be a non-empty list of values"),
    ("[grid]\njob.run_name = ['a']\n", [], "job.run_name is set by the sweep per point"),
    ("[gird]\n", [], "unknown table [gird]"),
    ("[arms.a]\noptimizer.lr = 1e-3\n[grid]\noptimizer.lr = [1e-3]\n", [], "arm 'a' sets optimizer.lr, which is also"),
    ("[arms.a]\ninit.std_overrides = {embedding = 0.02}\n", [], "init.std_overrides: unknown role 'embedding'"),
    ("[grid]\noptimizer.lr = ['1e-3', 0.001]\n", [], "two points share the run name 'lr0.001'"),
])
def test_bad_input_is_a_one_line_error_and_nothing_runs(tmp_path, capsys, body, cli, phrase):
    assert sweep_script.main([str(write_sweep(tmp_path, body)), *cli]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and phrase in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_config_files_are_arms_named_by_their_stem():
    configs = ["train_configs/debug_ablation/depth_aware.toml", "train_configs/debug_ablation/mitchell.toml"]
    args, overrides = sweep_script.parse_args(["--config", configs[0], "--compile.enable", "true", "--config", configs[1],
                                               "--grid", "job.seed=0-2", "--training.steps=9"])
    points = sweep.plan(sweep_script.build_spec(args, overrides))
    assert points[0].config.compile.enable is True and points[0].steps == 9  # train.py's options, wherever they stand
    assert [p.name for p in points] == [f"{arm}_seed{k}" for k in (0, 1, 2) for arm in ("depth_aware", "mitchell")]
    assert points[1].run_dir == Path("outputs/debug_ablation/mitchell_seed0") and points[1].config.init.scheme == "mitchell"
    assert points[1].train_args[:2] == ["--config", str(REPO / configs[1])]


def test_one_config_flag_takes_a_shell_glob():
    """``--config train_configs/debug_ablation/*.toml``: the shell passes every file after one flag."""
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "train_configs/debug_ablation").glob("*.toml"))
    args, overrides = sweep_script.parse_args(["--config", *files, "--grid", "job.seed=0,1", "--training.steps", "3"])
    points = sweep.plan(sweep_script.build_spec(args, overrides))
    assert len(files) == 5 and len(points) == 10 and overrides == ["--training.steps", "3"]
    assert sorted({p.config.init.scheme for p in points}) == ["depth_aware", "mitchell", "normal", "scaled_output"]
    assert sorted(p.name for p in points) == sorted(f"{Path(f).stem}_seed{k}" for f in files for k in (0, 1))


@pytest.mark.multiprocess
def test_deadline_interrupts_the_running_point_and_starts_no_other(tmp_path, capsys):
    family, out = write_sweep(tmp_path, GRID), tmp_path / "out"
    assert sweep_script.main([str(family), "--deadline", "1", "--archive", str(tmp_path / "a.tar.gz"), *TINY]) == 0
    stdout = capsys.readouterr().out
    assert "deadline of 1 s reached: stopping 1 running point(s), 3 not started" in stdout
    assert f"sweep {out}: 4 points: 0 done, 0 skipped, 0 diverged, 0 failed, 1 interrupted, 3 not run" in stdout
    assert [row["status"] for row in json.loads((out / ".sweep" / "summary.json").read_text())] == ["interrupted"]


def fake_run(run_dir: Path, files: dict[str, str]) -> None:
    run_dir.mkdir(parents=True)
    for name, text in files.items():
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text(text)


def test_archive_holds_the_small_files_and_previous_results_are_copied_in(tmp_path):
    out = tmp_path / "out"
    fake_run(out / "a_seed0", {"config.toml": "[job]\n", "metrics.jsonl": "{}\n", "finished.json": '{"steps": 2}',
                               "init_stds.json": "{}", "config.resume_5.toml": "", "events.out.tfevents.1": "x",
                               "checkpoints/step_2/x.distcp": "big"})
    fake_run(out / "b_seed0", {"config.toml": "", "metrics.jsonl": "", "diverged.json": '{"step": 2}'})
    fake_run(out / "c_seed0", {"config.toml": "", "metrics.jsonl": ""})  # unfinished
    fake_run(out / ".sweep", {"summary.json": "[]", "logs/a_seed0.log": "$ train", "logs/c_seed0.log": "$ train c"})
    archive = tmp_path / "small.tar.gz"
    assert sweep.write_archive(out, archive) == 13
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert names == {"a_seed0/config.toml", "a_seed0/config.resume_5.toml", "a_seed0/metrics.jsonl",
                     "a_seed0/finished.json", "a_seed0/init_stds.json", "b_seed0/config.toml", "b_seed0/metrics.jsonl",
                     "b_seed0/diverged.json", "c_seed0/config.toml", "c_seed0/metrics.jsonl",
                     ".sweep/logs/a_seed0.log", ".sweep/logs/c_seed0.log", ".sweep/summary.json"}
    fresh = tmp_path / "fresh"
    fake_run(fresh / "a_seed0", {"config.toml": "mine"})  # already there: left as it is
    fake_run(fresh / ".sweep", {"logs/c_seed0.log": "$ mine"})  # the same
    assert sweep.import_previous(archive, fresh) == ["b_seed0"]  # c is unfinished: not copied
    assert (fresh / "a_seed0" / "config.toml").read_text() == "mine" and (fresh / "b_seed0" / "diverged.json").is_file()
    assert (fresh / ".sweep" / "logs" / "a_seed0.log").read_text() == "$ train"  # the earlier launches' output
    assert (fresh / ".sweep" / "logs" / "c_seed0.log").read_text() == "$ mine"
    assert not (fresh / ".sweep" / "summary.json").exists()  # the summary is each sweep's own
    assert sweep.import_previous(out, tmp_path / "other") == ["a_seed0", "b_seed0"]  # a folder works too
    with pytest.raises(sweep.SweepError, match="--previous .*nothing does not exist"):
        sweep.import_previous(tmp_path / "nothing", fresh)


@pytest.mark.multiprocess
def test_lr_sensitivity_entry_point_plans_the_study(tmp_path):
    """The GPU entry point's plan for one seed (a dry run): 5 arms x 6 lrs, arms innermost, the control's override."""
    env = {**ENV, "LR_RUNS": str(tmp_path / "runs"), "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", "scripts/lr_sensitivity_gpu.sh", "1", "--dry-run", "--data.dataset", "embedded"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    points = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    names = [line.split()[1] for line in points]
    arms = ["depth_aware", "depth_aware_emb002", "scaled_output", "mitchell", "normal"]
    assert names == [f"{arm}_lr{lr}_seed1" for lr in ("0.0003", "0.001", "0.003", "0.01", "0.03", "0.1") for arm in arms]
    assert "--init.std_overrides tok_embedding=0.02" in points[1] and "std_overrides" not in points[0]
    assert f"--job.output_dir {tmp_path / 'runs'}" in points[0] and not (tmp_path / "runs").exists()
    assert "no GPU (CPU run)" in proc.stdout and ", 3 at once, runs in" in proc.stdout  # no GPU: the H100's 3


def test_an_unreadable_finished_run_is_a_mismatch_not_a_crash(tmp_path):
    point = sweep.plan(spec_of(tmp_path, GRID))[0]
    fake_run(point.run_dir, {"finished.json": '{"steps": 100}', "config.toml": "[metrics]\nval_tokenz = 3\n"})
    state, note = sweep.point_state(point)
    assert state == "mismatch" and note.startswith(f"cannot read {point.run_dir}: ") and "val_tokenz" in note
    (point.run_dir / "finished.json").write_text("{")  # damaged
    assert sweep.point_state(point)[0] == "mismatch"



@pytest.mark.slow  # plans 90 points through the config system (a few seconds)
def test_every_shipped_sweep_file_plans():
    files = [p for p in (REPO / "train_configs").rglob("*.toml") if "sweep" in tomllib.loads(p.read_text())]
    assert files
    for path in files:
        points = sweep.plan(sweep.load_sweep_file(path))
        assert len({p.name for p in points}) == len(points) > 0, path
    study = sweep.plan(sweep.load_sweep_file(REPO / "train_configs" / "lr_sensitivity" / "sweep.toml"))
    assert len(study) == 90 and {p.config.model.flavor for p in study} == {"llama_150m"}


@pytest.mark.multiprocess
def test_a_point_that_ignores_the_deadline_is_killed_after_the_grace(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "KILL_GRACE_S", 0.5)
    point = sweep.plan(spec_of(tmp_path, GRID))[0]
    stubborn = ["sh", "-c", "trap '' TERM; exec sleep 60"]  # ignores SIGTERM, as a run compiling its first step would
    start = time.monotonic()
    outcomes = sweep.execute([point], stubborn, tmp_path / "out", deadline_s=0.3, say=lambda line: None)
    assert time.monotonic() - start < 20
    assert [(o.status, o.note) for o in outcomes] == [("interrupted", "exit -9: (no output)")]


@pytest.mark.multiprocess
def test_start_by_starts_no_point_after_its_time_and_lets_the_running_one_end(tmp_path):
    points = sweep.plan(spec_of(tmp_path, GRID))[:3]
    slow = ["sh", "-c", "sleep 0.6"]  # each point takes 0.6 s; the start-by time passes during the first
    lines: list[str] = []
    outcomes = sweep.execute(points, slow, tmp_path / "out", start_by_s=0.3, deadline_s=30, say=lines.append)
    assert [o.point.name for o in outcomes] == [points[0].name] and outcomes[0].status == "failed"  # ran, not killed
    assert outcomes[0].seconds >= 0.55 and "start-by time of 0.3 s reached: starting none of the 2 point(s) left, " \
        "1 still running" in lines
    assert sweep_script.main([str(write_sweep(tmp_path, GRID)), "--deadline", "5", "--start-by", "9"]) == 2


def test_disk_guard_measures_finished_runs_and_refuses_what_the_disk_may_not_hold(tmp_path):
    run = tmp_path / "out" / "a"
    (run / "weights").mkdir(parents=True)
    (run / "weights" / "w.bin").write_bytes(b"\0" * 3000)
    (run / "metrics.jsonl").write_bytes(b"{}\n" * 100)
    guard = sweep.DiskGuard(tmp_path / "out", keep_free_bytes=0)
    assert guard.refusal(running=5) == ""  # nothing finished yet: nothing to judge by
    guard.observe(run)
    guard.observe(tmp_path / "out" / "never_made")
    assert guard.run_bytes == sweep.tree_bytes(run) == 3300 and guard.refusal(running=2) == ""
    free = shutil.disk_usage(tmp_path).free
    guard.keep_free_bytes = free  # one more 3.3 kB run would leave less than all that is free now
    reason = guard.refusal(running=0)
    assert reason.startswith(f"disk: {tmp_path / 'out'} has ") and "GiB free; a finished run here takes 0.00 GiB" in reason
    assert "--checkpoint.final_weights false" in reason and "--keep-free-gb" in reason


@pytest.mark.multiprocess
def test_a_sweep_starts_no_point_the_disk_may_not_hold_and_the_same_command_continues(tmp_path):
    family, out = write_sweep(tmp_path, '[grid]\noptimizer.lr = [1e-3, 2e-3]\n'), tmp_path / "out"
    argv = [str(family), *TINY, "--training.steps", "2", "--metrics.val_freq", "0"]
    # Ask to keep more free than the disk has once the first run's size is known: the second is not started.
    keep = f"{shutil.disk_usage(tmp_path).free / sweep.GIB + 1:.3f}"
    full = run_sweep([*argv, "--keep-free-gb", keep])
    assert full.returncode == 1, full.stdout + full.stderr
    assert f"[2/2] lr0.002: not started: disk: {out} has " in full.stdout
    assert f"sweep {out}: 2 points: 1 done, 0 skipped, 0 diverged, 1 failed" in full.stdout
    assert (out / "lr0.001" / "finished.json").is_file() and not (out / "lr0.002").exists()
    again = run_sweep([*argv, "--keep-free-gb", "0"])
    assert again.returncode == 0 and "[1/2] lr0.001: finished, skipped" in again.stdout, again.stdout + again.stderr
    assert (out / "lr0.002" / "finished.json").is_file()
    bad = run_sweep([*argv, "--keep-free-gb", "-1"])
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --keep-free-gb -1: must be >= 0 (GiB left free on the disk)"


def test_oom_retry_only_for_a_point_out_of_gpu_memory_beside_others():
    point = sweep.Point.__new__(sweep.Point)
    oom = sweep.Outcome(point, "failed", "exit 1: ChildFailedError: train.py FAILED", out_of_memory=True)
    assert [sweep.oom_retry_parallel(oom, others, 4) for others in (0, 1, 2, 3)] == [0, 1, 2, 3]
    assert sweep.oom_retry_parallel(oom, 5, 4) == 3  # always fewer than before: a sweep cannot retry forever
    assert sweep.oom_retry_parallel(oom, 2, 1) == 0
    other = sweep.Outcome(point, "failed", "exit 2: error: model.vocab_size = 100 is smaller than …")
    stopped = sweep.Outcome(point, "interrupted", oom.note, out_of_memory=True)
    assert sweep.oom_retry_parallel(other, 2, 3) == sweep.oom_retry_parallel(stopped, 2, 3) == 0


def test_the_out_of_memory_check_reads_the_latest_launch_only(tmp_path):
    log = tmp_path / "a.log"
    log.write_text("$ python train.py --job.seed 0\n[rank0]: torch.OutOfMemoryError: CUDA out of memory.\n"
                   "ChildFailedError: train.py FAILED\n")  # torchrun's summary comes after the child's error
    assert sweep.OOM_PATTERN.search(sweep.last_attempt(log))
    with log.open("a") as handle:  # the retry's own launch fails otherwise: not an out-of-memory failure
        handle.write("$ python train.py --job.seed 0\nerror: data.dataset: no such file\n")
    assert sweep.last_attempt(log) == "$ python train.py --job.seed 0\nerror: data.dataset: no such file\n"
    assert not sweep.OOM_PATTERN.search(sweep.last_attempt(log)) and sweep.last_attempt(tmp_path / "none") == ""


@pytest.mark.multiprocess
def test_a_point_out_of_gpu_memory_beside_others_is_retried_with_fewer_at_once(tmp_path):
    # A "GPU" with room for two runs (tests/oom_launcher.py): the third of three started together fails as
    # train.py does on a full GPU, goes back in the queue, and runs when one of the two has ended.
    family, out, slots = write_sweep(tmp_path, GRID), tmp_path / "out", tmp_path / "slots"
    env = {**ENV, "OOM_SLOTS": str(slots), "OOM_LIMIT": "2"}
    launcher = f"{sys.executable} {REPO / 'tests' / 'oom_launcher.py'}"
    argv = [str(family), *TINY, "--training.steps", "2", "--metrics.val_freq", "0", "--grid", "job.seed=0",
            "--grid", "optimizer.lr=1e-3,2e-3,3e-3", "--parallel", "3", "--launcher", launcher]
    proc = run_sweep(argv, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    attempts = (slots / "attempts.log").read_text().split()
    oom = [name for name, what in zip(attempts[::2], attempts[1::2]) if what == "oom"]
    assert len(attempts) == 8 and len(oom) == 1, attempts  # 3 runs and 1 refusal
    assert (": out of GPU memory beside 2 running point(s) after ") in proc.stdout
    assert "back in the queue; at most 2 at once from now on (--parallel 3 does not fit)" in proc.stdout
    assert f"sweep {out}: 3 points: 3 done, 0 skipped, 0 diverged, 0 failed" in proc.stdout
    rows = {row["name"]: row for row in json.loads((out / ".sweep" / "summary.json").read_text())}
    assert rows[oom[0]]["status"] == "done" and rows[oom[0]]["note"].startswith("retried after running out of GPU")
    assert all((out / name / "finished.json").is_file() for name in rows)

    # A GPU with room for none: every point fails even alone, after two retries that lower --parallel to 1.
    shutil.rmtree(out)
    none = run_sweep(argv, env={**env, "OOM_LIMIT": "0"})
    assert none.returncode == 1 and "3 points: 0 done, 0 skipped, 0 diverged, 3 failed" in none.stdout
    assert none.stdout.count("back in the queue") == 2 and "at most 1 at once" in none.stdout
    assert (slots / "attempts.log").read_text().count(" oom") == 1 + 5
