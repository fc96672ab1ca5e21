"""Plots study 3: per gamma, lambda_1, ||H_K||, training loss and validation accuracy; writes the paper-style table.

Each entry is the mean over seeds with every seed's value beside it; the
sharpness is also given as its mean over the later half of training (± the
standard deviation over seeds), which no single spike decides, and the
accuracy both at the end and at its best epoch. Against SGD (gamma=1) run
with the same seed, each gamma gets the count of seeds where it is ahead and
the paired difference with its 95% t-interval over seeds, for accuracy at a
fixed epoch and at a matched training loss (the first epoch at which both
runs of a pair reached the lower loss level they share), so that a faster
optimizer is not credited with generalizing better merely for having
trained further. The figure's thick line is the arithmetic mean over seeds,
with each gamma's threshold 2/(gamma eta) dashed in its colour.

    python -m experiments.nudged_sgd.plot [--out RUNS] [--figures FOLDER] [--early_epoch 2]
"""

from __future__ import annotations

import os

import numpy as np

from experiments import figures, statistics
from experiments._cli import markdown_table
from experiments.results import (
    best_validation_epoch,
    by_setting,
    eigenvalue_curve,
    kept_tables,
    load_results,
    top_k_norm,
)
from experiments.scale import Scale

STUDY = "nudged_sgd"

#: Where ``python -m experiments.keep_runs`` puts the rerun's raw runs, per setting; ``verify`` recomputes the
#: study's tables from them once they are there.
KEPT_RUNS = {"": os.path.join(figures.default_figures(STUDY), "runs"),
             ", augmented": os.path.join(figures.default_figures(STUDY), "augmented", "runs")}


def table_row(result: dict, early_epoch: int) -> dict:
    """The paper's table entries for one run (``early_epoch`` counts completed epochs, from 1)."""
    logs = result["logs"]
    best = best_validation_epoch(logs)
    epochs, values = eigenvalue_curve(result)
    early = min(early_epoch, len(logs["val_accuracy"])) - 1
    return {
        "test_at_best_val": logs["test_accuracy"][best],
        "test_final": logs["test_accuracy"][-1],
        "best_val_epoch": best + 1,
        "val_best": logs["val_accuracy"][best],
        "val_final": logs["val_accuracy"][-1],
        "val_early": logs["val_accuracy"][early],
        "train_loss": result["final"]["train_loss"],
        "train_loss_later_half": statistics.later_half_mean(np.arange(1, len(logs["loss"]) + 1), logs["loss"]),
        "lambda_1": float(values[-1, 0]),
        "lambda_1_later_half": statistics.later_half_mean(epochs, values[:, 0]),
        "hk_norm": float(top_k_norm(values[-1])),
        "hk_norm_later_half": statistics.later_half_mean(epochs, top_k_norm(values)),
        "distance": result["final"]["distance_from_init"],
    }


def against_sgd(groups: dict, early_epoch: int) -> str:
    """Seed by seed, how often each gamma beats SGD (gamma=1) run with the same seed, per claim."""
    if 1.0 not in groups:
        return ""
    sgd = {r["config"]["seed"]: table_row(r, early_epoch) for r in groups[1.0]}
    claims = (("test_at_best_val", 1, "test acc. at best-val epoch higher"),
              ("test_final", 1, "final test acc. higher"),
              ("train_loss_later_half", -1, "training loss lower (later-half mean)"),
              ("lambda_1_later_half", 1, "lambda_1 higher (later-half mean)"))
    rows = []
    for gamma, runs in groups.items():
        if gamma == 1.0:
            continue
        paired = [(table_row(r, early_epoch), sgd[r["config"]["seed"]]) for r in runs if r["config"]["seed"] in sgd]
        rows.append([f"{gamma:g}"] + [f"{sum(sign * (ours[key] - theirs[key]) > 0 for ours, theirs in paired)}"
                                      f"/{len(paired)}" for key, sign, _ in claims])
    return markdown_table(["gamma, seeds where, against SGD with the same seed:"] + [c[2] for c in claims], rows)


def at_matched_loss(ours: dict, theirs: dict) -> tuple[float, float, float, int, int]:
    """Test accuracy of two runs at a matched training loss: ``(ours, theirs, level, our epoch, their epoch)``.

    The level is the lower training loss (mean over an epoch) that both runs reached, the higher of their two
    minima; each run is read at the first epoch (from 1) whose loss is at or below it.
    """
    losses = [np.asarray(r["logs"]["loss"], float) for r in (ours, theirs)]
    level = max(float(np.nanmin(loss)) for loss in losses)
    epochs = [int(np.flatnonzero(loss <= level)[0]) for loss in losses]
    accuracy = [r["logs"]["test_accuracy"][e] for r, e in zip((ours, theirs), epochs)]
    return accuracy[0], accuracy[1], level, epochs[0] + 1, epochs[1] + 1


def paired_against_sgd(groups: dict, early_epoch: int) -> str:
    """Per gamma, the paired differences from SGD with the same seed: mean [95% t-interval], t."""
    if 1.0 not in groups:
        return ""
    sgd = {r["config"]["seed"]: r for r in groups[1.0]}
    rows = []
    for gamma, runs in groups.items():
        if gamma == 1.0:
            continue
        pairs = [(r, sgd[r["config"]["seed"]]) for r in runs if r["config"]["seed"] in sgd]
        rows_of = [(table_row(a, early_epoch), table_row(b, early_epoch)) for a, b in pairs]
        matched = [at_matched_loss(a, b) for a, b in pairs]

        def cell(key, fmt=".2f", scale=1.0, rows_of=rows_of):
            return statistics.paired_cell([x[key] for x, _ in rows_of], [y[key] for _, y in rows_of], "+" + fmt,
                                          scale)

        rows.append([f"{gamma:g}", len(pairs), cell("test_at_best_val", ".1f", 100), cell("test_final", ".1f", 100),
                     statistics.paired_cell([m[0] for m in matched], [m[1] for m in matched], "+.1f", 100),
                     " / ".join(f"{m[2]:.3f} ({m[3]} vs {m[4]})" for m in matched),
                     cell("train_loss_later_half", ".3f"), cell("lambda_1_later_half", ".0f")])
    return markdown_table(
        ["gamma, minus SGD with the same seed", "pairs", "test acc. at best-val epoch (points)",
         "final test acc. (points)", "test acc. at matched train loss (points)",
         "matched train-loss level (epoch: gamma vs SGD), per seed", "train loss later half", "lambda_1 later half"],
        rows)


def draw_figure(plt, groups: dict):
    """The 2 x 2 figure: lambda_1, ||H_K||, training loss and validation accuracy per gamma; every seed thin, the
    arithmetic mean over seeds thick, and on the lambda_1 panel each gamma's 2/(gamma eta) dashed."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    colors = plt.cm.coolwarm(np.linspace(0, 1, len(groups)))
    panels = [
        (axes[0, 0], "$\\lambda_1$", True, eigenvalue_curve),
        (axes[0, 1], "$\\|H_K\\| = \\sqrt{\\sum_{k \\leq K} \\lambda_k^2}$", True,
         lambda r: (eigenvalue_curve(r)[0], top_k_norm(eigenvalue_curve(r)[1]))),
        (axes[1, 0], "training loss (mean over the epoch)", True,
         lambda r: (np.arange(1, len(r["logs"]["loss"]) + 1), np.array(r["logs"]["loss"]))),
        (axes[1, 1], "validation accuracy", False,
         lambda r: (np.arange(1, len(r["logs"]["val_accuracy"]) + 1), np.array(r["logs"]["val_accuracy"]))),
    ]
    for ax, ylabel, log, series in panels:
        for color, (gamma, runs) in zip(colors, groups.items()):
            curves = []
            for result in runs:
                x, y = series(result)
                y = y[:, 0] if y.ndim == 2 else y
                curves.append((x, y))
                ax.plot(x, y, color=color, alpha=0.35, lw=0.8)
            label = f"$\\gamma$ = {gamma:g}" + (" (SGD)" if gamma == 1 else "")
            ax.plot(*statistics.seed_mean(curves), color=color, marker="o", ms=3, lw=1.8, label=label)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("epochs of training")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    # The thresholds: drawn in each gamma's colour; one far above every measured value would squash the curves,
    # so the axis stops at 3 times the largest value and the legend says which thresholds lie above it.
    ax = axes[0, 0]
    bottom, top = ax.get_ylim()
    lr = next(iter(groups.values()))[0]["config"]["lr"]
    for color, gamma in zip(colors, groups):
        threshold = 2 / (gamma * lr)
        above = threshold > 3 * top
        ax.axhline(threshold, color=color, ls="--", lw=1,
                   label=f"$2/(\\gamma\\eta)$ = {threshold:g}" + (" (above the axis)" if above else ""))
    shown = [2 / (g * lr) for g in groups if 2 / (g * lr) <= 3 * top]
    ax.set_ylim(bottom, max([top, *(1.3 * t for t in shown)]))
    ax.legend(fontsize=7, ncol=2)
    c = next(iter(groups.values()))[0]["config"]
    fig.suptitle(f"Nudged SGD, $\\eta$ = {c['lr']:g}, batch {c['batch_size']}, K = {c['top_k']}: "
                 f"arithmetic mean of {max(len(r) for r in groups.values())} seed(s) (thick), each seed (thin), "
                 "$2/(\\gamma\\eta)$ (dashed)")
    return fig


def by_gamma(results: list[dict]) -> dict[float, list[dict]]:
    """Runs per gamma (ascending), each list sorted by seed."""
    return {gamma: runs for (gamma,), runs in by_setting(results, "gamma").items()}


def run_table(groups: dict, early_epoch: int) -> str:
    """The paper-style table: per gamma the mean over seeds with each seed's value, and later-half spreads."""
    first = next(iter(groups.values()))[0]
    columns = (("test_at_best_val", ".4f"), ("val_best", ".4f"), ("val_final", ".4f"), ("val_early", ".4f"),
               ("train_loss", ".4f"), ("lambda_1", ".1f"), ("hk_norm", ".1f"), ("distance", ".2f"))
    rows = []
    for gamma, runs in groups.items():
        entries = [table_row(r, early_epoch) for r in runs]
        rows.append([f"{gamma:g}", len(runs)]
                    + [statistics.mean_and_runs([e[key] for e in entries], fmt) for key, fmt in columns]
                    + [statistics.spread([e["lambda_1_later_half"] for e in entries]),
                       statistics.spread([e["hk_norm_later_half"] for e in entries]),
                       statistics.spread([e["train_loss_later_half"] for e in entries], ".4f")])
    return markdown_table(
        ["gamma", "seeds", "test acc. at best-val epoch", "best val. acc.", "final val. acc.",
         f"val. acc. after epoch {early_epoch}",
         f"final train loss ({first['final']['train_eval_examples']:,} ex.)", "final lambda_1", "final ||H_K||",
         "distance from init", "lambda_1 later half", "||H_K|| later half", "train loss later half"], rows)


def study_tables(groups: dict, early_epoch: int = 2) -> list[str]:
    """The study's three tables: per gamma; seeds ahead of SGD; paired differences from SGD (with matched loss)."""
    return [run_table(groups, early_epoch), against_sgd(groups, early_epoch), paired_against_sgd(groups, early_epoch)]


def main(argv=None) -> str:
    parser = figures.plot_parser(__doc__, STUDY)
    parser.add_argument("--early_epoch", type=int, default=2, help="epoch of the early validation accuracy")
    args = parser.parse_args(argv)
    groups = by_gamma(load_results(args.out))
    first = next(iter(groups.values()))[0]
    scale = Scale(**first["config"]["scale"])
    fig = draw_figure(figures.pyplot(), groups)
    path = os.path.join(args.figures, "nudged_sgd.png")
    figures.save_figure(fig, path, f"Eigenvalues at the start of each epoch and after the last. {scale.describe()}"
                        f"{', augmented' if first['config'].get('augment') else ''}.")
    return figures.write_table("\n\n".join(filter(None, study_tables(groups, args.early_epoch))), args.figures, path)


def kept_study_tables(folder: str) -> tuple[str, ...]:
    """The tables of the kept runs under ``folder``, in the order of ``TABLES``'s names."""
    return tuple(study_tables(by_gamma(load_results(folder))))


def _kept_tables(folder: str, suffix: str) -> dict:
    return kept_tables("nudged_sgd", ("runs", "ahead", "pairs"), folder, kept_study_tables, suffix)


#: RESULTS.md tables recomputed by ``python -m experiments.verify``.
TABLES = {**_kept_tables(KEPT_RUNS[""], ""), **_kept_tables(KEPT_RUNS[", augmented"], ".augmented")}


if __name__ == "__main__":
    main()
