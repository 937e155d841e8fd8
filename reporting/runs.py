"""Run directories for the reports (docs/design.md §8-§9): loading, metric series, model shapes.

The reading itself is ``components.run_dir.RunDir`` (config, merged metric records, finished or not,
provenance); this module adds what reports ask of runs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components import config as config_mod
from components.provenance import UNKNOWN
from components.run_dir import NotARunDir, RunDir
from reporting.cli import warn


def load_run(path: str | Path) -> RunDir:
    """A run directory with its config.toml and at least one logged step; one-line errors for bad input."""
    return RunDir.open(path)


@dataclass
class RunSelection:
    """The runs a report computes statistics over, and what it left out (every exclusion is said on stderr)."""

    runs: list[RunDir]  # included (finished and diverged runs; unfinished ones only when asked)
    unfinished: list[RunDir] = field(default_factory=list)  # left out of the statistics
    skipped: list[str] = field(default_factory=list)  # arguments that are no run directory: "<path>: <why>"
    common_step: int | None = None  # unfinished runs included: every run's records cut at this step

    @property
    def commits(self) -> list[str]:
        """Distinct commits of the included runs (docs/design.md §9), "unknown" for runs that recorded none."""
        return list(dict.fromkeys(commit for run in self.runs for commit in run.commits))

    @property
    def devices(self) -> dict[str, int]:
        """How many included runs ran on each device (``run_device``), in order of first appearance."""
        return device_counts(self.runs)


def run_device(run: RunDir) -> str:
    """The device a run trained on, from its starts' provenance (``components/provenance.py``: "NVIDIA H200",
    "cpu"); devices of a resumed run joined by " + "; "unknown" for a run that recorded none."""
    names = list(dict.fromkeys(str(start.get("device") or UNKNOWN) for start in run.starts))
    return " + ".join(names) if names else UNKNOWN


def device_counts(runs: list[RunDir]) -> dict[str, int]:
    """{device: number of runs} over ``runs`` (``run_device``), in order of first appearance."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run_device(run)] = counts.get(run_device(run), 0) + 1
    return counts


def devices_text(counts: dict[str, int]) -> str:
    """``unknown: 73 runs, NVIDIA H200: 32 runs``."""
    return ", ".join(f"{device}: {n} run{'s' * (n != 1)}" for device, n in counts.items())


def steps_text(run: RunDir) -> str:
    return f"{run.steps_done}/{run.steps_planned}"


def expand_folders(paths: list[str | Path]) -> list[Path]:
    """Each path, except a folder that is no run directory but holds some (a sweep's output directory): its
    subfolders instead (sorted; dot-folders such as the sweep's ``.sweep/`` left out)."""
    expanded = []
    for path in map(Path, paths):
        children = (sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
                    if path.is_dir() and not ((path / "config.toml").exists() or (path / "metrics.jsonl").exists())
                    else [])
        if any((child / "config.toml").is_file() for child in children):
            expanded += children
        else:
            expanded.append(path)
    return expanded


def select_runs(paths: list[str | Path], include_unfinished: bool = False) -> RunSelection:
    """Open ``paths`` as run directories (a folder of run directories stands for them): folders that are none are
    skipped with a note; unfinished runs (status
    "unfinished": neither finished nor diverged) are left out with a warning naming them, unless
    ``include_unfinished``: then every included run is cut at the last step that all included runs that did not
    diverge reached (their last common step). A path that does not exist stays an error."""
    selection = RunSelection([])
    for path in expand_folders(paths):
        try:
            run = RunDir.open(path, need_metrics=False)
        except NotARunDir as exc:
            selection.skipped.append(str(exc).split(";")[0])
            continue
        if run.status != "unfinished" or (include_unfinished and run.records):
            selection.runs.append(run)
        else:
            selection.unfinished.append(run)
    for note in selection.skipped:
        warn(f"skipped {note}", kind="note")
    if selection.unfinished:
        left = ", ".join(f"{run.path} (step {steps_text(run)})" for run in selection.unfinished)
        how = ("they have logged no step" if include_unfinished else
               "pass --include-unfinished to include them at their last common step")
        warn(f"left out {len(selection.unfinished)} unfinished run(s) ({how}): {left}")
    if not selection.runs:
        raise ValueError(f"no finished or diverged run among the {len(paths)} path(s) given"
                         f"{'' if include_unfinished else '; pass --include-unfinished to compare unfinished runs'}")
    if include_unfinished and any(run.status == "unfinished" for run in selection.runs):
        growing = [run for run in selection.runs if not run.diverged] or selection.runs
        selection.common_step = min(run.last_step for run in growing)
        selection.runs = [run.truncated(selection.common_step) for run in selection.runs]
        warn(f"unfinished runs included: every run's values are taken at step {selection.common_step}, the last step "
             "all runs that did not diverge reached")
    if len(selection.commits) > 1:
        warn(f"the runs come from different commits ({', '.join(selection.commits)}); differences between them may "
             "be the code's")
    if len(selection.devices) > 1:
        warn(f"the runs ran on different devices ({devices_text(selection.devices)}); low-precision results are not "
             "bitwise comparable across devices, so differences between them may be the hardware's")
    return selection


def selection_text(selection: RunSelection) -> str:
    """What the statistics rest on: runs left out, folders skipped, the cut step, mixed commits or devices (Markdown)."""
    lines = [f"- left out (unfinished, step {steps_text(run)}): `{run.path}`" for run in selection.unfinished]
    lines += [f"- skipped (not a run directory): {note}" for note in selection.skipped]
    if selection.common_step is not None:
        lines.append(f"- unfinished runs included: every value is taken at step {selection.common_step}, the last "
                     "step all runs that did not diverge reached")
    if len(selection.commits) > 1:
        lines.append(f"- **the runs come from different commits** ({', '.join(selection.commits)}): a difference "
                     "between groups may be the code's")
    if len(selection.devices) > 1:
        lines.append(f"- **the runs ran on different devices** ({devices_text(selection.devices)}): low-precision "
                     "results are not bitwise comparable across devices, so a difference between groups may be the "
                     "hardware's")
    return "\n".join(lines) + "\n" if lines else ""


def metric_series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that have ``key``; a null value reads as nan."""
    steps, values = [], []
    for record in records:
        if key in record:
            value = record[key]
            steps.append(record["step"])
            values.append(math.nan if value is None else float(value))
    return steps, values


def final_value(records: list[dict[str, Any]], key: str) -> float:
    """Last logged value of ``key`` (nan if the run never logged it)."""
    _, values = metric_series(records, key)
    return values[-1] if values else math.nan


def unique_names(runs: list[RunDir]) -> None:
    """Label runs by directory name, falling back to the path given when two names collide."""
    names = [run.name for run in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = str(run.path)


def config_defaults(section: str) -> dict[str, Any]:
    """Default values of one config table, as the config system declares them."""
    return dataclasses.asdict(config_mod.SECTIONS[section]())


def model_vocab(cfg: config_mod.Config) -> int:
    """Embedding rows: ``model.vocab_size`` if set, else the tokenizer's vocabulary size."""
    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    try:
        from components.tokenizer import build_tokenizer
    except ImportError as exc:
        raise ValueError(f"model.vocab_size is not set and the tokenizer module is unavailable ({exc}); "
                         "set model.vocab_size in config.toml") from None
    return build_tokenizer(cfg.tokenizer).n_vocab


def build_meta_model(cfg: config_mod.Config):
    """The run's model on the meta device (shapes only, no memory) and its ``ModelArgs``."""
    import torch

    from components.build import model_args_from_config  # imports distributed/: load it only when needed
    from models import build_model

    args = model_args_from_config(cfg, model_vocab(cfg))
    with torch.device("meta"):
        model = build_model(args)
    return model, args


def count_run_params(run: RunDir) -> int:
    """Parameter count of the run's model (tied tensors once), from its config."""
    from models.common import count_params

    model, _ = build_meta_model(run.config)
    return count_params(model)
