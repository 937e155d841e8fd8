"""benchmarks/step_floor.py: the floors of a step's parts from the model's real shapes, against hand counts."""

from __future__ import annotations

import pytest

from benchmarks import step_floor
from benchmarks.step_floor import FloorError, Shape, floors, gpu_specs, parse_measured, shape_of


def test_llama_1b_shape_is_counted_from_the_built_model():
    shape = shape_of("llama_1b")
    per_layer = 2 * 2048 * 2048 + 2 * 512 * 2048 + 3 * 2048 * 8192  # q, out; k, v (8 of 32 heads); gate, up, out
    head = 128256 * 2048
    assert shape.matmul_weights == 16 * per_layer + head == 1_235_746_816
    assert shape.trainable == 16 * per_layer + 2 * head + (2 * 16 + 1) * 2048  # + embedding, norms
    assert (shape.tokens, shape.micro_batches, shape.layers, shape.seq_len) == (8 * 2048, 2, 16, 2048)
    assert (shape.attention_width, shape.ffn, shape.vocab) == (2048, 8192, 128256)
    # torchtitan's convention: 6 x (every parameter but the embedding) + 12 L H Q S
    assert shape.model_flops_per_token == 6 * (shape.trainable - head) + 12 * 16 * 2048 * 2048


def test_floors_are_the_flops_at_the_peak_and_the_bytes_at_the_bandwidth():
    shape = Shape(tokens=10, micro_batches=2, layers=3, seq_len=5, attention_width=4, ffn=7, vocab=11,
                  matmul_weights=100, trainable=1000, model_flops_per_token=650)
    got = floors(shape, peak_flops=1e3, bandwidth=1e3)  # per millisecond: 1 FLOP, 1 byte
    assert {part: ms for part, (ms, _) in got.items()} == pytest.approx({
        "matmul": 6 * 100 * 20, "attention": 6 * 3 * 5 * 4 * 20,
        "swiglu_forward": 3 * 10 * 7 * 2 * 3 * 2, "swiglu_backward": 5 * 10 * 7 * 2 * 3 * 2,
        "cross_entropy": 3 * 10 * 11 * 2 * 2, "adamw": 28 * 1000, "clipping": 12 * 1000})
    text = step_floor.report(shape, "X", 1e3, 1e3, {"matmul": 24000.0, "attention": 14400.0, "adamw": 30000.0}, 90000.0)
    assert "| matmul | 0.0 TFLOP | 12000.0 | 24000.0 | 50 % |" in text
    floor_sum = 12000 + 7200 + 2520 + 4200 + 1320 + 28000 + 12000
    assert f"every part at its floor: {100 * 650 * 20 / (floor_sum):.1f} %" in text
    assert f"no idle time: {100 * 650 * 20 / (floor_sum + 12000 + 7200):.1f} %" in text
    assert f"floor, no idle time: {100 * 650 * 20 / (90000 - 2000):.1f} % (88000.0 ms per step); the busy time outside the measured parts: 21600.0 ms" in text


def test_gpu_names_resolve_most_specific_first():
    assert gpu_specs("NVIDIA H100 80GB HBM3") == ("H100", 989e12, 3.35e12)
    assert gpu_specs("NVIDIA H100 PCIe")[0] == "H100 PCIe" and gpu_specs("NVIDIA H200")[2] == 4.8e12
    with pytest.raises(FloorError, match="no peak and bandwidth known; fix: name one of H100 NVL"):
        gpu_specs("MI300X")


@pytest.mark.parametrize("items, message", [
    (["matmul"], "expected PART=MS"), (["warp=3"], "PART one of matmul"), (["adamw=0"], "MS > 0"),
    (["adamw=1", "adamw=2"], "adamw given twice"),
])
def test_bad_measured_times_are_refused(items, message):
    with pytest.raises(FloorError, match=message):
        parse_measured(items)
    assert parse_measured(["adamw=16.66", "matmul=344.2"]) == {"adamw": 16.66, "matmul": 344.2}


def test_the_cli_prints_one_line_and_exits_2_on_bad_input(capsys):
    assert step_floor.main(["--gpu", "TPU"]) == 2
    assert step_floor.main(["--model", "gpt5"]) == 2
    assert step_floor.main(["--measured", "matmul=300", "--busy", "200"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "--gpu 'TPU'" in err[0] and "--model 'gpt5' is unknown" in err[1]
    assert "--busy 200.0: not above the measured parts' sum (300.0 ms)" in err[2]
    assert step_floor.main(["--model", "debug", "--gpu", "H200", "--measured", "matmul=1", "--measured",
                            "attention=1"]) == 0
    assert "matmul and attention as measured" in capsys.readouterr().out
