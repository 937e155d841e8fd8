"""Llama-style decoder: RMSNorm, RoPE, SwiGLU MLP (w1 gate, w3 up, w2 down), GQA, untied head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.common import (
    Attention,
    BlockBase,
    ModelArgs,
    TransformerBase,
    ceil_to,
    precompute_rope,
    projection,
    scaled,
)
from roles import MLP_GATE, MLP_OUT, MLP_UP

# Field values of each named size; anything can be overridden from the [model] table.
FLAVORS: dict[str, dict] = {
    "debug": dict(n_layers=4, dim=128, n_heads=4, n_kv_heads=2, multiple_of=64),
    "llama_150m": dict(n_layers=12, dim=768, n_heads=12, n_kv_heads=4, multiple_of=256,
                       ffn_dim_multiplier=1.3),
    # The Llama-3.2-1B shape: 16 layers, d=2048, 32 heads, 8 KV heads, SwiGLU hidden 8192.
    "llama_1b": dict(n_layers=16, dim=2048, n_heads=32, n_kv_heads=8, multiple_of=256,
                     ffn_dim_multiplier=1.5, rope_theta=500000.0),
}

DEFAULTS = dict(norm_eps=1e-5, rope_theta=10000.0, bias=False, tie_embeddings=False,
                activation="silu", multiple_of=256, ffn_dim_multiplier=None)


def swiglu_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """Llama's SwiGLU width: 2/3 of 4d, times the multiplier, rounded up to multiple_of."""
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return ceil_to(hidden, multiple_of)


class SwiGLU(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        dim, hidden = args.dim, args.ffn_dim
        self.gate = projection(MLP_GATE, dim, hidden, False, args)  # w1, through SiLU
        self.up = projection(MLP_UP, dim, hidden, False, args)  # w3
        self.out = projection(MLP_OUT, hidden, dim, False, args)  # w2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.silu(self.gate(x)) * self.up(x))


class LlamaBlock(BlockBase):
    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        self.layer_id, self.residual_multiplier = layer_id, args.residual_multiplier
        self.attn_norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.attn = Attention(args, bias=False)
        self.mlp_norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.mlp = SwiGLU(args)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        h = x + scaled(self.attn(self.attn_norm(x), rope), self.residual_multiplier)
        return h + scaled(self.mlp(self.mlp_norm(h)), self.residual_multiplier)


class Llama(TransformerBase):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embedding = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleDict({str(i): LlamaBlock(i, args) for i in range(args.n_layers)})
        self.final_norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.register_buffer("rope", self._rope(), persistent=False)

    def _rope(self) -> torch.Tensor:
        return precompute_rope(self.args)

    def reset_buffers(self, buffer_device: torch.device | None) -> None:
        with torch.device(buffer_device or self.rope.device):
            self.rope = self._rope()

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok_embedding(tokens)

    def rope_for(self, seqlen: int) -> torch.Tensor:
        return torch.view_as_real(self.rope[:seqlen])  # a real view of the complex buffer: [T, hd/2, 2]
