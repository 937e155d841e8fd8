"""Consolidate a run's sharded DCP checkpoint into Hugging Face ``model.safetensors`` + ``config.json``.

    python scripts/export.py <run_dir> [--step N] [--out DIR]

Reads ``<run_dir>/config.toml`` (written by train.py) for the model shapes and the newest complete
``<run_dir>/checkpoints/step_<N>/`` (or ``--step N``), loads the model's tensors on one CPU
process (DCP gathers the shards of any world size), renames/re-lays them for transformers
(components/hf_convert.py) and writes ``<run_dir>/export/`` (or ``--out``): GPT-2 runs load in
``GPT2LMHeadModel``, Llama runs in ``LlamaForCausalLM``, in float32. The vocabulary size comes
from the checkpoint's embedding. The run's tokenizer (cl100k_base or its ``max_vocab`` slice, or a
``.tiktoken`` file) is written as ``tokenizer.json`` + ``tokenizer_config.json``
(components/hf_tokenizer.py: ``AutoTokenizer`` loads it, same ids as initlab's on ordinary text),
its EOS id goes into ``config.json`` and ``generation_config.json``. The files (mode 0644) are
written to a temporary directory renamed into place at the end; an existing non-empty output
directory is never touched.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python scripts/export.py` from anywhere

import torch  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402

from components import hf_convert  # noqa: E402
from components.build import model_args_from_config  # noqa: E402
from components.checkpoint import (  # noqa: E402
    MODEL_KEY,
    CheckpointError,
    check_model_shapes,
    read_checkpoint_metadata,
    saved_model_shapes,
    weight_steps,
)
from components.config import Config, ConfigError  # noqa: E402
from components.hf_tokenizer import tokenizer_config, tokenizer_json  # noqa: E402
from components.run_dir import RunDir  # noqa: E402
from components.tokenizer import build_tokenizer  # noqa: E402
from models import build_model  # noqa: E402
from models.common import ModelArgs  # noqa: E402
from roles import canonical_name


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="run directory (holds config.toml and checkpoints/)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step to export (default: the newest)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: <run_dir>/export)")
    return parser.parse_args(argv)


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


def tokenizer_files(run_dir: Path, vocab_size: int, config: dict) -> dict[str, str]:
    """{file name: text} of the run's tokenizer and generation config; sets ``config``'s EOS id."""
    cfg = run_config(run_dir)
    tokenizer = build_tokenizer(cfg.tokenizer)
    if tokenizer.n_vocab > vocab_size:
        raise ValueError(f"the run's tokenizer ({tokenizer.description}) has {tokenizer.n_vocab} ids but the "
                         f"checkpoint's embedding only {vocab_size} rows; export the run with its own config.toml")
    config.update(eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.eos_id)
    generation = {"eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.eos_id, "bos_token_id": None}
    return {"tokenizer.json": tokenizer_json(tokenizer),
            "tokenizer_config.json": json.dumps(tokenizer_config(tokenizer, cfg.training.seq_len), indent=2) + "\n",
            "generation_config.json": json.dumps(generation, indent=2) + "\n"}


def write_export(hf_state: dict[str, torch.Tensor], config: dict, texts: dict[str, str], out: Path) -> None:
    """Write model.safetensors, config.json and ``texts`` ({file name: text}) into a temporary sibling,
    then rename it to ``out``."""
    from safetensors.torch import save_file

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not empty; pass --out to a new directory or delete it")
    tmp = out.parent / f".{out.name}.tmp"
    if tmp.exists():  # left by an export that was killed
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(hf_state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name, text in texts.items():
        (tmp / name).write_text(text)
    for file in tmp.iterdir():  # safetensors writes 0600: others sharing the model must read it
        file.chmod(0o644)
    if out.exists():
        out.rmdir()  # empty, checked above
    tmp.rename(out)


def export(run_dir: Path, step: int | None = None, out: Path | None = None) -> Path:
    """Export ``run_dir``'s newest (or ``step``) checkpoint; returns the output directory."""
    checkpoint = pick_checkpoint(run_dir, step)
    state, args = load_model_state(checkpoint, run_dir)
    config = hf_convert.hf_config(args)
    config["initlab"] = {"run_dir": str(run_dir), "step": int(checkpoint.name.split("_")[1]),
                         "family": args.family}
    out = out or run_dir / "export"
    texts = tokenizer_files(run_dir, args.vocab_size, config)
    write_export(hf_convert.to_hf(state, args), config, texts, out)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = export(args.run_dir, args.step, args.out)
    except (CheckpointError, ConfigError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {out}: model.safetensors, config.json, generation_config.json, tokenizer.json, "
          "tokenizer_config.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
