"""initlab's Llama shapes as torchtitan llama3 flavors, derived from ``models/llama.py`` FLAVORS (not copied).

torchtitan 0.2.2 reads flavors only from the ``llama3_args`` dict of ``torchtitan.models.llama3``; its trainer imports
``[experimental] custom_import`` before it looks the flavor up, so a config that names ``initlab_llama_1b`` without
initlab's TrainSpec (``benchmarks/torchtitan/llama_1b_bench.toml``) imports this module there (the trainer must run
from the repo root, or with it on PYTHONPATH). ``integrations.torchtitan.spec`` registers them too.
"""

from __future__ import annotations

from torchtitan.models.llama3 import TransformerModelArgs, llama3_args

from models import make_model_args

DEBUG_FLAVOR = "initlab_debug"
"""initlab's llama "debug" shape with the DEBUG_VOCAB ids of train_configs/debug.toml's tokenizer: a torchtitan
flavor small enough for a CPU, next to initlab's debug model."""
DEBUG_VOCAB = 4097
"""cl100k's first 4096 tokens plus EOS (train_configs/debug.toml: tokenizer.max_vocab = 4096)."""
LLAMA_1B_FLAVOR = "initlab_llama_1b"
"""initlab's llama_1b (the Llama-3.2-1B shape): torchtitan 0.2.2 has no 1B Llama flavor."""
LLAMA_1B_VOCAB = 128256
"""Llama 3's tokenizer (128000 BPE ranks + 256 special tokens)."""
FLAVORS = {DEBUG_FLAVOR: ("debug", DEBUG_VOCAB), LLAMA_1B_FLAVOR: ("llama_1b", LLAMA_1B_VOCAB)}
"""torchtitan flavor name -> (initlab llama flavor, vocabulary size)."""


def torchtitan_args(flavor: str, vocab_size: int) -> TransformerModelArgs:
    """torchtitan's llama3 args of initlab's llama ``flavor`` (every shape field models/llama.py decides)."""
    args = make_model_args("llama", flavor, vocab_size, 1, {})
    return TransformerModelArgs(dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads, n_kv_heads=args.n_kv_heads,
                                vocab_size=vocab_size, multiple_of=args.multiple_of,
                                ffn_dim_multiplier=args.ffn_dim_multiplier, norm_eps=args.norm_eps,
                                rope_theta=args.rope_theta)


def register_flavors() -> None:
    """Put initlab's flavors in torchtitan's llama3 registry (idempotent)."""
    for name, (flavor, vocab_size) in FLAVORS.items():
        llama3_args.setdefault(name, torchtitan_args(flavor, vocab_size))


register_flavors()
