"""The least device time one optimizer step can take on one GPU with this trainer's kernels, part by part: the matmuls'
and attention's FLOPs at the GPU's dense bf16 peak, and the bytes that each memory-bound kernel must read and write at
least once at its HBM bandwidth; with measured times (a profile's ms per step) beside them, the share of its floor each
part reaches, and the MFU that the step could reach at most.

    python benchmarks/step_floor.py --model llama_1b --gpu H100 [--measured matmul=344.2 --measured attention=52.3 ...]

The parts (per optimizer step; T tokens per micro-batch, A micro-batches, L layers, F the SwiGLU width, V the
vocabulary, P the trainable parameters, S the sequence length, H x Q the attention width):

- ``matmul``: 6 FLOPs per weight per token (forward, input gradient, weight gradient) over every 2-D weight but the
  token embedding (a lookup), at the peak.
- ``attention``: causal scores and values, forward and backward: 6 L S H Q per token (half of the 12 L S H Q that
  the MFU convention counts after PaLM, Chowdhery et al. 2022, App. B, since the flash kernels skip the masked
  half), at the peak.
- ``swiglu_forward``: silu(gate) * up reads two [T, F] bf16 tensors and writes one, per layer and micro-batch.
- ``swiglu_backward``: reads the output's gradient, gate and up, writes both inputs' gradients: 5 [T, F] bf16.
- ``cross_entropy``: the log-sum-exp reads the bf16 [T, V] logits, the gradient reads them again and writes its own.
- ``adamw``: fused AdamW reads fp32 weights, gradients and both moments and writes weights and moments: 28 P bytes.
- ``clipping``: the global norm reads the fp32 gradients, the scaling reads and writes them: 12 P bytes.

These are floors for this decomposition into kernels (a matmul whose epilogue applied SwiGLU would not write gate and
up); RMSNorm, RoPE, residual additions, casts and the gradient sum are not counted, so the MFU ceiling printed (model
FLOPs in torchtitan's convention over the peak times the summed floors, with ``matmul`` and ``attention`` at their
measured times where given) is an upper bound. With ``--busy`` (the profile's device busy time per step) a third
ceiling keeps every kernel as measured but moves each measured memory-bound part to its floor and removes the idle
time. Exit 2 with one line on bad input.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_common import MODEL_SETTINGS, settings_argv  # noqa: E402
from components.build import model_args_from_config  # noqa: E402
from components.config import load_config  # noqa: E402
from components.metrics import PEAK_BF16_FLOPS, gpu_key  # noqa: E402
from components.tokenizer import build_tokenizer  # noqa: E402
from models import build_model  # noqa: E402
from models.common import flops_per_token  # noqa: E402
from roles import EMBEDDING_ROLES, MLP_GATE, role_of  # noqa: E402

# HBM bandwidth (bytes/s) from the vendors' data sheets, by the same substrings as PEAK_BF16_FLOPS.
HBM_BYTES_PER_S: dict[str, float] = {"H100 NVL": 3.9e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "H200": 4.8e12,
                                     "A100": 2.0e12}
COMPUTE_PARTS = ("matmul", "attention")
PARTS = (*COMPUTE_PARTS, "swiglu_forward", "swiglu_backward", "cross_entropy", "adamw", "clipping")
BF16, FP32 = 2, 4


class FloorError(ValueError):
    """Bad input; the message names it and a fix."""


@dataclass(frozen=True)
class Shape:
    """What the floors depend on, per optimizer step."""

    tokens: int  # per micro-batch
    micro_batches: int
    layers: int
    seq_len: int
    attention_width: int  # H x Q
    ffn: int
    vocab: int
    matmul_weights: int  # 2-D weights but the token embedding
    trainable: int
    model_flops_per_token: int  # torchtitan's convention (models/common.py: flops_per_token)


def shape_of(model: str) -> Shape:
    """The speed point ``model`` of bench_gpu.py (MODEL_SETTINGS), built on the meta device."""
    config, overrides, micro, accum = settings_argv(model, None)
    cfg, _ = load_config(["--config", str(REPO / config), *overrides])
    args = model_args_from_config(cfg, build_tokenizer(cfg.tokenizer).n_vocab)
    with torch.device("meta"):
        net = build_model(args)
    params = dict(net.named_parameters())
    matmul = sum(p.numel() for name, p in params.items() if p.dim() == 2 and role_of(name) not in EMBEDDING_ROLES)
    ffn = max(p.shape[0] for name, p in params.items() if role_of(name) == MLP_GATE)
    seq = cfg.training.seq_len
    return Shape(micro * seq, accum, args.n_layers, seq, args.n_heads * args.head_dim, ffn, args.vocab_size, matmul,
                 sum(p.numel() for p in params.values()), flops_per_token(net, args, seq))


def floors(shape: Shape, peak_flops: float, bandwidth: float) -> dict[str, tuple[float, str]]:
    """Part -> (floor in ms per step, what it counts)."""
    tokens = shape.tokens * shape.micro_batches
    per_layer_micro = shape.layers * shape.micro_batches
    flops = {"matmul": 6 * shape.matmul_weights * tokens,
             "attention": 6 * shape.layers * shape.seq_len * shape.attention_width * tokens}
    moved = {"swiglu_forward": 3 * shape.tokens * shape.ffn * BF16 * per_layer_micro,
             "swiglu_backward": 5 * shape.tokens * shape.ffn * BF16 * per_layer_micro,
             "cross_entropy": 3 * shape.tokens * shape.vocab * BF16 * shape.micro_batches,
             "adamw": 7 * FP32 * shape.trainable, "clipping": 3 * FP32 * shape.trainable}
    out = {part: (1e3 * value / peak_flops, f"{value / 1e12:.1f} TFLOP") for part, value in flops.items()}
    out |= {part: (1e3 * value / bandwidth, f"{value / 1e9:.1f} GB") for part, value in moved.items()}
    return out


def gpu_specs(name: str) -> tuple[str, float, float]:
    """(the table key, peak bf16 FLOP/s, HBM bytes/s) of the GPU ``name`` (components/metrics.py: gpu_key)."""
    key = gpu_key(name)
    if key is None or key not in HBM_BYTES_PER_S:
        known = ", ".join(key for key in PEAK_BF16_FLOPS if key in HBM_BYTES_PER_S)
        raise FloorError(f"--gpu {name!r}: no peak and bandwidth known; fix: name one of {known}")
    return key, PEAK_BF16_FLOPS[key], HBM_BYTES_PER_S[key]


def parse_measured(items: list[str]) -> dict[str, float]:
    """``PART=MS`` items -> {part: ms}; each part once, a known one, a positive time."""
    measured: dict[str, float] = {}
    for item in items:
        match = re.fullmatch(r"(\w+)=([0-9.]+)", item)
        if match is None or match.group(1) not in PARTS or not float(match.group(2)) > 0:
            raise FloorError(f"--measured {item!r}: expected PART=MS with PART one of {', '.join(PARTS)} and MS > 0")
        if match.group(1) in measured:
            raise FloorError(f"--measured {match.group(1)} given twice; fix: give each part once")
        measured[match.group(1)] = float(match.group(2))
    return measured


def report(shape: Shape, gpu: str, peak: float, bandwidth: float, measured: dict[str, float],
           busy: float | None = None) -> str:
    """The markdown table, part by part, and the MFU ceilings."""
    lines = [f"{gpu}: {peak / 1e12:.0f} TFLOP/s dense bf16, {bandwidth / 1e12:.2f} TB/s; {shape.micro_batches} x "
             f"{shape.tokens} tokens per step", "", "| part | counts | floor ms | measured ms | floor / measured |",
             "|---|---|---|---|---|"]
    bounds = floors(shape, peak, bandwidth)
    for part, (ms, counts) in bounds.items():
        seen = measured.get(part)
        lines.append(f"| {part} | {counts} | {ms:.1f} | {f'{seen:.1f}' if seen else '-'} | "
                     f"{f'{100 * ms / seen:.0f} %' if seen else '-'} |")
    model_flops = shape.model_flops_per_token * shape.tokens * shape.micro_batches
    at_peak = sum(ms for ms, _ in bounds.values())
    at_measured = sum(measured.get(part, ms) if part in COMPUTE_PARTS else ms for part, (ms, _) in bounds.items())
    lines += ["", f"MFU ceiling, every part at its floor: {100 * model_flops / (peak * at_peak / 1e3):.1f} % "
              f"({at_peak:.1f} ms per step)"]
    if all(part in measured for part in COMPUTE_PARTS):
        lines.append(f"MFU ceiling, matmul and attention as measured, the rest at its floor, no idle time: "
                     f"{100 * model_flops / (peak * at_measured / 1e3):.1f} % ({at_measured:.1f} ms per step)")
    if busy is not None:
        gain = sum(measured[part] - bounds[part][0] for part in measured if part not in COMPUTE_PARTS)
        lines.append(f"MFU ceiling, the measured busy time ({busy:.1f} ms) less each measured memory-bound part's "
                     f"distance to its floor, no idle time: {100 * model_flops / (peak * (busy - gain) / 1e3):.1f} % "
                     f"({busy - gain:.1f} ms per step); the busy time outside the measured parts: "
                     f"{busy - sum(measured.values()):.1f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama_1b", help=f"a speed point of bench_gpu.py: {', '.join(MODEL_SETTINGS)}")
    parser.add_argument("--gpu", default="H100", help="GPU name or a part of it (as torch.cuda.get_device_name)")
    parser.add_argument("--measured", action="append", default=[], help="PART=MS: a measured ms per step (repeat)")
    parser.add_argument("--busy", type=float, help="the measured device busy ms per step (device_trace.py's union)")
    args = parser.parse_args(argv)
    try:
        if args.model not in MODEL_SETTINGS:
            raise FloorError(f"--model {args.model!r} is unknown; fix: use one of {', '.join(MODEL_SETTINGS)}")
        gpu, peak, bandwidth = gpu_specs(args.gpu)
        measured = parse_measured(args.measured)
        if args.busy is not None and not args.busy > sum(measured.values()):
            raise FloorError(f"--busy {args.busy}: not above the measured parts' sum ({sum(measured.values()):.1f} ms); "
                             "fix: pass the profile's busy time per step")
    except FloorError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report(shape_of(args.model), gpu, peak, bandwidth, measured, args.busy))
    return 0


if __name__ == "__main__":
    sys.exit(main())
