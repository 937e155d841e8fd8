"""Tensor-name and layout mapping between initlab models and Hugging Face transformers.

initlab GPT-2 <-> ``GPT2LMHeadModel``: HF keeps q/k/v fused in one ``Conv1D`` ``c_attn`` whose
weight is stored transposed, ``[d, 3d]`` (in-features first); every ``Conv1D`` (``c_attn``,
``c_proj``, ``c_fc``) is the transpose of the matching ``nn.Linear`` weight ``[out, in]``.

initlab Llama <-> ``LlamaForCausalLM``: one tensor per projection, but the RoPE conventions
differ. initlab (like Meta's reference code and torchtitan) rotates adjacent feature pairs
``(2j, 2j+1)`` of each head; HF's ``rotate_half`` rotates ``(j, j + head_dim/2)``. Exporting
therefore reorders the rows of each q/k head from interleaved to half-split order (the
permutation of HF's ``convert_llama_weights_to_hf``) and importing applies its inverse.

Each initlab tensor is described by one :class:`Link` to the HF tensor it lives in, so the
same table serves export (:func:`to_hf`) and tensor-by-tensor import (:func:`from_hf_tensor`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from init_schemes.parametrization import forward_multiplier
from models.common import ModelArgs
from roles import ATTN_K, ATTN_OUT, ATTN_Q, ATTN_V, MLP_GATE, MLP_OUT, MLP_UP, is_adapter


@dataclass(frozen=True)
class Link:
    """Where an initlab tensor lives in an HF checkpoint and how its layout differs."""

    hf_name: str
    transpose: bool = False  # HF Conv1D stores [in, out]; nn.Linear stores [out, in]
    part: int | None = None  # index of this tensor in a fused [q | k | v] HF tensor (out-features axis)
    n_parts: int = 1
    rope_heads: int = 0  # > 0: q/k rows of this many heads are reordered interleaved <-> half-split


_GPT2_BLOCK = {  # initlab block-local name -> (HF block-local name, transpose, part)
    "attn_norm.weight": ("ln_1.weight", False, None),
    "attn_norm.bias": ("ln_1.bias", False, None),
    f"{ATTN_Q}.weight": ("attn.c_attn.weight", True, 0),
    f"{ATTN_K}.weight": ("attn.c_attn.weight", True, 1),
    f"{ATTN_V}.weight": ("attn.c_attn.weight", True, 2),
    f"{ATTN_Q}.bias": ("attn.c_attn.bias", False, 0),
    f"{ATTN_K}.bias": ("attn.c_attn.bias", False, 1),
    f"{ATTN_V}.bias": ("attn.c_attn.bias", False, 2),
    f"{ATTN_OUT}.weight": ("attn.c_proj.weight", True, None),
    f"{ATTN_OUT}.bias": ("attn.c_proj.bias", False, None),
    "mlp_norm.weight": ("ln_2.weight", False, None),
    "mlp_norm.bias": ("ln_2.bias", False, None),
    f"{MLP_UP}.weight": ("mlp.c_fc.weight", True, None),
    f"{MLP_UP}.bias": ("mlp.c_fc.bias", False, None),
    f"{MLP_OUT}.weight": ("mlp.c_proj.weight", True, None),
    f"{MLP_OUT}.bias": ("mlp.c_proj.bias", False, None),
}
_GPT2_TOP = {
    "tok_embedding.weight": "transformer.wte.weight",
    "pos_embedding.weight": "transformer.wpe.weight",
    "final_norm.weight": "transformer.ln_f.weight",
    "final_norm.bias": "transformer.ln_f.bias",
    "lm_head.weight": "lm_head.weight",
}
_LLAMA_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    f"{ATTN_Q}.weight": "self_attn.q_proj.weight",
    f"{ATTN_K}.weight": "self_attn.k_proj.weight",
    f"{ATTN_V}.weight": "self_attn.v_proj.weight",
    f"{ATTN_OUT}.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    f"{MLP_GATE}.weight": "mlp.gate_proj.weight",
    f"{MLP_UP}.weight": "mlp.up_proj.weight",
    f"{MLP_OUT}.weight": "mlp.down_proj.weight",
}
_LLAMA_TOP = {
    "tok_embedding.weight": "model.embed_tokens.weight",
    "final_norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_BLOCK_NAME = re.compile(r"layers\.(\d+)\.(.+)")


def link_for(name: str, args: ModelArgs) -> Link:
    """The HF location of initlab tensor ``name`` (canonical, e.g. 'layers.3.attn.q.weight')."""
    match = _BLOCK_NAME.fullmatch(name)
    if args.family == "gpt2":
        if match is None and name in _GPT2_TOP:
            return Link(_GPT2_TOP[name])
        if match and match.group(2) in _GPT2_BLOCK:
            hf_local, transpose, part = _GPT2_BLOCK[match.group(2)]
            return Link(f"transformer.h.{match.group(1)}.{hf_local}", transpose, part, 3 if part is not None else 1)
    elif args.family == "llama":
        if match is None and name in _LLAMA_TOP:
            return Link(_LLAMA_TOP[name])
        if match and match.group(2) in _LLAMA_BLOCK:
            local = match.group(2)
            heads = {f"{ATTN_Q}.weight": args.n_heads, f"{ATTN_K}.weight": args.n_kv_heads}.get(local, 0)
            return Link(f"model.layers.{match.group(1)}.{_LLAMA_BLOCK[local]}", rope_heads=heads)
    raise ValueError(f"tensor {name!r} of the {args.family} model has no Hugging Face counterpart; "
                     "update components/hf_convert.py for the new module")


def interleaved_to_half(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head reordered from pairs (2j, 2j+1) to halves (j, j + hd/2): [heads*hd, d] -> same."""
    rows, cols = weight.shape
    return weight.reshape(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def half_to_interleaved(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Inverse of :func:`interleaved_to_half`."""
    rows, cols = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def from_hf_tensor(hf_tensor: torch.Tensor, link: Link) -> torch.Tensor:
    """The initlab tensor that ``link`` describes, cut out of / re-laid from its HF tensor."""
    tensor = hf_tensor
    if link.part is not None:  # fused [q|k|v]: Conv1D weight [d, 3d] splits along dim 1, bias [3d] along dim 0
        tensor = tensor.chunk(link.n_parts, dim=tensor.dim() - 1)[link.part]
    if link.transpose:
        tensor = tensor.t()
    if link.rope_heads:
        tensor = half_to_interleaved(tensor, link.rope_heads)
    return tensor.contiguous()


def _to_hf_layout(tensor: torch.Tensor, link: Link) -> torch.Tensor:
    if link.rope_heads:
        tensor = interleaved_to_half(tensor, link.rope_heads)
    return tensor.t() if link.transpose else tensor


def merge_adapters(state: Mapping[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """State without LoRA matrices: each adapted weight W [out, in] becomes W + s B A (s = args.lora_scale)."""
    merged = {name: tensor for name, tensor in state.items() if not is_adapter(name)}
    for name in state:
        if name.endswith(".lora_a"):
            base = name.removesuffix(".lora_a")
            a, b = state[name].double(), state[f"{base}.lora_b"].double()  # [r, in], [out, r]
            weight = merged[f"{base}.weight"]
            merged[f"{base}.weight"] = (weight.double() + args.lora_scale * (b @ a)).to(weight.dtype)
    return merged


def fold_multipliers(state: Mapping[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """State whose plain forward equals the parametrized one (init_schemes/parametrization.py).

    x * c through a linear map is the map with weight (and bias) * c, so: the embedding tables take
    ``embedding_multiplier``; attn.out and mlp.out ``residual_multiplier``; attn.q ``attn_scale *
    sqrt(d_head)`` (HF divides q.k by sqrt(d_head)); the logits ``logit_multiplier`` go into lm_head, or,
    with a tied head (whose table already took the embedding multiplier e), into the final norm's weight
    and bias as logit_multiplier / e. Tensors are scaled in float64. A state with every multiplier 1 is
    returned as is.
    """
    tied_logits = args.logit_multiplier / args.embedding_multiplier
    out = dict(state)
    for name, tensor in state.items():
        module = name.rsplit(".", 1)[0]
        role = module.split(".", 2)[2] if module.startswith("layers.") else module  # a bias takes its layer's factor
        if role == "final_norm":
            factor = tied_logits if args.tie_embeddings else 1.0
        else:
            factor = forward_multiplier(role, args)
        if factor != 1.0:
            out[name] = (tensor.double() * factor).to(tensor.dtype)
    return out


def to_hf(state: Mapping[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """Full initlab state dict (canonical names) -> HF state dict (contiguous tensors, fused parts joined).

    LoRA adapters are merged into their weights (HF's plain models have no adapter slots), then the
    parametrization's forward multipliers are folded in (:func:`fold_multipliers`).
    """
    parts: dict[str, dict[int, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in fold_multipliers(merge_adapters(state, args), args).items():
        link = link_for(name, args)
        hf_tensor = _to_hf_layout(tensor.detach(), link)
        if link.part is None:
            out[link.hf_name] = hf_tensor.contiguous()
        else:
            parts.setdefault(link.hf_name, {})[link.part] = hf_tensor
    for hf_name, pieces in parts.items():
        ordered = [pieces[i] for i in range(len(pieces))]
        out[hf_name] = torch.cat(ordered, dim=ordered[0].dim() - 1).contiguous()
    if args.family == "gpt2" and not args.bias:
        out.update(_gpt2_zero_biases(out, args))
    return out


def _gpt2_zero_biases(hf_state: Mapping[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """HF GPT-2 always has biases; a bias-free initlab GPT-2 equals one whose biases are all zero."""
    widths = {"ln_1": args.dim, "ln_2": args.dim, "attn.c_attn": 3 * args.dim, "attn.c_proj": args.dim,
              "mlp.c_fc": args.ffn_dim, "mlp.c_proj": args.dim}
    zeros = {f"transformer.h.{i}.{module}.bias": torch.zeros(width)
             for i in range(args.n_layers) for module, width in widths.items()}
    zeros["transformer.ln_f.bias"] = torch.zeros(args.dim)
    return {k: v for k, v in zeros.items() if k not in hf_state}


def normalize_hf_names(names: Iterable[str]) -> dict[str, str]:
    """{canonical HF name: name in the file}; GPT-2 files from the hub often omit the 'transformer.' prefix."""
    names = list(names)
    bare_gpt2 = any(n.startswith(("h.", "wte.", "wpe.")) for n in names)
    return {(f"transformer.{n}" if bare_gpt2 and not n.startswith(("transformer.", "lm_head.")) else n): n
            for n in names}


def detect_format(hf_names: Iterable[str]) -> str:
    """'gpt2', 'llama' or 'initlab' from the tensor names of a file (canonical HF names)."""
    names = list(hf_names)
    if any(n.startswith("transformer.") for n in names):
        return "gpt2"
    if any(n.startswith("model.") for n in names):
        return "llama"
    if any(n.startswith(("layers.", "tok_embedding.")) for n in names):
        return "initlab"
    raise ValueError(f"cannot tell the model family of tensors like {names[:3]}; expected Hugging Face GPT-2 "
                     "('transformer.*'), Llama ('model.*') or initlab ('layers.*') names")


def hf_config(args: ModelArgs) -> dict:
    """The HF ``config.json`` that makes transformers build the same network (fp32, no dropout)."""
    if args.family == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": args.vocab_size,
            "n_positions": args.max_seq_len, "n_embd": args.dim, "n_layer": args.n_layers, "n_head": args.n_heads,
            "n_inner": args.ffn_dim, "activation_function": "gelu_new", "layer_norm_epsilon": args.norm_eps,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "scale_attn_weights": True,
            "tie_word_embeddings": args.tie_embeddings, "dtype": "float32",
            "bos_token_id": None, "eos_token_id": None,  # scripts/export.py sets the EOS id of the run's tokenizer
        }
    if args.family == "llama":
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": args.vocab_size,
            "hidden_size": args.dim, "intermediate_size": args.ffn_dim, "num_hidden_layers": args.n_layers,
            "num_attention_heads": args.n_heads, "num_key_value_heads": args.n_kv_heads, "head_dim": args.head_dim,
            "hidden_act": "silu", "max_position_embeddings": args.max_seq_len, "rms_norm_eps": args.norm_eps,
            # transformers < 5 reads rope_theta and rope_scaling; >= 5 reads rope_parameters.
            "rope_theta": args.rope_theta, "rope_scaling": _hf_rope_scaling(args),
            "rope_parameters": {"rope_theta": args.rope_theta, **(_hf_rope_scaling(args) or {"rope_type": "default"})},
            "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
            "tie_word_embeddings": False, "dtype": "float32",
            "bos_token_id": None, "eos_token_id": None,
        }
    raise ValueError(f"no Hugging Face config for model family {args.family!r}")


def _hf_rope_scaling(args: ModelArgs) -> dict | None:
    if args.rope_scaling_factor == 1.0:
        return None
    return {"rope_type": "llama3", "factor": args.rope_scaling_factor, "low_freq_factor": args.rope_low_freq_factor,
            "high_freq_factor": args.rope_high_freq_factor,
            "original_max_position_embeddings": args.rope_original_max_seq_len}


def _hf_rope_entries(config: Mapping) -> dict:
    """RoPE settings of an HF config: ``rope_scaling`` (transformers < 5) merged with ``rope_parameters`` (>= 5)."""
    return {**(config.get("rope_scaling") or {}), **(config.get("rope_parameters") or {})}


def _hf_rope_type(config: Mapping) -> str:
    entries = _hf_rope_entries(config)
    return entries.get("rope_type", entries.get("type", "default"))  # older configs spell it "type"


# HF config key -> (initlab model field, transformers' default when the key is absent).
_HF_ARCHITECTURE_KEYS = {
    "gpt2": {"n_head": ("n_heads", 12), "layer_norm_epsilon": ("norm_eps", 1e-5)},
    "llama": {"num_attention_heads": ("n_heads", 32), "num_key_value_heads": ("n_kv_heads", None),
              "rms_norm_eps": ("norm_eps", 1e-6)},
}
# HF config key -> (the values initlab's network computes, what else would differ): checked when present.
_HF_SAME_NETWORK = {
    "gpt2": {"activation_function": (("gelu_new", "gelu_pytorch_tanh"), "MLP activation"),
             "scale_attn_weights": ((True,), "attention scaling"),
             "scale_attn_by_inverse_layer_idx": ((False,), "attention scaling")},
    "llama": {"hidden_act": (("silu", "swish"), "MLP activation"), "attention_bias": ((False,), "attention biases"),
              "mlp_bias": ((False,), "MLP biases")},
}


def _hf_architecture(config: Mapping) -> dict[str, tuple[str, object]]:
    """{initlab model field: (HF key, value)} for what tensor shapes cannot reveal: heads, norms, RoPE.

    Absent keys take transformers' defaults (e.g. rms_norm_eps 1e-6, rope_theta 10000), as loading would.
    """
    family = "gpt2" if config.get("model_type") == "gpt2" else "llama"
    found = {}
    for key, (field, default) in _HF_ARCHITECTURE_KEYS[family].items():
        value = default if config.get(key) is None else config[key]
        if key == "num_key_value_heads" and value is None:
            value = config.get("num_attention_heads", 32)  # no GQA: as many KV heads as heads
        found[field] = (key, value)
    if family == "llama":
        rope = _hf_rope_entries(config)
        theta = rope.get("rope_theta", config.get("rope_theta"))
        found["rope_theta"] = ("rope_theta", 10000.0 if theta is None else theta)
        scaled = _hf_rope_type(config) == "llama3"
        found["rope_scaling_factor"] = ("rope_scaling.factor", rope["factor"] if scaled else 1.0)
        if scaled:
            found.update(rope_low_freq_factor=("rope_scaling.low_freq_factor", rope["low_freq_factor"]),
                         rope_high_freq_factor=("rope_scaling.high_freq_factor", rope["high_freq_factor"]),
                         rope_original_max_seq_len=("rope_scaling.original_max_position_embeddings",
                                                    rope["original_max_position_embeddings"]))
    return found


def check_hf_architecture(config: Mapping, args: ModelArgs, source: object) -> None:
    """Raise a one-line ValueError if ``config.json`` describes a network the model's shapes would not reveal.

    Loading Llama-3.2 weights into a model with 16 instead of 32 heads, another RoPE base or no
    RoPE scaling gives tensors of the right shapes and silently wrong logits; the layer count and
    widths need no check here (new layers keep the scheme's init; shape mismatches are caught per tensor).
    """
    model_type = config.get("model_type", args.family)
    if model_type != args.family:  # e.g. qwen2 (q/k/v biases) or mistral (sliding windows) under "model.*" names
        raise ValueError(f"{source}: config.json has model_type = {model_type!r} but the model is {args.family}; "
                         "initlab loads Hugging Face gpt2 and llama checkpoints only")
    rope_type = _hf_rope_type(config)
    if rope_type not in ("default", "llama3"):
        raise ValueError(f"{source}: config.json uses RoPE type {rope_type!r}; initlab implements 'default' and "
                         "'llama3' only: convert the checkpoint or drop init.from_checkpoint")
    family = args.family
    for key, (supported, what) in _HF_SAME_NETWORK[family].items():
        if key in config and config[key] not in supported:
            raise ValueError(f"{source}: config.json has {key} = {config[key]!r} ({what}); initlab's {family} has "
                             f"{key} = {supported[0]!r} only: choose another init.from_checkpoint")
    for field, (key, theirs) in _hf_architecture(config).items():
        ours = getattr(args, field)
        if not math.isclose(float(theirs), float(ours), rel_tol=1e-6):
            raise ValueError(f"{source}: config.json has {key} = {theirs} but model.{field} = {ours}; "
                             f"set --model.{field} {theirs}")


def hf_ties_embeddings(config: Mapping) -> bool:
    """Whether an HF config ties the LM head to the token embedding (GPT-2's default is tied)."""
    return bool(config.get("tie_word_embeddings", config.get("model_type") == "gpt2"))
