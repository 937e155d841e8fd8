"""Run metrics (docs/design.md §8): TensorBoard + ``metrics.jsonl`` logging, non-finite detection, MFU, memory.

``MetricsLogger`` writes every logged step to ``<run_dir>/`` (TensorBoard events, so TensorBoard names the
run after its directory, with a
custom-scalars layout of one chart per role and one line per layer, and HParams for ablation
families) and to ``<run_dir>/metrics.jsonl`` (one JSON object per step), and with ``metrics.wandb`` to
Weights & Biases (the same tags; ``wandb`` is imported only then). Only rank 0 enables it.
On resume, later steps are dropped from TensorBoard and the jsonl so no step appears twice (W&B keeps
what it has and ignores steps it has already seen).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import resource
import sys
import threading
from pathlib import Path

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from components.config import Metrics
from distributed.placement import all_ranks_max_, local_shard
from roles import TENSOR_FAMILIES, canonical_name, format_tag, layer_of, role_of


class MetricsLogger:
    """TensorBoard + metrics.jsonl writer of one run; every method is a no-op when not enabled."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None = None, wandb: dict | None = None):
        """``wandb``: keyword arguments of ``wandb.init`` (:func:`wandb_init_args`), or None for no W&B."""
        self.enabled = enabled
        self.last_step: int | None = None
        self._wandb = None
        self.failed: OSError | None = None  # the first failed write: nothing is written after it
        if not enabled:
            return
        run_dir = Path(run_dir)
        self.jsonl_path = run_dir / "metrics.jsonl"
        if resume_step is None:
            if self.jsonl_path.exists() and self.jsonl_path.stat().st_size > 0:
                raise ValueError(f"{self.jsonl_path} already holds metrics; resume the run "
                                 "(--checkpoint.resume auto) or choose a new job.run_name")
        else:
            if isinstance(resume_step, bool) or not isinstance(resume_step, int) or resume_step < 0:
                raise ValueError(f"resume_step = {resume_step!r} must be a step number >= 0 (the checkpoint's step)")
            truncate_jsonl(self.jsonl_path, resume_step)
            self.last_step = resume_step
        run_dir.mkdir(parents=True, exist_ok=True)
        if wandb is not None:  # first: a run that cannot reach W&B stops before any file is opened
            self._wandb = start_wandb_run(wandb)
        _quiet_writer_thread_errors()
        self._jsonl = self.jsonl_path.open("a", encoding="utf-8")
        # purge_step writes a SessionLog.START at resume_step + 1: readers drop older events from that step on.
        self._writer = SummaryWriter(log_dir=str(run_dir),
                                     purge_step=None if resume_step is None else resume_step + 1)

    def log(self, step: int, values: dict[str, float]) -> None:
        """One logged step to both sinks (flushed); non-finite values become JSON null (JSON has no NaN)."""
        if not self.enabled:
            return
        if isinstance(step, bool) or not isinstance(step, int):
            raise ValueError(f"metrics step {step!r} must be an int")
        if self.last_step is not None and step <= self.last_step:
            raise ValueError(f"metrics step {step} is not after the last logged step {self.last_step}; "
                             "log each step once, in increasing order")
        if "step" in values:
            raise ValueError("metric name 'step' is reserved for the step number; rename that metric")
        scalars = {name: _as_float(name, value) for name, value in values.items()}
        record = {"step": step, **{k: (v if math.isfinite(v) else None) for k, v in scalars.items()}}
        with self._naming_failures(self.jsonl_path):
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        with self._naming_failures(self.events_path):
            for name, value in scalars.items():
                self._writer.add_scalar(name, value, step)
            self._writer.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)
        self.last_step = step

    def values_at(self, step: int) -> dict[str, float]:
        """The values logged at ``step`` (its records merged, nulls as NaN); {} when none or not enabled."""
        if not self.enabled:
            return {}
        self._jsonl.flush()
        values = {}
        for line in self.jsonl_path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record.pop("step") == step:
                values.update({k: math.nan if v is None else v for k, v in record.items()})
        return values

    @contextlib.contextmanager
    def _naming_failures(self, path: Path):
        """Re-raise a failed write (a full disk, a quota...) as an OSError naming ``path``: a file object's write
        error names no file, and TensorBoard's writer thread raises its error on a later call. After one, this
        logger writes nothing more (what it wrote stays; a resume drops a torn last line)."""
        if self.failed is not None:
            raise self.failed
        try:
            yield
        except OSError as err:
            self.failed = OSError(err.errno, err.strerror or str(err), str(path))
            raise self.failed from None

    @property
    def events_path(self) -> Path:
        """The TensorBoard event file this logger writes (its directory if the writer does not say)."""
        return Path(getattr(self._writer.file_writer.event_writer, "_file_name", self._writer.log_dir))

    def set_layout(self, roles_to_layers: dict[str, list[int]], grad_stats: bool = False,
                   activation_charts: dict[str, list[str]] | None = None) -> None:
        """Custom-scalars layout: a loss chart, and per family one chart per role with a line per layer.

        ``roles_to_layers`` maps a role to its layers (empty for non-block roles, drawn as one line),
        e.g. ``WeightStats.roles_to_layers()``; ``grad_stats`` adds the grad_norm/grad_rms/update_ratio
        categories; ``activation_charts`` (``ActivationStats.charts()``: statistic -> its tags in depth
        order) adds an "activations" category with one chart per statistic and a line per layer.
        """
        if not self.enabled:
            return
        if not roles_to_layers:
            raise ValueError("set_layout needs at least one role (e.g. WeightStats(model).roles_to_layers())")
        layout = {"loss": {"loss": ["Multiline", [_exact("loss/train"), _exact("loss/val")]]}}
        for family in TENSOR_FAMILIES if grad_stats else TENSOR_FAMILIES[:1]:  # one custom-scalars category each
            layout[family] = {
                role: ["Multiline", [_exact(format_tag(family, role, layer)) for layer in layers]
                       or [_exact(format_tag(family, role))]]
                for role, layers in roles_to_layers.items()
            }
        if activation_charts:
            layout["activations"] = {statistic: ["Multiline", [_exact(tag) for tag in tags]]
                                     for statistic, tags in activation_charts.items()}
        with self._naming_failures(self.events_path):
            self._writer.add_custom_scalars(layout)
            self._writer.flush()

    def log_hparams(self, hparams: dict, final_metrics: dict[str, float]) -> None:
        """HParams-tab entry of this run (in its run directory): ``hparams`` (nested dicts flattened to
        'section.key', values not str/bool/int/float stringified) and ``final_metrics`` as ``final/<name>``."""
        if not self.enabled or self.failed is not None:  # (called on the way out of a run that failed to write)
            return
        step = self.last_step or 0
        metric_tags = {}
        with self._naming_failures(self.events_path):
            for name, value in final_metrics.items():
                metric_tags[f"final/{name}"] = _as_float(name, value)
                self._writer.add_scalar(f"final/{name}", metric_tags[f"final/{name}"], step)
            flat = flatten_hparams(hparams)
            experiment, session_start, session_end = hparams_summaries(flat, metric_tags)
            for summary in (experiment, session_start, session_end):
                self._writer.file_writer.add_summary(summary, step)
            self._writer.flush()
        if self._wandb is not None:
            self._wandb.config.update({"hparams": flat}, allow_val_change=True)
            self._wandb.summary.update(metric_tags)

    def close(self) -> None:
        """Close both sinks. A failed close is an OSError naming its file, unless a write already failed (that
        first error is the one reported; a torn last metrics line is dropped by a resume)."""
        if not self.enabled or self._jsonl.closed:
            return
        errors = []
        for path, close in ((self.events_path, self._writer.close), (self.jsonl_path, self._jsonl.close)):
            try:
                close()
            except OSError as err:
                errors.append(OSError(err.errno, err.strerror or str(err), str(path)))
        if self._wandb is not None:
            self._wandb.finish()
            import_wandb().teardown()  # finish() may return before the service has written the run's files
        if errors and self.failed is None:
            self.failed = errors[0]
            raise self.failed


def import_wandb():
    """The ``wandb`` module, imported now (never at module load); one-line ValueError naming the fix if missing."""
    try:
        import wandb
    except ImportError:
        raise ValueError("metrics.wandb = true needs the wandb package: pip install wandb (or set "
                         "--metrics.wandb false)") from None
    return wandb


def start_wandb_run(init_args: dict):
    """``wandb.init(**init_args)``; any failure (not logged in, no network, a bad entity) as one ValueError line."""
    wandb = import_wandb()
    try:
        return wandb.init(**init_args)
    except Exception as error:  # wandb raises its own error types, which differ between versions
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ValueError(f"could not start the W&B run ({reason}); run `wandb login`, or log without a network "
                         f"with --metrics.wandb_mode offline") from None


def wandb_init_args(cfg: Metrics, run_name: str, config: dict, run_dir: Path) -> dict | None:
    """``wandb.init`` keyword arguments of a run, None when ``cfg.wandb`` is off. The W&B run id is a digest of the
    run directory, so a resumed run continues the same W&B run."""
    if not cfg.wandb:
        return None
    run_dir = Path(run_dir).resolve()
    args = {"project": cfg.wandb_project, "entity": cfg.wandb_entity or None, "name": run_name, "config": config,
            "dir": str(run_dir), "id": hashlib.sha256(str(run_dir).encode()).hexdigest()[:16], "resume": "allow"}
    if cfg.wandb_mode != "default":
        args["mode"] = cfg.wandb_mode
    return args


def _quiet_writer_thread_errors() -> None:
    """TensorBoard's writer thread keeps a failed write's OSError for the next flush, which MetricsLogger reports
    as one line, and also lets it reach ``threading.excepthook``, which would print a traceback: not that print."""
    previous = threading.excepthook
    if getattr(previous, "quiet_writer_thread_errors", False):
        return

    def hook(args) -> None:
        if not (isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
            previous(args)

    hook.quiet_writer_thread_errors = True
    threading.excepthook = hook


def truncate_jsonl(path: Path, resume_step: int) -> None:
    """Drop the lines of ``path`` with step > resume_step (a torn last line too), rewriting it atomically."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for lineno, line in enumerate(lines, start=1):
        try:
            step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            if lineno == len(lines):  # a crash mid-write leaves a partial last line: it is not data
                break
            raise ValueError(f"{path}:{lineno}: not a metrics record with a 'step' ({err!r}); "
                             "repair or delete that line, then resume") from err
        if step <= resume_step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept == lines:
        return
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # readers see the old file or the new one, never a half-written one


def init_std_hparams(record: dict) -> dict[str, float]:
    """Realised init std per role from an initializer record (``<run_dir>/init_stds.json``'s format): the std the
    drawn values have (truncation's shrink included), of the role's shallowest tensor as ``<role>``, and of its
    deepest as ``<role>@last_layer`` when depth scaling makes them differ (e.g. mitchell's attn.out)."""
    stds: dict[str, float] = {}
    for role, tensors in record["roles"].items():
        by_depth = sorted(tensors, key=lambda t: -1 if t["layer"] is None else t["layer"])
        first, last = by_depth[0]["realized_std"], by_depth[-1]["realized_std"]
        stds[role] = first
        if not math.isclose(first, last, rel_tol=1e-9, abs_tol=0.0):
            stds[f"{role}@last_layer"] = last
    return stds


def flatten_hparams(hparams: dict, prefix: str = "") -> dict[str, str | bool | int | float]:
    """{'optimizer': {'lr': 1e-3}} -> {'optimizer.lr': 1e-3}; values TensorBoard cannot hold become str."""
    flat: dict[str, str | bool | int | float] = {}
    for key, value in hparams.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_hparams(value, prefix=f"{name}."))
        else:
            flat[name] = value if isinstance(value, (str, bool, int, float)) else str(value)
    return flat


def _exact(tag: str) -> str:
    """Custom-scalars lines are regexes: match this tag only (layer_1 must not match layer_10)."""
    return f"^{re.escape(tag)}$"


def _as_float(name: str, value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"metric '{name}' = {value!r} is not a number; log floats (or 0-d tensors)") from err


class NonFiniteLossError(RuntimeError):
    """The loss went non-finite; the message names the step and the first non-finite weight or grad."""


def _parameter_names(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(readable name, parameter) in model order, e.g. ('layers.03 attn.q', ...) or ('tok_embedding', ...)."""
    named = []
    for fqn, param in model.named_parameters():
        name = canonical_name(fqn)
        layer = layer_of(name)
        where = role_of(name) if layer is None else f"layers.{layer:02d} {role_of(name)}"
        named.append((f"{where} {{kind}} ({name})", param))
    return named


def first_nonfinite(model: nn.Module) -> str | None:
    """First tensor holding a non-finite value on any rank: every weight first (model order), then every grad.

    A NaN weight makes every gradient NaN through the backward pass, so weights are the root cause when
    any is bad; otherwise the first bad gradient in model order is named. Collective when a process group
    exists: local shards are checked and one all_reduce(MAX) of the flags makes every rank return the same
    answer, e.g. 'layers.03 attn.q grad (layers.3.attn.q.weight)'.
    """
    named = _parameter_names(model)
    names, flags = [], []
    for kind in ("weight", "grad"):
        for template, param in named:
            tensor = param if kind == "weight" else param.grad
            names.append(template.format(kind=kind))
            flags.append(~torch.isfinite(local_shard(tensor.detach())).all() if tensor is not None
                         else torch.zeros((), dtype=torch.bool, device=param.device))
    if not flags:
        return None
    bad = all_ranks_max_(torch.stack(flags).to(torch.int32))  # [2 * n_params]: all weights, then all grads
    hits = bad.nonzero().flatten().tolist()
    return names[hits[0]] if hits else None


def largest_gradient(model: nn.Module) -> str | None:
    """The parameter whose gradient has the largest |g| on any rank, with that value (collective).

    Names the culprit when the global grad norm overflowed although every gradient is finite.
    """
    named = [(template.format(kind="grad"), param) for template, param in _parameter_names(model)
             if param.grad is not None]
    if not named:
        return None
    # A rank whose shard is empty contributes 0.
    peaks = torch.stack([local_shard(p.grad.detach()).abs().amax().float() if local_shard(p.grad).numel()
                         else torch.zeros((), device=p.device) for _, p in named])
    peaks = all_ranks_max_(peaks)
    index = int(peaks.argmax())
    return f"{named[index][0]} max |g| {peaks[index].item():.3g}"


# Dense bf16 tensor-core peaks (FLOP/s) by substring of torch.cuda.get_device_name(), most specific first.
PEAK_BF16_FLOPS: dict[str, float] = {
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    "H200": 989e12,
    "A100": 312e12,
}


def gpu_key(name: str) -> str | None:
    """The first ``PEAK_BF16_FLOPS`` key (most specific first) that a GPU's name contains, any case; None if none."""
    return next((key for key in PEAK_BF16_FLOPS if key.lower() in name.lower()), None)


def peak_flops(device: torch.device) -> float | None:
    """Peak dense bf16 FLOP/s of ``device``; None on CPU or an unknown GPU (MFU is then omitted)."""
    if device.type != "cuda":
        return None
    key = gpu_key(torch.cuda.get_device_name(device))
    return PEAK_BF16_FLOPS[key] if key else None


# Logged tag of the MFU under each FLOP convention of models/common.py flops_per_token ("mfu" is torchtitan's).
MFU_TAGS = {"non_embedding": "mfu", "all_matmuls": "mfu_all_matmuls"}


def mfu(tokens_per_sec_per_device: float, flops_per_token: float, peak: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s per device over the device's peak (fraction, not %)."""
    if not peak > 0:
        raise ValueError(f"peak FLOP/s = {peak!r} must be > 0; use peak_flops(device) and skip MFU when it is None")
    return tokens_per_sec_per_device * flops_per_token / peak


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory in GiB: CUDA max_memory_allocated, else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return max_rss / (2**30 if sys.platform == "darwin" else 2**20)
