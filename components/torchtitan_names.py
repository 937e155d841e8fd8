"""Parameter names of torchtitan 0.2.2's llama3 ``Transformer`` <-> initlab's Llama (canonical names).

Both models hold the same tensors in the same layouts (torchtitan rotates adjacent RoPE pairs like
initlab; ``nn.Linear`` weights are ``[out, in]`` in both), so converting a state dict is renaming only.
torchtitan: ``torchtitan/models/llama3/model/model.py`` (``Attention.wq/wk/wv/wo``,
``FeedForward.w1/w2/w3`` with ``w2(silu(w1 x) * w3 x)``, ``TransformerBlock.attention_norm/ffn_norm``,
``Transformer.tok_embeddings/norm/output``); its ``freqs_cis`` buffer is not persistent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from roles import ATTN_K, ATTN_OUT, ATTN_Q, ATTN_V, MLP_GATE, MLP_OUT, MLP_UP, canonical_name, role_of

# initlab name -> torchtitan name, outside the blocks.
TOP_LEVEL = {
    "tok_embedding.weight": "tok_embeddings.weight",
    "final_norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
# initlab block-local name -> torchtitan block-local name (under ``layers.<i>.`` in both).
BLOCK = {
    "attn_norm.weight": "attention_norm.weight",
    f"{ATTN_Q}.weight": "attention.wq.weight",
    f"{ATTN_K}.weight": "attention.wk.weight",
    f"{ATTN_V}.weight": "attention.wv.weight",
    f"{ATTN_OUT}.weight": "attention.wo.weight",
    "mlp_norm.weight": "ffn_norm.weight",
    f"{MLP_GATE}.weight": "feed_forward.w1.weight",  # SwiGLU gate: silu(w1 x)
    f"{MLP_OUT}.weight": "feed_forward.w2.weight",  # down projection [d, ffn]
    f"{MLP_UP}.weight": "feed_forward.w3.weight",  # SwiGLU value: w3 x
}
_TOP_LEVEL_BACK = {titan: ours for ours, titan in TOP_LEVEL.items()}
_BLOCK_BACK = {titan: ours for ours, titan in BLOCK.items()}
_BLOCK_NAME = re.compile(r"layers\.(\d+)\.(.+)")


def _rename(name: str, top: dict[str, str], block: dict[str, str]) -> str | None:
    match = _BLOCK_NAME.fullmatch(name)
    if match is None:
        return top.get(name)
    local = block.get(match.group(2))
    return None if local is None else f"layers.{match.group(1)}.{local}"


def to_torchtitan(name: str) -> str:
    """torchtitan's name of initlab Llama parameter ``name``, e.g. 'layers.3.mlp.gate.weight' ->
    'layers.3.feed_forward.w1.weight' (compile/FSDP wrapper prefixes are dropped first)."""
    renamed = _rename(canonical_name(name), TOP_LEVEL, BLOCK)
    if renamed is None:
        raise ValueError(f"initlab tensor {name!r} has no torchtitan llama3 counterpart (LoRA adapters and GPT-2 "
                         "tensors have none); merge adapters with scripts/export.py or use a Llama model")
    return renamed


def from_torchtitan(name: str) -> str | None:
    """initlab's name of torchtitan llama3 parameter ``name``, or None if initlab's Llama has no such tensor."""
    return _rename(name, _TOP_LEVEL_BACK, _BLOCK_BACK)


def torchtitan_role(name: str) -> str:
    """initlab's init role of torchtitan parameter ``name``, e.g. 'layers.0.feed_forward.w2.weight' -> 'mlp.out'."""
    ours = from_torchtitan(name)
    if ours is None:
        raise ValueError(f"{name!r} is not a torchtitan llama3 parameter name; expected e.g. "
                         "'layers.0.attention.wq.weight' or 'tok_embeddings.weight'")
    return role_of(ours)


def is_torchtitan_llama(names: Iterable[str]) -> bool:
    """Whether any of ``names`` is a torchtitan llama3 parameter name."""
    return any(from_torchtitan(name) is not None for name in names)  # no torchtitan name is also initlab's
