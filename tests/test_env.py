"""distributed/env.py: mesh shapes and a session whose ranks start and stop together (4 gloo ranks; the
failure cases on 2, which show the same: every rank, or one of them, fails)."""

from __future__ import annotations

import json
import time

import pytest

from distributed.env import mesh_shape
from tests.launch import torchrun

WORKER = "tests/session_worker.py"


def reports(out) -> dict[int, dict]:
    return {r["rank"]: r for r in (json.loads(p.read_text()) for p in out.glob("rank_*.json"))}


def threads_at_exit(out) -> dict[str, list[str]]:
    return {p.stem: json.loads(p.read_text()) for p in out.glob("threads_*.json")}


@pytest.mark.parametrize("world, replicate, shard, expected", [
    (8, 1, -1, (1, 8)), (8, 2, -1, (2, 4)), (4, 2, 2, (2, 2)), (1, 1, -1, (1, 1)),
])
def test_mesh_shape(world, replicate, shard, expected):
    assert mesh_shape(world, replicate, shard) == expected


@pytest.mark.parametrize("world, replicate, shard, culprit", [
    (8, 3, -1, "does not divide"), (8, 2, 2, "!= world size 8"),
])
def test_mesh_shape_errors_name_the_degrees(world, replicate, shard, culprit):
    with pytest.raises(ValueError, match=culprit):
        mesh_shape(world, replicate, shard)


@pytest.mark.multiprocess
def test_clean_session_tears_down_on_every_rank(tmp_path):
    # gloo used to abort (SIGABRT) a rank that exited while a peer was still tearing down; a second
    # launch makes such a regression more likely to show up here rather than as a flaky test elsewhere.
    # The thread check fails on the first launch if the exit handler that joins gloo's threads is gone.
    for launch in range(2):
        out = tmp_path / str(launch)
        out.mkdir()
        torchrun([WORKER, str(out), "ok"], nproc=4, timeout=120)
        seen = reports(out)
        assert sorted(seen) == [0, 1, 2, 3]
        assert all(r["world_sum"] == 4.0 and r["mesh"] == [4] and r["full_sum"] == 128.0
                   and r["initialized_after"] is False for r in seen.values())
        # gloo's worker threads are joined before interpreter shutdown (DTensor caches emptied at exit).
        assert threads_at_exit(out) == {f"threads_{rank}": [] for rank in range(4)}


@pytest.mark.multiprocess
def test_error_on_every_rank_exits_with_it_promptly(tmp_path):
    start = time.monotonic()
    proc = torchrun([WORKER, str(tmp_path), "all_fail"], nproc=2, timeout=120, check=False)
    elapsed = time.monotonic() - start
    seen = reports(tmp_path)
    assert proc.returncode != 0 and sorted(seen) == [0, 1]
    assert all(r["error"] == f"rank {k} failed on purpose" and r["initialized_after"] is False
               for k, r in seen.items())
    assert threads_at_exit(tmp_path) == {f"threads_{rank}": [] for rank in range(2)}
    assert elapsed < 60, elapsed


@pytest.mark.multiprocess
def test_error_on_one_rank_does_not_hang_the_job(tmp_path):
    # Rank 0 waits in an all_reduce rank 1 never joins; rank 1 waits 2 s for its peer,
    # tears down alone, exits 3, and torchrun stops rank 0 long before the 1800 s timeout.
    proc = torchrun([WORKER, str(tmp_path), "one_fail"], nproc=2, timeout=120, check=False)
    seen = reports(tmp_path)
    assert proc.returncode != 0
    assert seen[1]["error"] == "rank 1 failed on purpose" and seen[1]["initialized_after"] is False
    assert set(seen) == {1}, "the other ranks were stopped inside their collective"
