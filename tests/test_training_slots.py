"""components/training_slots.py: real processes contending for flock'd slot files; scripts/sweep.py --prestart on
real debug-model runs (start-up overlapped, training never more than --parallel at once, the same losses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components import training_slots
from components.run_dir import RunDir
from reporting.sweep_timing import run_timing
from tests.launch import REPO
from tests.test_sweep import ENV, TINY, run_sweep, write_sweep

HOLDER = """
import json, os, sys, time
from components import training_slots
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):  # all holders start waiting together, whatever their start-up took
    time.sleep(0.01)
waited = training_slots.acquire(say=lambda line: None)
start = time.time()
time.sleep(float(sys.argv[1]))
print(json.dumps({"waited": waited, "start": start, "end": time.time()}), flush=True)
"""


STOPPABLE = """
import json, signal
from components import training_slots
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
print("waiting", flush=True)
waited = training_slots.acquire(say=lambda line: None, stop_requested=lambda: bool(stop))
print(json.dumps({"waited": waited, "held": training_slots._held is not None}), flush=True)
"""


def holders(folder: Path, n: int, hold_s: float) -> list[dict]:
    """``n`` processes asking together, each holding a slot of ``folder`` for ``hold_s``: their intervals."""
    env, go = {**ENV, training_slots.ENV_VAR: str(folder)}, folder / f"go_{time.monotonic_ns()}"
    procs = [subprocess.Popen([sys.executable, "-c", HOLDER, str(hold_s), str(go)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    assert all(proc.stdout.readline() == "ready\n" for proc in procs)
    go.touch()
    return [json.loads(proc.communicate(timeout=120)[0]) for proc in procs]


def overlapping(intervals: list[dict]) -> int:
    """The most intervals that contain one moment."""
    events = sorted([(i["start"], 1) for i in intervals] + [(i["end"], -1) for i in intervals])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


@pytest.mark.multiprocess
def test_slots_bound_the_holders_at_once_and_a_killed_holder_frees_its_slot(tmp_path):
    folder = tmp_path / "slots"
    training_slots.write_count(folder, 2)
    got = holders(folder, 4, 0.8)
    assert overlapping(got) == 2 and sum(i["waited"] > 0.5 for i in got) == 2  # two waited for the first two
    training_slots.write_count(folder, 4)  # the same processes with four slots: nothing waits (the bound is real)
    got = holders(folder, 4, 0.8)
    assert overlapping(got) == 4 and max(i["waited"] for i in got) < 0.5

    # kill -9 of a holder: the kernel drops its lock and a waiting process takes the slot
    training_slots.write_count(folder, 1)
    env = {**ENV, training_slots.ENV_VAR: str(folder)}
    go = folder / "go"
    go.touch()
    first = subprocess.Popen([sys.executable, "-c", HOLDER, "600", str(go)], cwd=REPO, env=env, stdout=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the first holds the slot (the probe's own lock is let go at once)
        fd = training_slots.try_slot(folder, 1)
        if fd is None:
            break
        os.close(fd)
        time.sleep(0.05)
    # a stop request (the sweep's deadline: SIGTERM) ends a wait without a slot
    stopped = subprocess.Popen([sys.executable, "-c", STOPPABLE], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    assert stopped.stdout.readline() == "waiting\n"
    time.sleep(0.5)
    stopped.send_signal(signal.SIGTERM)
    result = json.loads(stopped.communicate(timeout=30)[0])
    assert result["held"] is False and result["waited"] > 0.4
    second = subprocess.Popen([sys.executable, "-c", STOPPABLE], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    assert second.stdout.readline() == "waiting\n"
    time.sleep(1.0)
    assert second.poll() is None  # waiting for the slot the first holds
    first.send_signal(signal.SIGKILL)
    first.wait()
    result = json.loads(second.communicate(timeout=60)[0])
    assert result["held"] is True and result["waited"] > 0.9


def test_no_variable_no_wait_and_a_bad_folder_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv(training_slots.ENV_VAR, raising=False)
    assert training_slots.acquire() == 0.0
    monkeypatch.setenv(training_slots.ENV_VAR, str(tmp_path / "none"))
    with pytest.raises(ValueError, match=f"{training_slots.ENV_VAR}: .*none/count does not hold a positive slot count; "
                                         f"unset {training_slots.ENV_VAR} outside a sweep"):
        training_slots.acquire()


@pytest.mark.multiprocess
def test_prestart_overlaps_start_up_and_keeps_training_to_parallel_with_the_same_losses(tmp_path):
    """Two debug runs, --parallel 1 --prestart 1: both processes start together, the second waits once built until
    the first has ended its training; their loops do not overlap and their losses are those of a sweep without
    --prestart, bitwise."""
    family = write_sweep(tmp_path, '[grid]\njob.seed = [0, 1]\n')
    finals = {}
    for prestart in ("1", "0"):
        out = tmp_path / f"out{prestart}"
        proc = run_sweep([str(family), *TINY, "--output-dir", str(out), "--parallel", "1", "--prestart", prestart])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        timings = [run_timing(RunDir(out / name)) for name in ("seed0", "seed1")]
        finals[prestart] = [json.loads((out / name / "finished.json").read_text())["final"] for name in ("seed0", "seed1")]
        (first, second) = sorted(timings, key=lambda t: t.wait_s)
        logs = (out / ".sweep" / "logs" / f"{second.name}.log").read_text()
        if prestart == "1":
            # started together (their process ages are one clock, to the launch's few ms): the second's loop starts
            # after the first's has ended, and it waited for that once built
            marks = [dict(t.marks) for t in (first, second)]
            assert marks[1]["loop_start"] >= marks[0]["loop_end"] - 0.2 and marks[1]["built"] < marks[0]["loop_end"]
            assert second.wait_s > 0.5 and "initlab: built; waiting for a training slot" in logs
            assert (out / ".sweep" / "slots" / "count").read_text().strip() == "1"
        else:
            assert second.wait_s < 0.05 and "waiting for a training slot" not in logs
            assert not (out / ".sweep" / "slots").exists()
    assert finals["1"] == finals["0"]
