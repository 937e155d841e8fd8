"""The ``[initlab]`` table that torchtitan's ConfigManager merges into its JobConfig, and a torchtitan run in initlab's
terms: the validated [init] options, the seed, the model shapes and the config.toml of ``initlab.run_dir``.

``--job.custom_config_module integrations.torchtitan.config`` adds the table (docs/torchtitan.md).
"""

# No ``from __future__ import annotations``: torchtitan's ConfigManager merges JobConfig below into its own
# dataclass and resolves the field types in its module, where a string "InitlabSection" means nothing.
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from torchtitan.models.llama3.model.args import TransformerModelArgs

from components.config import Config, ConfigError, Init, config_from_dict, to_toml
from components.run_dir import TORCHTITAN_TABLE
from models import make_model_args
from models.common import ModelArgs

TRAIN_SPEC_NAME = "initlab_llama3"


TORCHTITAN_VERSION = "0.2.2"


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
    """Merged into torchtitan's JobConfig by ``--job.custom_config_module integrations.torchtitan.config``."""

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


def initlab_seed(job_config) -> int:
    """initlab's job.seed inside torchtitan: initlab.seed, else torchtitan's debug.seed, else 0."""
    section = job_config.initlab
    return section.seed if section.seed is not None else (job_config.debug.seed or 0)


def initlab_args(args: TransformerModelArgs) -> ModelArgs:
    """initlab's Llama shapes for torchtitan's llama3 args (the schemes read widths, depth and vocab)."""
    return make_model_args("llama", "debug", args.vocab_size, args.max_seq_len, {
        "n_layers": args.n_layers, "dim": args.dim, "n_heads": args.n_heads, "n_kv_heads": args.n_kv_heads,
        "multiple_of": args.multiple_of, "ffn_dim_multiplier": args.ffn_dim_multiplier,
        "norm_eps": args.norm_eps, "rope_theta": args.rope_theta})


def global_batch_size(training, dp_world_size: int) -> int:
    """torchtitan's global batch (sequences): training.global_batch_size, or local x dp when it is unset (-1)."""
    return training.global_batch_size if training.global_batch_size > 0 else training.local_batch_size * dp_world_size


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
