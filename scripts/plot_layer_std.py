"""Per-layer weight std dynamics of one run, and weight sparsity at init vs the end of training.

    python scripts/plot_layer_std.py <run_dir> [--roles attn.q,attn.k,attn.v] [--out DIR]
        [--rel-eps 0.1] [--abs-eps 1e-3] [--overwrite]

From ``metrics.jsonl`` (docs/design.md §8) it writes to DIR (default ``<run_dir>/plots``), each figure as
PNG and PDF: ``std_heatmap`` (layer x step, colour = std, one panel per role) and ``std_lines`` (one
line per layer coloured by depth, named in a legend for up to 8 layers; top row the std, bottom row
the std relative to its first logged value, which shows how fast each depth grows). A run trained with
``--metrics.log_variance_stats true`` also gets ``variance_heatmap``: layer x step, log colour,
one panel per statistic (act_rms/residual, act_rms/attn_out, act_rms/mlp_out, act_std/mlp_pre,
attn_logit_max) and per chosen role's grad_rms (docs/variance_dynamics.md).

Sparsity (the paper's "weights become sparser after training"): the initial weights are re-created
exactly as training drew them (same config, scheme and seed), the final ones are read from
``<run_dir>/export/model.safetensors`` when it holds initlab tensor names, else from the newest
complete DCP checkpoint ``checkpoints/step_<N>/``. Per role and layer: population std, fraction of
entries with |w| < rel_eps x (that tensor's std at init), fraction with |w| < abs_eps, and excess
kurtosis E[(w-mean)^4]/var^2 - 3 (0 for a Gaussian, > 0 for heavy tails with a peak at zero).
Written to ``sparsity.csv`` and, averaged over layers, ``sparsity.md`` (also printed). Without a
checkpoint only the std figures are written (one line on stderr says so; exit status 0).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import warnings
from pathlib import Path

REPO = str(Path(__file__).resolve().parent.parent)
if REPO not in sys.path:  # `python scripts/plot_layer_std.py` puts scripts/, not the repo root, on sys.path
    sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from components.checkpoint import weight_steps  # noqa: E402
from components.config import Config  # noqa: E402
from components.run_dir import RunDir  # noqa: E402
from init_schemes import WeightInitializer  # noqa: E402
from models.common import ModelArgs  # noqa: E402
from reporting.cli import INPUT_ERRORS, error_exit, prepare_out_dir  # noqa: E402
from reporting.figures import pyplot, save_figure  # noqa: E402
from reporting.layers import layer_std_matrix, std_roles  # noqa: E402
from reporting.runs import build_meta_model, load_run  # noqa: E402
from roles import EMBEDDING, layer_of, parse_tag, role_of  # noqa: E402

OUTPUT_FILES = ["std_heatmap.png", "std_heatmap.pdf", "std_lines.png", "std_lines.pdf", "variance_heatmap.png",
                "variance_heatmap.pdf", "sparsity.csv", "sparsity.md"]
VARIANCE_FAMILIES = ("act_rms/residual", "act_rms/attn_out", "act_rms/mlp_out", "act_std/mlp_pre", "attn_logit_max")
CSV_COLUMNS = ["role", "layer", "name", "numel", "std_init", "std_end", "eps_rel", "frac_below_eps_rel_init",
               "frac_below_eps_rel_end", "frac_below_eps_abs_init", "frac_below_eps_abs_end",
               "excess_kurtosis_init", "excess_kurtosis_end"]


class NoCheckpointError(FileNotFoundError):
    """The run has neither a usable safetensors export nor a complete DCP checkpoint."""


# ---------------------------------------------------------------- std figures (metrics.jsonl)

def step_edges(steps: list[int]) -> np.ndarray:
    """Cell boundaries [S+1] around logged steps [S] (midpoints; half a gap beyond the ends)."""
    centers = np.asarray(steps, dtype=float)
    if len(centers) == 1:
        return np.array([centers[0] - 0.5, centers[0] + 0.5])
    mids = (centers[1:] + centers[:-1]) / 2
    return np.concatenate([[2 * centers[0] - mids[0]], mids, [2 * centers[-1] - mids[-1]]])


def plot_heatmaps(run: RunDir, roles: list[str], path: Path) -> None:
    """One panel per role: x = step, y = layer, colour = weight std (blank where not logged)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(roles), figsize=(5 * len(roles), 4), squeeze=False)
    for ax, role in zip(axes[0], roles):
        steps, layers, std = layer_std_matrix(run.records, role)  # std: [L][S]
        layer_edges = np.arange(len(layers) + 1) - 0.5
        mesh = ax.pcolormesh(step_edges(steps), layer_edges, np.ma.masked_invalid(np.asarray(std)),
                             cmap="magma", shading="flat")
        ax.set(title=f"{role} weight std", xlabel="step", ylabel="layer")
        ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
        fig.colorbar(mesh, ax=ax, label="std")
    fig.suptitle(run.name)
    fig.tight_layout()
    save_figure(fig, path, pdf=True)


def depth_matrix(records: list[dict], family: str) -> tuple[list[int], list[int], np.ndarray]:
    """(steps [S], depths [D], values [D, S]) of '<family>/layer_NN' (and '<family>/embedding' as depth -1)."""
    cells: dict[tuple[int, int], float] = {}
    for record in records:
        for key, value in record.items():
            tag = parse_tag(key)
            name = None if tag is None else tag.family if tag.role is None else f"{tag.family}/{tag.role}"
            if name == family and (tag.layer is not None or tag.where == EMBEDDING):
                depth = -1 if tag.layer is None else tag.layer
                cells[(depth, record["step"])] = math.nan if value is None else float(value)
    steps = sorted({step for _, step in cells})
    depths = sorted({depth for depth, _ in cells})
    return steps, depths, np.array([[cells.get((d, s), math.nan) for s in steps] for d in depths])


def plot_variance_heatmaps(run: RunDir, roles: list[str], path: Path) -> bool:
    """Layer x step heatmaps (log colour) of the variance statistics the run logged; False if it logged none."""
    from matplotlib.colors import LogNorm

    families = [f for f in (*VARIANCE_FAMILIES, *(f"grad_rms/{role}" for role in roles))
                if depth_matrix(run.records, f)[0]]
    if not families:
        return False
    plt = pyplot()
    n_rows, n_cols = math.ceil(len(families) / 4), min(len(families), 4)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols, 3.6 * n_rows), squeeze=False)
    for ax in axes.flat[len(families):]:
        ax.set_visible(False)
    for ax, family in zip(axes.flat, families):
        steps, depths, values = depth_matrix(run.records, family)
        positive = np.ma.masked_where(~(values > 0), values)  # NaN and 0 (a zero-init branch) left blank
        norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.count() else None
        mesh = ax.pcolormesh(step_edges(steps), np.arange(len(depths) + 1) - 0.5, positive, cmap="viridis",
                             norm=norm, shading="flat")
        ax.set(title=family, xlabel="step", ylabel="layer (-1 = embedding)")
        ax.set_yticks(range(len(depths)), [str(d) for d in depths])
        fig.colorbar(mesh, ax=ax)
    fig.suptitle(f"{run.name}: variance dynamics")
    fig.tight_layout()
    save_figure(fig, path, pdf=True)
    return True


LEGEND_LAYERS = 8  # up to this many layers get a legend entry each; more share a colour bar


def plot_layer_lines(run: RunDir, roles: list[str], path: Path) -> None:
    """Per role: std over steps (top) and std / first logged std (bottom), one line per layer, colour = depth
    (a legend entry per layer for up to LEGEND_LAYERS layers, else a colour bar); PNG and PDF."""
    plt = pyplot()
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(plt.get_cmap("viridis")(np.linspace(0, 0.9, 256)))  # without the yellow, faint on white
    fig, axes = plt.subplots(2, len(roles), figsize=(5 * len(roles), 7), squeeze=False, sharex="col",
                             layout="constrained")
    for column, role in enumerate(roles):
        steps, layers, std = layer_std_matrix(run.records, role)
        depth_norm = plt.Normalize(vmin=min(layers), vmax=max(max(layers), min(layers) + 1))
        few = len(layers) <= LEGEND_LAYERS
        ratios = 0
        for layer, values in zip(layers, std):
            values = np.asarray(values)
            colour = cmap(depth_norm(layer))
            axes[0, column].plot(steps, values, color=colour, linewidth=1.2, label=f"layer {layer}")
            first = values[np.isfinite(values)][0]
            if first > 0:  # a zero-initialized tensor has no growth ratio
                axes[1, column].plot(steps, values / first, color=colour, linewidth=1.2)
                ratios += 1
        if not ratios:
            axes[1, column].text(0.5, 0.5, "zero at the first logged step:\nno growth ratio", ha="center",
                                 va="center", transform=axes[1, column].transAxes, color="grey")
        axes[0, column].set(title=role, ylabel="weight std")
        axes[1, column].set(xlabel="step", ylabel="std / std at first logged step")
        for ax in axes[:, column]:
            ax.grid(alpha=0.3)
        if few:
            axes[0, column].legend(fontsize="small", ncols=2 if len(layers) > 4 else 1)
        else:
            fig.colorbar(plt.cm.ScalarMappable(norm=depth_norm, cmap=cmap), ax=axes[:, column], label="layer")
    fig.suptitle(f"{run.name}: per-layer weight std")
    save_figure(fig, path, pdf=True)


# ---------------------------------------------------------------- weights at init and at the end

def tracked_params(model: torch.nn.Module, roles: list[str]) -> list[str]:
    """Names of the per-layer weights of ``roles`` (e.g. 'layers.3.attn.q.weight'), in model order."""
    return [name for name, _ in model.named_parameters()
            if role_of(name) in roles and layer_of(name) is not None]


def init_weights(cfg: Config, model: torch.nn.Module, args: ModelArgs, names: list[str]) -> dict[str, torch.Tensor]:
    """The initial weights ``names`` of the run's meta ``model``, drawn as training drew them (world-size invariant)."""
    if cfg.init.from_checkpoint:
        print(f"warning: init.from_checkpoint = {cfg.init.from_checkpoint!r}: the re-created init is the "
              "scheme's draw, not that file's tensors", file=sys.stderr)
    model.to_empty(device="cpu")
    model.init_weights(WeightInitializer(cfg.init, args, cfg.job.seed), buffer_device=torch.device("cpu"))
    wanted = set(names)
    return {name: param.detach() for name, param in model.named_parameters() if name in wanted}


def resolve_keys(available: set[str], names: list[str]) -> dict[str, str] | None:
    """{model name: stored key}, accepting a 'model.' prefix; None if any name is absent."""
    keys = {}
    for name in names:
        key = next((k for k in (name, f"model.{name}") if k in available), None)
        if key is None:
            return None
        keys[name] = key
    return keys


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The highest complete checkpoints/step_<N> or final weights/step_<N> (components/checkpoint.py)."""
    steps = weight_steps(run_dir)
    return steps[max(steps)] if steps else None


def load_dcp_tensors(ckpt: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """Read only ``names`` from a DCP checkpoint into plain CPU tensors (one process, no process group)."""
    import torch.distributed.checkpoint as dcp

    metadata = dcp.FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    keys = resolve_keys(set(metadata), names)
    if keys is None:
        missing = next(n for n in names if resolve_keys(set(metadata), [n]) is None)
        raise ValueError(f"{ckpt} has no tensor {missing!r} (nor 'model.{missing}'); it is not a checkpoint of "
                         "this run's model")
    buffers = {key: torch.empty(metadata[key].size, dtype=metadata[key].properties.dtype) for key in keys.values()}
    with warnings.catch_warnings():  # DCP warns that no_dist loads without a process group, which is intended
        warnings.simplefilter("ignore")
        dcp.load(buffers, checkpoint_id=str(ckpt), no_dist=True)
    return {name: buffers[key] for name, key in keys.items()}


def end_weights(run_dir: Path, names: list[str]) -> tuple[dict[str, torch.Tensor], str]:
    """(final weights by name, where they came from): the safetensors export, else the newest checkpoint."""
    from safetensors import safe_open

    export = run_dir / "export" / "model.safetensors"
    note = ""
    if export.is_file():
        with safe_open(str(export), framework="pt") as handle:
            keys = resolve_keys(set(handle.keys()), names)
            if keys is not None:
                return {name: handle.get_tensor(key) for name, key in keys.items()}, str(export)
        note = f"{export} does not hold initlab tensor names such as {names[0]!r}; "
    ckpt = newest_checkpoint(run_dir)
    if ckpt is None:
        raise NoCheckpointError(f"{note}no complete checkpoints/step_<N>/ in {run_dir}")
    if note:
        print(f"warning: {note}using {ckpt}", file=sys.stderr)
    return load_dcp_tensors(ckpt, names), str(ckpt)


# ---------------------------------------------------------------- statistics

def excess_kurtosis(weights: torch.Tensor) -> float:
    """E[(w-mean)^4] / var^2 - 3 with population moments (float64); nan for a constant tensor."""
    centered = weights.double().flatten() - weights.double().mean()
    var = centered.square().mean().item()
    return centered.pow(4).mean().item() / var**2 - 3.0 if var > 0 else math.nan


def fraction_below(weights: torch.Tensor, eps: float) -> float:
    """Fraction of entries with |w| < eps."""
    return (weights.double().abs() < eps).double().mean().item()


def sparsity_row(name: str, init: torch.Tensor, end: torch.Tensor, rel_eps: float, abs_eps: float) -> dict:
    """One CSV row: std, near-zero fractions and excess kurtosis of a tensor at init and at the end."""
    if tuple(init.shape) != tuple(end.shape):
        raise ValueError(f"final {name} has shape {tuple(end.shape)} but the run's model has {tuple(init.shape)}; "
                         "the checkpoint belongs to another model")
    std_init = init.double().std(unbiased=False).item()
    eps_rel = rel_eps * std_init
    row = {"role": role_of(name), "layer": layer_of(name), "name": name, "numel": init.numel(),
           "std_init": std_init, "std_end": end.double().std(unbiased=False).item(), "eps_rel": eps_rel}
    for stage, weights in (("init", init), ("end", end)):
        # eps_rel = 0 (a zero-initialized tensor) leaves the relative fraction undefined.
        row[f"frac_below_eps_rel_{stage}"] = fraction_below(weights, eps_rel) if eps_rel > 0 else math.nan
        row[f"frac_below_eps_abs_{stage}"] = fraction_below(weights, abs_eps)
        row[f"excess_kurtosis_{stage}"] = excess_kurtosis(weights)
    return row


def write_sparsity_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


SUMMARY_COLUMNS = ["std_init", "std_end", "frac_below_eps_rel_init", "frac_below_eps_rel_end",
                   "frac_below_eps_abs_init", "frac_below_eps_abs_end", "excess_kurtosis_init", "excess_kurtosis_end"]


def sparsity_summary(rows: list[dict], roles: list[str], rel_eps: float, abs_eps: float, source: str) -> str:
    """Markdown: per role, the layer average of each statistic at init and at the end."""
    gaussian_fraction = math.erf(rel_eps / math.sqrt(2))
    # No "|" inside cells: it would split the markdown table.
    header = ["role", "layers", "std init", "std end", f"abs(w)<{rel_eps:g}σ₀ init", f"abs(w)<{rel_eps:g}σ₀ end",
              f"abs(w)<{abs_eps:g} init", f"abs(w)<{abs_eps:g} end", "kurtosis init", "kurtosis end"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for role in roles:
        selected = [row for row in rows if row["role"] == role]
        means = [float(np.mean([row[column] for row in selected])) for column in SUMMARY_COLUMNS]
        lines.append(f"| {role} | {len(selected)} | " + " | ".join(f"{value:.4g}" for value in means) + " |")
    notes = (f"Final weights: `{source}`. σ₀ = that tensor's std at init; abs(w)<{rel_eps:g}σ₀ and abs(w)<{abs_eps:g} "
             f"are fractions of entries; kurtosis is excess kurtosis (population moments). Each value is the "
             f"mean over layers. For reference a Gaussian has abs(w)<{rel_eps:g}σ fraction {gaussian_fraction:.4f} "
             "and excess kurtosis 0: sparser weights (more near-zero entries, a few large ones) raise both.")
    return "# Weight sparsity at init vs end\n\n" + "\n".join(lines) + "\n\n" + notes + "\n"


# ---------------------------------------------------------------- command line

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="run directory (outputs/<run_name>/)")
    parser.add_argument("--roles", default="attn.q,attn.k,attn.v", help="comma-separated per-layer roles")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default <run_dir>/plots)")
    parser.add_argument("--rel-eps", type=float, default=0.1, help="near-zero threshold in units of the init std")
    parser.add_argument("--abs-eps", type=float, default=1e-3, help="absolute near-zero threshold")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files in --out")
    return parser.parse_args(argv)


def checked_roles(run: RunDir, roles_arg: str) -> list[str]:
    roles = [role.strip() for role in roles_arg.split(",") if role.strip()]
    logged = std_roles(run.records)
    unknown = [role for role in roles if role not in logged]
    if not roles or unknown:
        raise ValueError(f"--roles {roles_arg!r}: {run.path / 'metrics.jsonl'} has per-layer std for "
                         f"{', '.join(logged) or 'no role'}; pick from those")
    return roles


def write_sparsity(run: RunDir, roles: list[str], args: argparse.Namespace, out_dir: Path) -> str:
    """Compute the sparsity table, write sparsity.csv/.md and return the markdown."""
    cfg = run.config
    model, model_args = build_meta_model(cfg)
    names = tracked_params(model, roles)
    end, source = end_weights(run.path, names)
    init = init_weights(cfg, model, model_args, names)
    rows = [sparsity_row(name, init[name], end[name], args.rel_eps, args.abs_eps) for name in names]
    write_sparsity_csv(rows, out_dir / "sparsity.csv")
    summary = sparsity_summary(rows, roles, args.rel_eps, args.abs_eps, source)
    (out_dir / "sparsity.md").write_text(summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if not (args.rel_eps > 0 and args.abs_eps > 0):
            raise ValueError(f"--rel-eps {args.rel_eps} and --abs-eps {args.abs_eps} must both be > 0")
        run = load_run(args.run_dir)
        roles = checked_roles(run, args.roles)
        out_dir = args.out or run.path / "plots"
        prepare_out_dir(out_dir, OUTPUT_FILES, args.overwrite)
    except INPUT_ERRORS as exc:
        return error_exit(exc)
    plot_heatmaps(run, roles, out_dir / "std_heatmap.png")
    plot_layer_lines(run, roles, out_dir / "std_lines.png")
    print(f"wrote std_heatmap.png and std_lines.png to {out_dir}", file=sys.stderr)
    if plot_variance_heatmaps(run, roles, out_dir / "variance_heatmap.png"):
        print(f"wrote variance_heatmap.png to {out_dir}", file=sys.stderr)
    try:
        print(write_sparsity(run, roles, args, out_dir))
    except NoCheckpointError as exc:
        print(f"note: sparsity statistics need a checkpoint: {exc} (train with --checkpoint.enable true "
              "or run scripts/export.py)", file=sys.stderr)
        return 0
    except INPUT_ERRORS as exc:
        return error_exit(exc)
    print(f"wrote sparsity.csv and sparsity.md to {out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
