"""integrations/torchtitan/'s ``initlab.run_dir``: torchtitan 0.2.2's own trainer (on a CPU, through
tests/torchtitan_cpu_trainer.py) writes an initlab run directory that components/run_dir.py reads and
scripts/compare_runs.py reports next to train.py's runs, with the numbers torchtitan logged to TensorBoard."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from torchtitan.models import llama3
from torchtitan.models.llama3.model.model import Transformer

from integrations.torchtitan import config as tt_config
from integrations.torchtitan import flavors as tt_flavors
from integrations.torchtitan import metrics as tt_metrics
from reporting.runs import count_run_params, load_run
from reporting.tables import fmt_count
from scripts import compare_runs
from scripts.compare_torchtitan import torchtitan_series
from tests.launch import torchtitan_beside_initlab
from tests.test_torchtitan_ext import parse_job_config

STEPS, LOG_STEPS = 4, [1, 2, 4]  # metrics.log_freq 2: step 1, then every 2nd
# The CPU-sized comparison of tests/test_compare_torchtitan.py (compare_{torchtitan,initlab}.toml, shrunk).
SHARED = {"training.seq_len": 64, "training.local_batch_size": 2, "training.global_batch_size": 4,
          "training.steps": STEPS, "lr_scheduler.warmup_steps": 2, "metrics.log_freq": 2}
SAME_TAGS = {"loss/train": "loss_metrics/global_avg_loss", "grad_norm_total": "grad_norm", "lr": "lr",
             "throughput/tokens_per_sec_per_device": "throughput(tps)"}  # initlab's name -> torchtitan's event tag


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(torchtitan's run directory written by the extension, torchtitan's TensorBoard folder, train.py's run)."""
    from components.config import Data, Tokenizer
    from components.data import ensure_dataset
    from components.tokenizer import build_tokenizer

    base = tmp_path_factory.mktemp("runs")
    data = Data(dataset="embedded", cache_dir=str(base / "cache"), val_fraction=0.0)
    token_dir = str(ensure_dataset(data, build_tokenizer(Tokenizer(max_vocab=4096)), max_bytes=300_000))
    flags = [f"--{key}={value}" for key, value in SHARED.items()]
    torchtitan_beside_initlab(token_dir, base / "torchtitan", base, flags, tt_flavors.DEBUG_FLAVOR)
    return base / "torchtitan" / "initlab_run", base / "torchtitan" / "tb", base / "initlab"


def as_event(value: float) -> float:
    """A float as TensorBoard stores it (float32)."""
    return float(np.float32(value))


@pytest.mark.multiprocess
def test_the_run_directory_holds_the_metrics_torchtitan_logged(runs):
    run_dir, tb, _ = runs
    run, events = load_run(run_dir), torchtitan_series(tb)
    assert [record["step"] for record in run.records] == LOG_STEPS
    initlab_tags = sorted(tag for tag in events if tag.startswith(tt_metrics.INITLAB_FAMILIES))
    assert len([tag for tag in initlab_tags if tag.startswith("weight_std/")]) == 37 and len(initlab_tags) == 37 + 22
    for record in run.records:
        step = record["step"]
        assert sorted(record) == sorted(["step", *SAME_TAGS, "throughput/tokens_per_sec", *initlab_tags])
        for ours, theirs in SAME_TAGS.items():
            assert as_event(record[ours]) == events[theirs][step], (ours, step)
        for tag in initlab_tags:
            assert as_event(record[tag]) == events[tag][step], (tag, step)
        assert record["throughput/tokens_per_sec"] == record["throughput/tokens_per_sec_per_device"]  # 1 rank
    assert [r["lr"] for r in run.records] == pytest.approx([1.5e-4, 3e-4, 3e-4], rel=1e-12)  # warm-up 2, constant


@pytest.mark.multiprocess
def test_the_run_config_is_initlabs_schema_for_the_torchtitan_run(runs):
    run_dir, _, initlab_dir = runs
    run = load_run(run_dir)
    cfg, ours = run.config, load_run(initlab_dir).config
    assert run.tables["torchtitan"] == {"version": "0.2.2", "train_spec": "initlab_llama3", "flavor": tt_flavors.DEBUG_FLAVOR,
                                        "lr_decay_type": "linear", "lr_decay_ratio": 0.0, "lr_min_factor": 0.0}
    assert (cfg.job.seed, cfg.job.run_name, cfg.init, cfg.data.dataset) == (0, "initlab_run", ours.init, ours.data.dataset)
    assert cfg.training.steps == STEPS and (cfg.training.seq_len, cfg.training.global_batch_size,
                                            cfg.training.local_batch_size) == (64, 4, 2)
    assert cfg.optimizer == ours.optimizer  # compare_initlab.toml states torchtitan's AdamW in initlab's terms
    # and its schedule (warm-up 2, then constant; torchtitan's min_lr_factor 0, unused by a constant schedule)
    assert cfg.lr_scheduler == dataclasses.replace(ours.lr_scheduler, min_lr_ratio=0.0)
    assert (cfg.metrics.log_freq, cfg.metrics.log_weight_std, cfg.metrics.log_variance_stats) == (2, True, True)
    with torch.device("meta"):
        titan = Transformer(llama3.llama3_args[tt_flavors.DEBUG_FLAVOR])
    assert count_run_params(run) == sum(p.numel() for p in titan.parameters()) == count_run_params(load_run(initlab_dir))


@pytest.mark.multiprocess
def test_compare_runs_reports_the_torchtitan_run_in_its_own_group(runs, tmp_path):
    run_dir, _, initlab_dir = runs
    second = tmp_path / "initlab_run_seed1"  # a second torchtitan seed: same config but job.seed
    shutil.copytree(run_dir, second)
    text = (second / "config.toml").read_text()
    (second / "config.toml").write_text(text.replace("[job]\nseed = 0\n", "[job]\nseed = 1\n", 1))
    out = tmp_path / "report"
    assert compare_runs.main([str(run_dir), str(second), str(initlab_dir), "--out", str(out)]) == 0
    rows = {row["run"]: row for row in csv.DictReader((out / "summary.csv").open())}
    assert sorted(rows) == ["initlab", "initlab_run", "initlab_run_seed1"]
    titan, initlab_row = rows["initlab_run"], rows["initlab"]
    last = load_run(run_dir).records[-1]
    assert float(titan["final_train_loss"]) == last["loss/train"] and titan["seed"] == "0"
    assert float(titan["final_train_loss"]) == pytest.approx(float(initlab_row["final_train_loss"]), rel=1e-6)  # fp32
    assert titan["tokens"] == str(STEPS * 4 * 64) and titan["params"] == initlab_row["params"]
    assert titan["group"] == rows["initlab_run_seed1"]["group"] != initlab_row["group"]  # seeds group, trainers don't
    groups = {row["group"]: row for row in csv.DictReader((out / "groups.csv").open()) if row["quantity"] == "final train"}
    assert sorted(row["seeds"] for row in groups.values()) == ["0", "0 1"]
    report = (out / "report.md").read_text()
    assert f"| initlab_run | 0 | depth_aware | {fmt_count(int(titan['params']))} | 1.02k | " \
           f"{last['loss/train']:.4f} |" in report
    assert (out / "final_layer_std.png").stat().st_size > 10_000 and (out / "loss_curves.png").stat().st_size > 10_000


def test_a_restarted_run_drops_the_records_from_its_first_step_on(tmp_path):
    from torchtitan.components.metrics import BaseLogger

    first = tt_metrics.InitlabRunLogger(BaseLogger(), tmp_path, world_size=2)
    for step in (1, 2, 3, 4):
        first.log({"loss_metrics/global_avg_loss": 10.0 - step, "throughput(tps)": 5.0, "tflops": 1.0}, step)
    first.log({"validation_metrics/loss": 9.5, "grad_norm": float("nan")}, 4)
    first.close()
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last == {"step": 4, "loss/val": 9.5, "grad_norm_total": None}  # validation's own record; NaN as null
    resumed = tt_metrics.InitlabRunLogger(BaseLogger(), tmp_path, world_size=2)  # resumed from a checkpoint at step 2
    resumed.log({"loss_metrics/global_avg_loss": 6.5, "weight_std/attn.q/layer_00": 0.02}, 3)
    resumed.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [
        {"step": 1, "loss/train": 9.0, "throughput/tokens_per_sec_per_device": 5.0, "throughput/tokens_per_sec": 10.0},
        {"step": 2, "loss/train": 8.0, "throughput/tokens_per_sec_per_device": 5.0, "throughput/tokens_per_sec": 10.0},
        {"step": 3, "loss/train": 6.5, "weight_std/attn.q/layer_00": 0.02}]


@pytest.mark.parametrize(("flags", "expected"), [
    ([], {"warmup_steps": 200, "decay_type": "linear", "min_lr_ratio": 0.0}),
    (["--lr_scheduler.decay_ratio", "0", "--lr_scheduler.warmup_steps", "20000"],
     {"warmup_steps": 10000, "decay_type": "constant"}),  # torchtitan shortens the warm-up to the run
    (["--lr_scheduler.decay_type", "cosine", "--lr_scheduler.min_lr_factor", "0.1"],
     {"decay_type": "cosine", "min_lr_ratio": 0.1}),
    (["--lr_scheduler.decay_ratio", "0.2"], {"decay_type": "wsd", "decay_ratio": 0.2}),
])
def test_torchtitans_lr_schedule_gets_initlabs_name(flags, expected):
    job_config = parse_job_config(flags)
    schedule = tt_config.initlab_lr_scheduler(job_config.lr_scheduler, job_config.training.steps)
    assert {key: schedule[key] for key in expected} == expected


def test_a_run_directory_of_another_optimizer_is_a_one_line_error(tmp_path):
    job_config = parse_job_config(["--optimizer.name", "Adam"])
    with pytest.raises(tt_config.ConfigError) as caught:
        tt_config.initlab_run_config(job_config, llama3.llama3_args["debugmodel"], 1, tmp_path / "run")
    assert str(caught.value) == ("initlab.run_dir describes AdamW runs (initlab's only optimizer), not optimizer.name = "
                                 "'Adam'; set initlab.run_dir = \"\" or optimizer.name = \"AdamW\"")


def test_a_torchtitan_run_config_is_checked_as_load_config_checks_it_but_its_table(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss/train": 2.5}\n')
    table = '[torchtitan]\nversion = "0.2.2"\nflavor = "debugmodel"\n'
    (tmp_path / "config.toml").write_text(f'[job]\nseed = 4\n[model]\nn_layers = 3\n{table}')
    cfg = load_run(tmp_path).config
    assert (cfg.job.seed, cfg.model.n_layers, cfg.model.dim) == (4, 3, None)
    (tmp_path / "config.toml").write_text(f"[model]\nn_layer = 3\n{table}")
    with pytest.raises(tt_config.ConfigError, match=f"^unknown key model.n_layer \\({tmp_path / 'config.toml'}\\); "
                                              "did you mean 'n_layers'\\?$"):
        _ = load_run(tmp_path).config
