"""CPU benchmark: initlab's trainer vs a bare PyTorch loop, and the cost of weight-std logging.

    python benchmarks/bench_train.py [--config train_configs/debug.toml] [--steps 20] [--warmup 3] [--json]

Both run the same model shapes on the same global batches (``TokenBatches.get(step)``): the
trainer through FSDP2 on a world of one (its full step: microbatching, DTensor-aware clipping,
schedule), the bare loop as a plain module with ``torch.nn.utils.clip_grad_norm_`` and AdamW.
Logging cost is the synchronized time of one packed ``WeightStats.compute()`` and its share of a
step at log_freq 1 and 10.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_common import std_call_ms, timed_steps  # noqa: E402
from components.config import load_config  # noqa: E402
from distributed.env import distributed_session  # noqa: E402
from init_schemes import WeightInitializer  # noqa: E402
from models import build_model  # noqa: E402
from train import Trainer  # noqa: E402


def bare_loop_seconds(trainer: Trainer, first_step: int, n: int) -> float:
    """n steps of the plainest correct loop on the same shapes, init and batches."""
    cfg = trainer.cfg
    model = build_model(trainer.model_args)
    model.init_weights(WeightInitializer(cfg.init, trainer.model_args, cfg.job.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optimizer.lr, betas=tuple(cfg.optimizer.betas),
                                  weight_decay=cfg.optimizer.weight_decay, foreach=True)
    rows = slice(0, cfg.training.global_batch_size)

    def step(i: int) -> None:
        tokens = trainer.train_batches.get(i, rows)
        logits = model(tokens[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.max_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(first_step - 1)  # warm-up
    start = time.perf_counter()
    for i in range(first_step, first_step + n):
        step(i)
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="train_configs/debug.toml",
                        help="training config (default train_configs/debug.toml)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing (default 3)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    cfg, _ = load_config(["--config", args.config, "--training.steps", str(args.warmup + 3 * args.steps + 10),
                          "--metrics.val_freq", "0", "--checkpoint.enable", "false", "--training.device", "cpu"])
    with distributed_session("cpu") as env:
        trainer = Trainer(cfg, env)
        tokens = cfg.training.global_batch_size * cfg.training.seq_len
        timed_steps(trainer, 1, args.warmup)
        trainer_s = timed_steps(trainer, args.warmup + 1, args.steps) / args.steps
        bare_s = bare_loop_seconds(trainer, args.warmup + args.steps + 2, args.steps) / args.steps
        call_ms = std_call_ms(trainer)
    result = {
        "config": args.config, "threads": torch.get_num_threads(), "tokens_per_step": tokens,
        "trainer_tokens_per_sec": tokens / trainer_s, "bare_tokens_per_sec": tokens / bare_s,
        "trainer_over_bare": bare_s / trainer_s, "step_time_ms": 1e3 * trainer_s,
        "std_logging_ms_per_call": call_ms,
        "std_logging_pct_of_step": {str(f): 100 * call_ms / (1e3 * trainer_s * f) for f in (1, 10)},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"trainer {result['trainer_tokens_per_sec']:,.0f} tok/s | bare loop {result['bare_tokens_per_sec']:,.0f} "
              f"tok/s | ratio {result['trainer_over_bare']:.3f} | step {result['step_time_ms']:.1f} ms")
        print(f"weight-std logging: {call_ms:.2f} ms per call = "
              f"{result['std_logging_pct_of_step']['1']:.2f}% of a step at log_freq 1, "
              f"{result['std_logging_pct_of_step']['10']:.3f}% at log_freq 10")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
