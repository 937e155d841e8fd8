"""The reference schemes of DESIGN.md §5. Each docstring gives the std of every role and its source."""

from __future__ import annotations

from init_schemes.base import InitSpec, base_std, norm_or_bias, normal, register


@register("normal")
def normal_scheme(role: str, layer_id: int | None, args, opts) -> InitSpec:
    """Base std everywhere ("base-std QKV"; BERT/GPT-style N(0, sigma0^2), sigma0 = init.base_std = 0.02).

    tok_embedding, pos_embedding, attn.q/k/v/out, mlp.gate/up/out, lm_head: N(0, sigma0).
    norm: 1, bias: 0. No depth scaling.
    """
    return norm_or_bias(role) or normal(base_std(opts))
