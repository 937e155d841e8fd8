"""Throughput and MFU of initlab's trainer on one GPU, one lever at a time.

    python benchmarks/bench_gpu.py [--models gpt2_124m,llama_1b] [--variants before,keep_gathered,...]
                                [--steps 10] [--warmup 5] [--profile current] [--out benchmarks/results]
                                [--torchtitan-summary tt.json]

Each model runs at its stated speed point (``MODEL_SETTINGS``: sequence length, micro-batch and
accumulation steps of one optimizer step). Each variant (``VARIANTS``) is the code's defaults plus a
few overrides, so a lever's effect is its variant against ``before`` (this round's starting point,
the previous defaults) or ``current`` against both. For every model x variant it builds the real
Trainer (FSDP2 on a world of one, bf16 compute / fp32 reduce, flash SDPA, compiled blocks), runs
``warmup`` optimizer steps, then times ``steps`` with a device sync only at the ends, and appends one
record to ``<out>/<device>.json``: the date, torch version, git commit, batch, compile, tokens/s and MFU
under both FLOP conventions (models/common.py ``flops_per_token``: ``mfu`` = torchtitan's
6 N_non-embedding + attention, ``mfu_all_matmuls`` = every matmul, the tied head included).
``--torchtitan-summary`` appends the JSON of benchmarks/torchtitan/run_torchtitan.py to the same file,
with the same fields, so both trainers of one GPU allocation sit side by side. ``--profile VARIANT`` also writes a
torch.profiler summary of 3 steps of that variant to ``<out>/profiles/`` (and with ``--trace-dir`` its chrome
trace, which benchmarks/device_trace.py reads). On a CPU, ``--quick`` runs the
same code on the debug flavor (a dry run of the script, not a benchmark).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_common import MODEL_SETTINGS, git_commit, settings_argv, timed_steps  # noqa: E402
from benchmarks.device_trace import busy_and_gaps  # noqa: E402
from components.config import load_config  # noqa: E402
from components.metrics import MFU_TAGS  # noqa: E402
from distributed.env import distributed_session  # noqa: E402
from distributed.parallelize import compile_enabled  # noqa: E402
from train import Trainer  # noqa: E402

RESULT_PREFIX = "bench_gpu result: "
SDPA_NO_CUDNN = "INITLAB_BENCH_SDPA_NO_CUDNN"


@dataclass(frozen=True)
class Variant:
    """Overrides of the code's defaults: config flags, sequences per micro-batch per model (tokens per step stay
    fixed; absent = the model's), environment variables of the process."""

    overrides: tuple[str, ...] = ()
    micro: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)


RESHARD = ("--parallelism.reshard_after_forward", "true")
GPT2_MICRO_16 = {"gpt2_124m": 16}
# "before" is where this round started: gathered weights freed after each forward and re-gathered for
# backward and for every micro-batch, GPT-2 in micro-batches of 16.
VARIANTS = {
    "before": Variant(RESHARD, GPT2_MICRO_16),
    "keep_gathered": Variant((), GPT2_MICRO_16),  # auto: no resharding on a world of one, gathered once per step
    "nonfinite_log": Variant((*RESHARD, "--training.nonfinite_check", "log"), GPT2_MICRO_16),
    "micro_32": Variant(RESHARD, {"gpt2_124m": 32}),
    "micro_64": Variant(RESHARD, {"gpt2_124m": 64}),
    "current": Variant(),  # the code's defaults at the model's setting
    "current_nonfinite_log": Variant(("--training.nonfinite_check", "log")),
    "current_gc_scheduled": Variant(("--training.gc_freq", "50")),  # torchtitan's default schedule
    "current_expandable_segments": Variant(env={"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}),
    # inductor tunes each Triton kernel's block sizes by coordinate descent (torch/_inductor/config.py)
    "current_cdt": Variant(env={"TORCHINDUCTOR_COORDINATE_DESCENT_TUNING": "1"}),
    # scaled_dot_product_attention without its cuDNN backend (torch's next by priority is FlashAttention-2): a benchmark-only
    # switch that bench_one reads, as no torch environment variable picks the backend
    "current_sdpa_flash": Variant(env={SDPA_NO_CUDNN: "1"}),
    "micro_16_llama": Variant(micro={"llama_1b": 16}),  # llama_1b in one 16 x 2048 micro-batch (73 GiB)
    # FSDP2 on one GPU without its staging copies: weights cast once, gradients accumulated in the packed buffer
    # (the default for a world of one on CUDA since it was measured; "fsdp2_copies" is FSDP2's own path, the default before)
    "one_rank_in_place": Variant(("--parallelism.one_rank_in_place", "true")),
    "fsdp2_copies": Variant(("--parallelism.one_rank_in_place", "false")),
}


def variant_micro(model: str, variant: str) -> int:
    """Sequences per micro-batch of ``variant`` for ``model``."""
    return VARIANTS[variant].micro.get(model, MODEL_SETTINGS[model][2])


def applies(model: str, variant: str) -> bool:
    """Whether the variant's micro-batch divides the model's sequences per step (micro_64 does not fit debug)."""
    _, _, micro, accum = MODEL_SETTINGS[model]
    return (micro * accum) % variant_micro(model, variant) == 0


def profile_summary(trainer: Trainer, first_step: int, out: Path, name: str, steps: int = 3,
                    trace_dir: Path | None = None) -> None:
    """torch.profiler over a few steps: device busy and idle time vs wall time, top ops by device and host time;
    with ``trace_dir``, the chrome trace too (``trace_<name>.json.gz``, for benchmarks/device_trace.py)."""
    from torch.profiler import ProfilerActivity, profile
    cuda = trainer.env.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True, with_stack=True) as prof:
        wall = timed_steps(trainer, first_step, steps)
    averages = prof.key_averages()
    # Busy = the union of kernel and copy intervals (idle_gap_report); a sum of self device times would count
    # the device-side annotation ranges (compiled graphs, FSDP phases) on top of the kernels inside them.
    gaps = idle_gap_report(prof.events(), steps) if cuda else "no device events"
    lines = [f"{name}: wall {1e3 * wall / steps:.1f} ms/step; {gaps.splitlines()[0]}"]
    if cuda:
        lines.append(averages.table(sort_by="self_device_time_total", row_limit=30))
    lines.append(averages.table(sort_by="self_cpu_time_total", row_limit=15))
    if cuda:  # which tensors the eager ops run on (names the copies and elementwise kernels outside the graphs)
        by_shape = prof.key_averages(group_by_input_shape=True)
        lines.append(by_shape.table(sort_by="self_device_time_total", row_limit=40, max_name_column_width=40,
                                    max_shapes_column_width=120))
        by_stack = prof.key_averages(group_by_stack_n=5)  # and from which Python lines
        lines.append(by_stack.table(sort_by="self_device_time_total", row_limit=40, max_name_column_width=40))
        lines.append(gaps)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"profile_{name}.txt").write_text("\n".join(lines))
    if trace_dir is not None:
        trace_dir.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace_dir / f"trace_{name}.json.gz"))
    print(lines[0], flush=True)


def idle_gap_report(events, steps: int, top: int = 15, min_us: float = 20.0) -> str:
    """Where the device waited: the union of all kernel and copy intervals (every stream) against the profiled
    window, and the ``top`` longest gaps of at least ``min_us`` between them, each with the kernel it ended on
    and the host ops that launched that kernel (outermost first, from the profiler's correlation ids)."""
    from torch.autograd import DeviceType
    # Kernels, copies and sets only: annotation ranges span the idle time between the kernels they enclose, and
    # "Command Buffer Full" marks the host waiting on a full launch queue.
    device = sorted((e for e in events if e.device_type == DeviceType.CUDA and not e.is_user_annotation
                     and e.name != "Command Buffer Full"), key=lambda e: e.time_range.start)
    if not device:
        return "no device events"
    launcher = {e.id: e for e in events if e.device_type == DeviceType.CPU}
    busy, window, gaps = busy_and_gaps([(e.time_range.start, e.time_range.end, e) for e in device], min_us)
    lines = [f"device busy {busy / 1e3 / steps:.2f} ms/step, idle {(window - busy) / 1e3 / steps:.2f} of "
             f"{window / 1e3 / steps:.2f} "
             f"({len(gaps)} gaps >= {min_us:.0f} us: {sum(g for g, _ in gaps) / 1e3 / steps:.2f} ms/step); "
             f"longest {top}:", "| gap us | next kernel | launched by (outermost first) |", "|---|---|---|"]
    for gap, event in sorted(gaps, key=lambda g: -g[0])[:top]:
        chain, op = [], launcher.get(getattr(event, "linked_correlation_id", None))  # torch >= 2.12
        while op is not None:
            chain.append(op.name)
            op = op.cpu_parent
        names = chain[::-1] if len(chain) <= 4 else [*chain[:-4:-1], "...", chain[0]]  # outermost 3 ... innermost
        lines.append(f"| {gap:.0f} | {event.name[:60]} | {' > '.join(names) or '?'} |")
    return "\n".join(lines)


def bench_one(model: str, variant: str, args, env, common: dict) -> dict:
    overrides = list(VARIANTS[variant].overrides)
    config, batch, micro, accum = settings_argv(model, variant_micro(model, variant))
    total = args.warmup + args.steps + 10
    cfg, _ = load_config(["--config", config, *batch, "--training.steps", str(total), "--checkpoint.enable", "false",
                          "--metrics.val_freq", "0", "--training.device", env.device.type, *overrides])
    if os.environ.get(SDPA_NO_CUDNN) == "1":  # before the model is built and compiled
        torch.backends.cuda.enable_cudnn_sdp(False)
    trainer = Trainer(cfg, env)
    if env.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(env.device)
    timed_steps(trainer, 1, args.warmup)
    step_s = timed_steps(trainer, args.warmup + 1, args.steps) / args.steps
    tokens = cfg.training.global_batch_size * cfg.training.seq_len
    result = {
        **common, "trainer": "initlab", "model": model, "variant": variant, "overrides": overrides,
        "env": VARIANTS[variant].env, "cudnn_sdpa": torch.backends.cuda.cudnn_sdp_enabled(),
        "compile": compile_enabled(cfg.compile.enable, env.device),
        "seq_len": cfg.training.seq_len, "micro_batch_sequences": micro, "accumulation_steps": accum,
        "tokens_per_step": tokens, "params": trainer.n_params,
        "reshard_after_forward": not trainer.keep_gathered, "nonfinite_check": cfg.training.nonfinite_check,
        "flops_per_token": trainer.flops_per_token, "step_time_s": step_s, "tokens_per_sec_per_device": tokens / step_s,
        "peak_memory_gib": (torch.cuda.max_memory_allocated(env.device) / 2**30 if env.device.type == "cuda" else None),
    }
    for convention, flops in trainer.flops_per_token.items():
        result[MFU_TAGS[convention]] = tokens / step_s * flops / trainer.peak_flops if trainer.peak_flops else None
    if variant in args.profile:
        profile_summary(trainer, args.warmup + args.steps + 1, Path(args.out) / "profiles", f"{model}_{variant}",
                        trace_dir=args.trace_dir)
    return result


def torchtitan_record(path: Path, common: dict) -> dict:
    """run_torchtitan.py's summary with this file's fields (its MFU is torchtitan's non-embedding convention)."""
    summary = json.loads(path.read_text())
    if not summary.get("ok", True):
        raise ValueError(f"{path}: the torchtitan run failed (ok = false); see its log")
    return {**common, "trainer": "torchtitan 0.2.2", "model": "llama_1b", "variant": "torchtitan",
            "compile": summary.get("compile"), "seq_len": summary.get("seq_len"),
            "micro_batch_sequences": summary.get("local_batch_size"), "accumulation_steps": summary.get("grad_accum_steps"),
            "tokens_per_step": summary.get("tokens_per_step_per_device"), "params": summary.get("num_params"),
            "step_time_s": summary["step_time_s"], "tokens_per_sec_per_device": summary["tokens_per_sec_per_device"],
            "mfu": summary["mfu"], "peak_memory_gib": summary.get("peak_memory_gib"),
            "peak_memory_kind": "reserved", "source": str(path)}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gpt2_124m,llama_1b",
                        help=f"comma-separated models among {', '.join(MODEL_SETTINGS)} (default gpt2_124m,llama_1b)")
    parser.add_argument("--variants", default="before,current",
                        help=f"comma-separated variants among {', '.join(VARIANTS)} (default before,current)")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per variant (default 10)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before timing (default 5)")
    parser.add_argument("--out", default="benchmarks/results", help="directory of <device>.json "
                        "(default benchmarks/results)")
    parser.add_argument("--profile", default="", help="comma-separated variants to profile for 3 more steps")
    parser.add_argument("--trace-dir", type=Path, help="write each profile's chrome trace here too (trace_<model>_"
                        "<variant>.json.gz, tens of MB: keep it out of --out where only small files belong)")
    parser.add_argument("--torchtitan-summary", type=Path, help="JSON of benchmarks/torchtitan/run_torchtitan.py "
                        "from this allocation, appended to <device>.json")
    parser.add_argument("--quick", action="store_true", help="CPU dry run on the debug flavor")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # MODEL:VARIANT, measured in this process
    parser.add_argument("--common", help=argparse.SUPPRESS)  # the record fields of the parent (JSON)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.steps, args.warmup = "debug", 2, 1
    if args.steps < 1 or args.warmup < 1:
        parser.error(f"--steps {args.steps} and --warmup {args.warmup} must both be >= 1 (the warm-up compiles)")
    args.profile = [v for v in args.profile.split(",") if v]
    for option, chosen, known in (("--models", args.models.split(","), MODEL_SETTINGS),
                                  ("--variants", args.variants.split(",") + args.profile, VARIANTS)):
        unknown = sorted(set(chosen) - set(known))
        if unknown:
            parser.error(f"unknown {option} {unknown}; choose from {sorted(known)}")
    return args


class BenchError(RuntimeError):
    """A variant's process failed (its last error line is the message)."""


def measure_in_child(model: str, variant: str, args, common: dict) -> dict:
    """bench_one in a fresh process with the variant's environment: no compiled graph, allocator state or
    recompilation count carries over from one variant to the next (an in-process rerun of an identical
    setting measured 11 % slower)."""
    argv = [sys.executable, __file__, "--child", f"{model}:{variant}", "--steps", str(args.steps), "--warmup",
            str(args.warmup), "--out", args.out, "--profile", ",".join(args.profile), "--common", json.dumps(common),
            *(["--trace-dir", str(args.trace_dir)] if args.trace_dir else [])]
    proc = subprocess.run(argv, env={**os.environ, **VARIANTS[variant].env}, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"{model}/{variant} failed (exit {proc.returncode}): {last}; run it alone with "
                         f"--models {model} --variants {variant} to see its whole output")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def run_child(args) -> int:
    model, variant = args.child.split(":")
    with distributed_session("auto") as env:
        print(RESULT_PREFIX + json.dumps(bench_one(model, variant, args, env, json.loads(args.common))), flush=True)
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    try:
        return measure_all(args)
    except BenchError as error:  # the records measured before it are already written
        print(f"error: {error}", file=sys.stderr)
        return 1


def measure_all(args) -> int:
    """Every model x variant, each in its own process; appends the records to <out>/<device>.json."""
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    common = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
              "torch": torch.__version__, "device": device_name, "commit": git_commit()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{device_name.replace(' ', '_')}.json"
    record = json.loads(path.read_text()) if path.exists() else {"device": device_name, "results": []}
    new = [torchtitan_record(args.torchtitan_summary, common)] if args.torchtitan_summary else []
    path.write_text(json.dumps({**record, "results": record["results"] + new}, indent=2))  # before any variant fails
    for model in args.models.split(","):
        for variant in args.variants.split(","):
            if not applies(model, variant):
                print(f"{model}/{variant}: skipped (its micro-batch does not divide the step)", flush=True)
                continue
            new.append(measure_in_child(model, variant, args, common))
            print(json.dumps(new[-1]), flush=True)
            path.write_text(json.dumps({**record, "results": record["results"] + new}, indent=2))  # kept if cut off
    path.write_text(json.dumps({**record, "results": record["results"] + new}, indent=2))
    print(table(new))
    print(f"wrote {path}")
    return 0


def table(results: list[dict]) -> str:
    lines = ["| trainer | model | variant | micro x accum | tokens/s | MFU (6N) | MFU (all matmuls) | peak GiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        mfus = [f"{100 * r[key]:.1f} %" if r.get(key) else "-" for key in ("mfu", "mfu_all_matmuls")]
        memory = f"{r['peak_memory_gib']:.1f}" if r.get("peak_memory_gib") else "-"
        lines.append(f"| {r['trainer']} | {r['model']} | {r['variant']} | {r['micro_batch_sequences']} x "
                     f"{r['accumulation_steps']} | {r['tokens_per_sec_per_device']:,.0f} | {mfus[0]} | {mfus[1]} | "
                     f"{memory} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
