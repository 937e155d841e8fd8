"""How far apart the two trainers' bf16 forward passes put the loss, from equal weights and equal tokens (CPU).

    python benchmarks/torchtitan/bf16_gap.py [--dim 512] [--layers 8] [--seq-len 512] [--batch 4] [--batches 3]

The GPU comparison (docs/torchtitan.md) starts torchtitan's trainer and initlab's from bitwise equal
weights and batches, but they compute in bf16 differently: torchtitan on one GPU keeps fp32 weights
under ``torch.autocast(bfloat16)``; initlab computes under FSDP2's bf16 parameter policy. This script
measures that gap on a CPU at a small Llama shape: torchtitan's llama3 built through the extension's
TrainSpec (``depth_aware``, seed 0) under CPU autocast, and initlab's Llama with the same init and RoPE
(torchtitan's default Llama 3 scaling) wrapped by initlab's own FSDP2 code (``apply_fsdp``) on a one-process
gloo group with the bf16 policy initlab uses on CUDA, each on ``--batches`` batches of initlab's embedded corpus (debug.toml's 4096-token
tokenizer, cached under ``--cache-dir``). Prints one JSON object: the fp32 losses of both (equal to ~1e-6),
the bf16 losses and |torchtitan autocast - initlab bf16| per batch. CPU autocast casts a similar set of
ops to CUDA's, not necessarily the same: the numbers size the gap, they are not the GPU's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from torch.distributed.fsdp import MixedPrecisionPolicy  # noqa: E402

from components.build import build_local_model  # noqa: E402
from components.config import Compile, Config, Data, Init, Job, Model, Tokenizer, Training  # noqa: E402
from components.data import TokenBatches, TokenDataset, ensure_dataset  # noqa: E402
from components.loss import next_token_loss  # noqa: E402
from components.tokenizer import build_tokenizer  # noqa: E402
from distributed.env import distributed_session  # noqa: E402
from distributed.parallelize import apply_fsdp  # noqa: E402

MAX_VOCAB = 4096  # train_configs/debug.toml's tokenizer: 4097 ids with EOS
SCHEME, SEED = "depth_aware", 0


def torchtitan_model(dim: int, layers: int, seq_len: int) -> torch.nn.Module:
    """torchtitan's llama3 at this shape, built and initialized through the extension's TrainSpec."""
    import dataclasses

    from torchtitan.config import ConfigManager

    from integrations.torchtitan import config as tt_config
    from integrations.torchtitan import flavors as tt_flavors
    from integrations.torchtitan import spec as tt_spec

    job = ConfigManager().parse_args(["--job.custom_config_module", "integrations.torchtitan.config", "--model.name",
                                      tt_config.TRAIN_SPEC_NAME, "--initlab.scheme", SCHEME, "--initlab.seed", str(SEED),
                                      "--training.seq_len", str(seq_len)])
    args = dataclasses.replace(tt_spec.Flavors()[tt_flavors.DEBUG_FLAVOR], dim=dim, n_layers=layers, n_heads=dim // 64,
                               n_kv_heads=max(dim // 256, 1))
    args.update_from_config(job)
    with torch.device("meta"):
        model = tt_spec.InitlabTransformer(args)
    model.to_empty(device="cpu")
    model.init_weights()
    return model


def initlab_config(dim: int, layers: int, seq_len: int, batch: int, cache_dir: str) -> Config:
    return Config(job=Job(seed=SEED), init=Init(scheme=SCHEME), tokenizer=Tokenizer(max_vocab=MAX_VOCAB),
                  model=Model(flavor="debug", n_layers=layers, dim=dim, n_heads=dim // 64, n_kv_heads=max(dim // 256, 1),
                              vocab_size=MAX_VOCAB + 1, rope_scaling_factor=8.0),
                  data=Data(cache_dir=cache_dir), compile=Compile(enable=False),
                  training=Training(seq_len=seq_len, global_batch_size=batch, device="cpu",
                                    mixed_precision_param="bfloat16"))


@torch.no_grad()
def measure(args: argparse.Namespace) -> dict:
    cfg = initlab_config(args.dim, args.layers, args.seq_len, args.batch, args.cache_dir)
    data = TokenBatches(TokenDataset(ensure_dataset(cfg.data, build_tokenizer(cfg.tokenizer)), "train"),
                        args.seq_len, args.batch, SEED)
    titan = torchtitan_model(args.dim, args.layers, args.seq_len)
    reference = build_local_model(cfg, MAX_VOCAB + 1)[0]  # plain fp32 initlab model
    rows = []
    with distributed_session("cpu") as env:
        # initlab's FSDP2 wrapping with the policy distributed/parallelize.py gives CUDA (it keeps CPU in fp32).
        sharded = build_local_model(cfg, MAX_VOCAB + 1)[0]
        apply_fsdp(sharded, env, MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32), False)
        for step in range(1, args.batches + 1):
            tokens = data.get(step, slice(None))
            inputs, targets = tokens[:, :-1], tokens[:, 1:]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                titan_bf16 = next_token_loss(titan(inputs), targets).item()
            row = {"step": step, "torchtitan_fp32": next_token_loss(titan(inputs), targets).item(),
                   "initlab_fp32": next_token_loss(reference(inputs), targets).item(),
                   "torchtitan_autocast_bf16": titan_bf16,
                   "initlab_fsdp_bf16": next_token_loss(sharded(inputs), targets).item()}
            row["abs_gap_bf16"] = abs(row["torchtitan_autocast_bf16"] - row["initlab_fsdp_bf16"])
            rows.append(row)
    return {"dim": args.dim, "layers": args.layers, "seq_len": args.seq_len, "batch": args.batch, "scheme": SCHEME,
            "batches": rows, "max_abs_gap_bf16": max(r["abs_gap_bf16"] for r in rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=512, help="model width (multiple of 256; heads of 64)")
    parser.add_argument("--layers", type=int, default=8, help="blocks")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=4, help="sequences per batch")
    parser.add_argument("--batches", type=int, default=3, help="batches (initlab's steps 1..N) to measure")
    parser.add_argument("--cache-dir", default=".cache/initlab", help="initlab's token cache (data.cache_dir)")
    args = parser.parse_args(argv)
    if args.dim % 256 or args.layers < 1:
        parser.error(f"--dim {args.dim} must be a multiple of 256 and --layers {args.layers} >= 1")
    torch.manual_seed(0)
    print(json.dumps(measure(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
