"""components/lr_schedule.py: closed-form lr factors per schedule, the lr each optimizer step uses, resume."""

from __future__ import annotations

import io
import math

import pytest
import torch

from components.config import LRScheduler
from components.lr_schedule import build_lr_scheduler, lr_factor


def schedule(**fields) -> LRScheduler:
    return LRScheduler(**{"warmup_steps": 10, "min_lr_ratio": 0.1, **fields})


@pytest.mark.parametrize("decay_type", ["cosine", "linear", "wsd", "constant"])
def test_warmup_step_k_is_k_over_warmup(decay_type):
    cfg = schedule(decay_type=decay_type)
    assert [lr_factor(k, cfg, 100) for k in range(1, 11)] == [k / 10 for k in range(1, 11)]


def test_cosine_values():
    cfg = schedule(decay_type="cosine")  # decays over steps 11..110 (100 steps)
    assert lr_factor(60, cfg, 110) == pytest.approx((1 + 0.1) / 2, abs=1e-12)  # midpoint
    assert lr_factor(35, cfg, 110) == pytest.approx(0.1 + 0.45 * (1 + math.sqrt(0.5)), abs=1e-12)  # quarter
    assert lr_factor(11, cfg, 110) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 100)), abs=1e-12)
    assert lr_factor(110, cfg, 110) == 0.1
    assert lr_factor(500, cfg, 110) == 0.1  # past the end it stays at the floor


def test_linear_values():
    cfg = schedule(decay_type="linear")
    assert lr_factor(60, cfg, 110) == pytest.approx(0.55, abs=1e-12)
    assert lr_factor(35, cfg, 110) == pytest.approx(0.1 + 0.9 * 0.75, abs=1e-12)
    assert lr_factor(110, cfg, 110) == 0.1


def test_wsd_values():
    cfg = schedule(decay_type="wsd", decay_ratio=0.2)  # 100 steps: stable to 80, decay over 81..100
    assert [lr_factor(s, cfg, 100) for s in (11, 50, 80)] == [1.0, 1.0, 1.0]
    assert lr_factor(81, cfg, 100) == pytest.approx(0.1 + 0.9 * 19 / 20, abs=1e-12)
    assert lr_factor(90, cfg, 100) == pytest.approx(0.55, abs=1e-12)
    assert lr_factor(100, cfg, 100) == 0.1
    # 0.29 * 100 is 28.999999999999996 in floating point: still 29 decay steps.
    odd = schedule(decay_type="wsd", decay_ratio=0.29)
    assert lr_factor(71, odd, 100) == 1.0
    assert lr_factor(72, odd, 100) == pytest.approx(1 - 0.9 / 29, abs=1e-12)


def test_constant_and_no_warmup():
    assert [lr_factor(s, schedule(decay_type="constant", warmup_steps=4), 20) for s in (2, 5, 20, 99)] == [0.5, 1, 1, 1]
    linear = schedule(decay_type="linear", warmup_steps=0)
    assert [lr_factor(s, linear, 4) for s in (1, 2, 4)] == pytest.approx([0.775, 0.55, 0.1], abs=1e-12)


def test_warmup_longer_than_the_run_is_just_warmup():
    cfg = schedule(decay_type="cosine", warmup_steps=20)
    assert [lr_factor(s, cfg, 10) for s in range(1, 11)] == [s / 20 for s in range(1, 11)]


def test_bad_schedules_name_the_key():
    with pytest.raises(ValueError, match=r"^lr_scheduler\.decay_ratio = 0\.01 gives 0\.5 decay steps of 50") as err:
        lr_factor(1, schedule(decay_type="wsd", decay_ratio=0.01), 50)
    assert "\n" not in str(err.value)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    with pytest.raises(ValueError, match=r"lr_scheduler\.decay_ratio"):
        build_lr_scheduler(optimizer, schedule(decay_type="wsd", decay_ratio=0.01), 50)
    with pytest.raises(ValueError, match="counts optimizer steps from 1"):
        lr_factor(0, schedule(), 50)
    with pytest.raises(ValueError, match=r"training\.steps must be >= 1"):
        lr_factor(1, schedule(), 0)


def sgd_on_rising_params(peaks: list[float]) -> tuple[torch.optim.SGD, list[torch.Tensor]]:
    """One float64 scalar per group with gradient -1: each SGD step raises it by exactly the lr used."""
    params = [torch.zeros((), dtype=torch.float64, requires_grad=True) for _ in peaks]
    optimizer = torch.optim.SGD([{"params": [p], "lr": peak} for p, peak in zip(params, peaks)])
    return optimizer, params


def train_steps(optimizer, scheduler, params, steps: int) -> list[list[float]]:
    """Run ``steps`` optimizer steps as the trainer does; returns the lr each step used, per group."""
    used = []
    for _ in range(steps):
        before = [p.item() for p in params]
        for p in params:
            p.grad = torch.full_like(p, -1.0)
        optimizer.step()
        scheduler.step()
        used.append([p.item() - b for p, b in zip(params, before)])
    return used


@pytest.mark.parametrize("decay_type", ["cosine", "linear", "wsd", "constant"])
def test_step_s_uses_peak_times_factor_s(decay_type):
    cfg = schedule(decay_type=decay_type, warmup_steps=5, decay_ratio=0.3)
    optimizer, params = sgd_on_rising_params([1.0, 0.25])
    used = train_steps(optimizer, build_lr_scheduler(optimizer, cfg, 20), params, steps=24)
    for s, lrs in enumerate(used, start=1):
        assert lrs == pytest.approx([1.0 * lr_factor(s, cfg, 20), 0.25 * lr_factor(s, cfg, 20)], rel=1e-12, abs=0)


@pytest.mark.parametrize("restore_optimizer", [True, False])
def test_state_dict_round_trip_resumes_the_lr_sequence(restore_optimizer):
    cfg = schedule(decay_type="cosine", warmup_steps=4)
    optimizer, params = sgd_on_rising_params([0.5])
    scheduler = build_lr_scheduler(optimizer, cfg, 16)
    train_steps(optimizer, scheduler, params, steps=7)
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    expected = train_steps(optimizer, scheduler, params, steps=9)  # steps 8..16

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["scheduler"]["last_epoch"] == 7
    resumed_optimizer, resumed_params = sgd_on_rising_params([0.5])
    resumed_scheduler = build_lr_scheduler(resumed_optimizer, cfg, 16)
    if restore_optimizer:
        resumed_optimizer.load_state_dict(saved["optimizer"])
    resumed_scheduler.load_state_dict(saved["scheduler"])
    resumed = train_steps(resumed_optimizer, resumed_scheduler, resumed_params, steps=9)
    assert [lr for (lr,) in resumed] == pytest.approx([lr for (lr,) in expected], rel=1e-12, abs=0)
    assert resumed[0][0] == pytest.approx(0.5 * lr_factor(8, cfg, 16), rel=1e-12)
