"""Cost of the variance-dynamics logging (weight std + grad stats + activation statistics) in the real trainer.

    python scripts/bench_variance_stats.py [--model llama_1b] [--compile on] [--steps 20] [--warmup 5]
                                           [--out benchmarks/results]

Builds the Trainer of ``scripts/bench_gpu.py``'s setting for ``--model`` (one device, FSDP2 on a
world of one) with ``metrics.log_variance_stats = true``, compiles both block graphs in the warmup
(a non-logging and a logging step), then times ``--steps`` plain steps (``train_step(logging=False)``)
and ``--steps`` logging steps (``train_step(logging=True)``: the first micro-batch's forward is
measured and the weights are snapshotted for update ratios, then ``WeightStats.compute()`` and
``ActivationStats.compute()``), each block with a device sync only at its ends. One logging call
costs (logging block - plain block) / steps; its share of step time at log_freq f is
cost / (f x plain step time). A direct A/B at log_freq 10 (``--steps`` steps, every 10th logged)
checks the estimate. Writes ``<out>/variance_stats_<device>_<model>.json`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from components.config import load_config  # noqa: E402
from components.preemption import StopRequests  # noqa: E402
from distributed.env import distributed_session  # noqa: E402
from scripts.bench_common import sync  # noqa: E402
from scripts.bench_gpu import MODEL_SETTINGS  # noqa: E402
from train import Trainer  # noqa: E402

LOG_FREQS = (1, 10, 100)


def timed(trainer: Trainer, first_step: int, n: int, log_every: int) -> float:
    """Seconds for n optimizer steps, every ``log_every``-th a logging step with both reductions (0 = none)."""
    sync(trainer.env.device)
    start = time.perf_counter()
    for step in range(first_step, first_step + n):
        logging = bool(log_every) and step % log_every == 0
        trainer.train_step(step, logging)
        if logging:
            trainer.weight_stats.compute()
            trainer.activation_stats.compute()
        trainer.optimizer.zero_grad(set_to_none=True)
    sync(trainer.env.device)
    return time.perf_counter() - start


def bench(args, env) -> dict:
    config, overrides = MODEL_SETTINGS[args.model]
    cfg, _ = load_config(["--config", config, *overrides, "--training.steps", str(args.warmup + 4 * args.steps + 10),
                          "--compile.enable", str(args.compile == "on").lower(), "--checkpoint.enable", "false",
                          "--metrics.val_freq", "0", "--training.device", env.device.type,
                          "--metrics.log_variance_stats", "true",
                          "--parallelism.reshard_after_forward", str(env.world_size > 1).lower()])
    trainer = Trainer(cfg, env, StopRequests(watch_parent=False))
    timed(trainer, 1, args.warmup, log_every=2)  # both compiled variants (plain and measuring) are built here
    step = args.warmup + 1
    plain = timed(trainer, step, args.steps, log_every=0)
    logged = timed(trainer, step + args.steps, args.steps, log_every=1)
    every_10 = timed(trainer, step + 2 * args.steps, args.steps, log_every=10)
    step_s = plain / args.steps
    call_s = (logged - plain) / args.steps
    return {
        "model": args.model, "compile": args.compile == "on", "device": env.device.type,
        "seq_len": cfg.training.seq_len, "batch_sequences": cfg.training.global_batch_size,
        "n_activation_statistics": len(trainer.activation_stats.probes),
        "n_weight_tensors": len(trainer.weight_stats.tracked),
        "plain_step_ms": 1e3 * step_s, "logging_call_ms": 1e3 * call_s,
        "overhead_pct_at_log_freq": {str(f): 100 * call_s / (f * step_s) for f in LOG_FREQS},
        "ab_overhead_pct_at_log_freq_10": 100 * (every_10 - plain) / plain,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama_1b", choices=sorted(MODEL_SETTINGS))
    parser.add_argument("--compile", default="on", choices=("on", "off"))
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first, compiling both graphs (default 5)")
    parser.add_argument("--out", default="benchmarks/results", help="output directory (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.steps < 10 or args.warmup < 2:
        print(f"error: --steps {args.steps} must be >= 10 and --warmup {args.warmup} >= 2 (the A/B logs every "
              "10th step; the warmup must run a logging step)", file=sys.stderr)
        return 2
    with distributed_session("auto") as env:
        result = bench(args, env)
        device = torch.cuda.get_device_name(env.device).replace(" ", "_") if env.device.type == "cuda" else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"variance_stats_{device}_{args.model}.json"
    path.write_text(json.dumps({"torch": torch.__version__, **result}, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
