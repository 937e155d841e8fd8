"""Weak scaling of the trainer: 1 -> 2 -> 4 -> 8 ranks at a fixed per-rank batch.

    python benchmarks/bench_scaling.py [--config train_configs/llama_1b/depth_aware.toml] [--ranks 1,2,4,8]
                                    [--local-batch 4] [--steps 30] [--out benchmarks/results] [-- --section.key v ...]

Each world size runs ``torchrun --standalone --nproc_per_node=N train.py`` for ``steps`` steps with
global batch = N x local batch, logging every step; the per-device tokens/s is the median over the
logged steps after the first third (compile and allocator warm-up). Efficiency(N) =
tokens/s/device(N) / tokens/s/device(1). Writes ``<out>/weak_scaling_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/bench_scaling.py` puts benchmarks/, not the repo root, on sys.path
    sys.path.insert(0, str(REPO))

from components.run_dir import read_metrics  # noqa: E402


def run_world(n: int, args, extra: list[str], scratch: Path) -> dict:
    run_name = f"scaling_{n}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "train.py",
           "--config", args.config, "--training.global_batch_size", str(n * args.local_batch),
           "--training.local_batch_size", "0", "--training.steps", str(args.steps), "--metrics.log_freq", "1",
           "--metrics.val_freq", "0", "--checkpoint.enable", "false", "--job.output_dir", str(scratch),
           "--job.run_name", run_name, *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{n} ranks failed (exit {proc.returncode}): {tail[0]}")
    records = read_metrics(scratch / run_name / "metrics.jsonl")
    steady = [r["throughput/tokens_per_sec_per_device"] for r in records if r["step"] > args.steps // 3]
    return {"ranks": n, "global_batch_sequences": n * args.local_batch,
            "tokens_per_sec_per_device": statistics.median(steady),
            "final_loss": records[-1]["loss/train"], "peak_memory_gib": records[-1]["memory/peak_gib"]}


def main(argv: list[str]) -> int:
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Arguments after -- go to train.py as config overrides.")
    parser.add_argument("--config", default="train_configs/llama_1b/depth_aware.toml",
                        help="training config, relative to the repo (default train_configs/llama_1b/depth_aware.toml)")
    parser.add_argument("--ranks", default="1,2,4,8", help="comma-separated world sizes (default 1,2,4,8)")
    parser.add_argument("--local-batch", type=int, default=4, help="sequences per rank per step (default 4)")
    parser.add_argument("--steps", type=int, default=30, help="training steps per world size (default 30)")
    parser.add_argument("--out", default="benchmarks/results", help="directory of weak_scaling_<device>.json "
                        "(default benchmarks/results)")
    parser.add_argument("--device-name", default=None, help="label of the result file (default: from torch)")
    args = parser.parse_args(argv)
    if not (REPO / args.config).is_file():
        print(f"error: config {args.config} not found; pass --config train_configs/...", file=sys.stderr)
        return 2
    import torch
    device = args.device_name or (torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
    scratch = Path(tempfile.mkdtemp(prefix="initlab_scaling_"))
    rows = []
    try:
        for n in (int(r) for r in args.ranks.split(",")):
            rows.append(run_world(n, args, extra, scratch))
            rows[-1]["efficiency"] = rows[-1]["tokens_per_sec_per_device"] / rows[0]["tokens_per_sec_per_device"]
            print(json.dumps(rows[-1]), flush=True)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"weak_scaling_{device.replace(' ', '_')}.json"
    path.write_text(json.dumps({"device": device, "config": args.config, "extra_args": extra, "results": rows},
                               indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
