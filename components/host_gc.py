"""Python's garbage collector on a schedule during training, as torchtitan's ``training.gc_freq`` does.

Left automatic, the collector runs whenever allocation counts cross its thresholds, and a full
(oldest-generation) pass over every tracked object (the compiled graphs, FSDP's state, the autograd
nodes of a step) stalls the host mid-step at an unpredictable step; on a GPU the queue then drains
and the device idles. ``ScheduledGC`` turns automatic collection off for the loop, collects the young
generations every ``every`` steps at a step boundary (where the host waits anyway), and restores the
collector's previous state on exit. Reference: torchtitan 0.2.2 ``torchtitan/tools/utils.py``
(``GarbageCollection``: ``gc.disable()``, then ``gc.collect(1)`` every ``gc_freq`` steps).
"""

from __future__ import annotations

import gc


class ScheduledGC:
    """``with ScheduledGC(every) as collector: ... collector.step(step)``; ``every = 0`` leaves GC automatic."""

    def __init__(self, every: int):
        if every < 0:
            raise ValueError(f"training.gc_freq = {every} must be >= 0 (0 = Python's automatic collection)")
        self.every = every
        self.was_enabled = gc.isenabled()

    def __enter__(self) -> ScheduledGC:
        if self.every:
            gc.collect()  # start from a clean heap: what the set-up left behind is collected once, here
            gc.disable()
        return self

    def step(self, step: int) -> None:
        """At the end of optimizer step ``step``: collect generations 0 and 1 every ``every`` steps."""
        if self.every and step % self.every == 0:
            gc.collect(1)

    def __exit__(self, *exc) -> None:
        if self.every and self.was_enabled:
            gc.enable()
