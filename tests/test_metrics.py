"""components/metrics.py: jsonl + TensorBoard contents, layout, hparams, resume, non-finite search, MFU.

TensorBoard files are read back with tensorboard's own EventAccumulator, as `tensorboard` would.
"""

from __future__ import annotations

import json
import math
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from components.activation_stats import ActivationStats
from components.config import Metrics
from components.metrics import (
    MetricsLogger,
    first_nonfinite,
    init_std_hparams,
    mfu,
    peak_flops,
    peak_memory_gib,
    wandb_init_args,
)
from models import build_model, make_model_args
from tests.wandb_records import offline_run

KEYS = ("loss/train", "lr", "grad_norm_total", "weight_std/attn.q/layer_00", "weight_std/attn.q/layer_01",
        "weight_std/attn.q/mean_over_layers", "weight_std/tok_embedding")


def values_at(step: int, scale: float = 1.0) -> dict[str, float]:
    """Distinct, checkable values per key and step."""
    return {key: scale * (step + i / 10) for i, key in enumerate(KEYS)}


def read_jsonl(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def read_tb(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def write_steps(run_dir: Path, steps, resume_step: int | None = None, scale: float = 1.0) -> None:
    logger = MetricsLogger(run_dir, enabled=True, resume_step=resume_step)
    for step in steps:
        logger.log(step, values_at(step, scale))
    logger.close()


def test_every_step_and_key_in_jsonl_and_tensorboard(tmp_path):
    write_steps(tmp_path, [1, 10, 20])
    records = read_jsonl(tmp_path)
    assert [r["step"] for r in records] == [1, 10, 20]
    for record in records:
        assert record == {"step": record["step"], **values_at(record["step"])}
    accumulator = read_tb(tmp_path)
    assert set(KEYS) <= set(accumulator.Tags()["scalars"])
    for i, key in enumerate(KEYS):
        events = accumulator.Scalars(key)
        assert [e.step for e in events] == [1, 10, 20]
        assert [e.value for e in events] == pytest.approx([s + i / 10 for s in (1, 10, 20)])


def test_non_finite_values_are_json_null_and_tensorboard_nan(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True)
    logger.log(1, {"loss/train": float("nan"), "lr": torch.tensor(1e-3)})
    logger.close()
    assert read_jsonl(tmp_path) == [{"step": 1, "loss/train": None, "lr": pytest.approx(1e-3)}]
    assert math.isnan(read_tb(tmp_path).Scalars("loss/train")[0].value)


def test_bad_steps_and_values_are_refused(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True)
    logger.log(5, {"lr": 1.0})
    with pytest.raises(ValueError, match="step 5 is not after the last logged step 5"):
        logger.log(5, {"lr": 1.0})
    with pytest.raises(ValueError, match="metric 'lr' = 'fast' is not a number"):
        logger.log(6, {"lr": "fast"})
    with pytest.raises(ValueError, match="'step' is reserved"):
        logger.log(7, {"step": 1.0})
    logger.close()
    assert read_jsonl(tmp_path) == [{"step": 5, "lr": 1.0}]


def test_custom_scalars_layout_has_a_chart_per_role_and_a_line_per_layer(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True)
    logger.set_layout({"attn.q": [0, 1, 10], "mlp.out": [0, 1, 10], "tok_embedding": []}, grad_stats=True)
    logger.close()
    (event,) = read_tb(tmp_path).Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    charts = {c.title: {chart.title: list(chart.multiline.tag) for chart in c.chart} for c in layout.category}
    assert list(charts) == ["loss", "weight_std", "grad_norm", "grad_rms", "update_ratio"]
    assert charts["loss"] == {"loss": ["^loss/train$", "^loss/val$"]}
    assert charts["weight_std"]["attn.q"] == [r"^weight_std/attn\.q/layer_00$", r"^weight_std/attn\.q/layer_01$",
                                              r"^weight_std/attn\.q/layer_10$"]
    assert charts["update_ratio"]["tok_embedding"] == ["^update_ratio/tok_embedding$"]
    assert set(charts["grad_norm"]) == {"attn.q", "mlp.out", "tok_embedding"}
    assert charts["grad_rms"]["mlp.out"] == [r"^grad_rms/mlp\.out/layer_00$", r"^grad_rms/mlp\.out/layer_01$",
                                             r"^grad_rms/mlp\.out/layer_10$"]


def test_custom_scalars_activation_charts_one_per_statistic_a_line_per_layer(tmp_path):
    stats = ActivationStats(build_model(make_model_args("llama", "debug", 97, 16, {"n_layers": 2})))
    logger = MetricsLogger(tmp_path, enabled=True)
    logger.set_layout({"attn.q": [0, 1]}, activation_charts=stats.charts())
    logger.close()
    (event,) = read_tb(tmp_path).Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    charts = {c.title: {chart.title: list(chart.multiline.tag) for chart in c.chart} for c in layout.category}
    assert list(charts) == ["loss", "weight_std", "activations"]
    assert list(charts["activations"]) == ["act_rms/residual", "act_rms/attn_out", "act_rms/mlp_out",
                                           "act_std/mlp_pre", "attn_logit_max", "act_rms/logits"]
    assert charts["activations"]["act_rms/logits"] == ["^act_rms/logits$"]
    assert charts["activations"]["act_rms/residual"] == [
        "^act_rms/residual/embedding$", "^act_rms/residual/layer_00$", "^act_rms/residual/layer_01$"]
    assert charts["activations"]["attn_logit_max"] == ["^attn_logit_max/layer_00$", "^attn_logit_max/layer_01$"]


def test_hparams_are_written_to_the_runs_own_tb_dir(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True)
    logger.log(3, {"loss/train": 2.5})
    logger.log_hparams({"init": {"scheme": "mitchell", "base_std": 0.02, "depth_init": True},
                        "optimizer": {"betas": [0.9, 0.95]}, "steps": 100}, {"loss/train": 2.5, "loss/val": 2.75})
    logger.close()
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []  # no timestamped sub-run
    accumulator = read_tb(tmp_path)
    content = accumulator.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
               for k, v in start.session_start_info.hparams.items()}
    assert hparams == {"init.scheme": "mitchell", "init.base_std": 0.02, "init.depth_init": 1.0,
                       "optimizer.betas": "[0.9, 0.95]", "steps": 100.0}
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["final/loss/train", "final/loss/val"]
    assert [(e.step, e.value) for e in accumulator.Scalars("final/loss/val")] == [(3, 2.75)]


def test_resume_drops_later_steps_from_jsonl_and_tensorboard(tmp_path):
    write_steps(tmp_path, range(1, 11))  # a run that logged steps 1..10, then checkpointed at 5 and crashed
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 11, "lr"')  # torn last line of the crash
    write_steps(tmp_path, [6, 7, 8], resume_step=5, scale=-1.0)
    records = read_jsonl(tmp_path)
    assert [r["step"] for r in records] == list(range(1, 9))
    assert records[5] == {"step": 6, **values_at(6, scale=-1.0)}
    assert not list(tmp_path.glob("*.tmp"))
    events = read_tb(tmp_path).Scalars("lr")  # two event files; the purge drops the first run's steps >= 6
    assert [e.step for e in events] == list(range(1, 9))
    assert [e.value for e in events] == pytest.approx([s + 0.1 for s in range(1, 6)] + [-(s + 0.1) for s in (6, 7, 8)])


def test_resume_refuses_a_corrupt_middle_line_and_changes_nothing(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a metrics record"):
        MetricsLogger(tmp_path, enabled=True, resume_step=1)
    assert path.read_text() == '{"step": 1}\nnot json\n{"step": 3}\n'
    assert not list(tmp_path.glob("events.out.tfevents.*"))


def test_existing_metrics_without_resume_are_refused_untouched(tmp_path):
    write_steps(tmp_path, [1, 2])
    before = (tmp_path / "metrics.jsonl").read_bytes()
    with pytest.raises(ValueError, match="already holds metrics; resume the run"):
        MetricsLogger(tmp_path, enabled=True)
    assert (tmp_path / "metrics.jsonl").read_bytes() == before


def test_disabled_logger_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    logger = MetricsLogger(run_dir, enabled=False, resume_step=3)
    logger.set_layout({"attn.q": [0]})
    logger.log(1, {"loss/train": 1.0})
    logger.log_hparams({"a": 1}, {"loss/train": 1.0})
    logger.close()
    assert not run_dir.exists()


def small_gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(make_model_args("gpt2", "debug", 97, 16, {"tie_embeddings": False}))


def test_init_std_hparams_give_each_roles_shallowest_and_differing_deepest_std():
    record = {"roles": {"attn.out": [{"layer": 1, "realized_std": 0.25}, {"layer": 0, "realized_std": 0.5}],
                        "attn.q": [{"layer": 0, "realized_std": 0.125}, {"layer": 1, "realized_std": 0.125}],
                        "tok_embedding": [{"layer": None, "realized_std": 0.02}]}}
    assert init_std_hparams(record) == {"attn.out": 0.5, "attn.out@last_layer": 0.25, "attn.q": 0.125,
                                        "tok_embedding": 0.02}


def test_wandb_offline_run_holds_every_tag_the_config_and_the_name(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # wandb_mode "default" defers to it: no network
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = {"optimizer": {"lr": 1e-3}, "init": {"scheme": "mitchell"}}
    args = wandb_init_args(Metrics(wandb=True, wandb_project="ablation"), "mitchell_seed1", config, tmp_path)
    assert args["id"] == wandb_init_args(Metrics(wandb=True), "other", {}, tmp_path / ".." / tmp_path.name)["id"]
    logger = MetricsLogger(tmp_path, enabled=True, wandb=args)
    for step in (1, 10, 20):
        logger.log(step, values_at(step))
    logger.log(30, {"loss/train": float("nan")})
    logger.log_hparams({"init": {"scheme": "mitchell", "std": {"attn.q": 0.0625}}}, {"loss/val": 4.5})
    logger.close()
    run = offline_run(tmp_path / "wandb")
    assert run["name"] == "mitchell_seed1"
    assert run["config"]["optimizer"] == {"lr": 1e-3} and run["config"]["init"] == {"scheme": "mitchell"}
    assert run["config"]["hparams"] == {"init.scheme": "mitchell", "init.std.attn.q": 0.0625}
    assert sorted(run["history"]) == [1, 10, 20, 30]
    for step in (1, 10, 20):  # the TensorBoard tags and values, at the TensorBoard steps
        assert run["history"][step] == pytest.approx(values_at(step))
    assert math.isnan(run["history"][30]["loss/train"]) and run["summary"]["final/loss/val"] == 4.5
    assert [r["step"] for r in read_jsonl(tmp_path)] == [1, 10, 20, 30]


def test_wandb_missing_or_off(tmp_path, monkeypatch):
    assert wandb_init_args(Metrics(), "run", {}, tmp_path) is None
    args = wandb_init_args(Metrics(wandb=True, wandb_mode="offline", wandb_entity="team"), "run", {}, tmp_path)
    assert (args["mode"], args["entity"], args["project"], args["dir"]) == ("offline", "team", "initlab",
                                                                             str(tmp_path.resolve()))
    MetricsLogger(tmp_path / "rank1", enabled=False, wandb=args).close()  # ranks other than 0 log nothing
    assert not (tmp_path / "rank1").exists() and not (tmp_path / "wandb").exists()
    def init(**kwargs):
        raise RuntimeError("No API key configured. Use `wandb login` to log in.\nTraceback details")

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))  # online, never logged in
    with pytest.raises(ValueError) as caught:
        MetricsLogger(tmp_path / "run", enabled=True, wandb=args)
    assert str(caught.value) == ("could not start the W&B run (No API key configured. Use `wandb login` to log in.); "
                                 "run `wandb login`, or log without a network with --metrics.wandb_mode offline")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing opened
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: import wandb raises ImportError
    with pytest.raises(ValueError) as caught:
        MetricsLogger(tmp_path, enabled=True, wandb=args)
    assert str(caught.value) == ("metrics.wandb = true needs the wandb package: pip install wandb (or set "
                                 "--metrics.wandb false)")


def test_first_nonfinite_names_layer_role_and_kind():
    model = small_gpt2()
    assert first_nonfinite(model) is None
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    model.lm_head.weight.grad[3, 4] = float("inf")
    assert first_nonfinite(model) == "lm_head grad (lm_head.weight)"
    with torch.no_grad():
        model.layers["3"].attn.k.weight[0, 7] = float("nan")
    assert first_nonfinite(model) == "layers.03 attn.k weight (layers.3.attn.k.weight)"
    model.layers["1"].mlp_norm.bias.grad[0] = float("-inf")  # earlier in model order than layer 3, but a grad:
    assert first_nonfinite(model) == "layers.03 attn.k weight (layers.3.attn.k.weight)"  # a bad weight is the cause
    with torch.no_grad():
        model.layers["3"].attn.k.weight[0, 7] = 0.0
    assert first_nonfinite(model) == "layers.01 bias grad (layers.1.mlp_norm.bias)"  # then grads in model order


@pytest.mark.parametrize("name,peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                       ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                                       ("NVIDIA GeForce RTX 4090", None)])
def test_peak_flops_by_device_name(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops(torch.device("cuda", 0)) == peak
    assert peak_flops(torch.device("cpu")) is None


def test_mfu_is_achieved_over_peak():
    # 124M-parameter model at 6N FLOPs/token, 400k tokens/s on an H100 SXM: 6 * 124e6 * 4e5 / 989e12.
    assert mfu(4e5, 6 * 124e6, 989e12) == pytest.approx(0.30091, rel=1e-4)
    with pytest.raises(ValueError, match="peak FLOP/s = 0"):
        mfu(4e5, 6 * 124e6, 0)


def test_cpu_peak_memory_covers_a_touched_allocation():
    block = torch.ones(64 * 2**20, dtype=torch.uint8)  # 64 MiB, every page written
    resident_gib = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    # The kernel folds per-thread RSS counters into the peak lazily (up to a few MiB behind): allow 8 MiB.
    assert resident_gib - 8 / 1024 <= peak_memory_gib(torch.device("cpu")) < 1024
    assert resident_gib >= block.numel() / 2**30
