"""How the time of a sweep's runs was spent when several shared one GPU: the measurements a time budget for a
longer sweep is computed from (docs/lr_sensitivity/README.md, "Long runs ... time budget").

Per finished run (``finished.json``): the training loop's wall time (``wall_s``, compilation included: it
happens in step 1), the first step's time and the mean time of every later step (from the logged
``throughput/tokens_per_sec``, the tokens per second of the steps since the previous log) and the rest of the
loop (validation, logging, the end). And per sweep: each run's loop placed on one clock (it ends at the run's
provenance ``ended`` time, ISO seconds, and began ``wall_s`` earlier; its logged intervals in order from there,
the rest at its end, so a placement is good to a few seconds), then, for every number k of runs in their loops
at once, the fraction of the time it held and the summed tokens per second of those runs: what the GPU
delivered to k concurrent runs. A run without one provenance start with an ``ended`` time (a resumed run, or one
from before the provenance record) has its per-run times but no place on the clock.

Where ``finished.json`` holds train.py's ``timeline_s`` (the process's age at named points, components/provenance.py
``Timeline``), a run's launch-to-exit time splits into the phases of ``PHASES`` and the exit, what the launch-to-exit
time leaves after the last mark. (``wall_s`` runs from the loop's start to the end records, so it holds the loop
and the after-loop phase.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from components.run_dir import RunDir

THROUGHPUT_KEY = "throughput/tokens_per_sec"
# The phases of one start, in order: (from mark, to mark, what happens then); None = the process's start.
PHASES = ((None, "claimed", "process start to the run directory's claim: interpreter, imports, process group"),
          ("claimed", "built", "tokenizer, data, model (built, sharded, initialised), optimizer"),
          ("built", "slot", "waiting for a training slot (a sweep with --prestart; none otherwise)"),
          ("slot", "loop_start", "run-directory records and the step-0 statistics"),
          ("loop_start", "loop_end", "the training loop"),
          ("loop_end", "closed", "after the loop: final weights, metrics files, end records"))


@dataclass(frozen=True)
class RunTiming:
    """One finished run's training loop: times in seconds, ``intervals`` as (start, end, tokens/s) on the clock (epoch
    seconds; empty when the run has no end time to place it by)."""

    name: str
    loop_s: float  # finished.json wall_s
    first_step_s: float
    later_step_s: float  # mean over steps 2..N
    rest_s: float  # loop_s - the logged steps' time: validation, logging, the end
    tokens_per_step: int
    intervals: tuple[tuple[float, float, float], ...]
    marks: tuple[tuple[str, float], ...] = ()  # finished.json timeline_s: (point, seconds since the process began)

    @property
    def wait_s(self) -> float:
        """Seconds the run waited for a training slot (0 without the marks)."""
        marks = dict(self.marks)
        return round(marks["slot"] - marks["built"], 2) if "slot" in marks and "built" in marks else 0.0

    def phases(self, launch_to_exit_s: float) -> list[float] | None:
        """Seconds of each of PHASES, then the exit (launch to exit − the last mark); None without every mark."""
        marks = dict(self.marks)
        marks.setdefault("slot", marks.get("built"))  # runs from before the slot mark waited for none
        if not all(marks.get(end) is not None for _, end, _ in PHASES):
            return None
        return [marks[end] - marks.get(begin, 0.0) for begin, end, _ in PHASES] + [launch_to_exit_s - marks["closed"]]


def logged_intervals(records: list[dict], tokens_per_step: int) -> list[tuple[int, float, float]]:
    """(logged step, seconds of the steps since the previous logged step, tokens/s) of each record from step 1 on with
    a logged throughput, in step order; the seconds come from the tokens/s, which leave out checkpoint stalls."""
    logged = sorted((r["step"], r[THROUGHPUT_KEY]) for r in records if THROUGHPUT_KEY in r and r["step"] >= 1)
    return [(step, (step - previous) * tokens_per_step / tokens_per_s, tokens_per_s)
            for (previous, _), (step, tokens_per_s) in zip([(0, None), *logged], logged)]


def run_timing(run: RunDir) -> RunTiming:
    """The timing of one finished run; ValueError naming the run when it lacks what is needed."""
    summary, starts = run.summary, run.starts
    if summary is None or "wall_s" not in summary:
        raise ValueError(f"{run.path}: no finished.json with wall_s; give finished runs only")
    cfg = run.config
    tokens_per_step = cfg.training.global_batch_size * cfg.training.seq_len
    logged = logged_intervals(run.records, tokens_per_step)
    if not logged or logged[0][0] != 1:
        raise ValueError(f"{run.path}: no logged throughput at step 1; it needs metrics.log_freq records from step 1")
    placed = len(starts) == 1 and bool(starts[0].get("ended"))
    clock = datetime.fromisoformat(starts[0]["ended"]).timestamp() - summary["wall_s"] if placed else 0.0
    durations, previous = [(seconds, tokens_per_s) for _, seconds, tokens_per_s in logged], logged[-1][0]
    intervals = []
    for seconds, tokens_per_s in durations:
        intervals.append((clock, clock + seconds, tokens_per_s))
        clock += seconds
    first = durations[0][0]
    later = sum(seconds for seconds, _ in durations[1:]) / max(previous - 1, 1)
    rest = summary["wall_s"] - sum(seconds for seconds, _ in durations)
    return RunTiming(run.path.name, summary["wall_s"], first, later, rest, tokens_per_step,
                     tuple(intervals) if placed else (), tuple(summary.get("timeline_s", {}).items()))


def concurrency(timings: list[RunTiming], resolution_s: float = 0.5) -> dict[int, tuple[float, float]]:
    """k runs in their loops at once -> (fraction of the time from the first loop's start to the last one's end,
    mean summed tokens/s over that time; 0 for k = 0), sampled every ``resolution_s`` seconds."""
    spans = [iv for t in timings for iv in t.intervals]
    if not spans:
        raise ValueError("no run has an end time in its provenance to place it on the clock")
    begin, end = min(s for s, _, _ in spans), max(e for _, e, _ in spans)
    samples = max(1, math.ceil((end - begin) / resolution_s))
    seen: dict[int, list[float]] = {}
    for i in range(samples):
        moment = begin + (i + 0.5) * resolution_s
        active = [rate for s, e, rate in spans if s <= moment < e]
        seen.setdefault(len(active), []).append(sum(active))
    return {k: (len(v) / samples, sum(v) / len(v)) for k, v in sorted(seen.items())}
