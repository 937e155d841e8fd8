"""components/host_gc.py: automatic collection off inside, a generation-1 collection every N steps, state restored."""

from __future__ import annotations

import gc

import pytest

from components.host_gc import ScheduledGC


@pytest.fixture
def collections():
    """Generations of the collections that run while the test does (gc.callbacks sees every one)."""
    seen: list[int] = []

    def record(phase: str, info: dict) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(record)
    yield seen
    gc.callbacks.remove(record)
    gc.enable()


def test_collects_generation_one_every_n_steps_and_nothing_automatic(collections):
    with ScheduledGC(every=3) as collector:
        assert not gc.isenabled()
        collections.clear()  # the full collection on entry
        for step in range(1, 10):
            [[i] for i in range(5000)]  # enough allocations to trigger gen-0 collections if GC were automatic
            collector.step(step)
        assert collections == [1, 1, 1]  # steps 3, 6 and 9
    assert gc.isenabled()


def test_zero_leaves_python_automatic_and_a_disabled_collector_stays_disabled(collections):
    with ScheduledGC(every=0):
        assert gc.isenabled()
    gc.disable()
    with ScheduledGC(every=5) as collector:
        collector.step(5)
    assert not gc.isenabled()


def test_negative_frequency_is_one_line():
    with pytest.raises(ValueError, match=r"training.gc_freq = -1 must be >= 0 \(0 = Python's automatic collection\)"):
        ScheduledGC(-1)
