"""The TrainSpec ``initlab_llama3``: torchtitan's llama3 whose ``init_weights`` draws every parameter as initlab's
trainer does, with initlab's statistics, data and flavors. Importing this module registers it
(``--experimental.custom_import integrations.torchtitan.spec``)."""

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torchtitan.models import llama3
from torchtitan.models.llama3.model.args import TransformerModelArgs
from torchtitan.models.llama3.model.model import Transformer
from torchtitan.protocols.train_spec import TrainSpec, register_train_spec

from components.config import ConfigError, Init
from components.torchtitan_names import from_torchtitan
from distributed.placement import local_rows, unsupported_placement
from init_schemes import WeightInitializer
from integrations.torchtitan.config import TRAIN_SPEC_NAME, checked_section, initlab_args, initlab_seed
from integrations.torchtitan.data import build_dataloader
from integrations.torchtitan.flavors import register_flavors
from integrations.torchtitan.metrics import build_metrics_processor
from models.common import ModelArgs
from roles import canonical_name, layer_of, role_of


@dataclass
class InitlabModelArgs(TransformerModelArgs):
    """torchtitan's llama3 args plus the validated initlab options and seed, read from the job config."""

    initlab: Init = field(default_factory=Init)
    initlab_seed: int = 0

    def update_from_config(self, job_config, **kwargs) -> None:
        super().update_from_config(job_config, **kwargs)
        section = getattr(job_config, "initlab", None)
        if section is None:
            raise ConfigError(f"model.name = {TRAIN_SPEC_NAME!r} needs the [initlab] table; add "
                              "--job.custom_config_module integrations.torchtitan.config")
        self.initlab = checked_section(section)
        self.initlab_seed = initlab_seed(job_config)


def check_placements(name: str, param: torch.Tensor) -> None:
    """One-line error unless ``param`` is plain or sharded only along dim 0 (FSDP2/HSDP) or replicated."""
    if (placement := unsupported_placement(param)) is not None:
        raise ConfigError(f"initlab init of {name}: placement {placement!r} (tensor parallelism) is not "
                          "supported, only FSDP/HSDP's Shard(0) and Replicate; set "
                          "parallelism.tensor_parallel_degree = 1")


@torch.no_grad()
def init_torchtitan_llama(model: nn.Module, options: Init, seed: int, args: ModelArgs) -> WeightInitializer:
    """Fill every parameter of torchtitan's llama3 ``model`` (plain or FSDP2-sharded) as initlab would.

    Returns the initializer, whose ``applied`` maps initlab names to (role, layer, spec).
    """
    initializer = WeightInitializer(options, args, seed, local_rows=local_rows)
    for titan_name, param in model.named_parameters():
        name = canonical_name(titan_name)
        key = from_torchtitan(name)
        if key is None:
            raise ConfigError(f"torchtitan parameter {titan_name!r} has no initlab counterpart "
                              "(components/torchtitan_names.py); the extension supports the llama3 Transformer only")
        check_placements(titan_name, param)
        initializer(param, role_of(key), layer_of(key), key)
    return initializer


class InitlabTransformer(Transformer):
    """torchtitan's llama3 ``Transformer`` whose ``init_weights`` is initlab's scheme (buffers as torchtitan's)."""

    def init_weights(self, buffer_device: torch.device | None = None) -> None:
        buffer_device = buffer_device or self.freqs_cis.device
        with torch.device(buffer_device):
            self.freqs_cis = self._precompute_freqs_cis()  # as torchtitan's own init_weights (model.py)
        args = self.model_args
        init_torchtitan_llama(self, args.initlab, args.initlab_seed, initlab_args(args))


def build_tokenizer_fn(job_config):
    """torchtitan's tokenizer, or none with ``initlab.dataset`` set (the batches are token ids already)."""
    if getattr(job_config, "initlab", None) is not None and job_config.initlab.dataset:
        return None
    return llama3.get_train_spec().build_tokenizer_fn(job_config)


class Flavors(Mapping):
    """torchtitan's llama3 flavors, read at lookup time (so flavors registered later count), as fresh
    InitlabModelArgs (field by field, so nested args stay objects and no lookup shares another's args)."""

    def __getitem__(self, name: str) -> InitlabModelArgs:
        args = llama3.llama3_args[name]
        return InitlabModelArgs(**{f.name: getattr(args, f.name) for f in dataclasses.fields(args)})

    def __iter__(self) -> Iterator[str]:
        return iter(llama3.llama3_args)

    def __len__(self) -> int:
        return len(llama3.llama3_args)


def train_spec() -> TrainSpec:
    """torchtitan's llama3 TrainSpec with initlab's model init and weight statistics."""
    base = llama3.get_train_spec()
    return dataclasses.replace(base, model_cls=InitlabTransformer, model_args=Flavors(),
                               build_metrics_processor_fn=build_metrics_processor,
                               build_dataloader_fn=build_dataloader, build_tokenizer_fn=build_tokenizer_fn)


def register() -> None:
    """Register ``initlab_llama3`` once (importing this module twice must not fail), and initlab's flavors
    (integrations/torchtitan/flavors.py: ``initlab_llama_1b``, ``initlab_debug``)."""
    from torchtitan.protocols import train_spec as registry

    register_flavors()
    if TRAIN_SPEC_NAME not in registry._extra_train_specs:  # torchtitan has no public "is registered"
        register_train_spec(TRAIN_SPEC_NAME, train_spec())


register()
