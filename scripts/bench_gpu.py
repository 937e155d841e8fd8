"""Throughput, MFU, memory and weight-std logging cost of initlab's trainer on one GPU.

    python scripts/bench_gpu.py [--models gpt2_124m,llama_1b] [--compile on,off] [--steps 20]
                                [--warmup 5] [--out benchmarks/results] [--profile]

For each model x compile setting it builds the real Trainer (FSDP2 on a world of one, bf16
compute / fp32 reduce, flash SDPA), runs ``warmup`` steps, then times ``steps`` optimizer steps
with a device sync only at the ends. Logging cost is measured twice: the synchronized time of one
``WeightStats.compute()`` call (median of 10), and an A/B of ``steps`` steps with the std
reduction every step against none. Results go to ``<out>/<device>.json``. On a CPU, ``--quick``
runs the same code on the debug flavor (a dry run of the script, not a benchmark).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from components.config import load_config  # noqa: E402
from distributed.env import distributed_session  # noqa: E402
from scripts.bench_common import std_call_ms, timed_steps  # noqa: E402
from train import Trainer  # noqa: E402

MODEL_SETTINGS = {
    # model -> (config file, overrides): one GPU, batch per step = one forward pass.
    "gpt2_124m": ("train_configs/gpt2_124m/scaled_output.toml",
                  ["--training.seq_len", "1024", "--training.global_batch_size", "32", "--training.local_batch_size", "0"]),
    "llama_1b": ("train_configs/llama_1b/depth_aware.toml",
                 ["--training.seq_len", "2048", "--training.global_batch_size", "4", "--training.local_batch_size", "0"]),
    "debug": ("train_configs/debug.toml", ["--training.global_batch_size", "4"]),
}
LOG_FREQS = (1, 10, 100)


def profile_summary(trainer: Trainer, first_step: int, out: Path, name: str, steps: int = 3) -> None:
    """torch.profiler over a few steps: kernel time vs wall time, top ops by device and by host time."""
    from torch.profiler import ProfilerActivity, profile
    cuda = trainer.env.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        wall = timed_steps(trainer, first_step, steps)
    averages = prof.key_averages()
    device_ms = sum(e.self_device_time_total for e in averages) / 1e3 / steps if cuda else float("nan")
    lines = [f"{name}: wall {1e3 * wall / steps:.1f} ms/step, device kernels {device_ms:.1f} ms/step "
             f"(busy {100 * device_ms / (1e3 * wall / steps):.0f}%)"]
    if cuda:
        lines.append(averages.table(sort_by="self_device_time_total", row_limit=25))
    lines.append(averages.table(sort_by="self_cpu_time_total", row_limit=15))
    (out / f"profile_{name}.txt").write_text("\n".join(lines))
    print(lines[0], flush=True)


def bench_one(model: str, compile_on: bool, args, env) -> dict:
    config, overrides = MODEL_SETTINGS[model]
    total = args.warmup + 3 * args.steps + 50
    cfg, _ = load_config(["--config", config, *overrides, "--training.steps", str(total),
                          "--compile.enable", str(compile_on).lower(), "--checkpoint.enable", "false",
                          "--metrics.val_freq", "0", "--training.device", env.device.type,
                          # One rank holds whole tensors: re-gathering them for backward would only copy.
                          "--parallelism.reshard_after_forward", str(env.world_size > 1).lower()])
    trainer = Trainer(cfg, env)
    if env.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(env.device)
    timed_steps(trainer, 1, args.warmup)
    step = args.warmup + 1
    base_s = timed_steps(trainer, step, args.steps)
    step += args.steps
    with_std_s = timed_steps(trainer, step, args.steps, std_every=1)
    step += args.steps
    call_ms = std_call_ms(trainer)
    step_s = base_s / args.steps
    tokens = cfg.training.global_batch_size * cfg.training.seq_len
    tps = tokens / step_s
    result = {
        "model": model, "compile": compile_on, "seq_len": cfg.training.seq_len,
        "batch_sequences": cfg.training.global_batch_size, "params": trainer.n_params,
        "flops_per_token": trainer.flops_per_token, "step_time_s": step_s,
        "tokens_per_sec_per_device": tps,
        "mfu": tps * trainer.flops_per_token / trainer.peak_flops if trainer.peak_flops else None,
        "peak_memory_gib": (torch.cuda.max_memory_allocated(env.device) / 2**30
                            if env.device.type == "cuda" else None),
        "std_logging_ms_per_call": call_ms,
        "std_logging_overhead_pct": {str(f): 100 * call_ms / 1e3 / (f * step_s) for f in LOG_FREQS},
        "std_logging_ab_overhead_pct_at_freq_1": 100 * (with_std_s - base_s) / base_s,
    }
    if args.profile:
        profile_summary(trainer, step, Path(args.out), f"{model}_compile_{int(compile_on)}")
    del trainer
    if env.device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gpt2_124m,llama_1b",
                        help=f"comma-separated models among {', '.join(MODEL_SETTINGS)} (default gpt2_124m,llama_1b)")
    parser.add_argument("--compile", default="off,on", help="comma-separated torch.compile settings, off and/or on "
                        "(default off,on)")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per setting (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before timing (default 5)")
    parser.add_argument("--out", default="benchmarks/results", help="directory of <device>.json "
                        "(default benchmarks/results)")
    parser.add_argument("--profile", action="store_true", help="also write a torch.profiler summary per setting "
                        "to <out>/profile_<model>_compile_<0|1>.txt")
    parser.add_argument("--quick", action="store_true", help="CPU dry run on the debug flavor")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.compile, args.steps, args.warmup = "debug", "off", 2, 1
    unknown = set(args.models.split(",")) - set(MODEL_SETTINGS)
    if unknown:
        print(f"error: unknown --models {sorted(unknown)}; choose from {sorted(MODEL_SETTINGS)}", file=sys.stderr)
        return 2
    with distributed_session("auto") as env:
        device_name = torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else "cpu"
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        record = {"device": device_name, "torch": torch.__version__, "results": []}
        path = out / f"{device_name.replace(' ', '_')}.json"
        for model in args.models.split(","):
            for setting in args.compile.split(","):
                record["results"].append(bench_one(model, setting == "on", args, env))
                print(json.dumps(record["results"][-1]), flush=True)
                path.write_text(json.dumps(record, indent=2))  # after each entry: a cut-off run keeps its results
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
