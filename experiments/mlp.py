"""The paper's MLP experiments: data, MLPs, a small SGD trainer, output files.

Used by ``scripts/paper/variance_propagation.py``, ``mlp_std_sweep.py`` and ``kaiming_vs_xavier.py``. Everything
runs on CPU with ``torch.manual_seed`` per run, so a run is a pure function of its seed.

Datasets: scikit-learn's bundled ``digits`` (8x8 images, 1797 samples, 10 classes; no download)
with a fixed stratified 75/25 split, or a local MNIST copy (``mnist.npz`` as Keras ships it, or
a folder with the four IDX files). Features are standardized with the training split's mean/std.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from reporting import cli as reporting_cli
from reporting.figures import pyplot  # noqa: F401 -- the paper scripts' matplotlib, imported from here

CHANCE_LOSS_10 = math.log(10.0)  # cross-entropy of a uniform guess over 10 classes
EVAL_SAMPLES = 4096  # full-batch metrics (loss, grad norm at init) use at most this many train samples
MNIST_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                   "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Dataset:
    """A classification split; x_*: [N, features] float32 (standardized), y_*: [N] int64."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]


def standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-mean, unit-std features using the training split's statistics (constant features stay 0)."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std == 0] = 1.0  # e.g. the always-blank corner pixels of digits
    return (train - mean) / std, (test - mean) / std


def _as_dataset(name: str, x_train, y_train, x_test, y_test) -> Dataset:
    x_train, x_test = standardize(np.asarray(x_train, np.float64), np.asarray(x_test, np.float64))
    y_train = np.asarray(y_train, np.int64)
    y_test = np.asarray(y_test, np.int64)
    return Dataset(name, torch.tensor(x_train, dtype=torch.float32), torch.from_numpy(y_train),
                   torch.tensor(x_test, dtype=torch.float32), torch.from_numpy(y_test),
                   int(max(y_train.max(), y_test.max())) + 1)


def load_digits_split(test_fraction: float = 0.25, split_seed: int = 0) -> Dataset:
    """scikit-learn's bundled digits with a fixed stratified split (1347 train / 450 test by default)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=split_seed, stratify=y)
    return _as_dataset("digits", x_train, y_train, x_test, y_test)


def _read_idx(path: Path) -> np.ndarray:
    """One IDX file (optionally .gz): big-endian header, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an uint8 IDX file (bad magic number); use the original MNIST files")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise ValueError(f"{path} is truncated: header says {shape}, found {data.size} values")
    return data.reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"MNIST folder {folder} has no {stem}[.gz]; it needs the four IDX files "
                            f"{', '.join(MNIST_IDX_FILES)}")


def _read_npz(path: Path, keys: tuple[str, ...]) -> list[np.ndarray]:
    try:
        loaded = np.load(path)
    except (OSError, EOFError, ValueError) as err:  # not a zip / .npy, or a pickle we refuse to load
        raise ValueError(f"{path} is not a readable .npz file ({err}); pass mnist.npz or an IDX folder") from err
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds a single array, not an .npz archive; pass mnist.npz or an IDX folder")
    with loaded:
        missing = [k for k in keys if k not in loaded.files]
        if missing:
            raise ValueError(f"{path} lacks array(s) {', '.join(missing)}; an MNIST .npz needs {', '.join(keys)}")
        return [loaded[k] for k in keys]


def load_mnist(path: str | Path) -> Dataset:
    """MNIST from ``mnist.npz`` (keys x_train, y_train, x_test, y_test) or a folder of IDX files."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"MNIST path {path} does not exist; pass an mnist.npz file or a folder "
                                "with the IDX files")
    if path.is_dir():
        x_train, y_train, x_test, y_test = (_read_idx(_find_idx(path, stem)) for stem in MNIST_IDX_FILES)
    else:
        x_train, y_train, x_test, y_test = _read_npz(path, ("x_train", "y_train", "x_test", "y_test"))
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValueError(f"{path}: images and labels differ in count; the MNIST files are mismatched")
    flat = [np.asarray(x, np.float64).reshape(len(x), -1) / 255.0 for x in (x_train, x_test)]
    return _as_dataset("mnist", flat[0], y_train, flat[1], y_test)


def load_dataset(spec: list[str]) -> Dataset:
    """``["digits"]`` or ``["mnist", PATH]`` (the ``--dataset`` command-line value)."""
    if spec == ["digits"]:
        return load_digits_split()
    if len(spec) == 2 and spec[0] == "mnist":
        return load_mnist(spec[1])
    raise ValueError(f"--dataset {' '.join(spec)} is not understood; use '--dataset digits' or "
                     "'--dataset mnist PATH'")


# ----------------------------------------------------------------------------- models
def build_mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers sizes[0] -> ... -> sizes[-1] with ReLU between them (none after the last)."""
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"MLP sizes {sizes} need at least an input and an output width, all >= 1")
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def constant_std(sigma: float) -> Callable[[int, int], float]:
    """Every weight N(0, sigma^2) whatever its shape (the sigma sweep)."""
    return lambda fan_in, fan_out: sigma


def kaiming_std(fan_in: int, fan_out: int, c_phi: float = 0.5) -> float:
    """He/Kaiming fan-in: Var w = 1 / (c_phi * fan_in); c_phi = 1/2 for ReLU gives the familiar 2/fan_in."""
    return math.sqrt(1.0 / (c_phi * fan_in))


def xavier_std(fan_in: int, fan_out: int) -> float:
    """Glorot/Xavier normal: Var w = 2 / (fan_in + fan_out)."""
    return math.sqrt(2.0 / (fan_in + fan_out))


@torch.no_grad()
def init_mlp_(model: nn.Module, std_of: Callable[[int, int], float]) -> None:
    """Weights ~ N(0, std_of(fan_in, fan_out)^2), biases 0; draws use the global torch generator."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std_of(module.in_features, module.out_features))
            if module.bias is not None:
                module.bias.zero_()


def weight_grad_norm(model: nn.Module) -> float:
    """Global L2 norm of the Linear *weight* gradients.

    Biases are left out on purpose: with zero-initialised biases the output bias still gets a
    gradient mean(softmax - onehot) of order 1e-2 however small sigma is, which would hide the
    vanishing of every weight gradient (they scale like sigma^2 for a 3-layer MLP as sigma -> 0).
    """
    squares = [m.weight.grad.double().pow(2).sum() for m in model.modules()
               if isinstance(m, nn.Linear) and m.weight.grad is not None]
    return math.sqrt(float(torch.stack(squares).sum()))


# ----------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainSettings:
    """Minibatch SGD (with momentum) at a fixed learning rate, ``steps`` updates."""

    steps: int
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    eval_every: int = 25  # full-train loss every this many steps (and at step 0 and the last step)
    divergence_loss: float = 10 * CHANCE_LOSS_10  # a final train loss above this counts as diverged


@dataclass
class RunResult:
    """One training run; train_loss[i] is the loss on the eval subset after eval_steps[i] updates."""

    eval_steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    grad_norm_init: float = math.nan  # weight-gradient norm on the eval subset, before any update
    grad_norm_mean: float = math.nan  # mean minibatch weight-gradient norm over the updates taken
    test_accuracy: float = math.nan
    diverged: bool = False  # non-finite minibatch loss, or final train loss > divergence_loss

    @property
    def initial_loss(self) -> float:
        return self.train_loss[0]

    @property
    def final_loss(self) -> float:
        return self.train_loss[-1]


def _loss_and_grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    norm = weight_grad_norm(model)
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), norm


@torch.no_grad()
def _eval_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(nn.functional.cross_entropy(model(x), y))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(dim=1) == y).double().mean())


def _batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless minibatch indices: a fresh permutation of range(n) per epoch."""
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def train_classifier(model: nn.Module, data: Dataset, settings: TrainSettings, seed: int) -> RunResult:
    """SGD on cross-entropy; the data order depends only on ``seed``. Stops early on a non-finite loss."""
    x_eval, y_eval = data.x_train[:EVAL_SAMPLES], data.y_train[:EVAL_SAMPLES]
    result = RunResult()
    loss0, result.grad_norm_init = _loss_and_grad_norm(model, x_eval, y_eval)
    result.eval_steps.append(0)
    result.train_loss.append(loss0)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum)
    batches = _batches(len(data.y_train), min(settings.batch_size, len(data.y_train)),
                       torch.Generator().manual_seed(seed))
    norms: list[float] = []
    for step in range(1, settings.steps + 1):
        index = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(data.x_train[index]), data.y_train[index])
        if not torch.isfinite(loss):
            result.diverged = True
            result.eval_steps.append(step)
            result.train_loss.append(math.inf)
            break
        loss.backward()
        norms.append(weight_grad_norm(model))
        optimizer.step()
        if step % settings.eval_every == 0 or step == settings.steps:
            result.eval_steps.append(step)
            result.train_loss.append(_eval_loss(model, x_eval, y_eval))
    final = result.final_loss
    result.diverged = result.diverged or not math.isfinite(final) or final > settings.divergence_loss
    result.grad_norm_mean = float(np.mean(norms)) if norms else math.nan
    result.test_accuracy = accuracy(model, data.x_test, data.y_test)
    return result


# ----------------------------------------------------------------------------- output files
def prepare_outputs(out_dir: str | Path, names: list[str], overwrite: bool) -> list[Path]:
    """Create ``out_dir`` and return the output paths; refuses to replace existing files unless asked."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file, not a folder; pass a folder path")
    paths = [out_dir / name for name in names]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise ValueError(f"refusing to overwrite {', '.join(existing)}; pass --overwrite or another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    return paths


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows of equal keys -> CSV with a header; floats written with 6 significant digits."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def save_figure(fig, path: Path, dpi: int = 100) -> None:
    """PNG; at 72-100 dpi the figures here stay under the docs' 200 KB budget."""
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)


def positive_int(text: str) -> int:
    """argparse type for counts such as --seeds."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a script's ``main`` on one CPU thread; bad input -> 'error: ...' on stderr and exit status 2."""
    return reporting_cli.run_cli(main, argv, threads=1)
