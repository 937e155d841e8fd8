"""Time the token-cache check a run does when it opens its data (components/data.py: verify_shards).

    python benchmarks/bench_data_checksums.py [--config train_configs/debug.toml] [--gb 2] [--scratch DIR]

Two measurements: the cache of ``--config``'s dataset (the embedded corpus for the debug config; built first if
missing), and a synthetic shard directory of ``--gb`` GB of random uint16 tokens written with ShardWriter into
``--scratch`` (deleted afterwards). Each is verified twice from the page cache (the files were just read or
written); the first line per cache is the check a launch pays, the second shows that a process does not pay it
again. Prints one line per cache: wall and CPU seconds (CPU time is the cost on an idle core when the machine is
shared).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/bench_data_checksums.py` anywhere

import numpy as np  # noqa: E402

from components import data  # noqa: E402
from components.config import load_config  # noqa: E402
from components.tokenizer import build_tokenizer  # noqa: E402


def timed_verify(path: Path) -> tuple[float, float, float, int]:
    """(wall seconds of a first check, its CPU seconds, wall seconds of a repeated one, bytes checked)."""
    manifest = data.read_manifest(path)
    size = sum((path / shard["file"]).stat().st_size for info in manifest["splits"].values()
               for shard in info["shards"])
    data._VERIFIED.clear()
    start, cpu = time.perf_counter(), time.process_time()
    assert data.verify_shards(path, manifest) is None, f"{path} is damaged"
    first, first_cpu = time.perf_counter() - start, time.process_time() - cpu
    start = time.perf_counter()
    data.verify_shards(path, manifest)
    return first, first_cpu, time.perf_counter() - start, size


def synthetic_cache(target: Path, tokenizer, gigabytes: float) -> Path:
    """``gigabytes`` GB of random token ids in 4096-token documents, written as a prepared dataset."""
    rng = np.random.default_rng(0)
    n_docs = int(gigabytes * 1e9 / 2 / 4097)
    with data.ShardWriter(target, tokenizer, "random tokens", val_fraction=0.0) as writer:
        for _ in range(n_docs):
            writer.add_document(rng.integers(0, tokenizer.n_vocab - 1, 4096, dtype=np.uint16), "train")
    return target


def report(name: str, first: float, first_cpu: float, again: float, size: int) -> None:
    print(f"{name}: {size / 1e9:.3f} GB checked in {first:.3f} s wall, {first_cpu:.3f} s CPU "
          f"({size / 1e9 / max(first_cpu, 1e-9):.2f} GB per CPU second); again in the same process: "
          f"{again * 1e3:.2f} ms", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="train_configs/debug.toml", help="training config whose cache is timed")
    parser.add_argument("--gb", type=float, default=2.0, help="size of the synthetic cache (GB; 0 skips it)")
    parser.add_argument("--scratch", default=None, help="directory for the synthetic cache (default: a temp dir)")
    args = parser.parse_args(argv)
    cfg, _ = load_config(["--config", args.config])
    tokenizer = build_tokenizer(cfg.tokenizer)
    report(f"{args.config} ({cfg.data.dataset})", *timed_verify(data.ensure_dataset(cfg.data, tokenizer)))
    if args.gb > 0:
        scratch = Path(tempfile.mkdtemp(dir=args.scratch, prefix="initlab-checksums-"))
        try:
            report(f"synthetic cache of {args.gb:g} GB", *timed_verify(synthetic_cache(scratch / "shards", tokenizer,
                                                                                       args.gb)))
        finally:
            shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
