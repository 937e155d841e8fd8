"""Run directories for the reports (docs/design.md §8-§9): loading, metric series, model shapes.

The reading itself is ``components.run_dir.RunDir`` (config, merged metric records, finished or not,
provenance); this module adds what reports ask of runs.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from components import config as config_mod
from components.run_dir import RunDir


def load_run(path: str | Path) -> RunDir:
    """A run directory with its config.toml and at least one logged step; one-line errors for bad input."""
    return RunDir.open(path)


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
