"""Tests of scripts/paper: activation constants, variance propagation, the sigma sweep, Kaiming vs Xavier.

The science checks compare measurements with formulas: c/d by quadrature vs known values, an
independent trapezoid rule and the library's c_phi (init_schemes.schemes); the per-input statistics
of the end-to-end ratios on planted data; the forward second moment of a 50-layer, width-512 random ReLU MLP vs the
mean-field recursion; the regime labels of the quick sweep at sigma = 1e-4 and 1e1.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import math

import numpy as np
import pytest
import torch

from experiments import mlp as common
from init_schemes.meanfield import ACTIVATIONS, activation_moments, gaussian_expectation
from scripts.paper import kaiming_vs_xavier, mlp_std_sweep, variance_propagation
from tests.launch import python

MAX_FIGURE_BYTES = 200_000


def read_csv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------- activation constants
def test_relu_and_gelu_constants_match_the_known_values():
    assert activation_moments("relu") == pytest.approx((0.5, 0.5), abs=1e-9)
    c, d = activation_moments("gelu")  # GPT-2's tanh GELU (exact erf GELU: 0.425221, 0.455851)
    assert c == pytest.approx(0.425194, abs=1e-6) and d == pytest.approx(0.455818, abs=1e-6)
    assert activation_moments("linear") == pytest.approx((1.0, 1.0), abs=1e-9)


@pytest.mark.parametrize("name", ["linear", "relu", "tanh", "gelu", "silu"])
def test_c_phi_and_the_kaiming_sigma_are_the_librarys(name):
    from init_schemes.schemes import gaussian_second_moment, kaiming_gain

    # the q-dependent quadrature here and the library's Simpson rule at q = 1: two methods, one number
    assert activation_moments(name)[0] == pytest.approx(gaussian_second_moment(name), rel=1e-9)
    assert variance_propagation.moment_table((name,))[name]["c"] == gaussian_second_moment(name)
    assert variance_propagation.scheme_sigma("kaiming", name, 512) == kaiming_gain(name) / math.sqrt(512)


@pytest.mark.parametrize("name", ["linear", "relu", "tanh", "gelu", "silu"])
def test_quadrature_agrees_with_a_midpoint_rule_and_dphi_is_the_derivative(name):
    act = ACTIVATIONS[name]
    spacing = 1e-3
    grid = -12 + spacing * (np.arange(24_000) + 0.5)  # cell midpoints: ReLU's jump at 0 sits on a cell edge
    weight = np.exp(-0.5 * grid**2) / math.sqrt(2 * math.pi) * spacing
    c, d = activation_moments(name)
    assert sum(act.phi(u) ** 2 * w for u, w in zip(grid, weight)) == pytest.approx(c, abs=1e-6)
    assert sum(act.dphi(u) ** 2 * w for u, w in zip(grid, weight)) == pytest.approx(d, abs=1e-6)
    for u in (-2.3, -0.7, 0.4, 1.9):  # away from ReLU's kink
        numeric = (act.phi(u + 1e-6) - act.phi(u - 1e-6)) / 2e-6
        assert act.dphi(u) == pytest.approx(numeric, abs=1e-6)
    torch_phi = act.torch_phi(torch.tensor([-1.5, 0.3, 2.0], dtype=torch.float64))
    assert torch_phi.tolist() == pytest.approx([act.phi(-1.5), act.phi(0.3), act.phi(2.0)], abs=1e-12)


def test_gaussian_expectation_holds_at_extreme_variances():
    for q in (1e-150, 1e-3, 1e3, 1e150):
        assert activation_moments("relu", q)[0] == pytest.approx(q / 2, rel=1e-8)
    assert activation_moments("gelu", 1e-150)[0] / 1e-150 == pytest.approx(0.25, rel=1e-6)  # gelu(u) ~ u/2
    assert activation_moments("gelu", 1e150)[0] / 1e150 == pytest.approx(0.5, rel=1e-6)  # gelu(u) ~ relu(u)
    assert activation_moments("tanh", 1e150)[0] == pytest.approx(1.0, rel=1e-9)
    # E[sech^4(sqrt(q) z)] -> (integral of sech^4 = 4/3) * pdf(0) / sqrt(q) for large q
    assert activation_moments("tanh", 1e150)[1] == pytest.approx(4 / 3 / math.sqrt(2 * math.pi * 1e150), rel=1e-6)
    with pytest.raises(ValueError, match="positive"):
        gaussian_expectation(lambda u: u, q=0.0)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        activation_moments("swish")


def test_moment_table_gains_and_fixed_point_slopes():
    table = variance_propagation.moment_table()
    assert table["relu"]["kaiming_gain_sq"] == pytest.approx(2.0)
    assert table["relu"]["backward_growth_per_layer_kaiming"] == pytest.approx(1.0)
    assert table["tanh"]["backward_growth_per_layer_kaiming"] == pytest.approx(0.46440 / 0.39429, rel=1e-4)
    assert table["relu"]["fixed_point_slope"] == pytest.approx(1.0, abs=1e-6)  # homogeneous: neutral
    assert table["tanh"]["fixed_point_slope"] < 1 < table["gelu"]["fixed_point_slope"]


def test_predicted_relu_moments_follow_the_closed_form():
    width, depth, sigma = 512, 50, 0.05
    forward, backward = variance_propagation.predicted_moments("relu", sigma, width, depth)
    per_layer = width * sigma**2 / 2
    assert forward == pytest.approx(per_layer ** np.arange(depth + 1), rel=1e-8)
    assert backward == pytest.approx(per_layer ** np.arange(depth, -1, -1), rel=1e-8)


# ----------------------------------------------------------------------------- measured propagation (CLI)
@pytest.fixture(scope="module")
def quick_propagation(tmp_path_factory):
    """One `--quick --json --out` run shared by the tests below: (parsed JSON, output folder)."""
    out = tmp_path_factory.mktemp("propagation")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert variance_propagation.main(["--quick", "--json", "--out", str(out)]) == 0
    return json.loads(stdout.getvalue()), out


@pytest.mark.slow
def test_kaiming_keeps_the_forward_moment_while_small_and_large_sigma_vanish_and_explode(quick_propagation):
    result, _ = quick_propagation
    setup = result["measured"]["setup"]
    assert setup["depth"] >= 50 and setup["width"] >= 512 and setup["seeds"] >= 4
    relu = result["measured"]["relu"]
    assert 0.5 < relu["kaiming"]["forward_ratio_measured"] < 2.0
    assert 0.5 < relu["kaiming"]["backward_ratio_measured"] < 2.0
    assert relu["small"]["forward_ratio_measured"] < 1e-100  # predicted (512e-6/2)^50 = 2.6e-180
    assert relu["large"]["forward_ratio_measured"] > 1e100  # predicted (512/2)^50 = 2.6e+120
    assert relu["xavier"]["forward_ratio_predicted"] == pytest.approx(0.5**50)
    for scheme in variance_propagation.SCHEMES:  # measured within a factor 3 of the mean-field value
        for way in ("forward", "backward"):
            ratio = relu[scheme][f"{way}_ratio_measured"] / relu[scheme][f"{way}_ratio_predicted"]
            assert 1 / 3 < ratio < 3, (scheme, way, ratio)
    assert result["gelu"]["c"] == pytest.approx(0.4252, abs=1e-3)
    kaiming = relu["kaiming"]  # per-seed ratios: geometric mean inside its interval and the seed range
    for way in ("forward", "backward"):
        assert kaiming[f"{way}_ratio_ci95_low"] < kaiming[f"{way}_ratio_geomean"] < kaiming[f"{way}_ratio_ci95_high"]
        assert kaiming[f"{way}_ratio_seed_min"] <= kaiming[f"{way}_ratio_geomean"] <= kaiming[f"{way}_ratio_seed_max"]
        assert 0 <= kaiming[f"{way}_seeds_within_10pct"] <= setup["seeds"]
    assert "silu" in variance_propagation.FULL.activations and variance_propagation.FULL.seeds >= 5


def test_per_seed_ratio_summary_by_hand():
    forward = np.array([[[1.0, 2.0]], [[1.0, 0.5]], [[1.0, 1.05]], [[1.0, 1.0]]])  # [seeds, 1 input, layers]
    backward = np.array([[[3.0, 1.0]]] * 4)  # b_0 / b_L = 3 for every seed
    curves = variance_propagation.Curves("relu", "kaiming", 0.1, forward, backward, np.ones(2), np.ones(2))
    row = curves.summary()
    assert row["forward_ratio_measured"] == pytest.approx(4.55 / 4)  # ratio of the seed means
    assert row["forward_ratio_geomean"] == pytest.approx(1.05 ** 0.25)  # exp(mean(ln 2, -ln 2, ln 1.05, 0))
    assert (row["forward_ratio_seed_min"], row["forward_ratio_seed_max"]) == (0.5, 2.0)
    assert row["forward_seeds_within_10pct"] == 2
    assert row["backward_ratio_geomean"] == pytest.approx(3.0) and row["backward_seeds_within_10pct"] == 0
    assert row["backward_ratio_ci95_low"] == pytest.approx(3.0) == row["backward_ratio_ci95_high"]


def test_input_ratio_stats_on_planted_ratios():
    stats = variance_propagation.input_ratio_stats(np.arange(1.0, 102.0))  # 1..101: quantiles by hand
    assert (stats["p10"], stats["median"], stats["p90"]) == pytest.approx((11.0, 51.0, 91.0))
    assert stats["vanish_fraction"] == 0.0 == stats["explode_fraction"]
    # the thresholds are strict: exactly 1e-3 and 1e3 count as neither
    edges = variance_propagation.input_ratio_stats(np.array([1e-3, 9.99e-4, 1e3, 1.001e3, 1.0]))
    assert (edges["vanish_fraction"], edges["explode_fraction"]) == (0.2, 0.2)
    with pytest.raises(ValueError, match="1-d array"):
        variance_propagation.input_ratio_stats(np.ones((2, 3)))


def test_a_few_exploding_inputs_carry_the_mean_but_not_the_per_input_statistics():
    """Planted GELU-like seeds: 60 of 64 inputs vanish (1e-7), 4 explode (1e6). The mean over inputs says
    'exploded by 6e4'; the per-input median says 'vanished', with the fractions 60/64 and 4/64."""
    seeds, inputs = 3, 64
    final = np.full((seeds, inputs), 1e-7)
    final[:, :4] = 1e6
    final[2, 4:40] = 2.0  # seed 2: 4 explode, 36 stay near 1 (at 2), 24 vanish, so its median is 2
    forward = np.stack([np.ones((seeds, inputs)), final], axis=-1)  # [seeds, inputs, 2 layers], q_0 = 1
    backward = np.stack([final, np.ones((seeds, inputs))], axis=-1)  # b_0 / b_L = the same ratios
    curves = variance_propagation.Curves("gelu", "kaiming", 0.07, forward, backward, np.ones(2), np.ones(2))
    row = curves.summary()
    assert row["forward_ratio_measured"] == pytest.approx((3 * 4e6 + 36 * 2.0 + 24e-7 + 2 * 60e-7) / (3 * 64))
    assert row["forward_ratio_measured"] > 1e4  # the mean over inputs: "exploded"
    seed_rows = row["per_seed"]
    assert [r["forward_median"] for r in seed_rows] == pytest.approx([1e-7, 1e-7, 2.0])
    assert [r["forward_vanish_fraction"] for r in seed_rows] == pytest.approx([60 / 64, 60 / 64, 24 / 64])
    assert [r["forward_explode_fraction"] for r in seed_rows] == pytest.approx([4 / 64] * 3)
    assert (row["forward_input_median_seed_min"], row["forward_input_median_seed_max"]) == pytest.approx((1e-7, 2.0))
    assert row["forward_input_median_pooled"] == pytest.approx(1e-7)
    assert row["forward_input_vanish_fraction_pooled"] == pytest.approx(144 / 192)
    assert row["forward_input_explode_fraction_pooled"] == pytest.approx(12 / 192)
    assert row["backward_input_vanish_fraction_pooled"] == row["forward_input_vanish_fraction_pooled"]
    quantiles = curves.input_quantiles("forward")  # [3 quantiles, 2 layers]; layer 0 is 1 for every input
    assert quantiles[:, 0] == pytest.approx([1.0, 1.0, 1.0]) and quantiles[1, 1] == pytest.approx(1e-7)


def test_measured_per_input_moments_average_to_the_seed_moment():
    forward, backward = variance_propagation.measure_moments("gelu", 0.09, width=64, depth=6, batch=8, seeds=2)
    assert forward.shape == backward.shape == (2, 8, 7)
    torch.manual_seed(1)  # seed 1 by hand: the mean over all units and inputs of h_l^2
    h = torch.randn(8, 64, dtype=torch.float64)
    for _ in range(6):
        h = torch.nn.functional.gelu(h, approximate="tanh") @ (torch.randn(64, 64, dtype=torch.float64) * 0.09).T
    assert forward[1, :, -1] == pytest.approx(h.pow(2).mean(dim=1).numpy(), rel=1e-12)
    assert np.all(backward[:, :, -1] > 0) and np.all(forward[:, :, 0] > 0)


@pytest.mark.slow
def test_propagation_writes_csv_and_a_small_figure(quick_propagation):
    _, out = quick_propagation
    rows = read_csv(out / "variance_propagation.csv")
    assert len(rows) == len(variance_propagation.SCHEMES) * 51
    first = next(r for r in rows if r["scheme"] == "kaiming" and r["layer"] == "0")
    assert float(first["forward_predicted"]) == 1.0
    assert float(first["forward_measured"]) == pytest.approx(1.0, rel=0.1)  # h_0 ~ N(0, 1)
    quick = variance_propagation.QUICK
    seed_rows = read_csv(out / "variance_propagation_seeds.csv")
    assert len(seed_rows) == len(variance_propagation.SCHEMES) * quick.seeds
    small = [r for r in seed_rows if r["scheme"] == "small"]  # 2.6e-180 predicted: every input vanishes
    assert all(float(r["forward_vanish_fraction"]) == 1.0 and float(r["forward_median"]) < 1e-100 for r in small)
    large = [r for r in seed_rows if r["scheme"] == "large"]
    assert all(float(r["forward_explode_fraction"]) == 1.0 for r in large)
    assert float(first["forward_input_median"]) == 1.0  # layer 0: q_0 / q_0 for every input
    assert 0 < (out / "variance_propagation.png").stat().st_size < MAX_FIGURE_BYTES
    with pytest.raises(ValueError, match="refusing to overwrite"):
        variance_propagation.main(["--quick", "--out", str(out)])


# ----------------------------------------------------------------------------- sigma sweep
@pytest.mark.slow
def test_quick_sweep_has_25_sigmas_and_the_extreme_regimes(tmp_path):
    assert mlp_std_sweep.main(["--quick", "--out", str(tmp_path)]) == 0
    rows = read_csv(tmp_path / "sweep.csv")
    assert [float(r["sigma"]) for r in rows] == pytest.approx(np.logspace(-4, 1, 25).tolist(), rel=1e-5)
    assert rows[0]["regime"] == "vanishing"
    assert rows[-1]["regime"] == "exploding"
    assert float(rows[0]["grad_norm_init"]) < mlp_std_sweep.TAU_VANISH < float(rows[12]["grad_norm_init"])
    assert float(rows[0]["test_accuracy"]) < 0.2
    best = max(rows, key=lambda r: float(r["test_accuracy"]))
    assert best["regime"] == "stable" and float(best["test_accuracy"]) > 0.9
    criteria = (tmp_path / "sweep.md").read_text()
    assert "grad norm at init < 0.001" in criteria and "grad norm at init > 100" in criteria
    assert 0 < (tmp_path / "sweep.png").stat().st_size < MAX_FIGURE_BYTES


def test_regime_criteria():
    base = {"grad_norm_init": 1.0, "test_accuracy": 0.9, "diverged_fraction": 0.0,
            "initial_train_loss": 2.3, "final_train_loss": 0.1}
    assert mlp_std_sweep.classify(base, 10) == "stable"
    assert mlp_std_sweep.classify({**base, "grad_norm_init": 1e-4, "test_accuracy": 0.15}, 10) == "vanishing"
    assert mlp_std_sweep.classify({**base, "grad_norm_init": 1e-4}, 10) == "stable"  # tiny grads, but learned
    assert mlp_std_sweep.classify({**base, "diverged_fraction": 0.2}, 10) == "exploding"
    assert mlp_std_sweep.classify({**base, "grad_norm_init": 200.0}, 10) == "exploding"
    assert mlp_std_sweep.classify({**base, "final_train_loss": 2.4}, 10) == "exploding"
    assert mlp_std_sweep.classify({**base, "final_train_loss": math.nan}, 10) == "exploding"
    # Against the best sigma's accuracy: more than ACC_TOLERANCE (0.02) below it is "degraded".
    assert mlp_std_sweep.classify(base, 10, best_accuracy=0.919) == "stable"
    assert mlp_std_sweep.classify(base, 10, best_accuracy=0.921) == "degraded"
    assert mlp_std_sweep.classify(base, 10, best_accuracy=0.94, tolerance=0.05) == "stable"


def test_stable_band_follows_the_tolerance():
    base = {"grad_norm_init": 1.0, "diverged_fraction": 0.0, "initial_train_loss": 2.3, "final_train_loss": 0.1}
    accuracies = {1e-3: 0.5, 1e-2: 0.94, 3e-2: 0.975, 1e-1: 0.97, 3e-1: 0.95, 1.0: 0.8}
    rows = [{**base, "sigma": sigma, "test_accuracy": acc} for sigma, acc in accuracies.items()]
    assert mlp_std_sweep.stable_band(rows, 10, 0.01) == (3e-2, 1e-1)
    assert mlp_std_sweep.stable_band(rows, 10, 0.02) == (3e-2, 1e-1)  # 0.95 is 0.025 below the best
    assert mlp_std_sweep.stable_band(rows, 10, 0.05) == (1e-2, 3e-1)


@pytest.mark.multiprocess
def test_sweep_cli_reports_a_missing_mnist_path_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    # PYTHONPATH emptied: the script must run from the repo root as `python scripts/paper/...`
    proc = python(["scripts/paper/mlp_std_sweep.py", "--quick", "--out", str(out), "--dataset", "mnist",
                   str(tmp_path / "missing.npz")], env={"PYTHONPATH": "", "OMP_NUM_THREADS": "1"}, check=False,
                  timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: MNIST path") and "missing.npz" in proc.stderr
    assert not out.exists()


# ----------------------------------------------------------------------------- Kaiming vs Xavier
@pytest.mark.slow
def test_kaiming_vs_xavier_quick_writes_both_methods(tmp_path):
    assert kaiming_vs_xavier.main(["--quick", "--out", str(tmp_path)]) == 0
    summary = read_csv(tmp_path / "kaiming_vs_xavier.csv")
    assert [r["method"] for r in summary] == ["kaiming", "xavier"]
    assert all(int(r["seeds"]) >= 5 for r in summary)
    curves = read_csv(tmp_path / "kaiming_vs_xavier_curves.csv")
    for row in summary:  # the summary's final loss is the curve's last point
        last = [c for c in curves if c["method"] == row["method"]][-1]
        assert last["step"] == "60"
        assert float(row["final_loss_mean"]) == pytest.approx(float(last["loss_mean"]), rel=1e-5)
        assert float(row["final_loss_var"]) == pytest.approx(float(row["final_loss_std"]) ** 2, rel=1e-4)
        assert float(row["final_loss_mean"]) < float(row["initial_loss_mean"])
    assert 0 < (tmp_path / "kaiming_vs_xavier.png").stat().st_size < MAX_FIGURE_BYTES
    paired = {r["quantity"]: r for r in read_csv(tmp_path / "kaiming_vs_xavier_paired.csv")}
    log_loss = paired["ln_final_loss"]
    assert int(log_loss["seeds"]) == 5
    # The paired mean is the difference of the two methods' means of ln(final loss), whatever the pairing
    # (to the CSV's 6 significant digits).
    assert float(log_loss["xavier_minus_kaiming"]) == pytest.approx(
        float(log_loss["xavier_mean"]) - float(log_loss["kaiming_mean"]), abs=2e-5)
    low, high = float(log_loss["ci95_low"]), float(log_loss["ci95_high"])
    assert log_loss["verdict"] == ("differs" if low > 0 or high < 0 else "not resolved")
    spread = paired["std_ln_final_loss (xavier / kaiming)"]
    assert float(spread["xavier_minus_kaiming"]) == pytest.approx(
        float(spread["xavier_mean"]) / float(spread["kaiming_mean"]), rel=2e-5)
    assert 0 <= float(spread["p_value"]) <= 1


def test_steps_to_threshold_and_loss_matrix():
    run = common.RunResult(eval_steps=[0, 10, 20, 25], train_loss=[2.0, 0.5, 0.09, math.inf], diverged=True)
    assert kaiming_vs_xavier.steps_to_threshold(run, 0.1) == 20.0
    assert math.isnan(kaiming_vs_xavier.steps_to_threshold(run, 0.01))
    matrix = kaiming_vs_xavier.loss_matrix([run], steps=40)
    assert matrix.tolist() == [[2.0, 0.5, 0.09, math.inf, math.inf]]


# ----------------------------------------------------------------------------- common: init, data, training
def test_kaiming_and_xavier_init_stds_match_their_formulas():
    torch.manual_seed(0)
    model = common.build_mlp([256, 512, 128])
    for std_of, expected in ((common.kaiming_std, (math.sqrt(2 / 256), math.sqrt(2 / 512))),
                             (common.xavier_std, (math.sqrt(2 / 768), math.sqrt(2 / 640)))):
        common.init_mlp_(model, std_of)
        linears = [m for m in model if isinstance(m, torch.nn.Linear)]
        assert [float(m.weight.detach().std()) for m in linears] == pytest.approx(list(expected), rel=0.02)
        assert all(float(m.bias.detach().abs().max()) == 0.0 for m in linears)


@pytest.mark.slow
def test_training_is_deterministic_and_flags_divergence():
    data = common.load_digits_split()
    assert (len(data.y_train), len(data.y_test), data.n_features, data.n_classes) == (1347, 450, 64, 10)
    assert float(data.x_train.mean()) == pytest.approx(0.0, abs=1e-6)

    def run(sigma: float, lr: float) -> common.RunResult:
        torch.manual_seed(3)
        model = common.build_mlp([64, 32, 10])
        common.init_mlp_(model, common.constant_std(sigma))
        return common.train_classifier(model, data, common.TrainSettings(steps=30, lr=lr, eval_every=10), seed=3)

    first, second = run(0.1, 0.05), run(0.1, 0.05)
    assert first.train_loss == second.train_loss and first.eval_steps == [0, 10, 20, 30]
    assert first.final_loss < first.initial_loss and not first.diverged
    assert run(10.0, 10.0).diverged


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_mnist_loaders_read_npz_and_idx_and_name_bad_input(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (20, 28, 28)), "y_train": np.arange(20) % 10,
              "x_test": rng.integers(0, 256, (6, 28, 28)), "y_test": np.arange(6) % 10}
    np.savez(tmp_path / "mnist.npz", **arrays)
    from_npz = common.load_dataset(["mnist", str(tmp_path / "mnist.npz")])
    assert (from_npz.n_features, from_npz.n_classes, len(from_npz.y_test)) == (784, 10, 6)
    idx = tmp_path / "idx"
    idx.mkdir()
    for stem, key in zip(common.MNIST_IDX_FILES, ("x_train", "y_train", "x_test", "y_test")):
        _write_idx(idx / f"{stem}.gz", arrays[key])
    from_idx = common.load_mnist(idx)
    assert torch.equal(from_idx.x_train, from_npz.x_train) and torch.equal(from_idx.y_test, from_npz.y_test)

    np.savez(tmp_path / "partial.npz", x_train=arrays["x_train"])
    with pytest.raises(ValueError, match="lacks array\\(s\\) y_train, x_test, y_test"):
        common.load_mnist(tmp_path / "partial.npz")
    with pytest.raises(FileNotFoundError, match="has no t10k-images-idx3-ubyte"):
        (idx / "t10k-images-idx3-ubyte.gz").unlink()
        common.load_mnist(idx)
    np.save(tmp_path / "single.npy", arrays["y_test"])
    with pytest.raises(ValueError, match="single array, not an .npz"):
        common.load_mnist(tmp_path / "single.npy")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="junk.npz is not a readable .npz"):
        common.load_mnist(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="--dataset cifar"):
        common.load_dataset(["cifar"])


def test_prepare_outputs_refuses_to_overwrite(tmp_path):
    (tmp_path / "a.csv").write_text("keep")
    with pytest.raises(ValueError, match="refusing to overwrite .*a.csv"):
        common.prepare_outputs(tmp_path, ["a.csv", "b.png"], overwrite=False)
    assert (tmp_path / "a.csv").read_text() == "keep"
    assert common.prepare_outputs(tmp_path, ["a.csv"], overwrite=True) == [tmp_path / "a.csv"]
    with pytest.raises(ValueError, match="is a file"):
        common.prepare_outputs(tmp_path / "a.csv", ["x.csv"], overwrite=False)
