"""The LR-sensitivity study's high-lr extension (docs/lr_sensitivity/README.md, "High learning rates"): the sweep
file resolves to the pre-registered design, the pilot's 64-step runs at 3e-1 and 1 (its entry point,
scripts/lr_sensitivity_gpu.sh, is exercised on a CPU by tests/test_lr_sensitivity_long.py)."""

from __future__ import annotations

import math

import pytest

from components import sweep
from components.config import load_config
from tests.launch import REPO

STUDY = REPO / "train_configs" / "lr_sensitivity"


def test_high_lr_sweep_file_continues_the_pilot_grid_with_its_arms_and_config():
    spec, pilot = sweep.load_sweep_file(STUDY / "high_lr_sweep.toml"), sweep.load_sweep_file(STUDY / "sweep.toml")
    assert spec.grid == {"optimizer.lr": [0.3, 1.0], "job.seed": [0, 1, 2]} and spec.arms == pilot.arms
    top = max(pilot.grid["optimizer.lr"])
    assert top == 0.1 and [round(math.log10(lr / top), 2) for lr in spec.grid["optimizer.lr"]] == [0.48, 1.0]
    points, pilot_points = sweep.plan(spec), sweep.plan(pilot)
    assert len(points) == 30 and [p.coords["job.seed"] for p in points] == [0] * 10 + [1] * 10 + [2] * 10
    twin = {(p.coords["arm"], p.coords["job.seed"]): p.config for p in pilot_points}
    for point in points:  # the pilot's config, arm and seed; only the lr (and the run's name and folder) differ
        ours, theirs = point.config, twin[point.coords["arm"], point.coords["job.seed"]]
        assert ours.optimizer.lr in (0.3, 1.0) and ours.training == theirs.training and ours.init == theirs.init
        assert ours.lr_scheduler == theirs.lr_scheduler and ours.metrics == theirs.metrics
        assert ours.training.steps * ours.training.global_batch_size * ours.training.seq_len == 2_097_152



def test_1b_check_is_the_llama_1b_study_at_two_lrs_with_three_of_the_arms():
    spec, pilot = sweep.load_sweep_file(STUDY / "check_1b_sweep.toml"), sweep.load_sweep_file(STUDY / "sweep.toml")
    assert spec.grid == {"optimizer.lr": [5.6e-4, 1.7e-3], "job.seed": [0]}
    assert spec.arms == {arm: pilot.arms[arm] for arm in ("depth_aware", "depth_aware_emb002", "mitchell")}
    assert 1.7e-3 / 5.6e-4 == pytest.approx(3, rel=0.02)
    points = sweep.plan(spec)
    assert [p.name for p in points] == [f"{arm}_lr{lr}_seed0" for lr in ("0.00056", "0.0017")
                                        for arm in ("depth_aware", "depth_aware_emb002", "mitchell")]
    # Each point is the 1B study's run of its scheme (its config file) but for the lr and the embedding override.
    for point in points:
        scheme = point.config.init.scheme
        study, _ = load_config(["--config", str(REPO / "train_configs" / "llama_1b" / "h200_study" / f"{scheme}.toml")])
        ours = {section: vars(table) for section, table in vars(point.config).items()}
        theirs = {section: vars(table) for section, table in vars(study).items()}
        differ = {(section, key) for section in ours for key in ours[section] if ours[section][key] != theirs[section][key]}
        expected = {("optimizer", "lr"), ("job", "run_name"), ("job", "output_dir")}
        if point.coords["arm"] == "depth_aware_emb002":
            expected.add(("init", "std_overrides"))
        assert differ == expected, (point.name, differ)
        t = point.config.training
        assert t.steps * t.global_batch_size * t.seq_len == 3_932_160 and point.config.model.flavor == "llama_1b"
