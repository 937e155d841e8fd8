"""Generate text from a run's checkpoint with initlab's own model (no export, no transformers).

    python scripts/sample.py <run_dir | run_dir/checkpoints/step_N> [--prompt TEXT] [--max-new-tokens N]
                             [--temperature T] [--top-k K] [--seed S] [--num-samples N] [--device D]

Reads the model shapes and the tokenizer from ``<run_dir>/config.toml`` and the weights from the
newest complete ``checkpoints/step_<N>`` (or the step directory given), on one process (DCP gathers
the shards of any world size). ``--temperature 0`` (the default) is greedy decoding; otherwise each
token is drawn from softmax(logits / T), restricted to the ``--top-k`` most likely when K > 0,
with a ``torch.Generator`` seeded by ``--seed``. Generation stops at ``<|endoftext|>`` or after
``--max-new-tokens``; the context is cropped to the model's last ``max_seq_len`` tokens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python scripts/sample.py` from anywhere

import torch  # noqa: E402
from torch import nn  # noqa: E402

from components.checkpoint import CheckpointError  # noqa: E402
from components.config import ConfigError  # noqa: E402
from components.run_weights import load_model_state, pick_checkpoint, run_config  # noqa: E402
from components.tokenizer import TextTokenizer, build_tokenizer  # noqa: E402
from models import build_model  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="run directory (newest checkpoint) or one of its "
                        "checkpoints/step_<N> directories")
    parser.add_argument("--prompt", default="", help="text to continue (default: '' = start after an "
                        "<|endoftext|> token)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per sample (default 64)")
    parser.add_argument("--temperature", type=float, default=0.0, help="softmax temperature; 0 = greedy "
                        "(argmax, the default)")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the K most likely tokens only; "
                        "0 = all (default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling generator (default 0)")
    parser.add_argument("--num-samples", type=int, default=1, help="independent continuations to print (default 1)")
    parser.add_argument("--device", default="cpu", help="torch device to run the model on (default cpu)")
    args = parser.parse_args(argv)
    for name in ("max_new_tokens", "num_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.temperature < 0 or args.top_k < 0:
        parser.error("--temperature and --top-k must be >= 0")
    return args


def load_run_model(path: Path, device: str) -> tuple[nn.Module, TextTokenizer]:
    """(initlab model in eval mode on ``device`` with the checkpoint's weights, the run's tokenizer)."""
    if (path / ".metadata").is_file():  # a step directory: <run_dir>/checkpoints/step_<N>
        run_dir, checkpoint = path.parent.parent, path
    else:
        run_dir = path
        checkpoint = pick_checkpoint(run_dir, None)
    state, args = load_model_state(checkpoint, run_dir)
    with torch.device("meta"):
        model = build_model(args)
    model.to_empty(device=device)
    model.reset_buffers(torch.device(device))
    model.load_state_dict(state)
    tokenizer = build_tokenizer(run_config(run_dir).tokenizer)
    if tokenizer.n_vocab > args.vocab_size:
        raise ValueError(f"the run's tokenizer has {tokenizer.n_vocab} ids but the model only {args.vocab_size}; "
                         "sample with the config.toml the run was trained with")
    return model.eval(), tokenizer


@torch.no_grad()
def generate(model: nn.Module, prompt: list[int], max_new_tokens: int, temperature: float, top_k: int,
             generator: torch.Generator, eos_id: int) -> list[int]:
    """The generated ids after ``prompt`` (ending at the first EOS, which is included)."""
    device = next(model.parameters()).device
    tokens = torch.tensor([prompt], device=device)  # [1, T]
    context = model.args.max_seq_len
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(tokens[:, -context:])[0, -1].float()  # [V]
        if temperature == 0:
            next_id = int(logits.argmax())
        else:
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits / temperature, dim=-1)
            next_id = int(torch.multinomial(probs.cpu(), 1, generator=generator))
        new.append(next_id)
        if next_id == eos_id:
            break
        tokens = torch.cat([tokens, torch.tensor([[next_id]], device=device)], dim=1)
    return new


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        model, tokenizer = load_run_model(args.path, args.device)
    except (CheckpointError, ConfigError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    prompt = tokenizer.encode(args.prompt) if args.prompt else [tokenizer.eos_id]
    generator = torch.Generator().manual_seed(args.seed)
    for index in range(args.num_samples):
        new = generate(model, prompt, args.max_new_tokens, args.temperature, args.top_k, generator, tokenizer.eos_id)
        if args.num_samples > 1:
            print(f"--- sample {index + 1}")
        print(args.prompt + tokenizer.decode([t for t in new if t != tokenizer.eos_id]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
