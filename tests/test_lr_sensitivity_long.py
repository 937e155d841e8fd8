"""The LR-sensitivity study's long runs (docs/lr_sensitivity/README.md, "Long runs (10 M tokens)"): the sweep file
resolves to the pre-registered design, one point of it trains on a CPU through scripts/lr_sensitivity_gpu.sh
(shrunk by overrides), and the timing report the time budget is computed with (reporting/sweep_timing.py) reads
that real run."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import tomllib

import pytest

from components import sweep
from components.run_dir import RunDir
from reporting import cli, sweep_timing
from scripts import sweep_timing as sweep_timing_script
from tests.launch import REPO

STUDY = REPO / "train_configs" / "lr_sensitivity"
LRS = [1e-4, 5.6e-4, 3.2e-3, 1.8e-2, 1e-1]  # the README's grid: 10^-4 ... 10^-1, 10^0.75 apart, two digits
# What the long runs change in the 64-step runs' config (the README's design table), and nothing else.
CHANGED = {("training", "steps"): (64, 320), ("lr_scheduler", "warmup_steps"): (6, 30),
           ("metrics", "log_freq"): (8, 16), ("metrics", "val_freq"): (32, 160)}


def test_long_sweep_file_holds_the_documented_design():
    spec, pilot = sweep.load_sweep_file(STUDY / "long_sweep.toml"), sweep.load_sweep_file(STUDY / "sweep.toml")
    assert spec.grid == {"optimizer.lr": LRS, "job.seed": [0, 1, 2]} and spec.arms == pilot.arms
    assert list(spec.arms) == ["depth_aware", "depth_aware_emb002", "scaled_output", "mitchell", "normal"]
    steps = [math.log10(b / a) for a, b in zip(LRS, LRS[1:])]
    assert all(abs(step - 0.75) < 0.01 for step in steps) and LRS[0] < 3e-4 and LRS[-1] >= 1e-1
    points = sweep.plan(spec)
    assert len(points) == 75 and [p.coords["job.seed"] for p in points] == [0] * 25 + [1] * 25 + [2] * 25
    tokens = {p.config.training.steps * p.config.training.global_batch_size * p.config.training.seq_len for p in points}
    assert tokens == {10_485_760} and min(tokens) >= 10_000_000
    pilot_points = {(p.coords["arm"], p.coords["job.seed"]): p for p in reversed(sweep.plan(pilot))}
    for point in points[:5] + points[-5:]:  # each arm: the long point vs a 64-step point of the same arm and seed
        twin = pilot_points[point.coords["arm"], point.coords["job.seed"]]
        ours, theirs = vars_of(point.config), vars_of(twin.config)
        differ = {k for k in ours if ours[k] != theirs[k]} - {("optimizer", "lr"), ("job", "seed"), ("job", "run_name"), ("job", "output_dir")}
        assert differ == set(CHANGED) and all((theirs[k], ours[k]) == v for k, v in CHANGED.items()), point.name
        assert ours[("lr_scheduler", "decay_type")] == "cosine" and ours[("lr_scheduler", "min_lr_ratio")] == 0.1


def vars_of(cfg) -> dict[tuple[str, str], object]:
    return {(section, key): value for section, table in vars(cfg).items() for key, value in vars(table).items()}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One point of the long sweep (mitchell, lr 1e-1, seed 0) through the GPU entry point, shrunk to the debug model
    on the embedded corpus for 2 steps (~12 s on a CPU)."""
    tmp = tmp_path_factory.mktemp("long")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LR_SWEEP": "train_configs/lr_sensitivity/long_sweep.toml",
           "LR_RUNS": str(tmp / "runs"), "OUT": str(tmp / "out"), "LR_START_BY_S": "120", "LR_DEADLINE_S": "300"}
    shrink = ["--model.flavor", "debug", "--data.dataset", "embedded", "--tokenizer.max_vocab", "4096",
              "--compile.enable", "false", "--training.steps", "2", "--training.seq_len", "64",
              "--training.global_batch_size", "2", "--training.local_batch_size", "0", "--metrics.val_freq", "2",
              "--metrics.log_freq", "1", "--metrics.val_batches", "1", "--lr_scheduler.warmup_steps", "1"]
    done = subprocess.run(["bash", "scripts/lr_sensitivity_gpu.sh", "0", "--arms", "mitchell", "--grid",
                           "optimizer.lr=1e-1", *shrink], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "long_sweep.toml" in done.stdout and "1 points: 1 done" in done.stdout
    return tmp


def test_one_point_of_the_long_sweep_trains_on_cpu(smoke_run):
    run = RunDir(smoke_run / "runs" / "mitchell_lr0.1_seed0")
    config = tomllib.loads(run.config_text)
    assert config["lr_scheduler"]["min_lr_ratio"] == 0.1 and config["lr_scheduler"]["decay_type"] == "cosine"
    assert config["init"]["scheme"] == "mitchell" and config["optimizer"]["lr"] == 0.1
    assert config["optimizer"]["weight_decay"] == 0.1 and config["training"]["max_norm"] == 1.0  # from base.toml
    assert run.summary["steps"] == 2 and math.isfinite(run.summary["final"]["loss/val"])
    assert (smoke_run / "out" / "lr_sensitivity.tar.gz").is_file()


def test_timing_of_a_real_run_and_its_bad_inputs(smoke_run, tmp_path, capsys):
    run = RunDir(smoke_run / "runs" / "mitchell_lr0.1_seed0")
    timing = sweep_timing.run_timing(run)
    logged = [r for r in run.records if sweep_timing.THROUGHPUT_KEY in r]
    assert timing.tokens_per_step == 2 * 64 and len(timing.intervals) == len(logged) == 2
    spent = sum(end - start for start, end, _ in timing.intervals)
    assert timing.loop_s == run.summary["wall_s"] and timing.rest_s == pytest.approx(timing.loop_s - spent, abs=1e-5)
    assert timing.first_step_s == pytest.approx(128 / logged[0][sweep_timing.THROUGHPUT_KEY], abs=1e-5)
    span = timing.intervals[-1][1] - timing.intervals[0][0]
    profile = sweep_timing.concurrency([timing], resolution_s=span / 300)
    assert set(profile) <= {0, 1} and profile[1][0] > 0.95  # one run: in its loop nearly all of the span
    # Two copies of it, the second shifted by half its span: 2 at once for about a third of the joint span.
    half = span / 2
    shifted = dataclasses.replace(timing, name="b", intervals=tuple((s + half, e + half, r) for s, e, r in timing.intervals))
    both = sweep_timing.concurrency([timing, shifted], resolution_s=span / 300)
    assert both[2][0] == pytest.approx(1 / 3, abs=0.01) and both.get(0, (0.0, 0.0))[0] < 0.01
    summary = smoke_run / "runs" / ".sweep" / "summary.json"
    launched = json.loads(summary.read_text())[0]["seconds"]
    # train.py's timeline (the process's age at each mark) fits inside the sweep's launch-to-exit time, in order,
    # and agrees with the loop's own clock (wall_s: from the loop's start to the end records).
    assert [name for name, _ in timing.marks] == ["claimed", "built", "slot", "loop_start", "loop_end", "closed"]
    assert 0 <= timing.wait_s < 0.05  # no --prestart: no slot to wait for
    phases, marks = timing.phases(launched), dict(timing.marks)
    assert len(phases) == len(sweep_timing.PHASES) + 1 and min(phases[:-1]) >= 0 and phases[0] > 0.5  # imports alone
    assert 0 <= phases[-1] < 10 and marks["closed"] <= launched  # the exit: the launch's end minus the last mark
    assert phases[4] - 0.1 <= timing.loop_s <= phases[4] + phases[5] + 0.1
    # a run from before the slot mark: its wait is none, its phases still complete
    older = dataclasses.replace(timing, marks=tuple((k, v) for k, v in timing.marks if k != "slot"))
    assert older.wait_s == 0.0 and older.phases(launched)[2] == 0.0 and older.phases(launched)[3] == pytest.approx(
        phases[2] + phases[3], abs=0.011)
    assert sweep_timing_script.main([str(smoke_run / "runs"), "--summary", str(summary)]) == 0
    out = capsys.readouterr().out
    assert "| first step (compilation) |" in out and "| launch to exit by phase (finished.json timeline_s, 1 runs)" in out
    assert "| tokenizer, data, model (built, sharded, initialised), optimizer |" in out
    assert "| process exit (launch to exit − the last mark) |" in out
    # Planted defects: a run without an end time, a summary that names no finished point.
    provenance = json.loads((run.path / "finished.json").read_text())
    provenance["provenance"]["starts"][0]["ended"] = None
    broken = tmp_path / "runs" / "x"
    broken.mkdir(parents=True)
    for name in ("config.toml", "metrics.jsonl"):
        (broken / name).write_text((run.path / name).read_text())
    del provenance["timeline_s"]  # and from before train.py's timeline: no phases
    (broken / "finished.json").write_text(json.dumps(provenance))
    unplaced = sweep_timing.run_timing(RunDir(broken))
    assert unplaced.intervals == () and unplaced.first_step_s == timing.first_step_s  # its own times, no clock
    assert unplaced.phases(launched) is None
    assert sweep_timing.concurrency([timing, unplaced], resolution_s=span / 300) == profile
    with pytest.raises(ValueError, match="no run has an end time in its provenance"):
        sweep_timing.concurrency([unplaced])
    (tmp_path / "one.json").write_text(json.dumps([{"name": "x", "status": "done", "seconds": 9.5}]))
    assert sweep_timing_script.main([str(tmp_path / "runs"), "--summary", str(tmp_path / "one.json")]) == 0
    assert "No timeline: none of the 1 runs has an end time" in capsys.readouterr().out
    (tmp_path / "s.json").write_text(json.dumps([{"name": "x", "status": "failed", "seconds": 1}]))
    assert cli.run_cli(sweep_timing_script.main, [str(tmp_path / "runs"), "--summary", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "lists no point as done" in err and err.count("\n") == 1


def test_gpu_entry_point_refuses_a_missing_sweep_file_in_one_line(tmp_path):
    env = {**os.environ, "LR_SWEEP": "train_configs/lr_sensitivity/lnog_sweep.toml", "LR_RUNS": str(tmp_path / "r"),
           "OUT": str(tmp_path / "o")}
    done = subprocess.run(["bash", "scripts/lr_sensitivity_gpu.sh", "0"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == "" and list(tmp_path.iterdir()) == []
    assert done.stderr == ("error: LR_SWEEP=train_configs/lr_sensitivity/lnog_sweep.toml is not a file; give a sweep "
                           "file, e.g. train_configs/lr_sensitivity/long_sweep.toml\n")


def test_gpu_entry_point_stops_in_one_line_when_torch_cannot_be_imported(tmp_path):
    """The GPU probe that picks how many runs go at once fails (a planted torch that cannot be imported): one error
    line and exit 2, no sweep started, nothing written."""
    (tmp_path / "planted").mkdir()
    (tmp_path / "planted" / "torch.py").write_text("raise ImportError('planted: no torch here')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "planted"), "LR_RUNS": str(tmp_path / "r"),
           "OUT": str(tmp_path / "o")}
    done = subprocess.run(["bash", "scripts/lr_sensitivity_gpu.sh", "0", "--data.dataset", "embedded"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "planted: no torch here" in done.stderr
    assert done.stderr.splitlines()[-1] == ("error: python could not import torch to read the GPU (above); install "
                                            "torch or fix PYTHONPATH")
    assert "sweep" not in done.stdout and not (tmp_path / "r").exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize(("gib", "parallel", "override"), [(141, "4 at once", None), (80, "3 at once", None),
                                                          (141, "2 at once (LR_PARALLEL)", "2")])
def test_gpu_entry_point_runs_as_many_at_once_as_the_gpu_memory_holds(tmp_path, gib, parallel, override):
    """The probe on a planted GPU (a torch module that reports one device of ``gib`` GiB): 4 at once from 100 GiB
    on, else 3, unless LR_PARALLEL says otherwise. The sweep itself then stops on the planted torch: only the
    entry point's own lines are read."""
    (tmp_path / "planted").mkdir()
    (tmp_path / "planted" / "torch.py").write_text(
        "__version__ = 'planted'\n"
        "class cuda:\n"
        "    is_available = staticmethod(lambda: True)\n"
        f"    get_device_properties = staticmethod(lambda i: type('P', (), {{'total_memory': {gib} * 2**30}})())\n"
        "    get_device_name = staticmethod(lambda i: 'Planted GPU')\n")
    env = {key: value for key, value in os.environ.items() if key != "LR_PARALLEL"}
    env.update(PYTHONPATH=str(tmp_path / "planted"), LR_RUNS=str(tmp_path / "r"), OUT=str(tmp_path / "o"))
    if override:
        env["LR_PARALLEL"] = override
    done = subprocess.run(["bash", "scripts/lr_sensitivity_gpu.sh", "0", "--dry-run", "--data.dataset", "embedded"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert f"lr_sensitivity: torch planted, Planted GPU ({gib} GiB)\n" in done.stdout
    assert f"seeds 0, {parallel}, runs in {tmp_path / 'r'}," in done.stdout
