"""Reading run directories (docs/design.md §8-§9) for the report scripts: config, metrics, model shapes.

A run directory ``outputs/<run_name>/`` holds the resolved ``config.toml`` and ``metrics.jsonl``
(one JSON object per logged step, keys of docs/design.md §8). Records that share a step (e.g. a
validation line written apart from the training line) are merged, later keys winning, so every
helper sees one record per step, sorted by step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components import config as config_mod
from models import build_model
from models.common import ModelArgs, count_params

WEIGHT_STD_KEY = re.compile(r"^weight_std/(?P<role>[^/]+)/layer_(?P<layer>\d+)$")
# Canonical order of the per-layer roles (docs/design.md §4), for stable subplot and table order.
RENAMED_TAGS = {"grad_norm": "grad_norm_total"}
"""Tags that older runs logged under another name -> today's (the global gradient norm was ``grad_norm``, the
prefix of the per-layer ``grad_norm/<role>/layer_NN`` tags): read under today's name."""
LAYER_ROLES = ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.gate", "mlp.up", "mlp.out")


@dataclass
class RunData:
    """One run directory: its path, display name, raw ``config.toml`` tables and merged metric records."""

    path: Path
    name: str
    config: dict[str, Any]
    records: list[dict[str, Any]]

    def config_value(self, section: str, key: str) -> Any:
        """``[section].key`` from config.toml, or the config system's default when the file omits it."""
        table = self.config.get(section, {})
        if key in table:
            return table[key]
        return getattr(config_mod.SECTIONS[section](), key)

    @property
    def last_step(self) -> int:
        return self.records[-1]["step"]


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl, merged per step and sorted by step.

    NaN/Infinity literals (a diverged loss) parse as float nan/inf. A malformed last line (a
    run killed mid-write) is skipped with a warning; a malformed earlier line is an error.
    """
    lines = path.read_text().splitlines()
    by_step: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                print(f"warning: {path}:{number}: skipping a truncated last line ({exc.msg})", file=sys.stderr)
                continue
            raise ValueError(f"{path}:{number} is not valid JSON ({exc.msg}); fix or delete that line") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path}:{number} has no integer \"step\"; every line must be "
                             "a JSON object with a step (docs/design.md §8)")
        by_step.setdefault(record["step"], {}).update({RENAMED_TAGS.get(key, key): v for key, v in record.items()})
    return [by_step[step] for step in sorted(by_step)]


def load_run(path: str | Path) -> RunData:
    """Read ``config.toml`` and ``metrics.jsonl`` of a run directory; one-line errors for bad input."""
    run_dir = Path(path)
    hint = "pass a run directory written by train.py (outputs/<run_name>/)"
    if not run_dir.exists():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; {hint}")
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is not a directory; {hint}")
    metrics_path, config_path = run_dir / "metrics.jsonl", run_dir / "config.toml"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} is missing; {hint} that has logged at least one step")
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing; {hint} (train.py writes the resolved config there)")
    try:
        config = tomllib.loads(config_path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{config_path} is not valid TOML ({exc}); restore the file train.py wrote") from None
    records = read_metrics(metrics_path)
    if not records:
        raise ValueError(f"{metrics_path} has no records; the run has not logged a step yet")
    return RunData(run_dir, run_dir.resolve().name, config, records)


def metric_series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that have ``key``; a null value reads as nan."""
    steps, values = [], []
    for record in records:
        if key in record:
            value = record[key]
            steps.append(record["step"])
            values.append(math.nan if value is None else float(value))
    return steps, values


def order_roles(roles: set[str]) -> list[str]:
    """Roles in canonical order (docs/design.md §4), unknown ones last alphabetically."""
    return [r for r in LAYER_ROLES if r in roles] + sorted(roles - set(LAYER_ROLES))


def std_roles(records: list[dict[str, Any]]) -> list[str]:
    """Roles with per-layer ``weight_std/<role>/layer_<NN>`` keys, in canonical order."""
    return order_roles({m["role"] for record in records for key in record if (m := WEIGHT_STD_KEY.match(key))})


def layer_std_matrix(records: list[dict[str, Any]], role: str) -> tuple[list[int], list[int], list[list[float]]]:
    """(steps [S], layers [L], std [L][S]) of one role; nan where a step did not log a layer."""
    cells: dict[tuple[int, int], float] = {}
    steps: list[int] = []
    for record in records:
        logged = False
        for key, value in record.items():
            match = WEIGHT_STD_KEY.match(key)
            if match and match["role"] == role:
                cells[(int(match["layer"]), record["step"])] = math.nan if value is None else float(value)
                logged = True
        if logged:
            steps.append(record["step"])
    layers = sorted({layer for layer, _ in cells})
    return steps, layers, [[cells.get((layer, step), math.nan) for step in steps] for layer in layers]


def final_layer_std(records: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """{role: {layer: std}} from the newest record that logged each (role, layer)."""
    final: dict[str, dict[int, float]] = {}
    for record in records:
        for key, value in record.items():
            match = WEIGHT_STD_KEY.match(key)
            if match:
                final.setdefault(match["role"], {})[int(match["layer"])] = math.nan if value is None else float(value)
    return final


TORCHTITAN_TABLE = "torchtitan"
"""config.toml table of a torchtitan run (integrations/torchtitan_ext.py, ``initlab.run_dir``): not an initlab option,
so the config system does not read it; in ``RunData.config`` it sets the run apart from train.py's runs."""


def load_run_config(run: RunData) -> config_mod.Config:
    """The run's config.toml through the config system (validated, defaults filled in; a [torchtitan] table left out)."""
    path = run.path / "config.toml"
    if TORCHTITAN_TABLE not in run.config:
        return config_mod.load_config(["--config", str(path)])[0]
    cfg = config_mod.Config()  # the extension writes plain tables (no base include), each checked as load_config does
    for section, table in run.config.items():
        if section == TORCHTITAN_TABLE:
            continue
        for key, value in table.items():
            config_mod._apply(cfg, section, key, value, from_cli=False, origin=str(path))
    config_mod.validate(cfg)
    return cfg


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


def build_meta_model(cfg: config_mod.Config) -> tuple[nn.Module, ModelArgs]:
    """The run's model on the meta device (shapes only, no memory) and its shapes."""
    from components.build import model_args_from_config  # imports distributed/: load it only when needed

    args = model_args_from_config(cfg, model_vocab(cfg))
    with torch.device("meta"):
        model = build_model(args)
    return model, args


def count_run_params(run: RunData) -> int:
    """Parameter count of the run's model (tied tensors once), from its config."""
    model, _ = build_meta_model(load_run_config(run))
    return count_params(model)


def prepare_out_dir(out_dir: Path, filenames: list[str], overwrite: bool) -> None:
    """Create ``out_dir``; refuse (one-line error) if any output file exists and ``overwrite`` is off."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} exists and is not a directory; pass another --out")
    existing = [name for name in filenames if (out_dir / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir / existing[0]} already exists; pass another --out or --overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def error_exit(exc: Exception) -> int:
    """Print a bad-input error as one ``error: ...`` line on stderr; the scripts' exit status 2."""
    print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
    return 2


INPUT_ERRORS = (ValueError, FileNotFoundError, FileExistsError)
"""Exceptions that mean bad input (a path, a value, a file's content): reported by ``error_exit``."""


def config_defaults(section: str) -> dict[str, Any]:
    """Default values of one config table, as the config system declares them."""
    return dataclasses.asdict(config_mod.SECTIONS[section]())
