"""What the benchmarks share: the timing loop, the models' speed points (bench_gpu.py, bench_variance_stats.py) and the
commit a result was measured on."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from components.host_gc import ScheduledGC
from components.provenance import UNKNOWN, git_state
from train import Trainer

REPO = Path(__file__).resolve().parent.parent
# model -> (config, sequence length, sequences per micro-batch, micro-batches per optimizer step).
MODEL_SETTINGS = {
    # One GPU's share of the family's 8-GPU step: 512 x 1024 tokens / 8 = 64 sequences in one micro-batch.
    "gpt2_124m": ("train_configs/gpt2_124m/scaled_output.toml", 1024, 64, 1),
    # The speed point: 8 x 2048 tokens per micro-batch (fits an 80 GB H100), 2 per step.
    "llama_1b": ("train_configs/llama_1b/depth_aware.toml", 2048, 8, 2),
    "debug": ("train_configs/debug.toml", 128, 4, 2),
}


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


def settings_argv(model: str, micro: int | None) -> tuple[str, list[str], int, int]:
    """(config, overrides, micro, accumulation) for ``model`` with an optional micro-batch size."""
    config, seq_len, model_micro, accum = MODEL_SETTINGS[model]
    sequences = model_micro * accum
    micro = micro or model_micro
    return config, ["--training.seq_len", str(seq_len), "--training.global_batch_size", str(sequences),
                    "--training.local_batch_size", str(micro)], micro, sequences // micro


def git_commit() -> str | None:
    """The code's short commit (INITLAB_COMMIT names it on a copied tree; components/provenance.py), or None."""
    commit, _ = git_state()
    return None if commit == UNKNOWN else commit
