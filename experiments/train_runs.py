"""Many short runs of train.py's trainer, in this process or as subprocesses, and what they logged.

The coordinate check and the lr-transfer sweep (scripts/coord_check.py, scripts/lr_transfer.py) train
through this module, so they share train.py's one training loop (its step, loss, clipping, optimizer
groups, FSDP2, schedule, non-finite handling and metrics.jsonl) instead of keeping loops of their own.

``launcher = "inprocess"`` (the default) calls ``train.run(cfg)`` in this interpreter, one run after
another (each in its own process group, which ``distributed_session`` opens and closes): a 2-block
model of width 64 trains 10 steps in ~0.5 s, where a fresh ``python train.py`` spends ~5 s of CPU on
start-up (importing torch, building the tokenizer), so a scan of 30 small runs fits a CI test.
``launcher = "subprocess"`` runs ``python train.py <args>`` per run instead (a fresh process: nothing a
run changes in the interpreter can leak into the next). A run that diverges (the trainer stops it with
``NonFiniteLossError``, exit status 1) is a result, kept: its records end at the last logged step and its
directory gets ``diverged.json`` as ``scripts/sweep.py`` writes it, so a later call reads it back instead of
training it again, and ``scripts/lr_transfer.py --runs`` reads either tool's run directories.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from components.config import load_config
from components.data import HeldOutPrefix, TokenDataset, ensure_dataset
from components.metrics import NonFiniteLossError
from components.run_dir import RunDir
from components.sweep import record_divergence
from components.tokenizer import build_tokenizer

REPO = Path(__file__).resolve().parent.parent

LAUNCHERS = ("inprocess", "subprocess")


@dataclass
class RunResult:
    """One finished run: its directory, metrics.jsonl records (merged per step) and whether it diverged."""

    run_dir: Path
    records: list[dict]
    diverged: bool

    def series(self, key: str) -> dict[int, float]:
        """step -> value of ``key`` at the steps that logged it."""
        return {r["step"]: r[key] for r in self.records if key in r}


def parametrization_args(label: str) -> list[str]:
    """train.py arguments of a parametrization label: 'sp', 'mup', 'completep' or 'completep:<alpha>'
    (e.g. 'completep:0.5', depth-μP), so that one scan can hold several depth exponents."""
    name, _, alpha = label.partition(":")
    if alpha and name != "completep":
        raise ValueError(f"parametrization {label!r}: only completep takes an alpha (completep:0.5)")
    return ["--parametrization.name", name, *(["--parametrization.alpha", alpha] if alpha else [])]


def add_study_options(parser: argparse.ArgumentParser, study: str) -> None:
    """The options of a study of train.py runs over widths or depths (scripts/coord_check.py, scripts/lr_transfer.py):
    --parametrizations (None until :func:`default_parametrizations`), --width / --depth (the fixed shape of the other
    scan), --base-width / --base-depth and --launcher; ``study`` names the study in the help ('scan', 'sweep')."""
    parser.add_argument("--parametrizations", type=lambda s: s.split(","), default=None,
                        help="comma list of sp, mup, completep, completep:<alpha> "
                             "(default: sp,mup for width; mup,completep for depth)")
    parser.add_argument("--width", type=int, default=128, help=f"width of the depth {study} (features)")
    parser.add_argument("--depth", type=int, default=2, help=f"depth of the width {study} (blocks)")
    parser.add_argument("--base-width", type=int, default=64, help="parametrization.base_width (features)")
    parser.add_argument("--base-depth", type=int, default=2, help="parametrization.base_depth (blocks)")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="inprocess",
                        help="run train.py's trainer in this process or as one subprocess per run")


def number_list(kind: type) -> Callable[[str], list]:
    """argparse type of a comma list of numbers of ``kind`` ('64,128' -> [64, 128]; empty items skipped); a bad item
    is argparse's one-line error naming the list's kind ('invalid int_list value')."""
    def parse(text: str) -> list:
        return [kind(v) for v in text.split(",") if v]

    parse.__name__ = f"{kind.__name__}_list"
    return parse


def default_parametrizations(mode: str) -> list[str]:
    """What a width study compares (sp, mup) and a depth study (mup, completep)."""
    return ["sp", "mup"] if mode == "width" else ["mup", "completep"]


def prepared_dataset(args: list[str]) -> str:
    """The token-shard directory of the data and tokenizer that ``args`` select, built once here.

    Passing it as ``--data.dataset`` to every run spares each run the embedded corpus's scan of the
    standard library (~0.3 s); the shards are the same files either way. When the runs validate, the
    val split is checked to hold ``metrics.val_tokens`` here (ValueError, the trainer's one line), so that
    a too-short split stops a sweep before its first run, not in every one of them."""
    cfg, _ = load_config(list(args))
    path = ensure_dataset(cfg.data, build_tokenizer(cfg.tokenizer))
    if cfg.metrics.val_freq:
        HeldOutPrefix(TokenDataset(path, "val"), cfg.training.seq_len, cfg.metrics.val_tokens)
    return str(path)


def run_training(args: list[str], run_dir: Path, launcher: str = "inprocess") -> RunResult:
    """Train ``python train.py <args>`` into ``run_dir`` (which must not hold a finished run of other args).

    ``args`` are train.py's command-line arguments (``--config X.toml --section.key value ...``);
    ``--job.output_dir`` and ``--job.run_name`` are set here from ``run_dir``.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher {launcher!r} is unknown; use one of {', '.join(LAUNCHERS)}")
    full = [*args, "--job.output_dir", str(run_dir.parent), "--job.run_name", run_dir.name]
    cfg = load_config(full)[0]
    error = ""
    marked = RunDir(run_dir).diverged_record()
    if marked is not None:  # an earlier call's result
        error = marked["error"]
    elif launcher == "inprocess":
        import train  # the entry script's loop, in this interpreter (benchmarks/bench_train.py does the same)

        try:
            train.run(cfg)
        except NonFiniteLossError as err:
            error = f"error: {err}"
    else:
        proc = subprocess.run([sys.executable, str(REPO / "train.py"), *full], cwd=REPO, capture_output=True,
                              text=True)
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        if proc.returncode not in (0, 1) or (proc.returncode == 1 and "non-finite" not in tail):
            raise RuntimeError(f"train.py {' '.join(full)} failed with exit status {proc.returncode}: {tail}")
        error = tail if proc.returncode == 1 else ""
    if error and marked is None:  # marked as scripts/sweep.py marks it: a result
        record_divergence(SimpleNamespace(run_dir=run_dir, config=cfg), error)
    return RunResult(run_dir, RunDir(run_dir).records, bool(error))
