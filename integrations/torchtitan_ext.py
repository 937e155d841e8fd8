"""initlab's init schemes inside torchtitan 0.2.2's own trainer: a TrainSpec and an ``[initlab]`` config table.

Pinned to torchtitan 0.2.2 (its llama3 ``Transformer``, ``TrainSpec`` and ``ConfigManager``). Run from
the initlab repo root (so ``integrations`` imports), with torchtitan's usual command plus::

    --experimental.custom_import integrations.torchtitan_ext      # registers the TrainSpec
    --job.custom_config_module integrations.torchtitan_ext        # adds the [initlab] table
    --model.name initlab_llama3 --initlab.scheme mitchell         # any initlab [init] option

``initlab_llama3`` is torchtitan's ``llama3`` TrainSpec (same flavors plus ``initlab_llama_1b``,
parallelize/pipeline functions, data, optimizer) whose model's ``init_weights`` draws every parameter the way initlab's trainer does:
torchtitan's name is mapped to initlab's (components/torchtitan_names.py), whose role and layer pick
the scheme's distribution, and init_schemes/apply.py draws it in fixed row blocks seeded by
(seed, initlab name, block). The weights are therefore bitwise initlab's for the same scheme, options
and seed, on any number of FSDP/HSDP ranks. Tensor parallelism shards some weights along dim 1
(``wo``, ``w2``) or in strided blocks, which the block draw does not cover: such a placement is
refused with a one-line error rather than drawn differently. On torchtitan's log steps the metrics
also carry initlab's ``weight_std/<role>/layer_<NN>`` (components/weight_stats.py, the tags of
initlab's trainer), so both trainers' runs line up in one TensorBoard; ``[initlab] run_dir`` (on by default) also
writes them as an initlab run directory (metrics.jsonl + config.toml) that scripts/compare_runs.py reports next to
train.py's runs (InitlabRunLogger, initlab_run_config). With ``[initlab] dataset`` set,
torchtitan's trainer reads initlab's batches instead of its own data (InitlabDataLoader: step k's tokens
are bitwise initlab train.py's), for step-for-step comparisons. docs/torchtitan.md has the details.
"""

# No ``from __future__ import annotations``: torchtitan's ConfigManager merges JobConfig below into its own
# dataclass and resolves the field types in its module, where a string "InitlabSection" means nothing.
import dataclasses
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torchtitan.components.dataloader import BaseDataLoader
from torchtitan.components.metrics import BaseLogger, MetricsProcessor, _get_metrics_rank
from torchtitan.models import llama3
from torchtitan.models.llama3.model.args import TransformerModelArgs
from torchtitan.models.llama3.model.model import Transformer
from torchtitan.protocols.train_spec import TrainSpec, register_train_spec

from benchmarks.torchtitan.llama_1b_flavor import register as register_llama_1b_flavor
from components.activation_stats import STAT_ATTR, ActivationStats, logit_max
from components.config import Config, ConfigError, Data, Init, Tokenizer, config_from_dict, to_toml
from components.data import TokenBatches, TokenDataset, ensure_dataset, read_manifest
from components.metrics import truncate_jsonl
from components.run_dir import TORCHTITAN_TABLE
from components.tokenizer import build_tokenizer
from components.torchtitan_names import from_torchtitan
from components.weight_stats import WeightStats
from distributed.env import barrier
from distributed.placement import local_rows, unsupported_placement
from init_schemes import WeightInitializer
from models import make_model_args
from models.common import ModelArgs
from roles import canonical_name, layer_of, role_of

TRAIN_SPEC_NAME = "initlab_llama3"
TORCHTITAN_VERSION = "0.2.2"
DEBUG_FLAVOR = "initlab_debug"
"""initlab's llama "debug" shape (4 layers, d 128, 4 heads, 2 KV heads) with the 4097 ids of train_configs/debug.toml's
tokenizer (cl100k's first 4096 tokens plus EOS): a torchtitan flavor small enough for a CPU, next to initlab's debug model."""


@dataclass
class InitlabSection(Init):
    """initlab's ``[init]`` options (same names, types and defaults) plus the seed of the draw."""

    seed: int | None = None
    """Seed (integer) of the init draw, initlab's job.seed; omit to use torchtitan's debug.seed (0 when unset)."""
    log_weight_std: bool = True
    """Log weight_std/<role>/layer_<NN> on torchtitan's log steps (initlab's tags; one packed all-reduce)."""
    log_activation_stats: bool = False
    """Log initlab's act_rms/act_std/attn_logit_max of the first micro-batch of each log step (initlab's
    metrics.log_variance_stats; components/activation_stats.py), same tags, one packed all-reduce."""
    dataset: str = ""
    """initlab's token data instead of torchtitan's [training] dataset: "" = off (torchtitan's own data);
    "embedded" = initlab's offline default corpus (initlab's default [tokenizer], cached in data_cache_dir);
    or a directory written by initlab's scripts/prepare_data.py. Step k's batches are then bitwise initlab
    train.py's for the same seed, training.seq_len and global batch (InitlabDataLoader)."""
    data_cache_dir: str = ".cache/initlab"
    """Directory (path) of initlab's token cache for dataset = "embedded" (initlab's data.cache_dir)."""
    run_dir: str = "initlab_run"
    """initlab run directory (path; relative = under job.dump_folder; "" = off) that torchtitan's metrics rank fills
    with metrics.jsonl under initlab's metric names on every log step and a config.toml in initlab's schema plus a
    [torchtitan] table, so scripts/compare_runs.py reads this run next to train.py's (InitlabRunLogger)."""


@dataclass
class JobConfig:
    """Merged into torchtitan's JobConfig by ``--job.custom_config_module integrations.torchtitan_ext``."""

    initlab: InitlabSection = field(default_factory=InitlabSection)


def checked_section(section: InitlabSection) -> Init:
    """The ``[initlab]`` options as an initlab ``Init``, validated by initlab's own rules (one-line errors)."""
    if section.from_checkpoint:
        raise ConfigError(f"initlab.from_checkpoint = {section.from_checkpoint!r} is not supported inside "
                          "torchtitan; load weights with torchtitan's checkpoint.initial_load_path instead")
    try:
        return config_from_dict({"init": init_table(section)}, origin="[initlab]").init
    except ConfigError as error:
        raise ConfigError(re.sub(r"\binit\.", "initlab.", str(error))) from None


def init_table(section: InitlabSection) -> dict:
    """The ``[initlab]`` options that are initlab's ``[init]`` keys, as that table."""
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(Init)}


def initlab_args(args: TransformerModelArgs) -> ModelArgs:
    """initlab's Llama shapes for torchtitan's llama3 args (the schemes read widths, depth and vocab)."""
    return make_model_args("llama", "debug", args.vocab_size, args.max_seq_len, {
        "n_layers": args.n_layers, "dim": args.dim, "n_heads": args.n_heads, "n_kv_heads": args.n_kv_heads,
        "multiple_of": args.multiple_of, "ffn_dim_multiplier": args.ffn_dim_multiplier,
        "norm_eps": args.norm_eps, "rope_theta": args.rope_theta})


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
                              "--job.custom_config_module integrations.torchtitan_ext")
        self.initlab = checked_section(section)
        self.initlab_seed = initlab_seed(job_config)


def initlab_seed(job_config) -> int:
    """initlab's job.seed inside torchtitan: initlab.seed, else torchtitan's debug.seed, else 0."""
    section = job_config.initlab
    return section.seed if section.seed is not None else (job_config.debug.seed or 0)


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


class InitlabNames:
    """A view of torchtitan's llama3 whose ``named_parameters`` carry initlab's names (for WeightStats)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def named_parameters(self):
        for titan_name, param in self.model.named_parameters():
            name = from_torchtitan(canonical_name(titan_name))
            if name is None:
                raise ConfigError(f"torchtitan parameter {titan_name!r} has no initlab counterpart "
                                  "(components/torchtitan_names.py); set initlab.log_weight_std = false")
            yield name, param


def torchtitan_weight_stats(model_parts: list[nn.Module]) -> WeightStats:
    """initlab's WeightStats over torchtitan's model: the tags of initlab's trainer, one packed all-reduce."""
    if len(model_parts) != 1:
        raise ConfigError(f"initlab.log_weight_std needs one model part, got {len(model_parts)} (pipeline "
                          "parallelism); set initlab.log_weight_std = false or parallelism.pipeline_parallel_degree = 1")
    return WeightStats(InitlabNames(model_parts[0]))


INNER_ATTENTION = re.compile(r"layers\.(\d+)\.attention\.inner_attention")


def initlab_module_names(model: nn.Module) -> dict[str, nn.Module]:
    """torchtitan's llama3 modules under initlab's module names, through the parameter name map.

    A module with parameters is named by the longest common path of its parameters' initlab modules
    (``layers.0.attention`` holds attn.q/k/v/out -> ``layers.0.attn``; ``layers.0.feed_forward.w1`` ->
    ``layers.0.mlp.gate``); torchtitan's ``inner_attention``, which receives q and k after RoPE, stands
    for initlab's ``attn.logits_tap``. Compile/AC wrapper prefixes are dropped, the outermost module kept.
    """
    named: dict[str, nn.Module] = {}
    for fqn, module in model.named_modules():
        titan = canonical_name(fqn)
        if tap := INNER_ATTENTION.fullmatch(titan):
            named.setdefault(f"layers.{tap.group(1)}.attn.logits_tap", module)
            continue
        names = [from_torchtitan(canonical_name(f"{fqn}.{local}" if fqn else local))
                 for local, _ in module.named_parameters()]
        if not names or None in names:
            continue
        paths = [name.split(".")[:-1] for name in names]  # the parameters' initlab modules
        length = next((i for i, parts in enumerate(zip(*paths)) if len(set(parts)) > 1), min(map(len, paths)))
        if length:
            named.setdefault(".".join(paths[0][:length]), module)
    return named


class InitlabModules:
    """torchtitan's llama3 as initlab's ActivationStats reads a model: initlab's args, module names, layers."""

    def __init__(self, model: nn.Module):
        self.args, self.layers = initlab_args(model.model_args), model.layers
        self._named = initlab_module_names(model)

    def named_modules(self):
        return iter(self._named.items())


class TorchtitanActivationStats(ActivationStats):
    """initlab's ActivationStats on torchtitan's llama3 (sdpa attention): the probes of initlab's Llama found
    through the name map; the attention logits read from ``inner_attention``'s q, k [B, H, T, hd] inputs.

    Measures the first training forward of each of torchtitan's log steps: a pre-hook on the model counts
    training forwards (``accum_steps`` per optimizer step, steps from 1) and switches the hooks on for
    micro-batch 0 of a step that ``should_log``; ``InitlabMetricsProcessor.log`` resynchronizes the count.
    """

    def __init__(self, model: nn.Module, accum_steps: int, should_log):
        super().__init__(InitlabModules(model))
        self.accum_steps, self.should_log = accum_steps, should_log
        self.forwards, self.measured_step = 0, 0
        model.register_forward_pre_hook(self._before_forward)
        model.register_forward_hook(self._after_forward)

    def _before_forward(self, model: nn.Module, args: tuple) -> None:
        if not model.training:  # validation or generation: not a training micro-batch
            return
        step, micro = divmod(self.forwards, self.accum_steps)
        self.forwards += 1
        if micro == 0 and self.should_log(step + 1):
            for probe in self.probes:
                setattr(probe.module, STAT_ATTR, None)
            self.active, self.measured_step = True, step + 1

    def _after_forward(self, model: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.active = False

    def _logit_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if self.active:  # inner_attention(q [B, H, T, hd], k [B, H_kv, T, hd], v, ...)
            setattr(module, STAT_ATTR, logit_max(args[0].transpose(1, 2), args[1].transpose(1, 2), self.logit_scale))

    def values_for(self, step: int) -> dict[str, float]:
        """The statistics of ``step``'s measured forward ({} when it was not measured: the first log step after
        a checkpoint resume), counting the next forward as step + 1's first."""
        values = self.compute() if self.measured_step == step else {}
        self.forwards = step * self.accum_steps
        return values


def global_batch_size(training, dp_world_size: int) -> int:
    """torchtitan's global batch (sequences): training.global_batch_size, or local x dp when it is unset (-1)."""
    return training.global_batch_size if training.global_batch_size > 0 else training.local_batch_size * dp_world_size


def gradient_accumulation_steps(job_config, parallel_dims) -> int:
    """torchtitan's trainer's count: global batch / (local batch x data-parallel degree)."""
    dp = parallel_dims.dp_replicate * parallel_dims.dp_shard
    return global_batch_size(job_config.training, dp) // (job_config.training.local_batch_size * dp)


class InitlabMetricsProcessor(MetricsProcessor):
    """torchtitan's metrics plus initlab's per-layer weight std (and, with ``initlab.log_activation_stats``,
    activation statistics) on its log steps (all ranks call ``log``)."""

    weight_stats: WeightStats | None = None
    activation_stats: TorchtitanActivationStats | None = None

    @property
    def model_parts(self) -> list[nn.Module] | None:
        return self._model_parts

    @model_parts.setter
    def model_parts(self, parts: list[nn.Module] | None) -> None:
        # The trainer sets model_parts after parallelize (compile is lazy) and before the first forward:
        # the hooks must be in place by then for step 1 to be measured.
        self._model_parts = parts
        if parts is not None and self.job_config.initlab.log_activation_stats:
            if len(parts) != 1:
                raise ConfigError(f"initlab.log_activation_stats needs one model part, got {len(parts)} (pipeline "
                                  "parallelism); set it false or parallelism.pipeline_parallel_degree = 1")
            self.activation_stats = TorchtitanActivationStats(
                parts[0], gradient_accumulation_steps(self.job_config, self.parallel_dims), self.should_log)

    def log(self, step: int, global_avg_loss: float, global_max_loss: float, grad_norm: float,
            extra_metrics: dict | None = None) -> None:
        extra = dict(extra_metrics or {})
        if self.job_config.initlab.log_weight_std:
            if self.weight_stats is None:  # model_parts is set by the trainer after this object is built
                self.weight_stats = torchtitan_weight_stats(self.model_parts)
            extra.update(self.weight_stats.compute())
        if self.activation_stats is not None:
            extra.update(self.activation_stats.values_for(step))
        super().log(step, global_avg_loss, global_max_loss, grad_norm, extra)


# ---------------------------------------------------------------- the run as an initlab run directory
SAME_METRICS = {"loss_metrics/global_avg_loss": "loss/train", "validation_metrics/loss": "loss/val",
                "grad_norm": "grad_norm_total", "lr": "lr"}
"""torchtitan's name -> initlab's (docs/design.md §8) of the metrics that mean the same."""
INITLAB_FAMILIES = ("weight_std/", "act_rms/", "act_std/", "attn_logit_max/")
"""Prefixes of the tags the extension logs under initlab's names already."""


def initlab_metrics(metrics: Mapping, world_size: int) -> dict[str, float]:
    """The metrics torchtitan logs at one step under initlab's names (the others are left out).

    torchtitan's ``throughput(tps)`` is the metrics rank's tokens / (seconds x non-data-parallel ranks): initlab's
    per-device tokens/s; times the world size it is the global tokens/s (every dp rank reads as many tokens).
    """
    values = {SAME_METRICS[name]: float(value) for name, value in metrics.items() if name in SAME_METRICS}
    values |= {name: float(value) for name, value in metrics.items() if name.startswith(INITLAB_FAMILIES)}
    if "throughput(tps)" in metrics:
        values["throughput/tokens_per_sec_per_device"] = float(metrics["throughput(tps)"])
        values["throughput/tokens_per_sec"] = float(metrics["throughput(tps)"]) * world_size
    return values


class InitlabRunLogger(BaseLogger):
    """torchtitan's metric logger that also appends each logged step, under initlab's names, to ``metrics.jsonl``.

    One JSON object per call (non-finite values as null, as train.py writes them); a validation record shares its
    step with the training record, and readers merge them. The first record of a process, at step s, drops the
    file's records from s on: after a checkpoint resume no log step lies between the checkpoint and s, and a new
    run in the same folder starts at s = 1.
    """

    def __init__(self, inner: BaseLogger, run_dir: Path, world_size: int):
        self.inner, self.path, self.world_size = inner, run_dir / "metrics.jsonl", world_size
        self.file = None

    def log(self, metrics: dict, step: int) -> None:
        self.inner.log(metrics, step)
        if self.file is None:
            truncate_jsonl(self.path, step - 1)
            self.file = self.path.open("a", encoding="utf-8")
        values = initlab_metrics(metrics, self.world_size)
        record = {"step": step, **{name: value if math.isfinite(value) else None for name, value in values.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.inner.close()
        if self.file is not None:
            self.file.close()


def initlab_lr_scheduler(schedule, steps: int) -> dict:
    """initlab's name for torchtitan's lr schedule: warm-up (torchtitan shortens it to the run), then constant
    (no decay steps), linear or cosine (decay_ratio unset), or wsd (linear decay over the last decay_ratio).
    A schedule initlab lacks (sqrt, a WSD with cosine decay) keeps initlab's default decay; the [torchtitan]
    table records torchtitan's own fields either way."""
    total = schedule.total_steps or steps
    mapped = {"warmup_steps": min(schedule.warmup_steps, total), "min_lr_ratio": schedule.min_lr_factor}
    if schedule.decay_ratio is not None and round(total * schedule.decay_ratio) == 0:
        mapped["decay_type"] = "constant"
    elif schedule.decay_ratio is None and schedule.decay_type in ("linear", "cosine"):
        mapped["decay_type"] = schedule.decay_type
    elif schedule.decay_ratio is not None and schedule.decay_type == "linear":
        mapped["decay_type"], mapped["decay_ratio"] = "wsd", schedule.decay_ratio
    return mapped


def initlab_model_table(args: TransformerModelArgs) -> dict:
    """torchtitan's llama3 shape as initlab's [model] table (every shape field set, so the flavor adds nothing)."""
    rope = args.rope_scaling_args
    return {"name": "llama", "flavor": "debug", "n_layers": args.n_layers, "dim": args.dim, "n_heads": args.n_heads,
            "n_kv_heads": args.n_kv_heads or args.n_heads, "multiple_of": args.multiple_of,
            "ffn_dim_multiplier": args.ffn_dim_multiplier, "vocab_size": args.vocab_size, "norm_eps": args.norm_eps,
            "rope_theta": args.rope_theta, "rope_scaling_factor": rope.scaling_factor,
            "rope_low_freq_factor": rope.low_freq_factor, "rope_high_freq_factor": rope.high_freq_factor,
            "rope_original_max_seq_len": rope.original_max_position_embeddings}


def initlab_run_config(job_config, args: TransformerModelArgs, dp_world_size: int, run_dir: Path) -> Config:
    """The torchtitan run in initlab's schema, as far as it maps (validated by initlab's rules)."""
    t, opt, section = job_config.training, job_config.optimizer, job_config.initlab
    if opt.name != "AdamW":
        raise ConfigError(f"initlab.run_dir describes AdamW runs (initlab's only optimizer), not optimizer.name = "
                          f"{opt.name!r}; set initlab.run_dir = \"\" or optimizer.name = \"AdamW\"")
    checked_section(section)  # [initlab]'s own errors name initlab.<key>
    return config_from_dict({
        "job": {"seed": initlab_seed(job_config), "output_dir": str(run_dir.parent), "run_name": run_dir.name,
                "description": job_config.job.description},
        "model": initlab_model_table(args), "init": init_table(section),
        "data": {"dataset": section.dataset or f"torchtitan:{t.dataset}", "cache_dir": section.data_cache_dir},
        "training": {"steps": t.steps, "seq_len": t.seq_len, "global_batch_size": global_batch_size(t, dp_world_size),
                     "local_batch_size": t.local_batch_size, "max_norm": t.max_norm, "gc_freq": t.gc_freq,
                     "mixed_precision_param": t.mixed_precision_param,
                     "mixed_precision_reduce": t.mixed_precision_reduce},
        # torchtitan's AdamW is one parameter group: weight decay on every tensor
        "optimizer": {"lr": opt.lr, "betas": [opt.beta1, opt.beta2], "eps": opt.eps, "weight_decay": opt.weight_decay,
                      "decay_norms": True, "decay_biases": True, "decay_embeddings": True,
                      "implementation": opt.implementation},
        "lr_scheduler": initlab_lr_scheduler(job_config.lr_scheduler, t.steps),
        "metrics": {"log_freq": job_config.metrics.log_freq, "log_weight_std": section.log_weight_std,
                    "log_variance_stats": section.log_activation_stats,
                    "val_freq": job_config.validation.freq if job_config.validation.enable else 0},
        "checkpoint": {"enable": job_config.checkpoint.enable, "interval": job_config.checkpoint.interval},
        "compile": {"enable": job_config.compile.enable}}, origin="torchtitan's job config")


def torchtitan_table(job_config) -> dict:
    """The [torchtitan] table: marks the run as torchtitan's and records what initlab's tables cannot say. No
    paths, so two seeds of one torchtitan config form one compare_runs group (and never one with train.py's)."""
    schedule = job_config.lr_scheduler
    table = {"version": TORCHTITAN_VERSION, "train_spec": TRAIN_SPEC_NAME, "flavor": job_config.model.flavor,
             "lr_decay_type": schedule.decay_type, "lr_decay_ratio": schedule.decay_ratio,
             "lr_min_factor": schedule.min_lr_factor, "lr_total_steps": schedule.total_steps,
             "dataset": None if job_config.initlab.dataset else job_config.training.dataset}
    return {key: value for key, value in table.items() if value is not None}


def run_config_toml(cfg: Config, trainer: dict) -> str:
    """initlab's config.toml text of ``cfg`` followed by the [torchtitan] table."""
    lines = [f"[{TORCHTITAN_TABLE}]", *(f"{key} = {json.dumps(value)}" for key, value in trainer.items())]
    return to_toml(cfg) + "\n".join(lines) + "\n"


def initlab_run_dir(job_config) -> Path | None:
    """``initlab.run_dir`` resolved under job.dump_folder (None when off)."""
    run_dir = job_config.initlab.run_dir
    return Path(job_config.job.dump_folder, run_dir) if run_dir else None


def build_metrics_processor(job_config, parallel_dims, model_args=None, tag: str | None = None) -> MetricsProcessor:
    """torchtitan's build_metrics_processor, with initlab's weight statistics and, on torchtitan's metrics rank,
    ``initlab.run_dir`` (config.toml written now, metrics.jsonl on every log step)."""
    processor = InitlabMetricsProcessor(job_config, parallel_dims, tag)
    run_dir = initlab_run_dir(job_config)
    if run_dir is None or model_args is None:
        return processor
    dp = parallel_dims.dp_replicate * parallel_dims.dp_shard
    cfg = initlab_run_config(job_config, model_args, dp, run_dir)  # on every rank: a ConfigError stops them all
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if rank != _get_metrics_rank(parallel_dims, job_config):
        return processor
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(run_config_toml(cfg, torchtitan_table(job_config)))
    processor.logger = InitlabRunLogger(processor.logger, run_dir, parallel_dims.world_size)
    return processor


class InitlabDataLoader(BaseDataLoader):
    """torchtitan's dataloader protocol over initlab's (seed, step) -> global batch sampler (components/data.py).

    torchtitan's trainer reads gradient_accumulation_steps = global / (local x dp) micro-batches per optimizer
    step. Micro-batch m of step k (k from 1, as both trainers count) on dp rank r is rows
    [r * global / dp + m * local, + local) of initlab's global batch k: the rows train.py's
    ``Trainer.train_step`` gives that rank and micro-batch, so step k's tokens are bitwise initlab's.
    Yields ``({"input": tokens[:, :-1]}, tokens[:, 1:])``, each [local, seq_len], as torchtitan's trainer expects.
    """

    def __init__(self, batches: TokenBatches, dp_rank: int, dp_world_size: int, local_batch_size: int):
        per_rank = batches.global_batch_size // dp_world_size
        self.batches, self.dp_rank, self.dp_world_size = batches, dp_rank, dp_world_size
        self.local_batch_size, self.accum_steps = local_batch_size, per_rank // local_batch_size
        self.first_row = dp_rank * per_rank
        self.micro_batches_read = 0  # the state: torchtitan checkpoints after whole steps

    def micro_batch(self, index: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Micro-batch ``index`` (0-based, over the whole run) of this rank."""
        step, micro = divmod(index, self.accum_steps)
        start = self.first_row + micro * self.local_batch_size
        tokens = self.batches.get(step + 1, slice(start, start + self.local_batch_size))  # [local, seq_len + 1]
        return {"input": tokens[:, :-1].contiguous()}, tokens[:, 1:].contiguous()

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        while True:  # endless: initlab's sampler starts a new epoch permutation when one runs out
            index = self.micro_batches_read
            self.micro_batches_read += 1  # before the yield: a checkpoint after this step counts it
            yield self.micro_batch(index)

    def state_dict(self) -> dict:
        # Keyed by dp rank, as torchtitan's own dataloaders do (its checkpointer saves one state per rank).
        return {f"dp_rank_{self.dp_rank}": {"micro_batches_read": self.micro_batches_read,
                                            **self.batches.state_dict()}, "world_size": self.dp_world_size}

    def load_state_dict(self, state: dict) -> None:
        if not state:  # torchtitan passes {} when the checkpoint holds no dataloader state
            return
        if state.get("world_size") != self.dp_world_size:
            raise ConfigError(f"the checkpoint's data loader ran on {state.get('world_size')} dp ranks, this run on "
                              f"{self.dp_world_size}; resume with the same data-parallel degree")
        mine = state[f"dp_rank_{self.dp_rank}"]
        self.batches.load_state_dict(mine)  # one-line ValueError if seed, seq_len, batch or data changed
        self.micro_batches_read = int(mine["micro_batches_read"])


def initlab_token_dir(section: InitlabSection) -> Path:
    """initlab's token-shard directory for ``initlab.dataset`` ("embedded" is built on first use, once per node)."""
    data = Data(dataset=section.dataset, cache_dir=section.data_cache_dir)
    if section.dataset == "embedded":
        tokenizer = build_tokenizer(Tokenizer())  # initlab's default tokenizer, as train.py's default [tokenizer]
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            ensure_dataset(data, tokenizer)
        barrier()
        return ensure_dataset(data, tokenizer)
    path = Path(section.dataset).expanduser()
    if not path.is_dir():
        raise ConfigError(f"initlab.dataset = {section.dataset!r} is not a directory; use \"embedded\" or a "
                          "directory written by initlab's scripts/prepare_data.py --output DIR")
    return path


def check_initlab_data(job_config, token_dir: Path, dp_world_size: int) -> int:
    """One-line ConfigError for a job that cannot read initlab's batches; returns the global batch (sequences)."""
    t, args = job_config.training, llama3.llama3_args.get(job_config.model.flavor)
    global_batch = global_batch_size(t, dp_world_size)
    if global_batch % (t.local_batch_size * dp_world_size):
        raise ConfigError(f"training.global_batch_size = {global_batch} is not a multiple of training.local_batch_size "
                          f"{t.local_batch_size} x {dp_world_size} dp ranks; pick a multiple")
    n_vocab = read_manifest(token_dir)["tokenizer"]["n_vocab"]
    if args is not None and n_vocab > args.vocab_size:
        raise ConfigError(f"initlab.dataset {token_dir} has {n_vocab} token ids but flavor {job_config.model.flavor!r} "
                          f"embeds {args.vocab_size}; use a flavor with vocab_size >= {n_vocab}")
    if args is not None and args.attn_type != "sdpa":
        raise ConfigError(f"initlab.dataset needs attn_type 'sdpa' (flavor {job_config.model.flavor!r} has "
                          f"{args.attn_type!r}, whose document masks need torchtitan's tokenizer); use an sdpa flavor")
    if job_config.validation.enable:
        raise ConfigError("initlab.dataset feeds training only (torchtitan's validator reads its own data with "
                          "its tokenizer); set validation.enable = false")
    return global_batch


def build_dataloader(dp_world_size: int, dp_rank: int, tokenizer, job_config, **kwargs) -> BaseDataLoader:
    """torchtitan's text dataloader, or with ``initlab.dataset`` set, initlab's batches (InitlabDataLoader)."""
    section = job_config.initlab
    if not section.dataset:
        return llama3.get_train_spec().build_dataloader_fn(dp_world_size=dp_world_size, dp_rank=dp_rank,
                                                           tokenizer=tokenizer, job_config=job_config, **kwargs)
    token_dir = initlab_token_dir(section)
    global_batch = check_initlab_data(job_config, token_dir, dp_world_size)
    t = job_config.training
    batches = TokenBatches(TokenDataset(token_dir, "train"), t.seq_len, global_batch, initlab_seed(job_config))
    return InitlabDataLoader(batches, dp_rank, dp_world_size, t.local_batch_size)


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
    """Register ``initlab_llama3`` once (importing this module twice must not fail), and the flavors
    ``initlab_llama_1b`` (initlab's llama_1b shape, benchmarks/torchtitan/llama_1b_flavor.py) and ``initlab_debug``."""
    from torchtitan.protocols import train_spec as registry

    register_llama_1b_flavor()
    llama3.llama3_args.setdefault(DEBUG_FLAVOR, TransformerModelArgs(
        dim=128, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=4097, multiple_of=64, rope_theta=10000))
    if TRAIN_SPEC_NAME not in registry._extra_train_specs:  # torchtitan has no public "is registered"
        register_train_spec(TRAIN_SPEC_NAME, train_spec())


register()
