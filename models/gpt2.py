"""GPT-2-style decoder: learned positions, pre-LN LayerNorm, GELU MLP (4d), optional biases/tying."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.common import Attention, BlockBase, ModelArgs, TransformerBase, gelu_tanh, projection, scaled
from roles import MLP_OUT, MLP_UP

FLAVORS: dict[str, dict] = {
    "debug": dict(n_layers=4, dim=128, n_heads=4),
    "gpt2_124m": dict(n_layers=12, dim=768, n_heads=12),
    "gpt2_350m": dict(n_layers=24, dim=1024, n_heads=16),
}

DEFAULTS = dict(norm_eps=1e-5, rope_theta=0.0, bias=True, tie_embeddings=True, activation="gelu")


class GeluMLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.up = projection(MLP_UP, args.dim, args.ffn_dim, args.bias, args)  # c_fc
        self.out = projection(MLP_OUT, args.ffn_dim, args.dim, args.bias, args)  # c_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(gelu_tanh(self.up(x)))


class GPT2Block(BlockBase):
    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        self.layer_id, self.residual_multiplier = layer_id, args.residual_multiplier
        self.attn_norm = nn.LayerNorm(args.dim, eps=args.norm_eps, bias=args.bias)
        self.attn = Attention(args, bias=args.bias)
        self.mlp_norm = nn.LayerNorm(args.dim, eps=args.norm_eps, bias=args.bias)
        self.mlp = GeluMLP(args)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        h = x + scaled(self.attn(self.attn_norm(x), None), self.residual_multiplier)
        return h + scaled(self.mlp(self.mlp_norm(h)), self.residual_multiplier)


class GPT2(TransformerBase):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embedding = nn.Embedding(args.vocab_size, args.dim)
        self.pos_embedding = nn.Embedding(args.max_seq_len, args.dim)
        self.layers = nn.ModuleDict({str(i): GPT2Block(i, args) for i in range(args.n_layers)})
        self.final_norm = nn.LayerNorm(args.dim, eps=args.norm_eps, bias=args.bias)
        # Tied: the head reuses the embedding table in output_logits (no separate lm_head tensor,
        # so to_empty/FSDP2 cannot untie it).
        self.lm_head = None if args.tie_embeddings else nn.Linear(args.dim, args.vocab_size, bias=False)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.tok_embedding(tokens) + self.pos_embedding(positions)

    def output_logits(self, h: torch.Tensor) -> torch.Tensor:
        if self.lm_head is None:
            return F.linear(h, self.tok_embedding.weight)
        return self.lm_head(h)
