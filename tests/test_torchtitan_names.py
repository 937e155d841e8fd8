"""components/torchtitan_names.py: the map covers torchtitan 0.2.2's llama3 parameters one to one."""

from __future__ import annotations

import pytest
import torch

from components.torchtitan_names import from_torchtitan, is_torchtitan_llama, to_torchtitan, torchtitan_role
from models import build_model, make_model_args
from roles import role_of
from tests.test_models import SEQ, VOCAB, torchtitan_llama


def llama_names() -> tuple[list[str], list[str]]:
    """(initlab debug Llama parameter names, torchtitan's for the same shapes), both built on meta."""
    args = make_model_args("llama", "debug", VOCAB, SEQ, {})
    with torch.device("meta"):
        ours = [name for name, _ in build_model(args).named_parameters()]
        theirs = list(torchtitan_llama(args).state_dict())
    return ours, theirs


def test_map_is_a_bijection_onto_torchtitans_state_dict():
    ours, theirs = llama_names()
    assert sorted(to_torchtitan(name) for name in ours) == sorted(theirs)
    assert sorted(from_torchtitan(name) for name in theirs) == sorted(ours)
    assert all(torchtitan_role(to_torchtitan(name)) == role_of(name) for name in ours)
    assert is_torchtitan_llama(theirs) and not is_torchtitan_llama(ours)


def test_examples_and_wrapped_names():
    assert to_torchtitan("layers.3.mlp.gate.weight") == "layers.3.feed_forward.w1.weight"
    assert to_torchtitan("_orig_mod.layers.0._checkpoint_wrapped_module.mlp.out.weight") == \
        "layers.0.feed_forward.w2.weight"
    assert from_torchtitan("layers.7.feed_forward.w3.weight") == "layers.7.mlp.up.weight"
    assert from_torchtitan("output.weight") == "lm_head.weight"
    assert torchtitan_role("layers.1.attention.wo.weight") == "attn.out"
    assert torchtitan_role("norm.weight") == "norm"
    assert from_torchtitan("freqs_cis") is None


def test_unmapped_names_are_refused():
    with pytest.raises(ValueError, match="no torchtitan llama3 counterpart"):
        to_torchtitan("layers.0.attn.q.lora_a")
    with pytest.raises(ValueError, match="not a torchtitan llama3 parameter"):
        torchtitan_role("layers.0.attention.wqkv.weight")
