"""Plots study 2: lambda_1 and lambda_2 per epoch (log scale) across learning rates and batch sizes.

Per run, lambda_k is summarised by statistics no single spike decides: the
peak of its 3-point running mean (and the epoch at the centre of that
window) and its mean over the later half of training; the table gives their
mean ± standard deviation over seeds, the raw peak beside them, the final
and best validation accuracy, in how many seeds the smoothed peak is the
run's last window (the curve was still rising: no peak was seen); a
second table gives, for each neighbouring pair of settings, in how many
seeds the claimed order holds and the paired difference with its 95%
t-interval over seeds. The figure's thick line is the
arithmetic mean over seeds (the tables' statistic), with 2/eta dashed.

    python -m experiments.lr_batch_size.plot [--out RUNS] [--figures FOLDER]
"""

from __future__ import annotations

import os

import numpy as np

from experiments import figures, statistics
from experiments._cli import markdown_table
from experiments.results import by_setting, eigenvalue_curve, kept_tables, load_results
from experiments.scale import Scale

STUDY = "lr_batch_size"

#: Where ``python -m experiments.keep_runs`` puts the study's raw runs, per setting; ``verify`` recomputes the
#: study's tables from them once they are there.
KEPT_RUNS = {"": os.path.join(figures.default_figures(STUDY), "runs"),
             ", augmented": os.path.join(figures.default_figures(STUDY), "augmented", "runs")}


def run_summary(result: dict) -> dict:
    """One run's statistics of lambda_1 and lambda_2, its accuracy and its training loss."""
    epochs, values = eigenvalue_curve(result)
    summary = {"seed": result["config"]["seed"]}
    for k in range(min(2, values.shape[1])):
        curve = values[:, k]
        index = statistics.smoothed_peak_index(curve)
        summary[f"smoothed_peak_{k + 1}"] = statistics.smoothed_peak(curve)
        summary[f"smoothed_peak_epoch_{k + 1}"] = float(epochs[np.isfinite(curve)][index]) if index >= 0 else np.nan
        summary[f"peak_{k + 1}"] = statistics.peak(curve)[1]
        summary[f"later_half_{k + 1}"] = statistics.later_half_mean(epochs, curve)
        summary[f"final_{k + 1}"] = float(curve[-1])
        summary[f"peak_in_last_window_{k + 1}"] = statistics.peak_in_last_window(curve)
    accuracy = np.asarray(result["logs"].get("val_accuracy", [np.nan]), float)
    summary["val_final"], summary["val_best"] = float(accuracy[-1]), float(np.nanmax(accuracy))
    summary["train_loss"] = result["final"]["train_loss"]
    summary["diverged"] = bool(result["final"]["diverged"])
    return summary


def pairwise_rows(groups: dict, key: str, name: str, what: str) -> list[list]:
    """For each neighbouring pair of settings (``{setting: [run_summary, ...]}``): in how many seeds the first has
    the lower ``key``, and the paired difference (first minus second) with its 95% t-interval over seeds."""
    labels = [f"{name} {setting[0]:g}" for setting in groups]
    per_setting = [{s["seed"]: s[key] for s in summaries} for summaries in groups.values()]
    rows = []
    for i in range(len(per_setting) - 1):
        seeds = sorted(set(per_setting[i]) & set(per_setting[i + 1]))
        lower = sum(per_setting[i][seed] < per_setting[i + 1][seed] for seed in seeds)
        difference = statistics.paired_cell([per_setting[i][seed] for seed in seeds],
                                            [per_setting[i + 1][seed] for seed in seeds], "+.1f")
        rows.append([what, f"{labels[i]} < {labels[i + 1]}", f"{lower}/{len(seeds)}", difference])
    return rows


def draw_figure(plt, sweeps: dict):
    """The 2 x 2 figure: lambda_1 and lambda_2 across each sweep; per setting every seed (thin), the arithmetic
    mean over seeds (thick, as in the table) and 2/eta (dashed, same colour)."""
    fig, axes = plt.subplots(2, 2, figsize=(10.5, 8))
    for row, (sweep, title) in enumerate([("lr", "learning rate"), ("batch", "batch size")]):
        groups = sweeps[sweep]
        colors = plt.cm.plasma(np.linspace(0, 0.8, len(groups)))
        for k in range(2):
            ax = axes[row, k]
            drawn = set()
            for color, runs in zip(colors, groups.values()):
                c = runs[0]["config"]
                curves = [(e, v[:, k]) for e, v in (eigenvalue_curve(r) for r in runs)]
                for x, y in curves:
                    ax.plot(x, y, color=color, alpha=0.3, lw=0.7)
                label = f"$\\eta$ = {c['lr']:g}" if sweep == "lr" else f"batch {c['batch_size']}"
                ax.plot(*statistics.seed_mean(curves), marker="o", ms=3, lw=1.8, color=color, label=label)
                if c["lr"] not in drawn:  # the batch sweep shares one eta: one line
                    drawn.add(c["lr"])
                    ax.axhline(2 / c["lr"], color=color if sweep == "lr" else "gray", ls="--", lw=1,
                               label=f"$2/\\eta$ = {2 / c['lr']:g}")
            ax.set_yscale("log")
            ax.set_xlabel("epochs of training")
            ax.set_ylabel(f"$\\lambda_{k + 1}$")
            c = next(iter(groups.values()))[0]["config"]
            fixed = f"batch {c['batch_size']}" if sweep == "lr" else f"$\\eta$ = {c['lr']:g}"
            ax.set_title(f"$\\lambda_{k + 1}$ across {title} (SGD, {fixed})")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7, ncol=2)
    seeds = max(len(runs) for groups in sweeps.values() for runs in groups.values())
    fig.suptitle(f"arithmetic mean of {seeds} seed(s) (thick), each seed (thin), $2/\\eta$ (dashed)")
    return fig


def load_sweeps(folder: str) -> dict:
    """The study's runs under ``folder``: ``{"lr": {setting: [run, ...]}, "batch": {...}}``."""
    return {"lr": by_setting(load_results(os.path.join(folder, "lr_sweep")), "lr", "batch_size"),
            "batch": by_setting(load_results(os.path.join(folder, "batch_sweep")), "batch_size", "lr")}


def summaries_of(sweeps: dict) -> dict:
    """:func:`run_summary` of every run, in the layout of :func:`load_sweeps`."""
    return {sweep: {setting: [run_summary(r) for r in runs] for setting, runs in groups.items()}
            for sweep, groups in sweeps.items()}


def settings_table(sweeps: dict, summaries: dict) -> str:
    """Per setting, the mean ± standard deviation over seeds of each statistic (``summaries``: :func:`summaries_of`
    the ``sweeps``)."""
    rows = []
    for sweep, groups in sweeps.items():
        for setting, runs in groups.items():
            c, of_setting = runs[0]["config"], summaries[sweep][setting]

            def column(key, fmt=".1f", of_setting=of_setting):
                return statistics.spread([s[key] for s in of_setting], fmt)

            rows.append([sweep, f"{c['lr']:g}", c["batch_size"], len(runs), column("smoothed_peak_1"),
                         column("smoothed_peak_epoch_1"), column("later_half_1"), column("peak_1"),
                         column("smoothed_peak_2"), column("later_half_2"), column("train_loss", ".3f"),
                         column("val_final", ".3f"), column("val_best", ".3f"),
                         f"{sum(s['peak_in_last_window_1'] for s in of_setting)}/{len(of_setting)}",
                         sum(s["diverged"] for s in of_setting)])
    return markdown_table(["sweep", "lr", "batch", "seeds", "lambda_1 smoothed peak", "at epoch",
                           "lambda_1 later half", "lambda_1 raw peak", "lambda_2 smoothed peak",
                           "lambda_2 later half", "final train loss", "val acc final", "val acc best",
                           "lambda_1 smoothed peak in the last window", "diverged"],
                          rows)


def comparisons_table(summaries: dict) -> str:
    """The claims, seed by seed: a larger lr (a smaller batch) gives a lower (earlier) peak, so each setting is
    compared with its neighbour (``summaries``: :func:`summaries_of` the runs). An lr that has not peaked yet shows
    up as a failed comparison, not as a lower peak."""
    lr_groups = dict(reversed(list(summaries["lr"].items())))
    rows = []
    for key, what in (("smoothed_peak_1", "smoothed peak of lambda_1"), ("later_half_1", "later-half lambda_1"),
                      ("smoothed_peak_epoch_1", "epoch of the smoothed peak")):
        rows += pairwise_rows(lr_groups, key, "lr", what) + pairwise_rows(summaries["batch"], key, "batch", what)
    return markdown_table(["statistic", "lower for", "seeds where lower", "paired difference [95% t-interval]"],
                          rows)


def study_tables(sweeps: dict) -> tuple[str, str]:
    """The study's two tables: per setting; and each neighbouring pair of settings compared seed by seed."""
    summaries = summaries_of(sweeps)
    return settings_table(sweeps, summaries), comparisons_table(summaries)


def main(argv=None) -> str:
    parser = figures.plot_parser(__doc__, STUDY)
    args = parser.parse_args(argv)
    sweeps = load_sweeps(args.out)
    first = next(iter(sweeps["lr"].values()))[0]
    scale = Scale(**first["config"]["scale"])
    plt = figures.pyplot()
    fig = draw_figure(plt, sweeps)
    path = os.path.join(args.figures, "lr_batch_size.png")
    figures.save_figure(fig, path, f"Measured at the start of each epoch and after the last. {scale.describe()}"
                        f"{', augmented' if first['config'].get('augment') else ''}.")
    return figures.write_table("\n\n".join(study_tables(sweeps)), args.figures, path)


def kept_study_tables(folder: str) -> tuple[str, ...]:
    """The tables of the kept runs under ``folder``, in the order of ``TABLES``'s names."""
    return study_tables(load_sweeps(folder))


def _kept_tables(folder: str, suffix: str) -> dict:
    return kept_tables("lr_batch_size", ("runs", "pairs"), folder, kept_study_tables, suffix)


#: RESULTS.md tables recomputed by ``python -m experiments.verify``: both tables of each setting whose runs are kept.
TABLES = {**_kept_tables(KEPT_RUNS[""], ""), **_kept_tables(KEPT_RUNS[", augmented"], ".augmented")}


if __name__ == "__main__":
    main()
