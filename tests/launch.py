"""Run a script under torchrun with N CPU ranks (gloo) for the distributed tests."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def torchrun(args: list[str], nproc: int, timeout: float = 600, env: dict | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=nproc <args>`` from the repo root; returns the process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def python(args: list[str], timeout: float = 600, env: dict | None = None,
           check: bool = True) -> subprocess.CompletedProcess:
    """``python <args>`` from the repo root (a single process, as a newcomer would run it)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"python failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def build_training_data(argv: list[str]) -> Path:
    """The token shards a ``train.py <argv>`` run reads, built now if missing (the embedded corpus is built into
    its cache on first use): runs then launched side by side find it complete instead of both building it."""
    from components.config import load_config
    from components.data import ensure_dataset_from
    from components.tokenizer import build_tokenizer

    argv = [str(REPO / arg) if prev == "--config" else arg for prev, arg in zip(["", *argv], argv)]
    cfg, _ = load_config(argv)
    return ensure_dataset_from(REPO, cfg.data, build_tokenizer(cfg.tokenizer))


def side_by_side(*calls):
    """Run the zero-argument ``calls`` (launches of independent processes) as many at once as the machine has
    cores; returns their results in order (the first exception raised is re-raised)."""
    with ThreadPoolExecutor(max_workers=max(1, min(len(calls), os.cpu_count() or 1))) as pool:
        return [future.result() for future in [pool.submit(call) for call in calls]]


def torchtitan_beside_initlab(token_dir: str, torchtitan_dump: Path, initlab_out: Path, flags: list[str],
                              torchtitan_flavor: str = "initlab_debug") -> None:
    """torchtitan's trainer with initlab's extension (one rank, ``torchtitan_dump``) and train.py (``initlab_out``)
    side by side, one process each: the CPU comparison's two TOMLs (benchmarks/torchtitan/compare_*.toml), the
    debug Llama shape, fp32, foreach AdamW, the same token folder and the ``--section.key=value`` ``flags``."""
    side_by_side(
        lambda: torchrun(["tests/torchtitan_cpu_trainer.py", "--job.config_file",
                          "benchmarks/torchtitan/compare_torchtitan.toml", "--job.dump_folder", str(torchtitan_dump),
                          "--model.flavor", torchtitan_flavor, "--initlab.dataset", token_dir, *flags,
                          "--training.mixed_precision_param", "float32", "--optimizer.implementation", "foreach"],
                         nproc=1, timeout=300),
        lambda: python(["train.py", "--config", "benchmarks/torchtitan/compare_initlab.toml", "--job.output_dir",
                        str(initlab_out), "--model.flavor", "debug", "--model.vocab_size", "4097",
                        "--tokenizer.max_vocab", "4096", "--data.dataset", token_dir, *flags, "--training.device", "cpu",
                        "--optimizer.implementation", "foreach"], env={"OMP_NUM_THREADS": "1"}, timeout=300))


def pythons_side_by_side(commands: list[list[str]], timeout: float = 600,
                         env: dict | None = None) -> list[subprocess.CompletedProcess]:
    """``python <args>`` of each command, side by side (each process is meant to use one thread); every one
    must succeed. Returns the processes in the order of ``commands``."""
    return side_by_side(*[lambda args=args: python(args, timeout=timeout, env=env) for args in commands])


def children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (Linux /proc), e.g. the rank processes of a torchrun agent."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its new parent, counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
