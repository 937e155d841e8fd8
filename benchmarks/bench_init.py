"""Benchmark model build + init on CPU: wall time and peak RSS per rank, for 1 and 2 ranks.

    python benchmarks/bench_init.py [--ranks 1,2] [--threads 1] [--section.key VALUE ...]

Defaults to llama_1b with Llama 3's vocabulary (128256 rows), on CPU (gloo). For each world
size it launches ``torchrun --standalone --nproc_per_node=N`` on this file in worker mode; each
rank times ``components.build.build_model_and_init`` (meta build -> FSDP2 -> to_empty ->
init_weights, the training path) and reads its peak resident set size from
``resource.getrusage``. Rank 0 gathers the figures; this process prints the table. The
vocabulary is the config's ``model.vocab_size`` (no tokenizer is loaded: init cost only).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the repo root, so `python benchmarks/...` works

from components.config import ConfigError, load_config  # noqa: E402

DEFAULTS = ["--model.name", "llama", "--model.flavor", "llama_1b", "--model.vocab_size", "128256",
            "--training.seq_len", "2048", "--training.device", "cpu"]
WORKER_FLAG = "--worker"
RESULT_PREFIX = "BENCH_RESULT "


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(argv: list[str]) -> None:
    """One rank: build + init, then rank 0 prints every rank's figures as one JSON line."""
    import torch.distributed as dist

    from components.build import build_model_and_init
    from distributed.env import distributed_session
    from models.common import count_params

    cfg, _ = load_config([*DEFAULTS, *argv])
    with distributed_session(cfg.training.device, cfg.parallelism.data_parallel_replicate_degree,
                             cfg.parallelism.data_parallel_shard_degree) as env:
        rss_before = current_rss_bytes()
        dist.barrier()
        start = time.perf_counter()
        model, args, _ = build_model_and_init(cfg, cfg.model.vocab_size, env)
        dist.barrier()  # the slowest rank sets the wall time
        wall = time.perf_counter() - start
        mine = {"rank": env.rank, "wall_s": wall, "rss_before_build": rss_before, "peak_rss": peak_rss_bytes()}
        everyone = [None] * env.world_size
        dist.all_gather_object(everyone, mine)
        if env.is_main:
            summary = {"world_size": env.world_size, "params": count_params(model), "flavor": cfg.model.flavor,
                       "vocab": args.vocab_size, "threads": int(os.environ.get("OMP_NUM_THREADS", "0")),
                       "ranks": everyone}
            print(RESULT_PREFIX + json.dumps(summary), flush=True)


def launch(world_size: int, threads: int, argv: list[str]) -> dict:
    """Run the worker under torchrun with ``world_size`` CPU ranks; returns rank 0's summary."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}",
           str(Path(__file__).resolve()), WORKER_FLAG, *argv]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"torchrun with {world_size} rank(s) failed (exit {proc.returncode}): {tail[0]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def format_table(summaries: list[dict]) -> str:
    gib = 2 ** 30
    first = summaries[0]
    out = [f"# {first['flavor']} ({first['params']:,} parameters, vocab {first['vocab']}), CPU, "
           f"{first['threads']} thread(s) per rank; build+init = meta build, FSDP2, to_empty, init_weights",
           "ranks  rank  build+init s  RSS before GiB  peak RSS GiB"]
    for s in summaries:
        for r in s["ranks"]:
            out.append(f"{s['world_size']:>5}  {r['rank']:>4}  {r['wall_s']:>12.1f}  "
                       f"{r['rss_before_build'] / gib:>14.2f}  {r['peak_rss'] / gib:>12.2f}")
    return "\n".join(out)


def int_list(text: str) -> list[int]:
    """'1,2' -> [1, 2], each >= 1 (an argparse type)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes integers >= 1, e.g. 1,2; got {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"takes integers >= 1, e.g. 1,2; got {text!r}")
    return values


def positive_int(text: str) -> int:
    """One integer >= 1 (an argparse type)."""
    values = int_list(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"takes one integer >= 1; got {text!r}")
    return values[0]


def parse_orchestrator(argv: list[str]) -> tuple[list[int], int, list[str]]:
    """(--ranks list, --threads, remaining config overrides)."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], allow_abbrev=False,  # no prefix matching: --section.key passes through
        epilog=f"Any other --section.key VALUE is a config override, as for train.py, on top of: {' '.join(DEFAULTS)}")
    parser.add_argument("--ranks", type=int_list, default=[1, 2], help="comma-separated world sizes (default 1,2)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads per rank (default 1)")
    args, rest = parser.parse_known_args(argv)
    return args.ranks, args.threads, rest


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == [WORKER_FLAG]:
            worker(argv[1:])
            return 0
        ranks, threads, overrides = parse_orchestrator(argv)
        load_config([*DEFAULTS, *overrides])  # fail fast on a bad override, before any launch
        summaries = []
        for world_size in ranks:
            summaries.append(launch(world_size, threads, overrides))
            slowest = max(r["wall_s"] for r in summaries[-1]["ranks"])
            print(f"# {world_size} rank(s): build+init {slowest:.1f} s", file=sys.stderr, flush=True)
        print(format_table(summaries))
        return 0
    except (ConfigError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
