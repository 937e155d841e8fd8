"""initlab trainer: ``python train.py --config X.toml`` or ``torchrun --nproc_per_node=N train.py --config X.toml``.

config -> tokenizer + token shards -> model on meta -> AC/compile/FSDP2 -> to_empty -> init scheme ->
train() -> train_step() -> forward_backward_step(), with metrics every ``metrics.log_freq`` steps
(nothing is read back to the host on other steps) and DCP checkpoints every ``checkpoint.interval``.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.stateful import Stateful

from components.activation_stats import ActivationStats
from components.build import build_model_and_init, freeze_all_but_adapters, model_args_from_config
from components.checkpoint import Checkpointer, CheckpointError
from components.config import Config, ConfigError, help_text, load_config, to_toml
from components.data import TokenBatches, TokenDataset, ensure_dataset
from components.lr_schedule import build_lr_scheduler
from components.metrics import (
    MetricsLogger,
    NonFiniteLossError,
    first_nonfinite,
    largest_gradient,
    mfu,
    peak_flops,
    peak_memory_gib,
)
from components.optim import build_optimizer, clip_grad_norm_
from components.tokenizer import build_tokenizer
from components.weight_stats import WeightStats
from distributed.env import DistEnv, barrier, distributed_session
from distributed.parallelize import compile_enabled
from models import build_model
from models.common import count_params, flops_per_token


@dataclass
class TrainState(Stateful):
    """Everything of the loop itself that a resume needs (model/optimizer/data live elsewhere)."""

    step: int = 0
    tokens_seen: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "tokens_seen": self.tokens_seen}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])


class Trainer:
    def __init__(self, cfg: Config, env: DistEnv):
        self.cfg, self.env = cfg, env
        self.run_dir = Path(cfg.job.output_dir) / cfg.job.run_name
        t = cfg.training
        self.local_batch, self.micro_batch, self.accum_steps = batch_split(
            t.global_batch_size, env.dp_size, t.local_batch_size)
        self.tokenizer = build_tokenizer(cfg.tokenizer)
        if env.local_rank == 0:  # one rank per node builds the token cache; the others wait, then open it
            ensure_dataset(cfg.data, self.tokenizer)
        barrier()
        data_path = ensure_dataset(cfg.data, self.tokenizer)
        self.train_batches = TokenBatches(TokenDataset(data_path, "train"), t.seq_len, t.global_batch_size,
                                          cfg.job.seed)
        self.val_batches = (TokenBatches(TokenDataset(data_path, "val"), t.seq_len, t.global_batch_size,
                                         cfg.job.seed) if cfg.metrics.val_freq else None)
        self.model, self.model_args, self.initializer = build_model_and_init(cfg, self.tokenizer.n_vocab, env)
        self.optimizer = build_optimizer(self.model, cfg.optimizer, env.device, self.initializer.parametrization)
        self.scheduler = build_lr_scheduler(self.optimizer, cfg.lr_scheduler, t.steps)
        self.state = TrainState()
        self.step_lr = 0.0  # the lr of the latest optimizer step, for logging
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", cfg.checkpoint, env, {
            "model": self.model, "optimizer": self.optimizer, "lr_scheduler": self.scheduler,
            "data": self.train_batches, "train": self.state})
        self.n_params = count_params(self.model)
        self.flops_per_token = flops_per_token(
            self.model_args, count_params(self.model, exclude_embeddings=True), t.seq_len,
            count_params(self.model, exclude_embeddings=True, trainable_only=True))
        self.peak_flops = peak_flops(env.device)
        grad_stats = cfg.metrics.log_grad_stats or cfg.metrics.log_variance_stats
        self.weight_stats = WeightStats(self.model, grad_stats=grad_stats)
        self.activation_stats = ActivationStats(self.model, enabled=cfg.metrics.log_variance_stats)
        # Compiled, the fp32 upcast of the [tokens, vocab] logits fuses into the loss kernels.
        self.loss_fn = (torch.compile(next_token_loss) if compile_enabled(cfg.compile.enable, env.device)
                        else next_token_loss)

    # ---------------------------------------------------------------- steps
    def forward_backward_step(self, tokens: torch.Tensor, is_last_micro: bool, measure: bool = False) -> torch.Tensor:
        """tokens [b, T+1] -> mean next-token loss of this microbatch / accum (detached), grads accumulated."""
        inputs, targets = tokens[:, :-1].to(self.env.device), tokens[:, 1:].to(self.env.device)
        self.model.set_requires_gradient_sync(is_last_micro)  # reduce-scatter once per optimizer step
        with self.activation_stats.capture(measure):  # this forward only: AC's recomputation is not measured
            logits = self.model(inputs)
        loss = self.loss_fn(logits, targets) / self.accum_steps
        loss.backward()
        return loss.detach()

    def train_step(self, step: int, logging: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on global batch ``step``; returns (local mean loss, grad norm) as device tensors."""
        rank_rows = self.env.dp_rank * self.local_batch
        local_loss = torch.zeros((), device=self.env.device)
        for micro in range(self.accum_steps):
            start = rank_rows + micro * self.micro_batch
            tokens = self.train_batches.get(step, slice(start, start + self.micro_batch))
            local_loss += self.forward_backward_step(tokens, micro == self.accum_steps - 1, logging and micro == 0)
        grad_norm = clip_grad_norm_(self.model.parameters(), self.cfg.training.max_norm)
        if logging and self.weight_stats.grad_stats:
            self.weight_stats.snapshot()
        self.step_lr = self.scheduler.get_last_lr()[0]  # the lr this step uses (a float: no sync)
        self.optimizer.step()
        self.scheduler.step()
        return local_loss, grad_norm

    @torch.no_grad()
    def validate(self) -> float:
        """Mean next-token loss over ``metrics.val_batches`` fixed global validation batches."""
        self.model.eval()
        total = torch.zeros((), device=self.env.device)
        rows = slice(self.env.dp_rank * self.local_batch, (self.env.dp_rank + 1) * self.local_batch)
        for i in range(self.cfg.metrics.val_batches):
            tokens = self.val_batches.get(i, rows).to(self.env.device)
            total += self.loss_fn(self.model(tokens[:, :-1]), tokens[:, 1:])
        self.model.train()
        return global_mean(total / self.cfg.metrics.val_batches)

    # ---------------------------------------------------------------- loop
    def train(self, logger: MetricsLogger) -> dict:
        cfg, t = self.cfg, self.cfg.training
        tokens_per_step = t.global_batch_size * t.seq_len
        # Device-side record of the first step whose loss or grad norm was non-finite (0 = none): no per-step sync.
        first_bad_step = torch.zeros((), dtype=torch.long, device=self.env.device)
        last_log = (time.perf_counter(), self.state.step)
        final = {}
        for step in range(self.state.step + 1, t.steps + 1):
            validating = bool(cfg.metrics.val_freq) and step % cfg.metrics.val_freq == 0
            logging = step == 1 or step % cfg.metrics.log_freq == 0 or step == t.steps or validating
            loss, grad_norm = self.train_step(step, logging)
            bad = ~torch.isfinite(loss) | ~torch.isfinite(grad_norm)  # a NaN grad poisons the weights
            first_bad_step = torch.where(bad & (first_bad_step == 0), step, first_bad_step)
            self.state.step, self.state.tokens_seen = step, self.state.tokens_seen + tokens_per_step
            saving = self.checkpointer.due(step, t.steps)
            if logging or saving:
                self.raise_if_nonfinite(first_bad_step)
            if logging:
                final = self.log_step(logger, step, loss, grad_norm, last_log)
                last_log = (time.perf_counter(), step)
            self.optimizer.zero_grad(set_to_none=True)
            if saving:
                self.checkpointer.save(step)
        return final

    def raise_if_nonfinite(self, first_bad_step: torch.Tensor) -> None:
        bad_step = int(global_max(first_bad_step))
        if bad_step:
            culprit = first_nonfinite(self.model)
            where = (f"first non-finite: {culprit}" if culprit else
                     f"all values finite, the norm overflowed; largest gradient: {largest_gradient(self.model)}")
            raise NonFiniteLossError(f"loss or gradient norm became non-finite at step {bad_step}; {where}; "
                                     "lower optimizer.lr, raise lr_scheduler.warmup_steps or pick another init")

    def log_step(self, logger: MetricsLogger, step: int, loss: torch.Tensor, grad_norm: torch.Tensor,
                 last_log: tuple[float, int]) -> dict:
        t, env = self.cfg.training, self.env
        values = {"loss/train": global_mean(loss), "grad_norm": float(grad_norm),
                  "lr": self.step_lr}
        elapsed = time.perf_counter() - last_log[0]
        tokens_per_sec = (step - last_log[1]) * t.global_batch_size * t.seq_len / max(elapsed, 1e-9)
        values["throughput/tokens_per_sec"] = tokens_per_sec
        values["throughput/tokens_per_sec_per_device"] = tokens_per_sec / env.world_size
        if self.peak_flops:
            values["mfu"] = mfu(tokens_per_sec / env.world_size, self.flops_per_token, self.peak_flops)
        values["memory/peak_gib"] = peak_memory_gib(env.device)
        if self.cfg.metrics.val_freq and (step % self.cfg.metrics.val_freq == 0 or step == t.steps):
            values["loss/val"] = self.validate()
        if self.cfg.metrics.log_weight_std:
            values.update(self.weight_stats.compute())
        values.update(self.activation_stats.compute())
        logger.log(step, values)
        if env.is_main:
            val = f" val {values['loss/val']:.4f}" if "loss/val" in values else ""
            print(f"step {step:>6} | loss {values['loss/train']:.4f}{val} | lr {values['lr']:.2e} | "
                  f"grad_norm {values['grad_norm']:.3f} | {values['throughput/tokens_per_sec']:,.0f} tok/s", flush=True)
        return values


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [b, T, vocab] (any dtype, computed in float32) against targets [b, T]."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def batch_split(global_batch: int, dp_size: int, local_batch: int) -> tuple[int, int, int]:
    """(sequences per rank per step, per forward pass, accumulation steps) with one-line errors."""
    if global_batch % dp_size:
        raise ConfigError(f"training.global_batch_size = {global_batch} is not divisible by the {dp_size} "
                          "data-parallel ranks; pick a multiple")
    per_rank = global_batch // dp_size
    micro = local_batch or per_rank
    if per_rank % micro:
        raise ConfigError(f"training.local_batch_size = {micro} does not divide the {per_rank} sequences per rank; "
                          "pick a divisor or 0")
    return per_rank, micro, per_rank // micro


def global_mean(value: torch.Tensor) -> float:
    """Mean of a per-rank scalar over all ranks (a host sync: logging steps only)."""
    value = value.detach().clone().float()
    dist.all_reduce(value)  # SUM: gloo has no AVG
    return value.item() / dist.get_world_size()


def global_max(value: torch.Tensor) -> float:
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value.item()


def check_run_dir(cfg: Config) -> bool:
    """Refuse to touch an existing run unless resuming (and to resume a missing one); True = fresh run."""
    run_dir = Path(cfg.job.output_dir) / cfg.job.run_name
    exists = run_dir.exists() and any(run_dir.iterdir())
    barrier()  # every rank has looked before rank 0 may create anything
    if exists and not cfg.checkpoint.resume:
        raise ConfigError(f"run directory {run_dir} already exists; pass --checkpoint.resume true to continue it "
                          "or choose another --job.run_name")
    if cfg.checkpoint.resume and not exists:
        raise ConfigError(f"--checkpoint.resume true but run directory {run_dir} does not exist; "
                          "check --job.output_dir/--job.run_name or drop --checkpoint.resume")
    return not exists


def create_run_dir(cfg: Config, env: DistEnv) -> None:
    """A fresh run's directory with its resolved config.toml (only once tokenizer, data and model built)."""
    if env.is_main:
        run_dir = Path(cfg.job.output_dir) / cfg.job.run_name
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(to_toml(cfg))
    barrier()


def dry_run(cfg: Config) -> None:
    """Print the resolved config, parameter count and FLOPs/token, building nothing but shapes."""
    tokenizer = build_tokenizer(cfg.tokenizer)
    args = model_args_from_config(cfg, tokenizer.n_vocab)
    with torch.device("meta"):
        model = build_model(args)
    if cfg.training.trainable == "lora":
        freeze_all_but_adapters(model)
    n_params, n_no_emb = count_params(model), count_params(model, exclude_embeddings=True)
    n_trainable = count_params(model, exclude_embeddings=True, trainable_only=True)
    print(to_toml(cfg))
    print(f"# model: {args.family} {cfg.model.flavor}: L={args.n_layers} d={args.dim} heads={args.n_heads}/"
          f"{args.n_kv_heads} d_ff={args.ffn_dim} vocab={args.vocab_size}")
    print(f"# parameters: {n_params:,} ({n_no_emb:,} without embeddings)")
    if n_trainable != n_no_emb:
        print(f"# trainable: {n_trainable:,} parameters without embeddings (the rest frozen)")
    print(f"# training FLOPs/token: {flops_per_token(args, n_no_emb, cfg.training.seq_len, n_trainable):,}")


def run(cfg: Config) -> dict:
    with distributed_session(cfg.training.device, cfg.parallelism.data_parallel_replicate_degree,
                             cfg.parallelism.data_parallel_shard_degree) as env:
        fresh = check_run_dir(cfg)
        trainer = Trainer(cfg, env)
        if fresh:
            create_run_dir(cfg, env)
        resumed = trainer.checkpointer.load_for_resume() if cfg.checkpoint.resume else None
        if cfg.checkpoint.create_seed_checkpoint:
            trainer.checkpointer.save(0)
            return {}
        logger = MetricsLogger(trainer.run_dir, env.is_main, resume_step=resumed)
        logger.set_layout(trainer.weight_stats.roles_to_layers(), trainer.weight_stats.grad_stats,
                          trainer.activation_stats.charts())
        if env.is_main:
            print(f"initlab: {cfg.model.name}/{cfg.model.flavor} {trainer.n_params:,} params, init "
                  f"{cfg.init.scheme}, {env.world_size} rank(s) on {env.device.type}, run dir {trainer.run_dir}",
                  flush=True)
        final = {}
        try:
            final = trainer.train(logger)
        finally:
            logger.log_hparams(hparams(cfg), {k: v for k, v in final.items() if k.startswith("loss/")})
            logger.close()
        trainer.checkpointer.close()
        return final


def hparams(cfg: Config) -> dict:
    return {"model": f"{cfg.model.name}/{cfg.model.flavor}", "scheme": cfg.init.scheme,
            "parametrization": cfg.parametrization.name,
            "base_std": cfg.init.base_std if cfg.init.base_std is not None else "default",
            "scale_all_projections": cfg.init.scale_all_projections, "depth_init": cfg.init.depth_init,
            "scale_up_proj": cfg.init.scale_up_proj, "std_factor": cfg.init.std_factor,
            "lr": cfg.optimizer.lr, "seed": cfg.job.seed, "steps": cfg.training.steps}


def main(argv: list[str]) -> int:
    try:
        cfg, flags = load_config(argv, flags=("dry-run", "help"))
        if "help" in flags:
            print(help_text())
            return 0
        if "dry-run" in flags:
            dry_run(cfg)
            return 0
        run(cfg)
        return 0
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError, NonFiniteLossError) as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr)
        return 1 if isinstance(e, NonFiniteLossError) else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
