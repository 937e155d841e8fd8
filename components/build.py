"""Config -> initialized, parallelized model: the one path used by training, inspection and benchmarks.

meta build (shapes only) -> parallelize (AC, compile, FSDP2) -> ``to_empty`` on the device ->
``init_weights`` under ``no_grad`` (the init scheme decides every std; each rank draws only its shard).
"""

from __future__ import annotations

import torch
from torch import nn

from components.config import Config
from components.weights_import import load_initial_weights
from distributed.env import DistEnv
from distributed.parallelize import parallelize
from distributed.placement import local_rows
from init_schemes import WeightInitializer
from init_schemes.parametrization import Parametrization, base_shape_overrides, with_multipliers
from models import build_model, make_model_args
from models.common import ModelArgs
from roles import is_adapter

SHAPE_FIELDS = ("n_layers", "dim", "n_heads", "n_kv_heads", "ffn_dim", "multiple_of", "ffn_dim_multiplier",
                "norm_eps", "rope_theta", "rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                "rope_original_max_seq_len", "lora_rank", "lora_alpha", "lora_targets", "lora_rank_stabilized", "bias",
                "tie_embeddings")


def model_args_from_config(cfg: Config, tokenizer_vocab: int) -> ModelArgs:
    """The model shapes: flavor <- [model] overrides; vocab from the tokenizer unless set; the
    [parametrization]'s forward multipliers filled in."""
    overrides = {name: getattr(cfg.model, name) for name in SHAPE_FIELDS}
    vocab = cfg.model.vocab_size or tokenizer_vocab
    if vocab < tokenizer_vocab:
        raise ValueError(f"model.vocab_size = {vocab} is smaller than the tokenizer's {tokenizer_vocab} tokens; "
                         "omit model.vocab_size or raise it")
    args = make_model_args(cfg.model.name, cfg.model.flavor, vocab, cfg.training.seq_len, overrides)
    return with_multipliers(args, base_model_args(cfg, args), cfg.parametrization)


def base_model_args(cfg: Config, args: ModelArgs) -> ModelArgs:
    """The shapes of the [parametrization]'s base (proxy) model; ``args`` itself under sp."""
    base_overrides = base_shape_overrides(cfg.parametrization, args, cfg.model.ffn_dim)
    if not base_overrides:
        return args
    overrides = {name: getattr(cfg.model, name) for name in SHAPE_FIELDS} | base_overrides
    return make_model_args(cfg.model.name, cfg.model.flavor, args.vocab_size, args.max_seq_len, overrides)


def parametrization_of(cfg: Config, args: ModelArgs) -> Parametrization:
    """The [parametrization] bound to the model ``args`` (from :func:`model_args_from_config`)."""
    return Parametrization(cfg.parametrization, args, base_model_args(cfg, args))


def freeze_all_but_adapters(model: nn.Module) -> None:
    """LoRA fine-tuning: only the adapter matrices keep ``requires_grad`` (before FSDP2 wraps them)."""
    for name, param in model.named_parameters():
        param.requires_grad_(is_adapter(name))


def build_local_model(cfg: Config, vocab: int, device: str = "cpu") -> tuple[nn.Module, ModelArgs, WeightInitializer]:
    """The [model] with its [init] and [parametrization] on one process, without FSDP or compile: for
    scripts and tests that train small models in-process (coordinate checks, lr sweeps)."""
    args = model_args_from_config(cfg, vocab)
    with torch.device("meta"):
        model = build_model(args)
    model.to_empty(device=device)
    initializer = WeightInitializer(cfg.init, args, cfg.job.seed, parametrization_of(cfg, args))
    model.init_weights(initializer, buffer_device=torch.device(device))
    return model, args, initializer


def build_model_and_init(cfg: Config, tokenizer_vocab: int, env: DistEnv) -> tuple[nn.Module, ModelArgs, WeightInitializer]:
    """The model as training uses it, plus its shapes and the initializer (whose ``applied`` holds every spec)."""
    args = model_args_from_config(cfg, tokenizer_vocab)
    with torch.device("meta"):
        model = build_model(args)
    if cfg.training.trainable == "lora":
        freeze_all_but_adapters(model)
    parallelize(model, env, cfg.parallelism, cfg.training, cfg.compile, cfg.activation_checkpoint)
    model.to_empty(device=env.device)
    initializer = WeightInitializer(cfg.init, args, cfg.job.seed, parametrization_of(cfg, args), local_rows)
    model.init_weights(initializer, buffer_device=env.device)
    if cfg.init.from_checkpoint:  # replaces the scheme's tensors where the file has them
        load_initial_weights(model, cfg.init.from_checkpoint, env)
    return model, args, initializer

