"""Cost of the variance-dynamics logging (weight std + grad stats + activation statistics) in the real trainer.

    python benchmarks/bench_variance_stats.py [--model llama_1b] [--compile on] [--steps 20] [--warmup 5]
                                           [--out benchmarks/results]

Builds the Trainer of ``benchmarks/bench_gpu.py``'s setting for ``--model`` (one device, FSDP2 on a
world of one) with ``metrics.log_variance_stats = true``, compiles both block graphs in the warmup
(a non-logging and a logging step), then runs ``2 x --steps`` steps alternating a plain step
(``train_step(logging=False)``) and a logging step (``train_step(logging=True)``: the first
micro-batch's forward is measured and the weights are snapshotted for update ratios, then
``WeightStats.compute()`` and ``ActivationStats.compute()``), each timed alone between device
syncs. Alternating and taking medians keeps a drifting machine load out of the difference. One
logging call costs median(logging) - median(plain); its share of step time at log_freq f is
cost / (f x median(plain)). Writes ``<out>/variance_stats_<device>_<model>.json`` and prints it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_common import MODEL_SETTINGS, git_commit, settings_argv, sync  # noqa: E402
from components.config import load_config  # noqa: E402
from components.preemption import StopRequests  # noqa: E402
from distributed.env import distributed_session  # noqa: E402
from train import Trainer  # noqa: E402

LOG_FREQS = (1, 10, 100)


def step_ms(trainer: Trainer, step: int, logging: bool) -> float:
    """Wall ms of one optimizer step between device syncs; a logging step includes both reductions."""
    sync(trainer.env.device)
    start = time.perf_counter()
    trainer.train_step(step, logging)  # a logging step ends in WeightStats.compute()
    if logging:
        trainer.activation_stats.compute()
        trainer.extra_values.clear()
    trainer.optimizer.zero_grad(set_to_none=True)
    sync(trainer.env.device)
    return 1e3 * (time.perf_counter() - start)


def bench(args, env) -> dict:
    config, batch, _, _ = settings_argv(args.model, None)
    cfg, _ = load_config(["--config", config, *batch, "--training.steps", str(args.warmup + 2 * args.steps + 10),
                          "--compile.enable", str(args.compile == "on").lower(), "--checkpoint.enable", "false",
                          "--metrics.val_freq", "0", "--training.device", env.device.type,
                          "--metrics.log_variance_stats", "true"])
    trainer = Trainer(cfg, env, StopRequests(watch_parent=False))
    for step in range(1, args.warmup + 1):  # both compiled variants (plain and measuring) are built here
        step_ms(trainer, step, logging=step % 2 == 0)
    times = {False: [], True: []}
    for step in range(args.warmup + 1, args.warmup + 1 + 2 * args.steps):
        logging = step % 2 == 0
        times[logging].append(step_ms(trainer, step, logging))
    plain, logged = statistics.median(times[False]), statistics.median(times[True])
    call = logged - plain
    return {
        "model": args.model, "compile": args.compile == "on", "device": env.device.type,
        "seq_len": cfg.training.seq_len, "batch_sequences": cfg.training.global_batch_size,
        "micro_batch_sequences": trainer.micro_batch, "accumulation_steps": trainer.accum_steps,
        "n_activation_statistics": len(trainer.activation_stats.probes),
        "n_weight_tensors": len(trainer.weight_stats.tracked),
        "plain_step_ms": plain, "logging_step_ms": logged, "logging_call_ms": call,
        "overhead_pct_at_log_freq": {str(f): 100 * call / (f * plain) for f in LOG_FREQS},
        "step_ms_spread": {"plain": [min(times[False]), max(times[False])],
                           "logging": [min(times[True]), max(times[True])]},
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama_1b", choices=sorted(MODEL_SETTINGS),
                        help="model setting of benchmarks/bench_gpu.py (default llama_1b)")
    parser.add_argument("--compile", default="on", choices=("on", "off"), help="torch.compile the blocks (default on)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each kind (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first, compiling both graphs (default 5)")
    parser.add_argument("--out", default="benchmarks/results", help="output directory (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.steps < 3 or args.warmup < 2:
        print(f"error: --steps {args.steps} must be >= 3 and --warmup {args.warmup} >= 2 (the warmup must run a "
              "logging step)", file=sys.stderr)
        return 2
    with distributed_session("auto") as env:
        result = bench(args, env)
        device = torch.cuda.get_device_name(env.device).replace(" ", "_") if env.device.type == "cuda" else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"variance_stats_{device}_{args.model}.json"
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    path.write_text(json.dumps({"torch": torch.__version__, "date": date, "commit": git_commit(), **result}, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
