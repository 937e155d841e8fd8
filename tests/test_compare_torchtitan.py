"""scripts/compare_torchtitan.py: on a real short initlab run (train.py on CPU) against torchtitan-style
TensorBoard events with known changes, and end to end against torchtitan's own trainer on a CPU.

The first tests write the torchtitan side with the real ``torch.utils.tensorboard.SummaryWriter`` as
torchtitan's TensorBoardLogger writes (``add_scalar(tag, value, step)`` under ``<dump_folder>/tb/<time>/``):
the initlab run's own values under torchtitan's loss tag and initlab's metric tags, changed by known
amounts that the script must find. The last runs torchtitan 0.2.2's trainer itself (tests/torchtitan_cpu_trainer.py:
three CUDA-only calls replaced) with the extension and initlab's batches, and initlab's train.py, in fp32.
"""

from __future__ import annotations

import json

import pytest
from torch.utils.tensorboard import SummaryWriter

from reporting.runs import load_run
from scripts.compare_torchtitan import INITLAB_LOSS, TORCHTITAN_LOSS, main
from tests.launch import python, torchtitan_beside_initlab

STEPS = 4
LOSS_SHIFT = 0.004  # added to every torchtitan loss
STD_SCALE = 1.001  # every torchtitan weight std
OUTLIER = ("weight_std/mlp.out/layer_01", 3, 1.03)  # (tag, step, factor): the largest relative difference
ACT_SCALE = 1.002  # every torchtitan activation statistic
ACT_OUTLIER = ("act_rms/residual/layer_00", 2, 0.9)  # after step 1: only the all-steps maximum sees it


pytestmark = pytest.mark.multiprocess  # every test runs train.py (and the last torchtitan's trainer) in processes


@pytest.fixture(scope="module")
def initlab_run(tmp_path_factory):
    """A 4-step llama debug run of train.py (2 layers, seq 32), every step logged."""
    base = tmp_path_factory.mktemp("runs")
    python(["train.py", "--config", "train_configs/debug.toml", "--model.n_layers", "2", "--training.seq_len", "32",
            "--training.global_batch_size", "4", "--tokenizer.max_vocab", "512", "--training.steps", str(STEPS),
            "--metrics.log_freq", "1", "--metrics.val_freq", "0", "--metrics.log_variance_stats", "true",
            "--data.cache_dir", str(base / "cache"),
            "--job.output_dir", str(base), "--job.run_name", "initlab", "--training.device", "cpu"],
           env={"OMP_NUM_THREADS": "1"}, timeout=300)
    return base / "initlab"


def write_torchtitan_events(folder, records: list[dict], skip_step1: bool = False) -> None:
    writer = SummaryWriter(str(folder))
    for record in records:
        step = record["step"]
        if not (skip_step1 and step == 1):
            writer.add_scalar(TORCHTITAN_LOSS, record[INITLAB_LOSS] + LOSS_SHIFT, step)
        for tag, value in record.items():
            if tag.startswith("weight_std/"):
                factor = OUTLIER[2] if (tag, step) == OUTLIER[:2] else STD_SCALE
                writer.add_scalar(tag, value * factor, step)
            elif tag.startswith(("act_rms/", "act_std/", "attn_logit_max/")):
                writer.add_scalar(tag, value * (ACT_SCALE if (tag, step) != ACT_OUTLIER[:2] else ACT_OUTLIER[2]), step)
    writer.add_scalar("weight_std/only_torchtitan", 1.0, 1)
    writer.close()


def test_comparison_finds_the_loss_shift_and_the_largest_std_difference(initlab_run, tmp_path):
    all_records = load_run(initlab_run).records
    assert [r["step"] for r in all_records] == list(range(0, STEPS + 1))  # step 0: the init, before any update
    assert INITLAB_LOSS not in all_records[0]
    records = all_records[1:]  # torchtitan logs from step 1
    write_torchtitan_events(tmp_path / "tt" / "tb" / "20261129-0800", records)
    out = tmp_path / "report"
    assert main(["--torchtitan", str(tmp_path / "tt" / "tb"), "--initlab", str(initlab_run), "--out", str(out),
                 "--steps", "2", "4", "50"]) == 0
    result = json.loads((out / "compare.json").read_text())
    step1 = result["step1_loss"]
    assert step1["initlab"] == records[0][INITLAB_LOSS]
    assert step1["torchtitan"] == pytest.approx(records[0][INITLAB_LOSS] + LOSS_SHIFT, rel=1e-7)  # float32 events
    assert step1["abs_diff"] == pytest.approx(LOSS_SHIFT, rel=1e-3)
    assert sorted(result["loss_at"]) == ["2", "4"]  # step 50 was not run
    assert result["loss_curve"]["steps"] == list(range(1, STEPS + 1))
    worst = result["weight_std"]["max"]
    assert (worst["tag"], worst["step"]) == OUTLIER[:2] and worst["rel_diff"] == pytest.approx(0.03, rel=1e-4)
    assert result["weight_std"]["max_per_role"]["attn.q"] == pytest.approx(STD_SCALE - 1, rel=1e-3)
    assert result["weight_std"]["tags_compared"] == len([t for t in records[0] if t.startswith("weight_std/")])
    assert result["weight_std"]["only_torchtitan"] == ["weight_std/only_torchtitan"]
    assert result["within_tolerance"] == {"step1_loss": True, "weight_std": False}  # defaults 0.01, 0.01
    activations = result["activations"]
    assert activations["tags_compared"] == len([t for t in records[0] if t.startswith(("act_", "attn_logit"))]) == 12
    assert activations["step1"]["max"]["rel_diff"] == pytest.approx(ACT_SCALE - 1, rel=1e-3)
    assert activations["step1"]["max"]["step"] == 1
    assert (activations["all_steps"]["max"]["tag"], activations["all_steps"]["max"]["step"]) == ACT_OUTLIER[:2]
    assert activations["all_steps"]["max"]["rel_diff"] == pytest.approx(0.1, rel=1e-4)
    assert "| 1 | " in (out / "compare.md").read_text() and (out / "weight_std.png").stat().st_size > 10_000


def test_bad_inputs_are_one_line_errors(initlab_run, tmp_path, capsys):
    records = load_run(initlab_run).records[1:]  # torchtitan logs from step 1
    write_torchtitan_events(tmp_path / "two" / "a", records)
    write_torchtitan_events(tmp_path / "two" / "b", records)
    write_torchtitan_events(tmp_path / "no_step1", records, skip_step1=True)
    cases = {
        tmp_path / "two": "error: --torchtitan {p} holds the events of 2 runs ({p}/a, ...); pass one run's folder",
        tmp_path / "no_step1": "error: the torchtitan run has no loss_metrics/global_avg_loss at step 1; log step 1 "
                               "(metrics.log_freq = 1) and pass the run's own folder",
        tmp_path / "missing": "error: --torchtitan {p} does not exist; pass torchtitan's <dump_folder>/tb folder",
    }
    for folder, message in cases.items():
        assert main(["--torchtitan", str(folder), "--initlab", str(initlab_run), "--out", str(tmp_path / "o")]) == 2
        assert capsys.readouterr().err == message.format(p=folder) + "\n"
    assert not (tmp_path / "o").exists()


def test_torchtitans_trainer_with_the_extension_and_train_py_agree_in_fp32(tmp_path):
    """Same shape (initlab_debug / initlab's debug Llama), init, seed, batches, AdamW, clipping and lr schedule as the
    GPU comparison (its two TOMLs, shrunk): in fp32 on a CPU the two trainers agree to float32 rounding."""
    from components.config import Data, Tokenizer
    from components.data import ensure_dataset
    from components.tokenizer import build_tokenizer

    data = Data(dataset="embedded", cache_dir=str(tmp_path / "cache"), val_fraction=0.0)
    token_dir = str(ensure_dataset(data, build_tokenizer(Tokenizer(max_vocab=4096)), max_bytes=300_000))
    # 2 warm-up steps of 4: torchtitan shortens a warm-up longer than the run to the run, initlab does not.
    shared = {"training.seq_len": 64, "training.local_batch_size": 2, "training.global_batch_size": 4,
              "training.steps": 4, "lr_scheduler.warmup_steps": 2}
    flags = [f"--{k}={v}" for k, v in shared.items()]
    torchtitan_beside_initlab(token_dir, tmp_path / "torchtitan", tmp_path, flags, "initlab_debug")
    out = tmp_path / "report"
    assert main(["--torchtitan", str(tmp_path / "torchtitan" / "tb"), "--initlab", str(tmp_path / "initlab"),
                 "--out", str(out), "--steps", "2", "3", "4"]) == 0
    result = json.loads((out / "compare.json").read_text())
    assert result["loss_curve"]["steps"] == [1, 2, 3, 4]
    for titan_loss, initlab_loss in zip(result["loss_curve"]["torchtitan"], result["loss_curve"]["initlab"]):
        assert titan_loss == pytest.approx(initlab_loss, rel=1e-6)  # float32 events; 4 steps of AdamW
    assert result["weight_std"]["tags_compared"] == 37 and result["weight_std"]["max"]["rel_diff"] < 1e-6
    assert result["weight_std"]["only_torchtitan"] == result["weight_std"]["only_initlab"] == []
    assert result["activations"]["tags_compared"] == 22 and result["activations"]["all_steps"]["max"]["rel_diff"] < 1e-5
