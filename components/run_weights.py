"""A run's weights on one CPU process: which saved step to read, the run's resolved config, and the full
(unsharded) model tensors of a DCP checkpoint or final-weights folder of any world size.

Used by scripts/export.py (Hugging Face export) and scripts/sample.py (generation).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from components.build import model_args_from_config
from components.checkpoint import (
    MODEL_KEY,
    CheckpointError,
    check_model_shapes,
    read_checkpoint_metadata,
    saved_model_shapes,
    weight_steps,
)
from components.config import Config
from components.run_dir import RunDir
from models import build_model
from models.common import ModelArgs
from roles import canonical_name


def pick_checkpoint(run_dir: Path, step: int | None) -> Path:
    """The ``step_<N>`` directory to export, with one-line errors for a missing run/checkpoint."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; pass <output_dir>/<run_name> of a run")
    steps = weight_steps(run_dir)
    if not steps:
        raise CheckpointError(f"{run_dir} has no complete checkpoint under checkpoints/ nor final weights under "
                              "weights/; let the run finish (or write a seed checkpoint) before exporting")
    if step is None:
        step = max(steps)
    elif step not in steps:
        raise CheckpointError(f"{run_dir} has no complete checkpoint for --step {step}; available steps: "
                              f"{', '.join(map(str, steps))}")
    return steps[step]


def run_config(run_dir: Path) -> Config:
    """The run's resolved config (the config.toml that train.py wrote)."""
    config_path = run_dir / "config.toml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing; export needs the config.toml that train.py wrote "
                                "into the run directory")
    return RunDir(run_dir).config


def model_args_of_run(run_dir: Path, vocab_size: int) -> ModelArgs:
    """Model shapes from the run's resolved config, with the vocabulary read off the checkpoint."""
    return model_args_from_config(run_config(run_dir), vocab_size)


def load_model_state(checkpoint: Path, run_dir: Path) -> tuple[dict[str, torch.Tensor], ModelArgs]:
    """Full (unsharded) float tensors of the checkpoint's model, keyed by canonical initlab names."""
    metadata = read_checkpoint_metadata(checkpoint)
    embedding = saved_model_shapes(metadata).get("tok_embedding.weight")
    if not embedding:
        raise CheckpointError(f"{checkpoint} holds no model.tok_embedding.weight tensor; is it an initlab checkpoint?")
    args = model_args_of_run(run_dir, embedding[0])
    with torch.device("meta"):
        model = build_model(args)
    model.to_empty(device="cpu")
    state = {canonical_name(name): tensor for name, tensor in model.state_dict().items()}
    check_model_shapes({name: tuple(t.shape) for name, t in state.items()}, metadata, checkpoint)
    try:
        with warnings.catch_warnings():  # one process reading a checkpoint of any world size is the intent
            warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
            dcp.load({MODEL_KEY: state}, checkpoint_id=str(checkpoint), no_dist=True)
    except Exception as err:
        raise CheckpointError(f"cannot read {checkpoint}: {' '.join(str(err).split())[:300]}") from None
    return state, args
