"""scripts/plot_layer_std.py: std figures from metrics.jsonl, sparsity statistics from an export or a DCP checkpoint.

The expected statistics are recomputed here with numpy from the tensors the test itself wrote,
and the "init" tensors are drawn here through the config system and the model's own
``init_weights``, so the script's re-created init is checked too.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file

from components.build import model_args_from_config
from components.config import load_config
from components.run_dir import RunDir
from init_schemes import WeightInitializer
from models import build_model
from scripts import plot_layer_std
from tests.launch import python
from tests.test_compare_runs import GPT2_ROLES, GPT2_RUN, PNG_MAGIC, gpt2_records, write_run

QKV = ("attn.q", "attn.k", "attn.v")
N_LAYERS = 3


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    cli = [*GPT2_RUN, "--init.scheme", "normal", "--init.base_std", "0.05", "--job.seed", "7"]
    return write_run(tmp_path, "qkv_run", cli, gpt2_records())


def initial_state(run: Path) -> dict[str, torch.Tensor]:
    """The run's initial weights, drawn as training does (meta build, to_empty, init_weights)."""
    cfg, _ = load_config(["--config", str(run / "config.toml")])
    args = model_args_from_config(cfg, cfg.model.vocab_size)
    with torch.device("meta"):
        model = build_model(args)
    model.to_empty(device="cpu")
    model.init_weights(WeightInitializer(cfg.init, args, cfg.job.seed), buffer_device=torch.device("cpu"))
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def trained_like(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """'Final' weights: a third of the entries zeroed and a few made 5x larger (sparser, heavier tails)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, tensor in state.items():
        draw = torch.rand(tensor.shape, generator=gen)
        out[name] = torch.where(draw < 1 / 3, 0.0, torch.where(draw > 0.97, 5 * tensor, tensor))
    return out


def numpy_stats(init: np.ndarray, end: np.ndarray) -> dict[str, float]:
    def kurtosis(w: np.ndarray) -> float:
        centered = w - w.mean()
        return float(np.mean(centered**4) / np.mean(centered**2) ** 2 - 3)

    eps_rel = 0.1 * float(np.std(init))
    return {"std_init": float(np.std(init)), "std_end": float(np.std(end)), "eps_rel": eps_rel,
            "frac_below_eps_rel_init": float(np.mean(np.abs(init) < eps_rel)),
            "frac_below_eps_rel_end": float(np.mean(np.abs(end) < eps_rel)),
            "frac_below_eps_abs_init": float(np.mean(np.abs(init) < 1e-3)),
            "frac_below_eps_abs_end": float(np.mean(np.abs(end) < 1e-3)),
            "excess_kurtosis_init": kurtosis(init), "excess_kurtosis_end": kurtosis(end)}


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def assert_rows_match(rows: list[dict], init: dict, end: dict) -> None:
    expected_names = [f"layers.{layer}.{role}.weight" for layer in range(N_LAYERS) for role in QKV]
    assert [row["name"] for row in rows] == expected_names
    for row in rows:
        expected = numpy_stats(init[row["name"]].double().numpy(), end[row["name"]].double().numpy())
        for column, value in expected.items():
            assert float(row[column]) == pytest.approx(value, rel=1e-9, abs=1e-15), (row["name"], column)


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


def test_std_figures_without_checkpoint(run_dir, capsys):
    assert plot_layer_std.main([str(run_dir)]) == 0
    assert_png(run_dir / "plots" / "std_heatmap.png")
    assert_png(run_dir / "plots" / "std_lines.png")
    for name in ("std_heatmap.pdf", "std_lines.pdf"):
        assert (run_dir / "plots" / name).read_bytes()[:4] == b"%PDF"
    assert not (run_dir / "plots" / "sparsity.csv").exists()
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "sparsity" in line] == [
        f"note: sparsity statistics need a checkpoint: no complete checkpoints/step_<N>/ in {run_dir} "
        "(train with --checkpoint.enable true or run scripts/export.py)"]


def test_sparsity_from_safetensors_export(run_dir, tmp_path, capsys):
    init = initial_state(run_dir)
    end = trained_like(init, seed=1)
    (run_dir / "export").mkdir()
    save_file({f"model.{name}": t.contiguous() for name, t in end.items()}, run_dir / "export" / "model.safetensors")
    out = tmp_path / "plots"
    assert plot_layer_std.main([str(run_dir), "--out", str(out)]) == 0
    assert_rows_match(read_csv(out / "sparsity.csv"), init, end)
    summary = (out / "sparsity.md").read_text()
    assert capsys.readouterr().out.strip() == summary.strip()
    # The summary row of attn.q is the layer mean of the per-layer numpy values (4 significant digits).
    q_stats = [numpy_stats(init[f"layers.{i}.attn.q.weight"].double().numpy(),
                           end[f"layers.{i}.attn.q.weight"].double().numpy()) for i in range(N_LAYERS)]
    cells = [f"{np.mean([s[c] for s in q_stats]):.4g}" for c in plot_layer_std.SUMMARY_COLUMNS]
    assert f"| attn.q | {N_LAYERS} | " + " | ".join(cells) + " |" in summary
    assert f"`{run_dir / 'export' / 'model.safetensors'}`" in summary
    # Zeroing a third of the entries makes the end weights measurably sparser than the init.
    for s in q_stats:
        assert s["frac_below_eps_rel_end"] > s["frac_below_eps_rel_init"] + 0.25
        assert s["excess_kurtosis_end"] > s["excess_kurtosis_init"] + 1


def save_dcp(state: dict[str, torch.Tensor], path: Path) -> None:
    """A checkpoint laid out as the trainer's: model tensors under 'model', plus optimizer/train state."""
    optimizer = {"state": {name: {"exp_avg": torch.zeros_like(t)} for name, t in list(state.items())[:2]}}
    with warnings.catch_warnings():  # "no process group: saving in a single process" is the intent here
        warnings.simplefilter("ignore")
        dcp.save({"model": state, "optimizer": optimizer, "train_state": {"step": 1}}, checkpoint_id=str(path),
                 no_dist=True)


def test_sparsity_from_newest_complete_dcp_checkpoint(run_dir, tmp_path):
    init = initial_state(run_dir)
    qkv = {n: t for n, t in init.items() if any(f".{role}." in n for role in QKV)}
    older, newest = trained_like(qkv, seed=2), trained_like(qkv, seed=3)
    save_dcp(older, run_dir / "checkpoints" / "step_20")
    save_dcp(newest, run_dir / "checkpoints" / "step_40")
    (run_dir / "checkpoints" / "step_60").mkdir()  # a save killed before its .metadata: ignored
    out = tmp_path / "plots"
    assert plot_layer_std.main([str(run_dir), "--out", str(out), "--roles", "attn.q, attn.k,attn.v"]) == 0
    assert_rows_match(read_csv(out / "sparsity.csv"), init, newest)


def test_checkpoint_of_another_model_is_an_error(run_dir, tmp_path, capsys):
    save_dcp({"layers.0.attn.q.weight": torch.zeros(32, 32)}, run_dir / "checkpoints" / "step_10")
    assert plot_layer_std.main([str(run_dir), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == (f"error: {run_dir / 'checkpoints' / 'step_10'} has no tensor 'layers.0.attn.k.weight' (nor "
                   "'model.layers.0.attn.k.weight'); it is not a checkpoint of this run's model")


def test_statistics_of_known_tensors():
    two_point = torch.tensor([-1.0, 1.0] * 50)
    assert plot_layer_std.excess_kurtosis(two_point) == -2.0  # m4 / m2^2 = 1
    spike = torch.tensor([0.0] * 8 + [1.0, -1.0])  # m2 = 0.2, m4 = 0.2 -> 0.2 / 0.04 - 3 = 2
    assert plot_layer_std.excess_kurtosis(spike) == pytest.approx(2.0, rel=1e-12)
    assert math.isnan(plot_layer_std.excess_kurtosis(torch.zeros(5)))
    assert plot_layer_std.fraction_below(torch.tensor([0.0, 0.05, -0.2, 0.3]), 0.1) == 0.5
    zero_init = plot_layer_std.sparsity_row("layers.0.attn.out.weight", torch.zeros(4, 4), torch.ones(4, 4), 0.1, 1e-3)
    assert math.isnan(zero_init["frac_below_eps_rel_init"]) and zero_init["frac_below_eps_abs_init"] == 1.0


def test_layer_std_matrix_feeds_heatmap_edges():
    assert plot_layer_std.step_edges([1, 10, 20]).tolist() == [-3.5, 5.5, 15.0, 25.0]
    assert plot_layer_std.step_edges([5]).tolist() == [4.5, 5.5]


@pytest.mark.multiprocess
def test_bad_inputs_exit_2(run_dir, tmp_path, capsys):
    cases = {
        "--roles mlp.gate": ([str(run_dir), "--roles", "mlp.gate", "--out", str(tmp_path / "a")],
                             f"has per-layer std for {', '.join(GPT2_ROLES)}; pick from those"),
        "no metrics": ([str(tmp_path / "absent")], "does not exist"),
        "bad eps": ([str(run_dir), "--rel-eps", "0"], "must both be > 0"),
    }
    for args, phrase in cases.values():
        assert plot_layer_std.main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error:") and phrase in err
    (run_dir / "metrics.jsonl").unlink()
    proc = python(["scripts/plot_layer_std.py", str(run_dir)], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {run_dir / 'metrics.jsonl'} is missing; pass a run directory written "
                                   "by train.py (outputs/<run_name>/) that has logged at least one step")
    assert not (run_dir / "plots").exists()


def test_variance_heatmap_rows_are_depths_with_the_embedding_first(tmp_path):
    records = [{"step": 1, "act_rms/residual/embedding": 0.5, "act_rms/residual/layer_00": 1.0,
                "act_rms/residual/layer_01": 2.0, "attn_logit_max/layer_00": 3.0},
               {"step": 3, "act_rms/residual/embedding": 0.5, "act_rms/residual/layer_00": 1.5,
                "act_rms/residual/layer_01": None}]
    steps, depths, values = plot_layer_std.depth_matrix(records, "act_rms/residual")
    assert steps == [1, 3] and depths == [-1, 0, 1]
    np.testing.assert_array_equal(values, [[0.5, 0.5], [1.0, 1.5], [2.0, math.nan]])
    steps, depths, values = plot_layer_std.depth_matrix(records, "attn_logit_max")
    assert steps == [1] and depths == [0] and values.tolist() == [[3.0]]
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    run = RunDir(tmp_path / "r")
    assert plot_layer_std.plot_variance_heatmaps(run, ["attn.q"], tmp_path / "v.png")
    assert (tmp_path / "v.png").read_bytes()[:8] == PNG_MAGIC
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "metrics.jsonl").write_text('{"step": 1}\n')
    empty = RunDir(tmp_path / "e")
    assert not plot_layer_std.plot_variance_heatmaps(empty, [], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_std_lines_legend_for_few_layers_colour_bar_for_many(tmp_path, monkeypatch):
    """3 layers: one legend entry per layer, no colour bar; 12 layers: a colour bar, no legend."""
    drawn = {}

    def keep(fig, path, **kwargs):
        drawn[path.name] = ([ax.get_legend() for ax in fig.axes], [ax.get_label() for ax in fig.axes])
        return [path]

    monkeypatch.setattr(plot_layer_std, "save_figure", keep)
    for n_layers in (3, 12):
        records = [{"step": s, **{f"weight_std/attn.q/layer_{layer:02d}": 0.02 + s * 1e-4 / (layer + 1)
                                  for layer in range(n_layers)}} for s in (1, 10)]
        (tmp_path / f"r{n_layers}").mkdir()
        (tmp_path / f"r{n_layers}" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        plot_layer_std.plot_layer_lines(RunDir(tmp_path / f"r{n_layers}"), ["attn.q"], tmp_path / f"l{n_layers}.png")
    legends, labels = drawn["l3.png"]
    assert [t.get_text() for t in legends[0].get_texts()] == ["layer 0", "layer 1", "layer 2"]
    assert "<colorbar>" not in labels and len(labels) == 2
    legends, labels = drawn["l12.png"]
    assert all(legend is None for legend in legends) and "<colorbar>" in labels
