"""Pieces shared by the GPT-2 and Llama families: args, attention, RoPE, LoRA, FLOP counts.

Both families name their submodules after the roles of docs/design.md §4 (``attn.q``, ``attn.k``,
``attn.v``, ``attn.out``, ``mlp.gate``, ``mlp.up``, ``mlp.out``, ``tok_embedding``,
``pos_embedding``, ``lm_head``; the vocabulary and ``role_of`` live in ``roles.py``), so a
parameter's role is read off its name and every role is its own tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from roles import ATTN_K, ATTN_OUT, ATTN_Q, ATTN_V, DEFAULT_LORA_TARGETS, EMBEDDING_ROLES, canonical_name, role_of


@dataclass
class ModelArgs:
    """Shapes of a transformer; everything a constructor and an init scheme need."""

    family: str
    n_layers: int
    dim: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int
    max_seq_len: int
    norm_eps: float
    rope_theta: float
    bias: bool
    tie_embeddings: bool
    activation: str  # MLP nonlinearity: "gelu" (gpt2) or "silu" (llama SwiGLU gate)
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    # Llama 3 RoPE frequency scaling (long-context checkpoints such as Llama-3.2); factor 1 = off.
    rope_scaling_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_seq_len: int = 8192
    # LoRA adapters on the projections named in lora_targets; rank 0 = none.
    lora_rank: int = 0
    lora_alpha: float | None = None  # None = rank (alpha / rank = 1)
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    lora_rank_stabilized: bool = False  # scale alpha / sqrt(rank) (rsLoRA) instead of alpha / rank
    # Forward multipliers of a parametrization (init_schemes/parametrization.py); 1 / None = standard.
    embedding_multiplier: float = 1.0  # on the input embeddings
    logit_multiplier: float = 1.0  # on the logits (applied to the final-norm output, before the head)
    attn_scale: float | None = None  # softmax scale of q.k; None = 1/sqrt(head_dim), SDPA's default
    residual_multiplier: float = 1.0  # on every residual branch's output before it is added

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def lora_scale(self) -> float:
        """Factor on the adapter output: alpha / r (LoRA), or alpha / sqrt(r) (rsLoRA, Kalajdzievski 2023,
        arXiv:2312.03732, which keeps the adapter's output variance from shrinking as r grows)."""
        alpha = self.lora_rank if self.lora_alpha is None else self.lora_alpha
        return alpha / (math.sqrt(self.lora_rank) if self.lora_rank_stabilized else self.lora_rank)


class LoRALinear(nn.Linear):
    """A linear layer plus a low-rank adapter (Hu et al. 2021, "LoRA", arXiv:2106.09685).

    y = x W^T + b + s (x A^T) B^T, with A = ``lora_a`` [r, in], B = ``lora_b`` [out, r] and s =
    ``ModelArgs.lora_scale``. Their roles are the projection's plus ``.lora_a`` / ``.lora_b``
    (e.g. ``attn.q.lora_b``).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, rank: int, scale: float):
        super().__init__(in_features, out_features, bias=bias)
        self.lora_a = nn.Parameter(torch.empty(rank, in_features))
        self.lora_b = nn.Parameter(torch.empty(out_features, rank))
        self.lora_scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low_rank = F.linear(x, self.lora_a)  # [..., r]
        return super().forward(x) + self.lora_scale * F.linear(low_rank, self.lora_b)


def projection(role: str, in_features: int, out_features: int, bias: bool, args: ModelArgs) -> nn.Linear:
    """The linear layer of ``role``: a LoRALinear when the model has adapters on that role."""
    if args.lora_rank > 0 and role in args.lora_targets:
        return LoRALinear(in_features, out_features, bias, args.lora_rank, args.lora_scale)
    return nn.Linear(in_features, out_features, bias=bias)


class Initializer(Protocol):
    """What a module's ``init_weights`` calls for each parameter (init_schemes.WeightInitializer)."""

    def __call__(self, param: torch.Tensor, role: str, layer_id: int | None, key: str) -> None: ...


def init_module_params(module: nn.Module, prefix: str, layer_id: int | None, init: Initializer) -> None:
    """Ask ``init`` to fill every parameter of ``module`` by role; keys are canonical names."""
    for local_name, param in module.named_parameters():
        key = canonical_name(f"{prefix}{local_name}")
        init(param, role_of(key), layer_id, key)


def precompute_rope(args: ModelArgs) -> torch.Tensor:
    """Complex rotations e^{i t theta_j}: [max_seq_len, head_dim // 2] (the Llama convention)."""
    head_dim, max_seq_len = args.head_dim, args.max_seq_len
    freqs = 1.0 / (args.rope_theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    if args.rope_scaling_factor != 1.0:
        freqs = llama3_scaled_freqs(freqs, args)
    t = torch.arange(max_seq_len, dtype=torch.float32)
    return torch.polar(torch.ones(max_seq_len, head_dim // 2), torch.outer(t, freqs))


def llama3_scaled_freqs(freqs: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """Llama 3's RoPE scaling of the frequencies [head_dim // 2] (Meta's llama3 reference, torchtitan, HF "llama3").

    With wavelength lambda = 2 pi / f and the original context C: lambda < C / high_freq_factor keeps f;
    lambda > C / low_freq_factor divides it by the factor; in between f blends the two, linearly in C / lambda.
    """
    factor, low, high = args.rope_scaling_factor, args.rope_low_freq_factor, args.rope_high_freq_factor
    periods_in_context = args.rope_original_max_seq_len * freqs / (2 * math.pi)  # C / lambda
    blend = ((periods_in_context - low) / (high - low)).clamp(0.0, 1.0)  # 0: scaled, 1: kept
    return blend * freqs + (1 - blend) * freqs / factor


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of features: x [B, T, H, hd], rope [T, hd/2, 2] = (cos, sin) of t·θ_j -> [B, T, H, hd].

    Llama's complex product (a + ib)(cos + i sin) written in real arithmetic, float32 as in the reference:
    compiled blocks fuse it, where complex tensors fall back to eager kernels (four per block and
    micro-batch, forward and backward).
    """
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)  # [B, T, H, hd/2, 2]
    a, b = pairs[..., 0], pairs[..., 1]
    cos, sin = (rope[..., i].view(1, x.shape[1], 1, -1) for i in (0, 1))  # each [1, T, 1, hd/2]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(3).type_as(x)


class Tap(nn.Module):
    """Identity on its inputs: a named point where tools observe intermediate tensors with forward hooks."""

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tensors


class Attention(nn.Module):
    """Causal multi-head attention with separate q/k/v/out projections, GQA and optional RoPE."""

    def __init__(self, args: ModelArgs, bias: bool):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.scale = args.attn_scale
        self.q = projection(ATTN_Q, args.dim, args.n_heads * self.head_dim, bias, args)
        self.k = projection(ATTN_K, args.dim, args.n_kv_heads * self.head_dim, bias, args)
        self.v = projection(ATTN_V, args.dim, args.n_kv_heads * self.head_dim, bias, args)
        self.out = projection(ATTN_OUT, args.n_heads * self.head_dim, args.dim, bias, args)
        self.logits_tap = Tap()  # sees (q, k) whose products SDPA scales into the attention logits

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        bsz, seqlen, _ = x.shape  # x: [B, T, d]
        q = self.q(x).view(bsz, seqlen, self.n_heads, self.head_dim)
        k = self.k(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        v = self.v(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k = self.logits_tap(q, k)
        # SDPA wants [B, H, T, hd]; enable_gqa broadcasts the n_kv_heads groups.
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            is_causal=True, enable_gqa=self.n_kv_heads != self.n_heads, scale=self.scale,
        )
        return self.out(out.transpose(1, 2).reshape(bsz, seqlen, -1))


class TransformerBase(nn.Module):
    """Embedding -> blocks -> final norm -> LM head; subclasses build the parts."""

    args: ModelArgs
    layers: nn.ModuleDict

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] int64 -> logits [B, T, vocab] in the compute dtype (the loss upcasts)."""
        h = scaled(self.embed(tokens), self.args.embedding_multiplier)
        rope = self.rope_for(tokens.shape[1])
        for block in self.layers.values():
            h = block(h, rope)
        return self.output_logits(scaled(self.final_norm(h), self.args.logit_multiplier))

    def output_logits(self, h: torch.Tensor) -> torch.Tensor:
        """h [B, T, d] -> logits [B, T, vocab]."""
        return self.lm_head(h)

    def rope_for(self, seqlen: int) -> torch.Tensor | None:
        """The rotations of the first ``seqlen`` positions for :func:`apply_rope` ([T, hd/2, 2]), None without RoPE."""
        return None

    def reset_buffers(self, buffer_device: torch.device | None) -> None:
        """Recompute non-persistent buffers after ``to_empty`` (none by default)."""

    @torch.no_grad()
    def init_weights(self, init: Initializer, buffer_device: torch.device | None = None) -> None:
        """Initialize every parameter through ``init`` (the scheme decides each std), blocks by layer_id."""
        self.reset_buffers(buffer_device)
        for name, child in self.named_children():
            if name != "layers":
                init_module_params(child, f"{name}.", None, init)
        for block in self.layers.values():
            block.init_weights(init)


def scaled(x: torch.Tensor, multiplier: float) -> torch.Tensor:
    """x * multiplier, skipping the kernel for the standard multiplier 1."""
    return x if multiplier == 1.0 else x * multiplier


class BlockBase(nn.Module):
    """A pre-norm residual block that knows its depth; branch outputs are scaled by ``residual_multiplier``."""

    layer_id: int
    residual_multiplier: float = 1.0

    @torch.no_grad()
    def init_weights(self, init: Initializer) -> None:
        init_module_params(self, f"layers.{self.layer_id}.", self.layer_id, init)


def count_params(model: nn.Module, exclude_embeddings: bool = False, trainable_only: bool = False) -> int:
    """Number of parameters (tied tensors once); optionally without the embedding tables or frozen tensors."""
    total = 0
    for name, p in model.named_parameters():
        if exclude_embeddings and role_of(name) in EMBEDDING_ROLES:
            continue
        if trainable_only and not p.requires_grad:
            continue
        total += p.numel()
    return total


FLOP_CONVENTIONS = ("non_embedding", "all_matmuls")


def flops_per_token(model: nn.Module, args: ModelArgs, seq_len: int, convention: str = "non_embedding") -> int:
    """Training FLOPs per token of ``model`` (built on any device, ``meta`` too) under a named convention.

    Both count 6 FLOPs per parameter (a matmul weight does 2 forward + 2 for the input gradient + 2 for
    the weight gradient; a frozen tensor, as in LoRA fine-tuning, skips the last: 4; norm weights and
    biases are counted alike, as torchtitan does, though they do no matmul) plus 12 L H Q T for attention
    scores and values, forward and backward, causal masking ignored (PaLM, Chowdhery et al. 2022, App. B).
    They differ only in a tied LM head (GPT-2), whose matmul uses the token embedding:

    - ``non_embedding``: 6 N_non-embedding + 12 L H Q T, torchtitan's convention (torchtitan 0.2.2,
      ``torchtitan/models/utils.py: get_dense_model_nparams_and_flops``): embedding tables are left out,
      and with them the tied head's d x V matmul (GPT-2 124M: 38.6 M of its 124.5 M parameters).
    - ``all_matmuls``: every matmul the step runs, the tied head's 6 V d included, as nanoGPT's
      ``estimate_mfu`` counts it (model.py: its N keeps ``wte``, which is the head, and drops ``wpe``).

    For untied models (Llama) the two are equal: the head is its own tensor.
    """
    if convention not in FLOP_CONVENTIONS:
        raise ValueError(f"FLOP convention {convention!r} is unknown; use one of {', '.join(FLOP_CONVENTIONS)}")
    matmul_flops = 0
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        role = role_of(name)
        used_as_head = role == "tok_embedding" and args.tie_embeddings and convention == "all_matmuls"
        if role in EMBEDDING_ROLES and not used_as_head:
            continue
        matmul_flops += (6 if param.requires_grad else 4) * param.numel()
    return matmul_flops + 12 * args.n_layers * args.n_heads * args.head_dim * seq_len


def flops_per_token_by_convention(model: nn.Module, args: ModelArgs, seq_len: int) -> dict[str, int]:
    """:func:`flops_per_token` under every convention of ``FLOP_CONVENTIONS``, by name."""
    return {convention: flops_per_token(model, args, seq_len, convention) for convention in FLOP_CONVENTIONS}


ActivationFn = Callable[[torch.Tensor], torch.Tensor]


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU (tanh approximation, HF 'gelu_new')."""
    return F.gelu(x, approximate="tanh")


def ceil_to(value: int, multiple: int) -> int:
    return multiple * math.ceil(value / multiple)
