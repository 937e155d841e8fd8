"""Initial weights from elsewhere (``init.from_checkpoint``): a DCP step directory, safetensors
files in initlab or Hugging Face names, or a hub model. Kept apart from the resume checkpoints of
``components/checkpoint.py``: those restore a run exactly; these only replace the scheme's draws.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Container, Iterable, Mapping
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

from components import hf_convert
from components.checkpoint import (
    MODEL_KEY,
    CheckpointError,
    _one_line,
    read_checkpoint_metadata,
)
from components.torchtitan_names import from_torchtitan, is_torchtitan_llama
from distributed.env import DistEnv, barrier
from distributed.placement import local_rows
from roles import canonical_name, is_adapter, role_of

HUB_PREFIX = "hf://"  # init.from_checkpoint = "hf://owner/name[@revision]": a Hugging Face hub model


def load_initial_weights(model: nn.Module, path: str | Path, env: DistEnv) -> dict:
    """Replace the scheme's initial weights by those of ``path`` (``init.from_checkpoint``).

    ``path`` is a DCP directory (an initlab ``step_<N>``, or a torchtitan llama3 checkpoint read
    through components/torchtitan_names.py), a ``.safetensors`` file / a directory of them (Hugging
    Face GPT-2/Llama or initlab names, converted by hf_convert), or a hub model
    ``hf://owner/name[@revision]``. The source must fill every tensor of the model but its LoRA
    adapters (which keep their init), else CheckpointError names the missing ones; embedding/LM-head
    rows beyond a safetensors source's vocabulary are set to the mean of its rows.
    Returns a report (also printed by rank 0):
    ``{"source", "format", "loaded", "kept_init", "resized", "unused"}``.
    """
    if str(path).startswith(HUB_PREFIX):
        if env.local_rank == 0:  # one download per node into its HF cache; its other ranks read that copy
            source = hub_snapshot(str(path))
        barrier()
        if env.local_rank != 0:
            source = hub_snapshot(str(path), cached_only=True)
    else:
        source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"init.from_checkpoint = {str(path)!r} does not exist; give a step_<N> checkpoint "
                                "directory, a .safetensors file or a Hugging Face model directory")
    if (source / ".metadata").is_file():
        report = _load_dcp_weights(model, source)
    else:
        report = _load_safetensors_weights(model, source)
    if env.is_main:
        print(describe_initial_load(report), flush=True)
    return report


def hub_snapshot(source: str, cached_only: bool = False) -> Path:
    """The local directory of hub model ``hf://owner/name[@revision]``: its safetensors and config.json,
    downloaded into the Hugging Face cache (``HF_HUB_CACHE``; ``HF_HUB_OFFLINE=1`` or ``cached_only`` reads
    only the cache). Mistral-style ``consolidated*.safetensors`` duplicates are skipped."""
    repo_id, _, revision = source.removeprefix(HUB_PREFIX).partition("@")
    from huggingface_hub import snapshot_download  # imported here: only hub sources need it

    try:
        return Path(snapshot_download(repo_id, revision=revision or None, local_files_only=cached_only,
                                      allow_patterns=["*.safetensors", "config.json"],
                                      ignore_patterns=["consolidated*"]))
    except Exception as err:
        raise FileNotFoundError(f"init.from_checkpoint = {source!r}: cannot get {repo_id} from the Hugging Face hub "
                                f"({_one_line(err)}); download it and give its local directory") from None


def describe_initial_load(report: Mapping) -> str:
    """One line summarizing :func:`load_initial_weights`'s report."""
    parts = [f"init.from_checkpoint: loaded {len(report['loaded'])} tensors from {report['source']} "
             f"({report['format']})"]
    if report["kept_init"]:
        parts.append(f"kept the scheme's init for {len(report['kept_init'])}: {_first_names(report['kept_init'])}")
    if report["resized"]:
        parts.append("resized " + ", ".join(f"{k} ({v})" for k, v in report["resized"].items()))
    if report["unused"]:
        parts.append(f"{len(report['unused'])} source tensors unused: {_first_names(report['unused'])}")
    return "; ".join(parts)


def _first_names(names: list[str], shown: int = 8) -> str:
    return ", ".join(names[:shown]) + (" ..." if len(names) > shown else "")


def _load_dcp_weights(model: nn.Module, source: Path) -> dict:
    """A DCP directory: initlab's (model tensors under 'model.') or torchtitan llama3's (top-level, its names)."""
    metadata = read_checkpoint_metadata(source)
    model_state = get_model_state_dict(model)  # {canonical name: tensor or DTensor shard}
    stored, fmt = _dcp_model_keys(metadata, model, source)  # {our name: key in the checkpoint}
    if fmt == "dcp":
        refuse_dropped_adapters(stored, model_state, source)
    _refuse_missing([name for name in model_state if name not in stored and not is_adapter(name)], model_state,
                    source)
    shapes = {key: tuple(meta.size) if isinstance(meta, TensorStorageMetadata) else None
              for key, meta in metadata.state_dict_metadata.items()}
    for name, tensor in model_state.items():
        if name in stored and shapes[stored[name]] != tuple(tensor.shape):
            saved = "a non-tensor" if shapes[stored[name]] is None else list(shapes[stored[name]])
            raise CheckpointError(f"{source} does not match the model: tensor {stored[name]} is {saved} in the "
                                  f"checkpoint but {list(tensor.shape)} in the model; use the model config the "
                                  "checkpoint was written with")
    present = {name: tensor for name, tensor in model_state.items() if name in stored}
    # DCP fills the tensors of this dict in place; its keys are the checkpoint's (nested dicts are dotted).
    to_read = {MODEL_KEY: present} if fmt == "dcp" else {stored[name]: tensor for name, tensor in present.items()}
    try:
        dcp.load(to_read, checkpoint_id=str(source), no_dist=not dist.is_initialized())
    except Exception as err:
        raise CheckpointError(f"cannot load {source}: {_one_line(err)}") from None
    set_model_state_dict(model, present, options=StateDictOptions(strict=False))
    used = set(stored.values())
    return {"source": str(source), "format": fmt, "loaded": list(present),
            "kept_init": [name for name in model_state if name not in stored], "resized": {},
            "unused": [key for key in shapes if _is_model_key(key, fmt) and key not in used]}


def _dcp_model_keys(metadata: Metadata, model: nn.Module, source: Path) -> tuple[dict[str, str], str]:
    """({our canonical name: its key in the checkpoint}, format 'dcp' or 'torchtitan') of a DCP checkpoint."""
    keys = list(metadata.state_dict_metadata)
    if any(_is_model_key(key, "dcp") for key in keys):
        prefix = MODEL_KEY + "."
        return {key[len(prefix):]: key for key in keys if key.startswith(prefix)}, "dcp"
    if is_torchtitan_llama(keys):
        if model.args.family != "llama":
            raise ValueError(f"{source} is a torchtitan llama3 checkpoint but the model is {model.args.family}; "
                             "set model.name = llama or choose another init.from_checkpoint")
        return {from_torchtitan(key): key for key in keys if _is_model_key(key, "torchtitan")}, "torchtitan"
    raise CheckpointError(f"{source} holds no model tensors initlab knows (keys like {', '.join(keys[:3])}); "
                          "give an initlab step_<N> checkpoint ('model.*' keys) or a torchtitan llama3 one")


def _is_model_key(key: str, fmt: str) -> bool:
    """Whether checkpoint key ``key`` is a model tensor in format ``fmt`` ('dcp' = initlab's, or 'torchtitan')."""
    return key.startswith(MODEL_KEY + ".") if fmt == "dcp" else from_torchtitan(key) is not None


def _refuse_missing(missing: list[str], model_names: Collection[str], source: Path) -> None:
    """A partial source would leave some tensors at the scheme's init without saying so in the results."""
    if missing:
        raise CheckpointError(f"init.from_checkpoint = {source} lacks {len(missing)} of the model's "
                              f"{len(model_names)} tensors ({_first_names(missing, 4)}); give a checkpoint of the "
                              "same architecture (model.n_layers, model.name, ...) or drop init.from_checkpoint")


def refuse_dropped_adapters(source_names: Iterable[str], model_names: Container[str], source: Path) -> None:
    """A source with LoRA adapters the model lacks: loading its base weights alone would undo the fine-tuning."""
    dropped = [name for name in source_names if is_adapter(name) and name not in model_names]
    if dropped:
        raise ValueError(f"{source} holds LoRA adapters the model lacks ({dropped[0]}, ...); merge them with "
                         "scripts/export.py and start from the export, or set model.lora_rank and lora_targets "
                         "as in that run")


def _safetensors_files(source: Path) -> tuple[list[Path], dict]:
    """(safetensors files, HF config dict or {}) of a file or directory."""
    if source.is_file():
        if source.suffix != ".safetensors":
            raise ValueError(f"init.from_checkpoint = {source} is neither a .safetensors file nor a directory; "
                             "export a run with scripts/export.py or point at a step_<N> checkpoint")
        files, config_path = [source], source.parent / "config.json"
    else:
        files, config_path = sorted(source.glob("*.safetensors")), source / "config.json"
        if not files:
            raise FileNotFoundError(f"{source} holds neither a DCP checkpoint (.metadata) nor *.safetensors files; "
                                    "point init.from_checkpoint at a step_<N> directory or an exported model")
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return files, config


def _fit_rows(tensor: torch.Tensor, shape: tuple[int, ...], name: str, source: Path) -> tuple[torch.Tensor, str]:
    """``tensor`` made ``shape``: extra vocab rows = mean of the source rows; extra positions dropped."""
    role, rows, want = role_of(name), tensor.shape[0], shape[0]
    if tensor.dim() == len(shape) and tuple(tensor.shape[1:]) == shape[1:]:
        if role in ("tok_embedding", "lm_head") and rows < want:
            mean_row = tensor.float().mean(dim=0, keepdim=True).to(tensor.dtype)  # [1, d]
            return torch.cat([tensor, mean_row.expand(want - rows, -1)]), f"rows {rows} -> {want}, new rows = mean"
        if role == "pos_embedding" and rows > want:
            return tensor[:want], f"positions {rows} -> {want}, first {want} kept"
    raise ValueError(f"tensor {name} is {list(tensor.shape)} in {source} but {list(shape)} in the model; "
                     "change the [model] shape to match the source or drop init.from_checkpoint")


@torch.no_grad()
def _load_safetensors_weights(model: nn.Module, source: Path) -> dict:
    from safetensors import safe_open  # imported here: only this path needs it

    args = model.args
    files, config = _safetensors_files(source)
    index: dict[str, tuple[Path, str]] = {}  # canonical HF name -> (file, name in the file)
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            index.update({canon: (file, stored) for canon, stored in hf_convert.normalize_hf_names(handle.keys()).items()})
    fmt = hf_convert.detect_format(index)
    if fmt not in ("initlab", args.family):
        raise ValueError(f"{source} holds {fmt} tensors but the model is {args.family}; set model.name = {fmt} "
                         "or choose another init.from_checkpoint")
    if config:
        hf_convert.check_hf_architecture(config, args, source)
    if fmt == "initlab":
        refuse_dropped_adapters(index, {canonical_name(n) for n, _ in model.named_parameters()}, source)
    report = {"source": str(source), "format": fmt, "loaded": [], "kept_init": [], "resized": {}, "unused": []}
    used: set[str] = set()
    for raw_name, param in model.named_parameters():
        name = canonical_name(raw_name)
        if fmt != "initlab" and is_adapter(name):  # HF models have no adapters: they keep their init
            report["kept_init"].append(name)
            continue
        link = hf_convert.Link(name) if fmt == "initlab" else hf_convert.link_for(name, args)
        if link.hf_name not in index and role_of(name) == "lm_head" and hf_convert.hf_ties_embeddings(config):
            link = hf_convert.Link("tok_embedding.weight") if fmt == "initlab" else \
                hf_convert.link_for("tok_embedding.weight", args)  # a tied source: the head is the embedding
        if link.hf_name not in index:
            report["kept_init"].append(name)
            continue
        file, stored = index[link.hf_name]
        with safe_open(str(file), framework="pt") as handle:
            tensor = hf_convert.from_hf_tensor(handle.get_tensor(stored), link)
        if tuple(tensor.shape) != tuple(param.shape):
            tensor, note = _fit_rows(tensor, tuple(param.shape), name, source)
            report["resized"][name] = note
        local, first_row = local_rows(param)  # this rank's rows of a dim-0 shard (or the whole tensor)
        local.copy_(tensor[first_row: first_row + local.shape[0]])
        report["loaded"].append(name)
        used.add(link.hf_name)
    _refuse_missing([name for name in report["kept_init"] if not is_adapter(name)], report["loaded"] +
                    report["kept_init"], source)
    report["unused"] = [name for name in index if name not in used]
    return report
