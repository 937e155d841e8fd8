"""Learning-rate schedules: linear warmup, then cosine / linear / warmup-stable-decay / constant.

``lr_factor(s)`` is the multiplier of the peak lr used by optimizer step ``s`` (1-based: the first
``optimizer.step()`` of a run is step 1). ``build_lr_scheduler`` wraps it in a ``LambdaLR`` whose
off-by-one is handled here, so a trainer that calls ``scheduler.step()`` right after each
``optimizer.step()`` trains step ``s`` at exactly ``peak * lr_factor(s)``.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from components.config import LRScheduler

DECAY_TYPES = ("cosine", "linear", "wsd", "constant")


def wsd_decay_steps(cfg: LRScheduler, total_steps: int) -> int:
    """Length of WSD's final linear decay: round(decay_ratio * total_steps), at least one step."""
    exact = round(cfg.decay_ratio * total_steps, 9)  # 9 digits: 0.29 * 100 is 28.999999999999996
    if exact < 1:
        raise ValueError(f"lr_scheduler.decay_ratio = {cfg.decay_ratio} gives {exact:g} decay steps of "
                         f"{total_steps} (< 1); raise lr_scheduler.decay_ratio to >= {1 / total_steps:.4g} "
                         "or train for more steps")
    return round(exact)


def check_schedule(cfg: LRScheduler, total_steps: int) -> None:
    """One-line ValueError naming the [lr_scheduler] key of an impossible schedule."""
    if total_steps < 1:
        raise ValueError(f"training.steps must be >= 1 for a learning-rate schedule; got {total_steps}")
    if cfg.decay_type not in DECAY_TYPES:
        raise ValueError(f"lr_scheduler.decay_type = {cfg.decay_type!r} is unknown; use one of {', '.join(DECAY_TYPES)}")
    if cfg.warmup_steps < 0:
        raise ValueError(f"lr_scheduler.warmup_steps must be >= 0; got {cfg.warmup_steps}")
    if not 0 <= cfg.min_lr_ratio <= 1:
        raise ValueError(f"lr_scheduler.min_lr_ratio must be in [0, 1]; got {cfg.min_lr_ratio}")
    if cfg.decay_type == "wsd":
        wsd_decay_steps(cfg, total_steps)


def lr_factor(step: int, cfg: LRScheduler, total_steps: int) -> float:
    """Multiplier of the peak lr for optimizer step ``step`` (1-based) of a ``total_steps`` run.

    With W = warmup_steps, T = total_steps, m = min_lr_ratio:

    - warmup, step <= W:   step / W                        (W = 0: no warmup)
    - then, with the decay starting after step S (S = W for cosine/linear) and
      p = (step - S) / (T - S) in (0, 1]:
        - cosine:   m + (1 - m) * (1 + cos(pi * p)) / 2    (p = 1/2 gives (1 + m) / 2)
        - linear:   m + (1 - m) * (1 - p)
        - wsd:      1 for step <= S = max(W, T - D) with D = round(decay_ratio * T) decay steps,
                    then linear as above over the last T - S steps
        - constant: 1
    - every decaying schedule is exactly m at step T and stays m after T. If W >= T the run
      is warmup only.
    """
    check_schedule(cfg, total_steps)
    if step < 1:
        raise ValueError(f"lr_factor counts optimizer steps from 1; got step {step}")
    warmup = cfg.warmup_steps
    if step <= warmup:
        return step / warmup
    if cfg.decay_type == "constant":
        return 1.0
    if step >= total_steps:
        return cfg.min_lr_ratio
    decay_start = warmup
    if cfg.decay_type == "wsd":
        decay_start = max(warmup, total_steps - wsd_decay_steps(cfg, total_steps))
        if step <= decay_start:
            return 1.0
    progress = (step - decay_start) / (total_steps - decay_start)
    if cfg.decay_type == "cosine":
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * (1 - progress)


class WarmupDecayLR(LambdaLR):
    """``LambdaLR`` over :func:`lr_factor`; restoring its state also restores the optimizer's lr.

    LambdaLR evaluates its lambda at ``last_epoch`` = 0 when built and k after the k-th
    ``scheduler.step()``; the lambda here is ``lr_factor(last_epoch + 1)``, so optimizer step s
    (taken after s - 1 scheduler steps) runs at ``peak * lr_factor(s)``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: LRScheduler, total_steps: int):
        check_schedule(cfg, total_steps)
        super().__init__(optimizer, lambda epoch: lr_factor(epoch + 1, cfg, total_steps))

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the step count (``last_epoch``) and set each group's lr for the next optimizer step.

        The peak lrs (``base_lrs``) and the schedule's shape stay those of the current config, so a resume
        with a changed optimizer.lr, [lr_scheduler] or training.steps applies it from the resumed step on
        (train.py prints the change) instead of silently keeping the checkpoint's values.
        """
        peak_lrs = list(self.base_lrs)
        super().load_state_dict(state_dict)
        self.base_lrs = peak_lrs
        for group, base_lr, factor in zip(self.optimizer.param_groups, self.base_lrs, self.lr_lambdas):
            group["lr"] = base_lr * factor(self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]  # get_last_lr(): not the saved one


def build_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: LRScheduler, total_steps: int) -> WarmupDecayLR:
    """The schedule of [lr_scheduler] over ``total_steps`` optimizer steps, peak = each group's current lr.

    Call ``scheduler.step()`` once after every ``optimizer.step()``. Its ``state_dict`` holds
    ``last_epoch`` (steps taken) and ``base_lrs``; the schedule itself comes from the config.
    """
    return WarmupDecayLR(optimizer, cfg, total_steps)
