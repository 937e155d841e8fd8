"""benchmarks/bench_scaling.py and the 8-rank llama_1b family on CPU (gloo): the multi-GPU path, shrunk."""

from __future__ import annotations

import json
import math

import pytest

from tests.launch import python, torchrun

pytestmark = pytest.mark.multiprocess  # every test here launches training processes

TINY = ["--model.n_layers", "2", "--training.seq_len", "32", "--tokenizer.max_vocab", "512",
        "--model.vocab_size", "576", "--training.device", "cpu", "--compile.enable", "false"]


def test_weak_scaling_script_reports_every_world_size(tmp_path):
    proc = python(["benchmarks/bench_scaling.py", "--config", "train_configs/debug.toml", "--ranks", "1,2",
                   "--local-batch", "2", "--steps", "6", "--out", str(tmp_path), "--device-name", "cpu-test",
                   "--", *TINY], env={"OMP_NUM_THREADS": "1"})
    record = json.loads((tmp_path / "weak_scaling_cpu-test.json").read_text())
    rows = record["results"]
    assert [r["ranks"] for r in rows] == [1, 2]
    assert [r["global_batch_sequences"] for r in rows] == [2, 4]  # fixed per-rank batch
    assert rows[0]["efficiency"] == 1.0
    assert all(r["tokens_per_sec_per_device"] > 0 for r in rows)
    assert rows[1]["efficiency"] == rows[1]["tokens_per_sec_per_device"] / rows[0]["tokens_per_sec_per_device"]
    assert "wrote" in proc.stdout


def test_bad_config_path_is_one_line_error(tmp_path):
    proc = python(["benchmarks/bench_scaling.py", "--config", "train_configs/nope.toml", "--out", str(tmp_path)],
                  check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: config train_configs/nope.toml not found; pass --config train_configs/..."
    assert list(tmp_path.iterdir()) == []


def test_llama_1b_family_runs_on_eight_ranks(tmp_path):
    """The 8-GPU ablation config, shrunk to the debug flavor, under a real 8-rank gloo group: FSDP2 over 8
    shards, gradient accumulation (16 sequences = 8 ranks x 2 passes), validation and two checkpoints."""
    torchrun(["train.py", "--config", "train_configs/llama_1b/mitchell.toml", "--model.flavor", "debug", *TINY,
              "--training.global_batch_size", "16", "--training.local_batch_size", "1", "--training.steps", "4",
              "--metrics.log_freq", "2", "--metrics.val_freq", "4", "--metrics.val_batches", "1",
              "--checkpoint.interval", "2", "--job.output_dir", str(tmp_path)], nproc=8)
    run_dir = tmp_path / "llama_1b" / "mitchell"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]  # after step 0
    assert [r["step"] for r in records] == [1, 2, 4]
    # mitchell's d^-0.5 head on normalized features gives logits of std ~1: loss ~ ln(513) + 1/2 at init.
    assert abs(records[0]["loss/train"] - (math.log(513) + 0.5)) < 0.3, records[0]["loss/train"]
    assert all(math.isfinite(r["loss/train"]) for r in records)
    assert "loss/val" in records[-1]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_2", "step_4"]
