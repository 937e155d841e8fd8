"""torchtitan's trainer with the initlab extension against initlab's trainer: step-1 loss and weight-std curves.

    python scripts/compare_torchtitan.py --torchtitan DUMP/tb --initlab outputs/<run> --out DIR [--overwrite]

Reads the torchtitan run's TensorBoard events (every event file under ``--torchtitan``, which must hold
one run: torchtitan writes ``<dump_folder>/tb/<YYYYmmdd-HHMM>/``; its loss tag is
``loss_metrics/global_avg_loss``, the extension's weight tags are initlab's ``weight_std/...``) and
the initlab run's ``metrics.jsonl`` (``loss/train``, ``weight_std/...``). Writes to DIR:

* ``compare.json``: both step-1 losses and their |difference|, the losses at ``--steps`` (10, 25, 50),
  both loss curves, the largest relative weight-std difference |titan - initlab| / initlab over every
  weight_std tag both runs log and every step both log it (with its tag and step, and per role), the
  tags only one run has, the tolerances and whether both are met, and, when both runs log them, the
  same for the activation statistics (initlab's act_rms/act_std/attn_logit_max tags) at step 1 and
  over all steps (reported, no tolerance);
* ``compare.md``: the same as a short table (also printed);
* ``weight_std.png``: the loss curves, and a few weight-std curves of both trainers on one axis
  (torchtitan solid, initlab dashed, one colour per tag).

Tolerances (``--loss-atol``, ``--std-rtol``): docs/torchtitan.md says why the two trainers, which
compute in bf16 in different ways (torchtitan: fp32 weights under autocast; initlab: FSDP2's bf16
parameter policy), agree only to these. Bad input: one ``error: ...`` line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

REPO = str(Path(__file__).resolve().parent.parent)
if REPO not in sys.path:  # `python scripts/compare_torchtitan.py` puts scripts/, not the repo root, on sys.path
    sys.path.insert(0, REPO)

from components.activation_stats import FAMILIES as ACTIVATION_FAMILIES  # noqa: E402
from reporting.cli import INPUT_ERRORS, error_exit, prepare_out_dir  # noqa: E402
from reporting.figures import pyplot  # noqa: E402
from reporting.runs import load_run  # noqa: E402
from roles import ATTN_OUT, ATTN_Q, MEAN_OVER_LAYERS, MLP_OUT, format_tag, parse_tag  # noqa: E402

TORCHTITAN_LOSS = "loss_metrics/global_avg_loss"  # torchtitan 0.2.2 MetricsProcessor.log
INITLAB_LOSS = "loss/train"
OUTPUT_FILES = ["compare.json", "compare.md", "weight_std.png"]
DEFAULT_LOSS_ATOL = 0.01
DEFAULT_STD_RTOL = 0.01

Series = dict[str, dict[int, float]]  # tag -> step -> value


def torchtitan_series(path: Path) -> Series:
    """Every scalar of the one torchtitan run whose event files lie under ``path`` (a folder or an event file)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    if not path.exists():
        raise FileNotFoundError(f"--torchtitan {path} does not exist; pass torchtitan's <dump_folder>/tb folder")
    files = [path] if path.is_file() else sorted(path.rglob("*tfevents*"))
    folders = sorted({f.parent for f in files})
    if not folders:
        raise FileNotFoundError(f"no TensorBoard event file under --torchtitan {path}; run torchtitan with "
                                "--metrics.enable_tensorboard and pass its <dump_folder>/tb folder")
    if len(folders) > 1:
        raise ValueError(f"--torchtitan {path} holds the events of {len(folders)} runs ({folders[0]}, ...); "
                         "pass one run's folder")
    accumulator = EventAccumulator(str(folders[0]), size_guidance={SCALARS: 0})  # 0: keep every event
    accumulator.Reload()
    return {tag: {event.step: event.value for event in accumulator.Scalars(tag)}
            for tag in accumulator.Tags()["scalars"]}


def initlab_series(run_dir: Path) -> Series:
    """Every numeric metric of an initlab run directory (metrics.jsonl), by tag and step."""
    series: Series = {}
    for record in load_run(run_dir).records:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                series.setdefault(key, {})[record["step"]] = float(value)
    return series


def relative_difference(theirs: float, ours: float) -> float:
    """|theirs - ours| / |ours| (initlab's value is the reference; 0/0 = 0)."""
    if theirs == ours:
        return 0.0
    return abs(theirs - ours) / abs(ours) if ours else math.inf


def loss_values(titan: Series, initlab: Series) -> tuple[dict[int, float], dict[int, float]]:
    """Both loss curves, with a one-line error when either has no step-1 loss."""
    for name, series, tag in (("torchtitan", titan, TORCHTITAN_LOSS), ("initlab", initlab, INITLAB_LOSS)):
        if 1 not in series.get(tag, {}):
            raise ValueError(f"the {name} run has no {tag} at step 1; log step 1 (metrics.log_freq = 1) "
                             "and pass the run's own folder")
    return titan[TORCHTITAN_LOSS], initlab[INITLAB_LOSS]


def largest_difference(titan: Series, initlab: Series, tags: list[str], group, steps: set[int] | None = None) -> dict:
    """Largest relative difference over ``tags`` and the steps both runs log them (only ``steps`` if given):
    ``{"max": {rel_diff, tag, step, torchtitan, initlab}, "max_per_group": {group(tag): rel_diff}}``."""
    worst, per_group = {"rel_diff": -1.0}, {}
    for tag in tags:
        for step in sorted(titan[tag].keys() & initlab[tag].keys() & (steps or titan[tag].keys())):
            diff = relative_difference(titan[tag][step], initlab[tag][step])
            per_group[group(tag)] = max(per_group.get(group(tag), 0.0), diff)
            if diff > worst["rel_diff"]:
                worst = {"rel_diff": diff, "tag": tag, "step": step, "torchtitan": titan[tag][step],
                         "initlab": initlab[tag][step]}
    return {"max": worst, "max_per_group": per_group}


def weight_std_differences(titan: Series, initlab: Series) -> dict:
    """Largest relative weight-std difference over the tags and steps both runs log, overall and per role."""
    tags = sorted(tag for tag in titan.keys() & initlab.keys() if weight_std_role(tag))
    if not tags:
        raise ValueError("the runs share no weight_std tag; log them in both (initlab.log_weight_std = true in "
                         "torchtitan's [initlab] table, metrics.log_weight_std = true in initlab's)")
    largest = largest_difference(titan, initlab, tags, weight_std_role)
    return {"max": largest["max"], "max_per_role": largest["max_per_group"], "tags_compared": len(tags),
            "only_torchtitan": sorted(t for t in titan if weight_std_role(t) and t not in initlab),
            "only_initlab": sorted(t for t in initlab if weight_std_role(t) and t not in titan)}


def weight_std_role(tag: str) -> str | None:
    """The role of a weight_std tag (per block, outside the blocks, or the mean over blocks); None for other tags."""
    parsed = parse_tag(tag)
    if parsed is None or parsed.family != "weight_std" or parsed.where not in (None, MEAN_OVER_LAYERS):
        return None
    return parsed.role


def activation_family(tag: str) -> str | None:
    """The family of an activation statistic's tag (components/activation_stats.py), e.g. 'act_rms/residual'; a
    statistic of the whole model (act_rms/logits) is its family alone."""
    if tag in ACTIVATION_FAMILIES:
        return tag
    parsed = parse_tag(tag)
    return parsed.family if parsed is not None and parsed.family in ACTIVATION_FAMILIES else None


def activation_differences(titan: Series, initlab: Series) -> dict | None:
    """Largest relative difference of the activation statistics both runs log (act_rms/..., act_std/...,
    attn_logit_max/...), at step 1 and over all steps, per family; None when they share none."""
    tags = sorted(tag for tag in titan.keys() & initlab.keys() if activation_family(tag))
    if not tags:
        return None
    return {"tags_compared": len(tags), "step1": largest_difference(titan, initlab, tags, activation_family, {1}),
            "all_steps": largest_difference(titan, initlab, tags, activation_family)}


def compare(titan: Series, initlab: Series, steps: list[int], loss_atol: float, std_rtol: float) -> dict:
    """The comparison that compare.json holds (see the module docstring)."""
    titan_loss, initlab_loss = loss_values(titan, initlab)
    weight_std = weight_std_differences(titan, initlab)
    step1_diff = abs(titan_loss[1] - initlab_loss[1])
    shared_steps = sorted(titan_loss.keys() & initlab_loss.keys())
    return {
        "step1_loss": {"torchtitan": titan_loss[1], "initlab": initlab_loss[1], "abs_diff": step1_diff},
        "loss_at": {str(s): {"torchtitan": titan_loss[s], "initlab": initlab_loss[s],
                             "abs_diff": abs(titan_loss[s] - initlab_loss[s])} for s in steps if s in shared_steps},
        "loss_curve": {"steps": shared_steps, "torchtitan": [titan_loss[s] for s in shared_steps],
                       "initlab": [initlab_loss[s] for s in shared_steps]},
        "weight_std": weight_std,
        "activations": activation_differences(titan, initlab),
        "tolerance": {"step1_loss_atol": loss_atol, "weight_std_rtol": std_rtol},
        "within_tolerance": {"step1_loss": step1_diff <= loss_atol,
                             "weight_std": weight_std["max"]["rel_diff"] <= std_rtol},
    }


def markdown(result: dict, titan_path: Path, initlab_path: Path) -> str:
    """compare.md: the step-1 and later losses, the largest weight-std difference, the verdicts."""
    tol, ok, worst = result["tolerance"], result["within_tolerance"], result["weight_std"]["max"]
    lines = [f"torchtitan run: `{titan_path}`; initlab run: `{initlab_path}`", "",
             "| step | torchtitan loss | initlab loss | abs diff |", "|---:|---:|---:|---:|"]
    rows = {"1": result["step1_loss"], **result["loss_at"]}
    lines += [f"| {step} | {row['torchtitan']:.5f} | {row['initlab']:.5f} | {row['abs_diff']:.2e} |"
              for step, row in rows.items()]
    lines += ["", f"Step-1 loss: |diff| = {result['step1_loss']['abs_diff']:.2e} (tolerance {tol['step1_loss_atol']:g}: "
              f"{'met' if ok['step1_loss'] else 'NOT met'}).",
              f"weight_std, {result['weight_std']['tags_compared']} tags at every step both logged: largest relative "
              f"difference {worst['rel_diff']:.2e} ({worst['tag']}, step {worst['step']}: torchtitan "
              f"{worst['torchtitan']:.6g}, initlab {worst['initlab']:.6g}; tolerance {tol['weight_std_rtol']:g}: "
              f"{'met' if ok['weight_std'] else 'NOT met'}).",
              "Largest per role: " + ", ".join(f"{role} {diff:.1e}" for role, diff in
                                               sorted(result["weight_std"]["max_per_role"].items())) + "."]
    if result["activations"]:
        for when, key in (("at step 1", "step1"), ("over all steps", "all_steps")):
            worst = result["activations"][key]["max"]
            lines.append(f"Activation statistics ({result['activations']['tags_compared']} tags) {when}: largest relative "
                         f"difference {worst['rel_diff']:.2e} ({worst['tag']}, step {worst['step']}; no tolerance).")
    return "\n".join(lines) + "\n"


def plot_tags(titan: Series, initlab: Series, count: int = 4) -> list[str]:
    """A few shared weight_std tags of distinct roles: first layer's q, last layer's attn.out/mlp.out, the head."""
    shared = sorted(tag for tag in titan.keys() & initlab.keys() if weight_std_role(tag))
    layers = sorted({parse_tag(t).layer for t in shared} - {None})
    wanted = []
    if layers:
        wanted = [format_tag("weight_std", ATTN_Q, layers[0]), format_tag("weight_std", ATTN_OUT, layers[-1]),
                  format_tag("weight_std", MLP_OUT, layers[-1])]
    wanted += [format_tag("weight_std", "lm_head"), format_tag("weight_std", "tok_embedding")]
    chosen = [tag for tag in wanted if tag in shared]
    return (chosen + [tag for tag in shared if tag not in chosen])[:count]


def write_figure(path: Path, result: dict, titan: Series, initlab: Series) -> None:
    plt = pyplot()
    fig, (loss_ax, std_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    curve = result["loss_curve"]
    loss_ax.plot(curve["steps"], curve["torchtitan"], "-", label="torchtitan + initlab extension")
    loss_ax.plot(curve["steps"], curve["initlab"], "--", label="initlab train.py")
    loss_ax.set(xlabel="step", ylabel="training loss", title="loss")
    loss_ax.legend()
    for i, tag in enumerate(plot_tags(titan, initlab)):
        colour = f"C{i}"
        for series, style, who in ((titan, "-", "torchtitan"), (initlab, "--", "initlab")):
            steps = sorted(series[tag])
            std_ax.plot(steps, [series[tag][s] for s in steps], style, color=colour,
                        label=f"{tag.removeprefix('weight_std/')} ({who})")
    std_ax.set(xlabel="step", ylabel="weight std", yscale="log", title="weight std: torchtitan solid, initlab dashed")
    std_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torchtitan", type=Path, required=True,
                        help="torchtitan's TensorBoard folder of one run (<dump_folder>/tb) or its event file")
    parser.add_argument("--initlab", type=Path, required=True, help="initlab run directory (holds metrics.jsonl)")
    parser.add_argument("--out", type=Path, required=True, help="output directory for compare.json/.md/weight_std.png")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50], help="steps whose losses are tabled")
    parser.add_argument("--loss-atol", type=float, default=DEFAULT_LOSS_ATOL,
                        help="tolerance on |step-1 loss difference| (nats; default %(default)s)")
    parser.add_argument("--std-rtol", type=float, default=DEFAULT_STD_RTOL,
                        help="tolerance on the largest relative weight-std difference (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        titan, initlab = torchtitan_series(args.torchtitan), initlab_series(args.initlab)
        result = compare(titan, initlab, args.steps, args.loss_atol, args.std_rtol)
        prepare_out_dir(args.out, OUTPUT_FILES, args.overwrite)
    except INPUT_ERRORS as exc:
        return error_exit(exc)
    report = markdown(result, args.torchtitan, args.initlab)
    (args.out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "compare.md").write_text(report)
    write_figure(args.out / "weight_std.png", result, titan, initlab)
    print(report, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
