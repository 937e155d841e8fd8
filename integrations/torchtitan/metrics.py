"""initlab's statistics on torchtitan's log steps: per-layer weight std (WeightStats through the name map),
activation statistics of the first micro-batch, and the ``metrics.jsonl`` of ``initlab.run_dir`` under initlab's
metric names (docs/design.md §8)."""

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torchtitan.components.metrics import BaseLogger, MetricsProcessor, _get_metrics_rank

from components.activation_stats import FAMILIES as ACTIVATION_FAMILIES
from components.activation_stats import STAT_ATTR, ActivationStats, logit_max
from components.config import ConfigError
from components.metrics import truncate_jsonl
from components.torchtitan_names import from_torchtitan
from components.weight_stats import WeightStats
from integrations.torchtitan.config import (
    global_batch_size,
    initlab_args,
    initlab_run_config,
    initlab_run_dir,
    run_config_toml,
    torchtitan_table,
)
from roles import canonical_name


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
    """torchtitan's llama3 as initlab's ActivationStats reads a model: initlab's args, module names (the root, whose
    output is the logits, under ""), layers."""

    def __init__(self, model: nn.Module):
        self.args, self.layers = initlab_args(model.model_args), model.layers
        self._named = {"": model, **initlab_module_names(model)}

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


SAME_METRICS = {"loss_metrics/global_avg_loss": "loss/train", "validation_metrics/loss": "loss/val",
                "grad_norm": "grad_norm_total", "lr": "lr"}
"""torchtitan's name -> initlab's (docs/design.md §8) of the metrics that mean the same."""


INITLAB_FAMILIES = tuple(dict.fromkeys(f"{family.split('/')[0]}/" for family in ("weight_std", *ACTIVATION_FAMILIES)))
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
