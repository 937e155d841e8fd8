"""models/common.py flops_per_token: both MFU conventions against torch's FlopCounterMode on a real step.

FlopCounterMode counts the FLOPs of every matmul and attention kernel that a forward + backward runs
(2 per multiply-add), so it is the oracle for the ``all_matmuls`` convention; ``non_embedding``
(torchtitan's) is that minus the tied head's 6 V d. Both also count 6 FLOPs per norm weight and bias,
which do no matmul, so the oracle is compared after adding those.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from models import build_model, make_model_args
from models.common import flops_per_token
from roles import role_of

BATCH, SEQ, VOCAB = 2, 32, 256


def counted_step_flops(model: torch.nn.Module, vocab: int) -> int:
    """FLOPs FlopCounterMode sees in one forward + backward over BATCH x SEQ tokens."""
    tokens = torch.randint(0, vocab, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    # The math backend runs attention as bmm's the counter sees (it has no formula for CPU flash attention).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(tokens).float().square().mean().backward()
    return counter.get_total_flops()


def non_matmul_params(model: torch.nn.Module) -> int:
    """Parameters of norms and biases: counted 6 per token by both conventions, absent from the oracle."""
    return sum(p.numel() for name, p in model.named_parameters()
               if role_of(name) in ("norm", "bias") or name.endswith(".bias"))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_all_matmuls_equals_flop_counter(family):
    torch.manual_seed(0)
    args = make_model_args(family, "debug", VOCAB, SEQ)
    model = build_model(args)
    counted = counted_step_flops(model, VOCAB) + 6 * non_matmul_params(model) * BATCH * SEQ
    assert flops_per_token(model, args, SEQ, "all_matmuls") * BATCH * SEQ == counted


def test_conventions_differ_by_the_tied_head_only():
    gpt2 = build_model(make_model_args("gpt2", "debug", VOCAB, SEQ))
    args = make_model_args("gpt2", "debug", VOCAB, SEQ)
    assert args.tie_embeddings
    gap = flops_per_token(gpt2, args, SEQ, "all_matmuls") - flops_per_token(gpt2, args, SEQ, "non_embedding")
    assert gap == 6 * VOCAB * args.dim
    llama_args = make_model_args("llama", "debug", VOCAB, SEQ)
    llama = build_model(llama_args)
    assert not llama_args.tie_embeddings
    assert (flops_per_token(llama, llama_args, SEQ, "all_matmuls")
            == flops_per_token(llama, llama_args, SEQ, "non_embedding"))


def test_gpt2_124m_figures():
    """GPT-2 124M at T = 1024: the tied head is 38.6 M parameters, 31 % of the all-matmul count."""
    args = make_model_args("gpt2", "gpt2_124m", 50304, 1024)
    with torch.device("meta"):
        model = build_model(args)
    non_embedding = flops_per_token(model, args, 1024, "non_embedding")
    all_matmuls = flops_per_token(model, args, 1024, "all_matmuls")
    attention = 12 * 12 * 12 * 64 * 1024
    assert non_embedding == 6 * 85_056_000 + attention
    assert all_matmuls - non_embedding == 6 * 50304 * 768 == 231_800_832
    assert all_matmuls / non_embedding == pytest.approx(1.3717, abs=1e-4)


def test_frozen_weights_skip_their_weight_gradient():
    args = make_model_args("llama", "debug", VOCAB, SEQ)
    model = build_model(args)
    full = flops_per_token(model, args, SEQ)
    frozen = next(p for n, p in model.named_parameters() if role_of(n) == "attn.q")
    frozen.requires_grad_(False)
    assert flops_per_token(model, args, SEQ) == full - 2 * frozen.numel()


def test_unknown_convention_is_one_line():
    args = make_model_args("llama", "debug", VOCAB, SEQ)
    with pytest.raises(ValueError, match="FLOP convention 'palm' is unknown; use one of non_embedding, all_matmuls"):
        flops_per_token(build_model(args), args, SEQ, "palm")
