"""initlab trainer: ``python train.py --config X.toml`` or ``torchrun --nproc_per_node=N train.py --config X.toml``.

config -> tokenizer + token shards -> model on meta -> AC/compile/FSDP2 -> to_empty -> init scheme ->
train() -> train_step() -> forward_backward_step(), with metrics every ``metrics.log_freq`` steps
(nothing is read back to the host on other steps) and DCP checkpoints every ``checkpoint.interval``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.stateful import Stateful

from components import training_slots
from components.activation_stats import ActivationStats
from components.build import build_model_and_init, freeze_all_but_adapters, model_args_from_config
from components.checkpoint import WEIGHTS_DIR, Checkpointer, CheckpointError
from components.config import Config, ConfigError, help_text, load_config, parse_cli, run_identity, to_toml
from components.data import HeldOutPrefix, TokenBatches, TokenDataset, batch_to_device, ensure_dataset
from components.files import describe_os_error
from components.host_gc import ScheduledGC
from components.loss import build_next_token_loss, next_token_loss
from components.lr_schedule import build_lr_scheduler
from components.metrics import (
    MFU_TAGS,
    MetricsLogger,
    NonFiniteLossError,
    first_nonfinite,
    import_wandb,
    init_std_hparams,
    largest_gradient,
    mfu,
    peak_flops,
    peak_memory_gib,
    wandb_init_args,
)
from components.optim import build_optimizer, clip_grad_norm_
from components.preemption import INTERRUPTED_EXIT_CODE, RunStopped, StopRequests
from components.provenance import Timeline, now_utc, start_record
from components.run_dir import RunDir, RunStart
from components.tokenizer import build_tokenizer
from components.weight_stats import WeightStats
from distributed.env import DistEnv, any_and_all, barrier, decided_by_rank0, distributed_session
from distributed.parallelize import compile_enabled, reshards_after_forward, start_micro_batch
from distributed.placement import global_max, global_mean, global_sum
from init_schemes.base import DEFAULT_BASE_STD
from models import build_model
from models.common import count_params, flops_per_token_by_convention


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
    def __init__(self, cfg: Config, env: DistEnv, stop: StopRequests | None = None):
        # Without installed handlers (a benchmark, a notebook) nothing ever requests a stop.
        self.cfg, self.env, self.stop = cfg, env, stop or StopRequests(watch_parent=False)
        # Host-side agreement at step boundaries (stop requests, background saves) on a CPU group: never a device sync.
        self.control_group = dist.new_group(backend="gloo") if env.world_size > 1 else None
        self.clock = StepClock()
        self.extra_values: dict[str, float] = {}  # values of between-log events, logged with the next logging step
        self.run_dir = Path(cfg.job.output_dir) / cfg.job.run_name
        t = cfg.training
        self.local_batch, self.micro_batch, self.accum_steps = batch_split(
            t.global_batch_size, env.dp_size, t.local_batch_size)
        self.tokenizer = build_tokenizer(cfg.tokenizer)
        if env.local_rank == 0:  # one rank per node builds the token cache; the others wait, then open it
            ensure_dataset(cfg.data, self.tokenizer)
        barrier()
        data_path = ensure_dataset(cfg.data, self.tokenizer, verify=False)  # (its checksums: verified just above)
        self.train_batches = TokenBatches(TokenDataset(data_path, "train"), t.seq_len, t.global_batch_size,
                                          cfg.job.seed)
        self.val_set = (HeldOutPrefix(TokenDataset(data_path, "val"), t.seq_len, cfg.metrics.val_tokens)
                        if cfg.metrics.val_freq else None)
        self.model, self.model_args, self.initializer = build_model_and_init(cfg, self.tokenizer.n_vocab, env)
        self.keep_gathered = not reshards_after_forward(cfg.parallelism, env)
        self.optimizer = build_optimizer(self.model, cfg.optimizer, env.device, self.initializer.parametrization)
        self.scheduler = build_lr_scheduler(self.optimizer, cfg.lr_scheduler, t.steps)
        self.state = TrainState()
        self.step_lr = 0.0  # the lr of the latest optimizer step, for logging
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", cfg.checkpoint, env, {
            "model": self.model, "optimizer": self.optimizer, "lr_scheduler": self.scheduler,
            "data": self.train_batches, "train": self.state}, identity=run_identity(cfg))
        self.n_params = count_params(self.model)
        # MFU under both conventions (models/common.py): "mfu" is torchtitan's; they differ for a tied head.
        self.flops_per_token = flops_per_token_by_convention(self.model, self.model_args, t.seq_len)
        self.peak_flops = peak_flops(env.device)
        grad_stats = cfg.metrics.log_grad_stats or cfg.metrics.log_variance_stats
        self.weight_stats = WeightStats(self.model, grad_stats=grad_stats)
        self.activation_stats = ActivationStats(self.model, enabled=cfg.metrics.log_variance_stats)
        # Compiled, the fp32 upcast of the [tokens, vocab] logits fuses into the loss kernels (components/loss.py).
        self.loss_fn = build_next_token_loss(compile_enabled(cfg.compile.enable, env.device))

    # ---------------------------------------------------------------- loop
    def train(self, logger: MetricsLogger) -> dict:
        """Steps ``state.step + 1 .. training.steps``; returns the last logged values.

        At every step boundary the ranks agree, in one all-reduce over a CPU group, whether any was asked
        to stop (:mod:`components.preemption`) and whether every rank's background save has finished; a
        stop saves one checkpoint and raises RunStopped.
        """
        # Device-side record of the first step whose loss or grad norm was non-finite (0 = none): no per-step sync.
        first_bad_step = torch.zeros((), dtype=torch.long, device=self.env.device)
        self.clock.start(self.state.step)
        with ScheduledGC(self.cfg.training.gc_freq) as collector:
            return self.run_steps(logger, first_bad_step, collector)

    def run_steps(self, logger: MetricsLogger, first_bad_step: torch.Tensor, collector: ScheduledGC) -> dict:
        """The loop of :meth:`train` from ``state.step + 1``; returns the last logged values."""
        cfg, t = self.cfg, self.cfg.training
        tokens_per_step = t.global_batch_size * t.seq_len
        final = {}
        for step in range(self.state.step + 1, t.steps + 1):
            validating = bool(cfg.metrics.val_freq) and step % cfg.metrics.val_freq == 0
            logging = step == 1 or step % cfg.metrics.log_freq == 0 or step == t.steps or validating
            loss, grad_norm = self.train_step(step, logging)
            bad = ~torch.isfinite(loss) | ~torch.isfinite(grad_norm)
            first_bad_step = torch.where(bad & (first_bad_step == 0), step, first_bad_step)
            self.state.step, self.state.tokens_seen = step, self.state.tokens_seen + tokens_per_step
            stop, saves_done = any_and_all(self.stop.requested(), self.checkpointer.local_save_done(),
                                           self.control_group)
            if saves_done and self.checkpointer.pending is not None:
                self.report_checkpoint(self.checkpointer.finalize_pending())
            saving = self.checkpointer.due(step, t.steps) or (stop and cfg.checkpoint.enable)
            if logging or saving or stop:
                self.raise_if_nonfinite(first_bad_step)
            self.optimizer.zero_grad(set_to_none=True)
            if logging or stop:  # before the save: a crash after it never leaves a checkpointed step unlogged
                final = self.log_step(logger, step, loss, grad_norm)
            if saving:  # its blocked time is logged with the next logging step
                self.save_checkpoint(step, blocking=stop or step == t.steps)
            if stop:
                raise self.stopped(step, saved=saving)
            collector.step(step)
        return final

    # ---------------------------------------------------------------- steps
    def train_step(self, step: int, logging: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on global batch ``step``; returns (local mean loss, grad norm) as device tensors."""
        rank_rows = self.env.dp_rank * self.local_batch
        local_loss = torch.zeros((), device=self.env.device)
        for micro in range(self.accum_steps):
            start = rank_rows + micro * self.micro_batch
            tokens = self.train_batches.get(step, slice(start, start + self.micro_batch))
            local_loss += self.forward_backward_step(tokens, micro == self.accum_steps - 1, logging and micro == 0)
        grad_norm = clip_grad_norm_(self.model.parameters(), self.cfg.training.max_norm)  # untouched if non-finite
        guarded = self.cfg.training.nonfinite_check == "step"
        # Fused AdamW skips the update on device when found_inf (the flag torch's GradScaler sets) is 1, leaving
        # weights, moments and step counts as they were: the host then reads the norm once the update is
        # queued. Other kernels would apply it, so the host reads the norm first.
        skipped_on_device = guarded and self.optimizer.defaults["fused"]
        if skipped_on_device:
            self.optimizer.found_inf = (~torch.isfinite(grad_norm)).float()
        elif guarded and not torch.isfinite(grad_norm):
            self.raise_nonfinite(step)
        if logging and self.weight_stats.grad_stats:
            self.weight_stats.snapshot()
        self.step_lr = self.scheduler.get_last_lr()[0]  # the lr this step uses (a float: no sync)
        self.optimizer.step()
        if skipped_on_device and self.optimizer.found_inf.item():  # weights finite, gradients in place: name them
            self.raise_nonfinite(step)
        self.scheduler.step()
        if logging and self.cfg.metrics.log_weight_std:  # here, as train() frees the grads before log_step
            self.extra_values.update(self.weight_stats.compute())
        return local_loss, grad_norm

    def forward_backward_step(self, tokens: torch.Tensor, is_last_micro: bool, measure: bool = False) -> torch.Tensor:
        """tokens [b, T+1] -> mean next-token loss of this microbatch / accum (detached), grads accumulated."""
        tokens = batch_to_device(tokens, self.env.device)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        start_micro_batch(self.model, is_last_micro, self.keep_gathered)  # reduce-scatter once per step
        with self.activation_stats.capture(measure):  # this forward only: AC's recomputation is not measured
            logits = self.model(inputs)
        loss = self.loss_fn(logits, targets) / self.accum_steps
        loss.backward()
        return loss.detach()

    @torch.no_grad()
    def validate(self) -> float:
        """Mean next-token loss over the held-out prefix (``metrics.val_tokens``, the same tokens for any seed or
        world size). Each rank scores its contiguous share in micro-batches of the training shape (every rank
        runs as many forwards; rows past its share are padding and not scored); one all-reduce sums the losses."""
        self.model.eval()
        total = torch.zeros((), device=self.env.device)
        share = self.val_set.share(self.env.dp_rank, self.env.dp_size)
        per_rank = -(-self.val_set.n_windows // self.env.dp_size)
        for start in range(share.start, share.start + per_rank, self.micro_batch):
            tokens = batch_to_device(self.val_set.get(start, self.micro_batch), self.env.device)
            logits, targets = self.model(tokens[:, :-1]), tokens[:, 1:]
            rows = max(0, min(self.micro_batch, share.stop - start))  # scored rows of this micro-batch
            if rows == self.micro_batch:
                total += self.loss_fn(logits, targets) * rows
            elif rows:  # the short end of the share: torch's loss (the compiled one has the full shape only)
                total += next_token_loss(logits[:rows], targets[:rows]) * rows
        self.model.train()
        return global_sum(total) / self.val_set.n_windows

    @torch.no_grad()
    def log_initial(self, logger: MetricsLogger) -> None:
        """Step 0 of a fresh start, before any update: every statistic that needs no backward pass (weight std,
        validation loss, the activation statistics of step 1's first micro-batch, forward only)."""
        values = {}
        if self.cfg.metrics.log_weight_std:  # (gradients do not exist yet: their columns are left out)
            values.update({k: v for k, v in self.weight_stats.compute().items() if k.startswith("weight_std/")})
        if self.val_set is not None:
            values["loss/val"] = self.validate()
        if self.activation_stats.probes:
            start = self.env.dp_rank * self.local_batch
            tokens = batch_to_device(self.train_batches.get(1, slice(start, start + self.micro_batch)), self.env.device)
            self.model.eval()  # validation's (no-grad) graph when compiled
            with self.activation_stats.capture():
                self.model(tokens[:, :-1])
            self.model.train()
            values.update(self.activation_stats.compute())
        if values:
            logger.log(0, values)

    def save_checkpoint(self, step: int, blocking: bool) -> None:
        blocked_s = self.checkpointer.save(step, blocking=blocking)
        self.extra_values["checkpoint/blocked_s"] = blocked_s  # logged with the next logging step
        if self.checkpointer.pending is None:
            self.report_checkpoint(step, blocked_s)
        elif self.env.is_main:
            print(f"checkpoint step {step}: staged in {blocked_s:.2f} s, writing in the background", flush=True)
        self.clock.exclude(blocked_s)

    def save_final_weights(self) -> None:
        """A run that kept no checkpoints (``checkpoint.final_weights``): its last weights, model only, into
        ``weights/step_<N>/`` (the export, sample and plot scripts read them like a checkpoint)."""
        if self.cfg.checkpoint.enable or not self.cfg.checkpoint.final_weights:
            return
        cfg = dataclasses.replace(self.cfg.checkpoint, async_mode="disabled")
        saver = Checkpointer(self.run_dir / WEIGHTS_DIR, cfg, self.env, {"model": self.model}, self.checkpointer.identity)
        seconds = saver.save(self.state.step, blocking=True)
        if self.env.is_main:
            print(f"final weights: saved in {seconds:.2f} s -> {saver.folder / f'step_{self.state.step}'}", flush=True)

    def report_checkpoint(self, step: int, blocked_s: float | None = None) -> None:
        if self.env.is_main:
            how = (f"saved in {blocked_s:.2f} s" if blocked_s is not None else
                   f"written in the background in {self.checkpointer.last_write_s:.2f} s")
            print(f"checkpoint step {step}: {how} -> {self.checkpointer.folder / f'step_{step}'}", flush=True)

    def stopped(self, step: int, saved: bool) -> RunStopped:
        where = (f"saved checkpoint step_{step}; the same command resumes it" if saved else
                 "no checkpoint saved (checkpoint.enable = false)")
        reason = self.stop.reason or "another rank's stop request"  # the ranks agreed; the signal may be elsewhere
        return RunStopped(f"stopped at step {step}/{self.cfg.training.steps} on {reason}; {where}",
                          self.stop.exit_code())

    def raise_if_nonfinite(self, first_bad_step: torch.Tensor) -> None:
        bad_step = int(global_max(first_bad_step))
        if bad_step:
            self.raise_nonfinite(bad_step)

    def raise_nonfinite(self, bad_step: int) -> None:
        culprit = first_nonfinite(self.model)
        where = (f"first non-finite: {culprit}" if culprit else
                 f"all values finite, the norm overflowed; largest gradient: {largest_gradient(self.model)}")
        raise NonFiniteLossError(f"loss or gradient norm became non-finite at step {bad_step}; {where}; "
                                 "lower optimizer.lr, raise lr_scheduler.warmup_steps or pick another init")

    def log_step(self, logger: MetricsLogger, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> dict:
        t, env = self.cfg.training, self.env
        values = {"loss/train": global_mean(loss), "grad_norm_total": float(grad_norm),
                  "lr": self.step_lr}
        tokens_per_sec = self.clock.lap(step) * t.global_batch_size * t.seq_len
        values["throughput/tokens_per_sec"] = tokens_per_sec
        values["throughput/tokens_per_sec_per_device"] = tokens_per_sec / env.world_size
        if self.peak_flops:
            for convention, flops in self.flops_per_token.items():
                values[MFU_TAGS[convention]] = mfu(tokens_per_sec / env.world_size, flops, self.peak_flops)
        values["memory/peak_gib"] = peak_memory_gib(env.device)
        if self.cfg.metrics.val_freq and (step % self.cfg.metrics.val_freq == 0 or step == t.steps):
            values["loss/val"] = self.validate()
        values.update(self.activation_stats.compute())
        values.update(self.extra_values)
        self.extra_values.clear()
        logger.log(step, values)
        if env.is_main:
            print(console_line(step, t.steps, values, self.clock), flush=True)
        return values


def console_line(step: int, total: int, values: dict, clock: StepClock) -> str:
    """``step 40/100 | loss 5.1234 val 5.2 | lr 1.0e-03 | gnorm 0.512 | 12,345 tok/s | MFU 45.1% | mem 3.2 GiB |
    0:01:23 elapsed, ETA 0:02:05``"""
    val = f" val {values['loss/val']:.4f}" if "loss/val" in values else ""
    mfu_part = f" | MFU {100 * values['mfu']:.1f}%" if "mfu" in values else ""
    if values.get("mfu_all_matmuls", values.get("mfu")) != values.get("mfu"):  # a tied head: say both
        mfu_part += f" (all matmuls {100 * values['mfu_all_matmuls']:.1f}%)"
    return (f"step {step:>{len(str(total))}}/{total} | loss {values['loss/train']:.4f}{val} | lr {values['lr']:.2e} | "
            f"gnorm {values['grad_norm_total']:.3f} | {values['throughput/tokens_per_sec']:,.0f} tok/s{mfu_part} | "
            f"mem {values['memory/peak_gib']:.1f} GiB | {hms(clock.elapsed())} elapsed, "
            f"ETA {hms(clock.eta(step, total))}")


class StepClock:
    """Wall time of the training loop: throughput between logging steps (checkpoint stalls left out, so
    tokens/s is the training rate), elapsed time since this start, and the ETA at the recent rate."""

    def __init__(self):
        self.t0 = self.last_time = time.perf_counter()
        self.first_step = self.last_step = 0
        self.excluded = 0.0  # seconds since the last lap spent blocked in checkpoint saves
        self.step_s = 0.0  # seconds per step over the latest lap

    def start(self, step: int) -> None:
        self.t0 = self.last_time = time.perf_counter()
        self.first_step = self.last_step = step

    def exclude(self, seconds: float) -> None:
        self.excluded += seconds

    def lap(self, step: int) -> float:
        """Steps per second since the previous lap."""
        now = time.perf_counter()
        self.step_s = max(now - self.last_time - self.excluded, 1e-9) / max(step - self.last_step, 1)
        self.last_time, self.last_step, self.excluded = now, step, 0.0
        return 1.0 / self.step_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def eta(self, step: int, total: int) -> float:
        return (total - step) * self.step_s


def hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


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
    flops = flops_per_token_by_convention(model, args, cfg.training.seq_len)
    print(to_toml(cfg))
    print(f"# model: {args.family} {cfg.model.flavor}: L={args.n_layers} d={args.dim} heads={args.n_heads}/"
          f"{args.n_kv_heads} d_ff={args.ffn_dim} vocab={args.vocab_size}")
    print(f"# parameters: {n_params:,} ({n_no_emb:,} without embeddings)")
    if n_trainable != n_no_emb:
        print(f"# trainable: {n_trainable:,} parameters without embeddings (the rest frozen)")
    print(f"# training FLOPs/token: {flops['non_embedding']:,} (6 N_non-embedding + attention, torchtitan's MFU "
          f"convention); {flops['all_matmuls']:,} counting every matmul (tied head included)")


def run(cfg: Config, config_path: str | None = None) -> dict:
    """Train ``cfg`` in its run directory; returns the last logged values ({} when there was nothing to do)."""
    stop = StopRequests(watch_parent="TORCHELASTIC_RUN_ID" in os.environ).install()
    try:
        with distributed_session(cfg.training.device, cfg.parallelism.data_parallel_replicate_degree,
                                 cfg.parallelism.data_parallel_shard_degree) as env:
            cfg.job.run_name = decided_by_rank0(
                lambda: cfg.job.run_name or RunDir.new_name(cfg.job.output_dir, config_path))
            run_dir = RunDir(Path(cfg.job.output_dir) / cfg.job.run_name)
            try:
                return train_in_run_dir(cfg, env, stop, run_dir)
            finally:
                run_dir.release_lock()  # (rank 0 holds it, from claim() on)
                training_slots.release()
    finally:
        stop.uninstall()


def train_in_run_dir(cfg: Config, env: DistEnv, stop: StopRequests, run_dir: RunDir) -> dict:
    """Lock and claim the run directory (rank 0 decides, before anything expensive is built, so a second job on a
    locked directory or a resume that would change the experiment stops at once on every rank), then train."""
    start = decided_by_rank0(lambda: run_dir.claim(cfg), ConfigError, OSError)
    timeline = Timeline()
    timeline.mark("claimed")  # imports, the process group and the run directory's claim done
    if start.mode == "finished":
        if env.is_main:
            print(f"initlab: {start.note}", flush=True)
        return {}
    if cfg.metrics.wandb:
        import_wandb()  # a missing package stops every rank before anything is built
    trainer = Trainer(cfg, env, stop)
    timeline.mark("built")  # tokenizer, data, model (built, sharded, initialised), optimizer
    if env.is_main:  # in a sweep with --prestart: until fewer than its --parallel runs train (the other ranks wait here)
        training_slots.acquire(say=lambda line: print(line, flush=True), stop_requested=stop.requested)
    barrier()
    timeline.mark("slot")
    resumed = open_run_dir(cfg, env, run_dir, start, trainer)
    if cfg.checkpoint.create_seed_checkpoint:
        trainer.checkpointer.save(0)
        return {}
    logger = MetricsLogger(trainer.run_dir, env.is_main, resume_step=resumed,
                           wandb=wandb_init_args(cfg.metrics, cfg.job.run_name, asdict(cfg), trainer.run_dir))
    logger.set_layout(trainer.weight_stats.roles_to_layers(), trainer.weight_stats.grad_stats,
                      trainer.activation_stats.charts())
    if env.is_main:
        print(f"initlab: {cfg.model.name}/{cfg.model.flavor} {trainer.n_params:,} params, init "
              f"{cfg.init.scheme}, {env.world_size} rank(s) on {env.device.type}, run dir {trainer.run_dir}",
              flush=True)
    final = {}
    try:
        if resumed is None:
            trainer.log_initial(logger)
        timeline.mark("loop_start")
        final = trainer.train(logger)
        timeline.mark("loop_end")
        if resumed == cfg.training.steps:  # killed after its last save and row: the run only needs finishing
            final = logger.values_at(resumed)
        trainer.save_final_weights()
    except BaseException:
        close_run(cfg, env, run_dir, trainer, logger, resumed, final, quiet=True)
        raise
    close_run(cfg, env, run_dir, trainer, logger, resumed, final, quiet=False)
    timeline.mark("closed")
    if env.is_main:
        summary = {**run_summary(cfg, trainer, resumed, final), "timeline_s": timeline.marks}
        run_dir.mark_finished(summary)
        print(summary_line(summary), flush=True)
    return final


def open_run_dir(cfg: Config, env: DistEnv, run_dir: RunDir, start: RunStart, trainer: Trainer) -> int | None:
    """Fresh: set an abandoned attempt aside and write config.toml. Resume: load the newest checkpoint, record
    this start's config and say what changed. Either way this start's provenance goes into provenance.json.
    Returns the resumed step (None when fresh)."""
    if start.mode == "fresh":
        if env.is_main:
            if start.note:
                print(f"initlab: {start.note}", flush=True)
            record = start_record(env.device, env.world_size, resumed_from=None)
            run_dir.start_fresh(start, cfg, record, trainer.initializer.record())
        barrier()
        return None
    step = trainer.checkpointer.load_for_resume()
    if env.is_main:
        run_dir.start_resumed(step, cfg, start_record(env.device, env.world_size, resumed_from=step))
        print(f"initlab: resuming {run_dir.path} from step {step}/{cfg.training.steps} "
              f"({trainer.checkpointer.folder / f'step_{step}'})", flush=True)
        for key, old, new in start.changes:
            print(f"initlab: resume changes {key}: {old!r} -> {new!r} (applies from step {step + 1})", flush=True)
    return step


def close_run(cfg: Config, env: DistEnv, run_dir: RunDir, trainer: Trainer, logger: MetricsLogger,
              resumed: int | None, final: dict, quiet: bool) -> None:
    """HParams, metrics files, background saves and the start's end time. ``quiet`` (an error is already on its
    way out): a filesystem error of these steps (say, the disk that just filled) must not replace it."""
    steps = [lambda: logger.log_hparams(hparams(cfg, resumed, trainer.initializer.record(),
                                                trainer.tokenizer.description),
                                        {k: v for k, v in final.items() if k.startswith("loss/")}),
             logger.close, trainer.checkpointer.close]
    if env.is_main:
        steps.append(lambda: run_dir.record_end(now_utc()))
    for step in steps:
        if not quiet:
            step()
            continue
        with contextlib.suppress(OSError):
            step()


def run_summary(cfg: Config, trainer: Trainer, resumed: int | None, final: dict) -> dict:
    t = cfg.training
    return {"steps": t.steps, "steps_this_start": t.steps - (resumed or 0), "tokens": trainer.state.tokens_seen,
            "wall_s": round(trainer.clock.elapsed(), 1), "final": {k: v for k, v in final.items() if k.startswith("loss/")},
            "run_dir": str(trainer.run_dir)}


def summary_line(summary: dict) -> str:
    losses = ", ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in summary["final"].items())
    return (f"initlab: done: {summary['steps_this_start']} steps ({summary['steps']} in all), {summary['tokens']:,} "
            f"tokens in {hms(summary['wall_s'])}; final loss {losses or 'n/a'}; run dir {summary['run_dir']}; "
            f"tensorboard --logdir {Path(summary['run_dir']).parent}")


def hparams(cfg: Config, resumed: int | None = None, init_record: dict | None = None, tokenizer: str = "") -> dict:
    """HParams of the run (numbers stay numbers): the unset base std is the schemes' default σ0; with the
    initializer's record, each role's realised std as ``init_std.<role>`` (components/metrics.py init_std_hparams)."""
    stds = {"init_std": init_std_hparams(init_record)} if init_record else {}
    return {"model": f"{cfg.model.name}/{cfg.model.flavor}", "scheme": cfg.init.scheme,
            "parametrization": cfg.parametrization.name, "resumed_from": resumed or 0,
            "base_std": cfg.init.base_std if cfg.init.base_std is not None else DEFAULT_BASE_STD,
            "scale_all_projections": cfg.init.scale_all_projections, "depth_init": cfg.init.depth_init,
            "scale_up_proj": cfg.init.scale_up_proj, "std_factor": cfg.init.std_factor,
            "lr": cfg.optimizer.lr, "seed": cfg.job.seed, "steps": cfg.training.steps,
            "dataset": cfg.data.dataset, "tokenizer": tokenizer or cfg.tokenizer.name, **stds}


def main(argv: list[str]) -> int:
    argv = ["--help" if arg == "-h" else arg for arg in argv]
    cfg = None
    try:
        cfg, flags = load_config(argv, flags=("dry-run", "help"))
        if "help" in flags:
            print(help_text())
            return 0
        if "dry-run" in flags:
            dry_run(cfg)
            return 0
        run(cfg, parse_cli(argv, flags=("dry-run", "help"))[0])
        return 0
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError, NonFiniteLossError) as e:
        say(f"error: {e}")
        return 1 if isinstance(e, NonFiniteLossError) else 2
    except OSError as e:  # a full disk, a read-only or foreign output directory: the path and what its errno means
        say(f"error: {describe_os_error(e, Path(cfg.job.output_dir) / cfg.job.run_name if cfg else None)}")
        return 2
    except RunStopped as e:
        say(f"initlab: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        say("initlab: interrupted (second Ctrl-C): stopped without saving")
        return INTERRUPTED_EXIT_CODE


def say(line: str) -> None:
    """One line on stderr from rank 0 only (the other ranks hold the same line)."""
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
