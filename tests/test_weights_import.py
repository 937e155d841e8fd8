"""components/weights_import.py on DCP sources: torchtitan llama3 checkpoints through the name map, and the
refusal of any source that fills fewer than all of the model's tensors (LoRA adapters excepted).

Oracle: torchtitan 0.2.2's own llama3 ``Transformer``, initialized by its ``init_weights`` and saved the
way its CheckpointManager does (model tensors flattened to the top level next to the other states,
torchtitan/components/checkpoint.py ``_flattened_model_states_sd``; a bf16 model-only last step).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file

from components import hf_convert
from components.checkpoint import CheckpointError
from components.torchtitan_names import to_torchtitan
from components.weights_import import load_initial_weights
from roles import canonical_name
from tests.test_export import FAMILY_ARGS, TOKENS, plain_model
from tests.test_models import torchtitan_llama

QUIET = SimpleNamespace(is_main=False)  # one process, no process group; the report is not printed


def torchtitan_checkpoint(path: Path, args, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A torchtitan llama3 model with ``args``' shapes, its own init (seed 5), saved to DCP dir ``path``."""
    from torchtitan.components.checkpoint import ModelWrapper

    torch.manual_seed(5)
    theirs = torchtitan_llama(args)
    with torch.no_grad():
        theirs.init_weights()
    model_states = {k: v.to(dtype) for k, v in ModelWrapper(theirs).state_dict().items()}
    train_state = {"step": torch.tensor(10), "ntokens_seen": torch.tensor(20480)}
    dcp.save({**model_states, "train_state": train_state}, checkpoint_id=str(path), no_dist=True)
    return theirs.eval()


def test_torchtitan_checkpoint_loads_through_the_name_map(tmp_path):
    ours, args = plain_model(FAMILY_ARGS["llama"])
    theirs = torchtitan_checkpoint(tmp_path / "titan", args)
    report = load_initial_weights(ours, tmp_path / "titan", QUIET)
    assert report["format"] == "torchtitan" and report["kept_init"] == [] and report["unused"] == []
    their_state = theirs.state_dict()
    assert len(report["loaded"]) == len(their_state) == 2 * 9 + 3
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, their_state[to_torchtitan(name)]), name
    with torch.no_grad():
        diff = (ours(TOKENS) - theirs(TOKENS)).abs().max().item()
    assert diff <= 1e-5, diff


def test_bf16_torchtitan_export_loads_upcast(tmp_path):
    """torchtitan's model-only last step in export_dtype bf16: each tensor is its bf16 value in float32."""
    ours, args = plain_model(FAMILY_ARGS["llama"])
    theirs = torchtitan_checkpoint(tmp_path / "titan", args, dtype=torch.bfloat16)
    load_initial_weights(ours, tmp_path / "titan", QUIET)
    their_state = theirs.state_dict()
    for name, tensor in ours.state_dict().items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, their_state[to_torchtitan(name)].bfloat16().float()), name


def test_partial_sources_are_refused(tmp_path):
    """A 2-layer source into a 3-layer model: torchtitan DCP, initlab DCP and HF safetensors all refuse."""
    shallow, args = plain_model(FAMILY_ARGS["llama"])
    torchtitan_checkpoint(tmp_path / "titan", args)
    dcp.save({"model": shallow.state_dict()}, checkpoint_id=str(tmp_path / "step_3"), no_dist=True)
    save_file(hf_convert.to_hf({canonical_name(k): v for k, v in shallow.state_dict().items()}, args),
              str(tmp_path / "hf.safetensors"))
    deeper, _ = plain_model([*FAMILY_ARGS["llama"], "--model.n_layers", "3"])
    for source in ("titan", "step_3", "hf.safetensors"):
        with pytest.raises(CheckpointError, match=r"lacks 9 of the model's 30 tensors \(layers\.2\.attn_norm\.weight, "
                                                  r"layers\.2\.attn\.q\.weight, .* drop init\.from_checkpoint"):
            load_initial_weights(deeper, tmp_path / source, QUIET)


def test_a_dcp_checkpoint_with_foreign_keys_is_refused(tmp_path):
    """Keys neither initlab's ('model.*') nor torchtitan's used to load nothing and train from scratch."""
    ours, args = plain_model(FAMILY_ARGS["llama"])
    foreign = {f"net.{name}": tensor for name, tensor in ours.state_dict().items()}
    dcp.save(foreign, checkpoint_id=str(tmp_path / "foreign"), no_dist=True)
    with pytest.raises(CheckpointError, match=r"holds no model tensors initlab knows \(keys like net\."):
        load_initial_weights(ours, tmp_path / "foreign", QUIET)
    torchtitan_checkpoint(tmp_path / "titan", args)
    gpt2, _ = plain_model(FAMILY_ARGS["gpt2"])
    with pytest.raises(ValueError, match="is a torchtitan llama3 checkpoint but the model is gpt2"):
        load_initial_weights(gpt2, tmp_path / "titan", QUIET)


def test_adapters_keep_their_init_from_a_dcp_base(tmp_path):
    """An initlab DCP base into a LoRA model: every base tensor loads, the adapters (B = 0) keep their init."""
    base, _ = plain_model(FAMILY_ARGS["llama"], seed=3)
    dcp.save({"model": base.state_dict()}, checkpoint_id=str(tmp_path / "step_3"), no_dist=True)
    adapted, _ = plain_model([*FAMILY_ARGS["llama"], "--model.lora_rank", "4"])
    report = load_initial_weights(adapted, tmp_path / "step_3", QUIET)
    assert report["format"] == "dcp" and len(report["loaded"]) == 2 * 9 + 3
    assert sorted(report["kept_init"]) == sorted(n for n, _ in adapted.named_parameters() if "lora" in n)
    with torch.no_grad():
        assert torch.equal(adapted(TOKENS), base(TOKENS))
