"""Adds initlab's ``llama_1b`` shape to torchtitan's llama3 flavor registry, as ``initlab_llama_1b``.

torchtitan 0.2.2 has no 1B Llama flavor and reads flavors only from the ``llama3_args`` dict of
``torchtitan.models.llama3``. Its trainer imports ``[experimental] custom_import`` before it looks the
flavor up, so ``llama_1b_bench.toml`` names this module there (the trainer must run from the repo root,
or with the repo root on PYTHONPATH, for ``benchmarks.torchtitan.llama_1b_flavor`` to import).

Shape (same as ``models/llama.py`` FLAVORS["llama_1b"]): 16 layers, d=2048, 32 heads of 64, 8 KV heads,
SwiGLU hidden 8192 (= 2/3·4d·1.5 rounded up to 256), vocab 128256, RoPE theta 500000, RMSNorm eps 1e-5,
untied output head.
"""

from __future__ import annotations

from torchtitan.models.llama3 import TransformerModelArgs, llama3_args

FLAVOR_NAME = "initlab_llama_1b"


def llama_1b_args() -> TransformerModelArgs:
    """torchtitan model args of initlab's llama_1b (the Llama-3.2-1B shape)."""
    return TransformerModelArgs(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=128256,
                                multiple_of=256, ffn_dim_multiplier=1.5, norm_eps=1e-5, rope_theta=500000)


def register() -> str:
    """Put ``initlab_llama_1b`` in torchtitan's llama3 registry (idempotent); returns the flavor name."""
    llama3_args.setdefault(FLAVOR_NAME, llama_1b_args())
    return FLAVOR_NAME


register()
