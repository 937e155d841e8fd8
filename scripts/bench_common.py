"""Timing helpers shared by the CPU (bench_train.py) and GPU (bench_gpu.py) benchmarks."""

from __future__ import annotations

import statistics
import time

import torch

from components.host_gc import ScheduledGC
from train import Trainer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(trainer: Trainer, first_step: int, n: int, std_every: int = 0) -> float:
    """Seconds for n optimizer steps (std reduction every ``std_every`` steps; 0 = never)."""
    # The collection schedule of Trainer.train; its first, full collection (on entry) stays out of the timing.
    with ScheduledGC(trainer.cfg.training.gc_freq) as collector:
        sync(trainer.env.device)
        start = time.perf_counter()
        for step in range(first_step, first_step + n):
            trainer.train_step(step, logging=False)
            if std_every and step % std_every == 0:
                trainer.weight_stats.compute()
            trainer.optimizer.zero_grad(set_to_none=True)
            collector.step(step)
        sync(trainer.env.device)
        return time.perf_counter() - start


def std_call_ms(trainer: Trainer) -> float:
    """Median synchronized wall time of one packed weight-std reduction (ms)."""
    times = []
    for _ in range(10):
        sync(trainer.env.device)
        start = time.perf_counter()
        trainer.weight_stats.compute()  # ends in a host transfer, so it is synchronized
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
