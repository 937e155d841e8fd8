"""models/: logits parity with the reference implementations, flavor shapes, shape errors, meta build.

Oracles: torchtitan 0.2.2's llama3 ``Transformer`` (fp32, <= 1e-5) and transformers'
``GPT2LMHeadModel`` (<= 1e-4), each loaded with our weights under their parameter names.
"""

from __future__ import annotations

import math

import pytest
import torch

from components.torchtitan_names import to_torchtitan
from models import build_model, make_model_args
from models.common import count_params, precompute_rope

VOCAB, SEQ = 512, 64

def torchtitan_llama(args, depth_init: bool = True):
    """torchtitan's llama3 Transformer with our args' shapes and RoPE scaling."""
    from torchtitan.models.llama3.model.args import RoPEScalingArgs, TransformerModelArgs
    from torchtitan.models.llama3.model.model import Transformer

    if args.rope_scaling_factor == 1.0:
        # A huge original context puts every RoPE wavelength in the "unscaled" band: frequencies untouched.
        scaling = RoPEScalingArgs(scaling_factor=1.0, original_max_position_embeddings=10 ** 12)
    else:
        scaling = RoPEScalingArgs(scaling_factor=args.rope_scaling_factor, low_freq_factor=args.rope_low_freq_factor,
                                  high_freq_factor=args.rope_high_freq_factor,
                                  original_max_position_embeddings=args.rope_original_max_seq_len)
    tt_args = TransformerModelArgs(
        dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads, n_kv_heads=args.n_kv_heads,
        vocab_size=args.vocab_size, multiple_of=args.multiple_of, ffn_dim_multiplier=args.ffn_dim_multiplier,
        norm_eps=args.norm_eps, rope_theta=args.rope_theta, rope_scaling_args=scaling,
        max_seq_len=args.max_seq_len, depth_init=depth_init,
    )
    return Transformer(tt_args)


def random_model(family: str, seed: int = 0, **overrides):
    """A debug model of ``family`` with N(0, 0.05) weights and non-trivial norm weights/biases."""
    args = make_model_args(family, "debug", VOCAB, SEQ, overrides)
    torch.manual_seed(seed)
    model = build_model(args)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if p.ndim == 1 else 0.05 * torch.randn_like(p))
    return model.eval(), args


# torchtitan's own RoPE scaling default (factor 8) and Llama-3.2's (factor 32, theta 500000): with the debug
# head_dim 32 and an 8192-token original context, the 16 frequencies fall in all three bands (kept,
# blended, divided).
ROPE_SCALINGS = {
    "off": {},
    "torchtitan_default": dict(rope_scaling_factor=8.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                               rope_original_max_seq_len=8192),
    "llama3.2": dict(rope_scaling_factor=32.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                     rope_original_max_seq_len=8192, rope_theta=500000.0),
}


@pytest.mark.parametrize("scaling", list(ROPE_SCALINGS))
def test_llama_logits_match_torchtitan(scaling):
    ours, args = random_model("llama", **ROPE_SCALINGS[scaling])
    theirs = torchtitan_llama(args)
    state = {to_torchtitan(k): v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state, strict=True)
    theirs.eval()
    tokens = torch.randint(0, VOCAB, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours(tokens) - theirs(tokens).float()).abs().max().item()
    assert diff <= 1e-5, f"max |logits diff| vs torchtitan = {diff}"


def test_rope_scaling_bands():
    _, plain = random_model("llama", rope_theta=10000.0)
    _, scaled = random_model("llama", rope_theta=10000.0, **ROPE_SCALINGS["torchtitan_default"])
    angle_plain, angle_scaled = rope_angles(plain), rope_angles(scaled)  # [16] rad per token
    wavelength = 2 * math.pi / angle_plain
    kept, divided = wavelength < 8192 / 4, wavelength > 8192
    blended = ~kept & ~divided
    assert kept.sum() == 11 and blended.sum() == 2 and divided.sum() == 3
    assert torch.equal(angle_scaled[kept], angle_plain[kept])
    torch.testing.assert_close(angle_scaled[divided], angle_plain[divided] / 8)
    ratio = angle_scaled[blended] / angle_plain[blended]
    assert ((ratio > 1 / 8) & (ratio < 1)).all()  # strictly between the two, closer to 1 at shorter waves
    assert ratio[0] > ratio[1]


def rope_angles(args) -> torch.Tensor:
    """Rotation per position of each RoPE frequency pair: angle of rope[1], [head_dim // 2]."""
    return precompute_rope(args)[1].angle().double()


def test_rope_scaling_changes_the_logits():
    ours, _ = random_model("llama")
    scaled, _ = random_model("llama", **ROPE_SCALINGS["torchtitan_default"])
    tokens = torch.randint(0, VOCAB, (1, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours(tokens) - scaled(tokens)).abs().max() > 1e-3


def hf_gpt2(args):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=args.vocab_size, n_positions=args.max_seq_len, n_embd=args.dim,
                        n_layer=args.n_layers, n_head=args.n_heads, n_inner=args.ffn_dim,
                        layer_norm_epsilon=args.norm_eps, activation_function="gelu_new",
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.02,
                        tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def hf_gpt2_state(ours: torch.nn.Module, n_layers: int) -> dict[str, torch.Tensor]:
    """Our GPT-2 weights in HF's layout: Conv1D weights are [in, out]; q/k/v fused into c_attn [d, 3d]."""
    s = ours.state_dict()
    out = {"transformer.wte.weight": s["tok_embedding.weight"], "transformer.wpe.weight": s["pos_embedding.weight"],
           "transformer.ln_f.weight": s["final_norm.weight"], "transformer.ln_f.bias": s["final_norm.bias"],
           "lm_head.weight": s["tok_embedding.weight"]}
    for i in range(n_layers):
        ours_l, hf = f"layers.{i}.", f"transformer.h.{i}."
        qkv = [s[f"{ours_l}attn.{p}.weight"] for p in "qkv"]
        out[f"{hf}attn.c_attn.weight"] = torch.cat(qkv, dim=0).t()
        out[f"{hf}attn.c_attn.bias"] = torch.cat([s[f"{ours_l}attn.{p}.bias"] for p in "qkv"])
        for hf_name, our_name in (("attn.c_proj", "attn.out"), ("mlp.c_fc", "mlp.up"), ("mlp.c_proj", "mlp.out")):
            out[f"{hf}{hf_name}.weight"] = s[f"{ours_l}{our_name}.weight"].t()
            out[f"{hf}{hf_name}.bias"] = s[f"{ours_l}{our_name}.bias"]
        for hf_name, our_name in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
            for kind in ("weight", "bias"):
                out[f"{hf}{hf_name}.{kind}"] = s[f"{ours_l}{our_name}.{kind}"]
    return out


def test_gpt2_logits_match_transformers():
    ours, args = random_model("gpt2")
    theirs = hf_gpt2(args)
    theirs.load_state_dict(hf_gpt2_state(ours, args.n_layers), strict=True)
    theirs.eval()
    assert theirs.lm_head.weight.data_ptr() == theirs.transformer.wte.weight.data_ptr()  # tied, as ours
    tokens = torch.randint(0, VOCAB, (2, 48), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = (ours(tokens) - theirs(tokens).logits.float()).abs().max().item()
    assert diff <= 1e-4, f"max |logits diff| vs transformers GPT-2 = {diff}"


def test_flavor_shapes_and_gpt2_param_count():
    llama = make_model_args("llama", "llama_1b", 128256, 2048)
    assert (llama.n_layers, llama.dim, llama.n_heads, llama.n_kv_heads, llama.ffn_dim) == (16, 2048, 32, 8, 8192)
    gpt2 = make_model_args("gpt2", "gpt2_124m", 50257, 1024)
    assert (gpt2.n_layers, gpt2.dim, gpt2.n_heads, gpt2.ffn_dim, gpt2.tie_embeddings) == (12, 768, 12, 3072, True)
    with torch.device("meta"):
        model = build_model(gpt2)
    assert count_params(model) == 124_439_808
    # An override wins over the flavor; derived widths follow it.
    wide = make_model_args("gpt2", "debug", VOCAB, SEQ, {"dim": 256, "n_layers": None})
    assert (wide.dim, wide.ffn_dim, wide.n_layers) == (256, 1024, 4)


@pytest.mark.parametrize("family, overrides, culprit", [
    ("llama", {"n_heads": 5}, "model.n_heads"),
    ("gpt2", {"dim": 130}, "model.dim"),
    ("llama", {"n_kv_heads": 3}, "model.n_kv_heads"),
    ("llama", {"dim": 20, "n_heads": 4}, "head_dim"),
    ("llama", {"rope_scaling_factor": 8.0, "rope_high_freq_factor": 1.0}, "model.rope_high_freq_factor = 1.0 must exceed"),
    ("gpt2", {"lora_rank": 2, "lora_targets": ("mlp.gate",)}, "model.lora_targets includes 'mlp.gate'"),
])
def test_bad_shapes_raise_one_line_value_error(family, overrides, culprit):
    with pytest.raises(ValueError) as err:
        make_model_args(family, "debug", VOCAB, SEQ, overrides)
    message = str(err.value)
    assert culprit in message and "\n" not in message


def test_unknown_flavor_names_the_choices():
    with pytest.raises(ValueError, match="llama_1b") as err:
        make_model_args("llama", "llama_7b", VOCAB, SEQ)
    assert "\n" not in str(err.value)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_meta_build_allocates_nothing():
    args = make_model_args("llama", "llama_1b", 128256, 2048)
    before = _rss_bytes()
    with torch.device("meta"):
        model = build_model(args)
    grown = _rss_bytes() - before
    tensors = [*model.parameters(), *model.buffers()]
    assert all(t.is_meta for t in tensors)
    n = count_params(model)
    assert n > 1_200_000_000  # 1.24e9 parameters = 4.9 GB in float32 had they been allocated
    assert grown < 64 * 2 ** 20, f"meta build grew RSS by {grown / 2 ** 20:.0f} MiB"


def test_lora_linear_is_the_merged_linear_and_zero_b_is_the_base():
    from models.common import LoRALinear

    torch.manual_seed(0)
    layer = LoRALinear(24, 16, bias=True, rank=4, scale=2.0)
    torch.nn.init.normal_(layer.lora_a)
    torch.nn.init.normal_(layer.lora_b)
    x = torch.randn(3, 5, 24)  # [B, T, in]
    merged = layer.weight + 2.0 * layer.lora_b @ layer.lora_a
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, merged, layer.bias), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        layer.lora_b.zero_()
    assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


@pytest.mark.parametrize("rank, alpha, stabilized, scale", [
    (8, None, False, 1.0), (16, 32.0, False, 2.0), (16, 16.0, True, 4.0), (4, None, True, 2.0),
])
def test_lora_scale_is_alpha_over_rank_or_its_square_root(rank, alpha, stabilized, scale):
    args = make_model_args("llama", "debug", VOCAB, SEQ, {"lora_rank": rank, "lora_alpha": alpha,
                                                          "lora_rank_stabilized": stabilized})
    assert args.lora_scale == scale
    with torch.device("meta"):
        assert build_model(args).layers["0"].attn.q.lora_scale == scale


# Debug shapes: llama d=128, 2 KV heads of 32 (v: 128 -> 64); gpt2 d=128, d_ff=512. A rank-2 adapter on
# an in -> out projection adds 2 (in + out) parameters per layer, 4 layers.
@pytest.mark.parametrize("family, targets, roles, added", [
    ("llama", ("attn.q", "attn.v"), ["attn.q.lora_a", "attn.q.lora_b", "attn.v.lora_a", "attn.v.lora_b"],
     4 * (2 * (128 + 128) + 2 * (128 + 64))),
    ("gpt2", ("mlp.up", "attn.out"), ["attn.out.lora_a", "attn.out.lora_b", "mlp.up.lora_a", "mlp.up.lora_b"],
     4 * (2 * (128 + 512) + 2 * (128 + 128))),
])
def test_adapters_sit_on_the_target_roles_only(family, targets, roles, added):
    from roles import role_of

    with torch.device("meta"):
        model = build_model(make_model_args(family, "debug", VOCAB, SEQ, {"lora_rank": 2, "lora_targets": targets}))
        plain = build_model(make_model_args(family, "debug", VOCAB, SEQ))
    assert sorted({role_of(n) for n, _ in model.named_parameters() if "lora" in n}) == roles
    assert count_params(model) - count_params(plain) == added
