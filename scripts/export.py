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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python scripts/export.py` from anywhere

import torch  # noqa: E402

from components import hf_convert  # noqa: E402
from components.checkpoint import CheckpointError  # noqa: E402
from components.config import ConfigError  # noqa: E402
from components.hf_tokenizer import tokenizer_config, tokenizer_json  # noqa: E402
from components.run_weights import load_model_state, pick_checkpoint, run_config  # noqa: E402
from components.tokenizer import build_tokenizer  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="run directory (holds config.toml and checkpoints/)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step to export (default: the newest)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: <run_dir>/export)")
    return parser.parse_args(argv)


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
