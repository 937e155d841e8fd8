"""Model families and their named sizes. Knows nothing of training, FSDP, compile or logging."""

from __future__ import annotations

from torch import nn

from models import gpt2, llama
from models.common import ModelArgs
from roles import MLP_GATE

FAMILIES = {
    "gpt2": (gpt2.GPT2, gpt2.FLAVORS, gpt2.DEFAULTS),
    "llama": (llama.Llama, llama.FLAVORS, llama.DEFAULTS),
}


def make_model_args(family: str, flavor: str, vocab_size: int, max_seq_len: int,
                    overrides: dict | None = None) -> ModelArgs:
    """Flavor values <- explicit overrides (None means 'keep'), derived widths filled in.

    Raises ValueError with a one-line message for an unknown flavor or inconsistent shapes.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; use one of {sorted(FAMILIES)}")
    _, flavors, defaults = FAMILIES[family]
    if flavor not in flavors:
        raise ValueError(f"model.flavor = {flavor!r} is not a {family} flavor; use one of {sorted(flavors)}")
    fields = {"vocab_size": vocab_size, "max_seq_len": max_seq_len, "n_kv_heads": None,
              "ffn_dim": None, **defaults, **flavors[flavor]}
    fields.update({k: v for k, v in (overrides or {}).items() if v is not None})
    fields["lora_targets"] = tuple(fields.get("lora_targets", ModelArgs.lora_targets))
    if fields["n_kv_heads"] is None or family == "gpt2":
        fields["n_kv_heads"] = fields["n_heads"]
    if fields["ffn_dim"] is None:
        fields["ffn_dim"] = (4 * fields["dim"] if family == "gpt2" else llama.swiglu_hidden_dim(
            fields["dim"], fields["multiple_of"], fields["ffn_dim_multiplier"]))
    args = ModelArgs(family=family, **fields)
    if args.dim % args.n_heads:
        raise ValueError(f"model.dim = {args.dim} is not divisible by model.n_heads = {args.n_heads}")
    if args.n_heads % args.n_kv_heads:
        raise ValueError(f"model.n_heads = {args.n_heads} is not divisible by model.n_kv_heads = {args.n_kv_heads}")
    if family == "llama" and args.head_dim % 2:
        raise ValueError(f"llama head_dim = dim/n_heads = {args.head_dim} must be even for RoPE")
    if args.lora_rank > 0 and family == "gpt2" and MLP_GATE in args.lora_targets:
        raise ValueError("model.lora_targets includes 'mlp.gate', which the gpt2 family does not have "
                         "(its MLP is up/out); drop it from lora_targets")
    if args.rope_scaling_factor != 1.0 and args.rope_high_freq_factor <= args.rope_low_freq_factor:
        raise ValueError(f"model.rope_high_freq_factor = {args.rope_high_freq_factor} must exceed "
                         f"model.rope_low_freq_factor = {args.rope_low_freq_factor} (Llama 3: 4 and 1)")
    return args


def build_model(args: ModelArgs) -> nn.Module:
    """Construct the model (declares shapes only: call under torch.device('meta'))."""
    return FAMILIES[args.family][0](args)
