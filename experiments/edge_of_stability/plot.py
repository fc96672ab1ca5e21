"""Plots study 5 (edge of stability): one figure and one table per part, and summary.csv of every run.

Per run, each quantity is summarised by statistics no single spike decides:
the mean over the later half of training (measurements at or after half of
the run's steps) and the peak of the curve smoothed by a 3-point running
mean. Per setting, the tables give the mean over seeds with the standard
deviation across seeds, the ratio to the stability threshold, and the final
and best validation accuracy.

    python -m experiments.edge_of_stability.plot [--out RUNS] [--figures FOLDER]
"""

from __future__ import annotations

import collections
import csv
import json
import os
import warnings

import numpy as np

from experiments._cli import markdown_table
from experiments.edge_of_stability import stationarity
from experiments.figures import plot_parser, pyplot, save_figure, write_table
from experiments.results import kept_tables, load_results
from experiments.scale import Scale
from experiments.statistics import later_half_mean, paired_cell, paired_difference, smoothed_peak, spread

STUDY = "edge_of_stability"

HERE = os.path.dirname(os.path.abspath(__file__))
#: The study's kept runs and its parity check's (``experiments.keep_runs``): the tables of RESULTS.md are
#: recomputed from them by ``python -m experiments.verify``.
KEPT_RUNS = os.path.join(HERE, "results", "runs")
KEPT_PARITY_RUNS = os.path.join(HERE, "results", "parity", "runs")
#: The study's tables, in the order :func:`study_tables` returns them.
TABLE_NAMES = ("gd", "sgd", "momentum", "adam", "final_check", "paired")
COLORS = ("k", "tab:blue", "tab:orange", "tab:red")


def pretty(name: str) -> str:
    """A threshold's name for a figure: ``2(1+b)/eta`` as 2(1+β)/η."""
    return name.replace("eta", "$\\eta$").replace("b)", "$\\beta$)")


def _plain(value, _position=None) -> str:
    return f"{value:g}"


def _formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(_plain)


def sgd_quantities(config: dict) -> list[tuple[str, str]]:
    """The quantities of a mini-batch run, in plotting order, with their labels (the sample sizes it used)."""
    samples = [(f"lambda_{m}", f"$\\lambda_1$, {m:,}-sample") for m in sorted(set(config["sample_sizes"]), reverse=True)
               if m < config["n_train"]]
    return [("lambda_full", "$\\lambda_1$, every example"), *samples, ("batch_sharpness", "batch sharpness")]


# -- statistics ------------------------------------------------------------------------------------------------

def curve(result: dict, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of one quantity over the run's measurements (NaN where not measured)."""
    records = result["records"]
    steps = np.array([r["step"] for r in records], dtype=float)
    values = np.array([r.get(key, np.nan) for r in records], dtype=float)
    return steps, values


def thresholds(config: dict) -> dict[str, float]:
    """The stability thresholds that apply to a run's optimizer (by name)."""
    lr, beta = config["lr"], config["momentum"]
    if config["optimizer"] == "adam":
        beta1 = stationarity.beta1(config)  # Keras's default 0.9 unless the run names another
        return {f"{(2 + 2 * beta1) / (1 - beta1):g}/eta": (2 + 2 * beta1) / (lr * (1 - beta1)), "2/eta": 2 / lr}
    if beta:
        return {"2(1+b)/eta": 2 * (1 + beta) / lr, "2(1-b)/eta": 2 * (1 - beta) / lr}
    return {"2/eta": 2 / lr}


def validation_accuracy(result: dict) -> tuple[float, float]:
    """``(final, best)`` validation accuracy: per epoch for ``fit`` runs, at the measurements for full-batch ones."""
    if result["logs"].get("val_accuracy"):
        values = np.asarray(result["logs"]["val_accuracy"], float)
    else:
        values = np.array([r.get("val_accuracy", np.nan) for r in result["records"]], float)
    return float(values[-1]), float(np.nanmax(values))


def run_summary(result: dict) -> dict:
    """One row of summary.csv: the run's configuration, statistics per quantity, thresholds and accuracy."""
    c = result["config"]
    row = {"part": c["part"], "optimizer": c["optimizer"], "lr": c["lr"], "momentum": c["momentum"],
           "batch_size": c["batch_size"] or "full", "seed": c["seed"], "n_train": c["n_train"],
           "steps": result["steps"], "diverged": int(result["diverged"])}
    keys = [key for key, _ in sgd_quantities(c)] + ["lambda_preconditioned"]
    for key in keys:
        steps, values = curve(result, key)
        if np.isfinite(values).any():
            row[f"{key}_later_half"] = later_half_mean(steps, values)
            row[f"{key}_smoothed_peak"] = smoothed_peak(values)
            row[f"{key}_final"] = float(values[np.isfinite(values)][-1])
    for name, value in thresholds(c).items():
        row[f"threshold {name}"] = value
    row["val_accuracy_final"], row["val_accuracy_best"] = validation_accuracy(result)
    row["train_loss_final"] = result["records"][-1]["train_loss"]
    return row


def setting_key(config: dict) -> tuple:
    return (config["part"], config["optimizer"], config["lr"], config["momentum"], config["batch_size"] or 0)


def group(results: list[dict]) -> dict[tuple, list[dict]]:
    """Runs by setting (all but the seed), each group sorted by seed."""
    groups = collections.defaultdict(list)
    for result in results:
        groups[setting_key(result["config"])].append(result)
    return {k: sorted(groups[k], key=lambda r: r["config"]["seed"]) for k in sorted(groups)}


def ratios(values, limits) -> str:
    """The mean over seeds of ``value / threshold`` for each threshold, ``;``-separated."""
    values = np.asarray([v for v in values if np.isfinite(v)], float)
    if values.size == 0:
        return "n/a"
    return "; ".join(f"{np.mean(values / limit):.2f}" for limit in limits)


def ratio(values, threshold: float) -> str:
    values = np.asarray([v for v in values if np.isfinite(v)], float) / threshold
    if values.size == 0:
        return "n/a"
    return f"{values.mean():.2f} ({values.min():.2f}–{values.max():.2f})"


# -- figures -----------------------------------------------------------------------------------------------------

def _mean_curve(runs: list[dict], key: str, x: str = "step"):
    """Common x (of the first run) and the per-seed values, for runs measured at the same points."""
    length = min(len(r["records"]) for r in runs)
    xs = np.array([r[x] for r in runs[0]["records"][:length]], float)
    values = np.array([[rec.get(key, np.nan) for rec in r["records"][:length]] for r in runs], float)
    return xs, values


def plot_band(ax, xs, values, color, label, style="-", zorder=2.0, lw=1.8):
    """Mean over seeds (line) and each seed (thin lines), so spikes and the spread both show."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a point no seed measured (Adam's step 0) stays NaN
        mean = np.nanmean(values, axis=0)
    for row in values:
        ax.plot(xs, row, style, color=color, lw=0.6, alpha=0.35, zorder=zorder - 0.5)
    ax.plot(xs, mean, style, color=color, lw=lw, marker="o", ms=2.5, label=label, zorder=zorder)


#: Below this magnitude the curvature axes of the mini-batch figures are linear (symlog): a batch sharpness
#: near zero or negative (early training) is drawn where it is instead of vanishing from a log axis.
LINEAR_BELOW = 1.0

#: How each mini-batch quantity is drawn: (line style, zorder, width). The full-data lambda_1 is the reference
#: the others are compared with, so it is drawn last (on top), solid and thickest; the sample lambda_1s, which
#: lie within a few per cent of it, are dashed underneath so that it stays visible.
STYLES = {"lambda_full": ("-", 6.0, 2.6), "batch_sharpness": ("-", 4.0, 1.8)}
SAMPLE_STYLES = (("--", 3.0, 1.3), (":", 2.5, 1.3))


def plot_gd(plt, groups, path: str, caption: str) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    colors = plt.cm.viridis(np.linspace(0, 0.85, len(groups)))
    for color, runs in zip(colors, groups.values()):
        lr = runs[0]["config"]["lr"]
        xs, lam = _mean_curve(runs, "lambda_full")
        _, loss = _mean_curve(runs, "train_loss")
        plot_band(axes[0], xs, lam, color, f"$\\eta$ = {lr:g}")
        axes[0].axhline(2 / lr, color=color, ls="--", lw=1)
        plot_band(axes[1], xs, lam * lr / 2, color, f"$\\eta$ = {lr:g}")
        plot_band(axes[2], xs, loss, color, f"$\\eta$ = {lr:g}")
    axes[0].set(yscale="log", ylabel="$\\lambda_1$ (every training example)",
                title="Full-batch GD: $\\lambda_1$ (dashed: $2/\\eta$)")
    axes[1].axhline(1.0, color="k", ls="--", lw=1)
    axes[1].set(ylabel="$\\eta\\lambda_1 / 2$", title="$\\lambda_1$ relative to $2/\\eta$")
    axes[2].set(yscale="log", ylabel="training loss (every example)", title="Training loss")
    for ax in axes:
        ax.set_xlabel("GD steps")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    save_figure(fig, path, caption)


def plot_minibatch(plt, groups, path: str, caption: str, title: str) -> None:
    """One panel per batch size: the four quantities against the thresholds; and their ratio per batch size."""
    save_figure(minibatch_figure(plt, groups, title), path,
                caption + f"; curvature axes symlog, linear within ±{LINEAR_BELOW:g} (no value is cut off)")


def minibatch_figure(plt, groups, title: str):
    """The mini-batch figure (see :func:`plot_minibatch`), not yet saved."""
    from matplotlib.ticker import NullFormatter, SymmetricalLogLocator

    settings = list(groups.values())
    fig, axes = plt.subplots(1, len(settings) + 1, figsize=(4.6 * (len(settings) + 1), 4.6), squeeze=False)
    axes = axes[0]
    quantities = sgd_quantities(settings[0][0]["config"])
    colors = dict(zip([k for k, _ in quantities], COLORS))
    samples = iter(SAMPLE_STYLES)
    styles = {key: STYLES.get(key) or next(samples, ("-.", 2.0, 1.2)) for key, _ in quantities}
    for ax, runs in zip(axes, settings):
        c = runs[0]["config"]
        for key, label in quantities:
            xs, values = _mean_curve(runs, key, "epoch")
            if np.isfinite(values).any():
                style, zorder, width = styles[key]
                plot_band(ax, xs, values, colors[key], label, style, zorder, width)
        for (name, value), style in zip(thresholds(c).items(), ("--", ":", "-.")):
            ax.axhline(value, color="gray", ls=style, lw=1.2, label=f"{pretty(name)} = {value:g}", zorder=1)
        # Thresholds a factor 19 apart (momentum) need a logarithmic axis, but the batch sharpness can be tiny or
        # negative early on: symlog is logarithmic above LINEAR_BELOW and linear below, so nothing is dropped.
        ax.set_yscale("symlog", linthresh=LINEAR_BELOW, linscale=0.5)
        # Headroom above the highest threshold, so that its line is not drawn on the frame.
        ax.set_ylim(top=max(ax.get_ylim()[1], 1.6 * max(thresholds(c).values())))
        ax.set(xlabel="epochs", ylabel=f"curvature (symlog, linear within ±{LINEAR_BELOW:g})",
               title=f"{title}, batch {c['batch_size']}, $\\eta$ = {c['lr']:g}")
        ax.yaxis.set_major_formatter(_formatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    ax = axes[-1]
    batch_sizes = [runs[0]["config"]["batch_size"] for runs in settings]
    main = next(iter(thresholds(settings[0][0]["config"]).items()))
    for offset, (key, label) in zip(np.linspace(-0.15, 0.15, len(quantities)), quantities):
        stats = [[later_half_mean(*curve(r, key)) / main[1] for r in runs] for runs in settings]
        means = [np.nanmean(s) if np.isfinite(s).any() else np.nan for s in stats]
        errors = [np.nanstd(s, ddof=1) if np.isfinite(s).sum() > 1 else 0 for s in stats]
        positions = np.arange(len(settings)) + offset
        ax.errorbar(positions, means, yerr=errors, fmt="o", color=colors[key], capsize=3, label=label)
        for position, values in zip(positions, stats):
            ax.plot([position] * len(values), values, ".", color=colors[key], alpha=0.4)
    for name, value in thresholds(settings[0][0]["config"]).items():
        ax.axhline(value / main[1], color="gray", ls="--" if name == main[0] else ":", lw=1)
    ax.set_xticks(range(len(settings)), [f"batch {b}" for b in batch_sizes])
    ratio_linear = LINEAR_BELOW / main[1]
    ax.set_yscale("symlog", linthresh=ratio_linear, linscale=0.5)
    ax.set_ylim(top=max(ax.get_ylim()[1], 1.6 * max(value / main[1] for value in thresholds(
        settings[0][0]["config"]).values())))
    ax.yaxis.set_major_locator(SymmetricalLogLocator(linthresh=ratio_linear, base=10, subs=(1.0, 2.0, 5.0)))
    ax.set(ylabel=f"later-half mean / {pretty(main[0])} (symlog)",
           title=f"Later-half mean relative to {pretty(main[0])}")
    ax.yaxis.set_major_formatter(_formatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return fig


def plot_adam(plt, groups, path: str, caption: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    colors = plt.cm.plasma(np.linspace(0, 0.7, len(groups)))
    for color, runs in zip(colors, groups.values()):
        c = runs[0]["config"]
        label = "full batch" if c["batch_size"] is None else f"batch {c['batch_size']}"
        xs, pre = _mean_curve(runs, "lambda_preconditioned")
        _, lam = _mean_curve(runs, "lambda_full")
        plot_band(axes[0], xs, pre, color, label)
        plot_band(axes[1], xs, lam, color, label)
    lr = next(iter(groups.values()))[0]["config"]["lr"]
    axes[0].axhline(38 / lr, color="k", ls="--", lw=1, label=f"38/$\\eta$ = {38 / lr:g}")
    axes[1].axhline(2 / lr, color="k", ls="--", lw=1, label=f"2/$\\eta$ = {2 / lr:g}")
    axes[0].set(yscale="log", ylabel="$\\lambda_1(P^{-1}H)$",
                title=f"Adam ($\\eta$ = {lr:g}): preconditioned sharpness")
    axes[1].set(yscale="log", ylabel="$\\lambda_1(H)$", title="Adam: plain $\\lambda_1$ (every example)")
    for ax in axes:
        ax.set_xlabel("optimizer steps")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    save_figure(fig, path, caption)


# -- tables --------------------------------------------------------------------------------------------------------

def accuracy_cells(runs) -> list[str]:
    final, best = zip(*(validation_accuracy(r) for r in runs))
    return [spread(final, ".3f"), spread(best, ".3f")]


def gd_table(groups) -> str:
    rows = []
    for runs in groups.values():
        c = runs[0]["config"]
        threshold = 2 / c["lr"]
        later = [later_half_mean(*curve(r, "lambda_full")) for r in runs]
        peaks = [smoothed_peak(curve(r, "lambda_full")[1]) for r in runs]
        first_cross = [crossing_step(r, "lambda_full", threshold) for r in runs]
        # GD at the edge flips across the valley every step: measuring on even steps only sees one side.
        parity = [" / ".join(spread([later_half_mean(*parity_curve(r, side))], ".1f") for side in (0, 1))
                  for r in runs]
        rows.append([f"{c['lr']:g}", c["measure_every_steps"], f"{threshold:.1f}", spread(later),
                     ratio(later, threshold), spread(peaks), spread(first_cross, ".0f"), "; ".join(parity),
                     *accuracy_cells(runs), sum(r["diverged"] for r in runs)])
    return markdown_table(["lr", "measured every", "2/eta", "lambda_1 later half", "/ (2/eta)",
                                  "smoothed peak", "first step >= 2/eta", "later half at even / odd steps, per seed",
                                  "val acc final", "val acc best", "diverged"], rows)


def parity_curve(result: dict, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The lambda_1 curve with the measurements at steps of the other parity set to NaN."""
    steps, values = curve(result, "lambda_full")
    return steps, np.where(steps % 2 == side, values, np.nan)


def sample_to_full(result: dict, key: str) -> float:
    """Mean over the later half of ``lambda_1(sample) / lambda_1(every example)``, measured at the same points."""
    steps, sample = curve(result, key)
    _, full = curve(result, "lambda_full")
    with np.errstate(divide="ignore", invalid="ignore"):
        return later_half_mean(steps, sample / full)


def final_check_table(out: str) -> str | None:
    """Batch sharpness at the final weights (``final_check.py``), both readings, per setting; None if not run."""
    found = collections.defaultdict(list)
    for here, _, files in sorted(os.walk(out)):
        if "final_check.json" in files and "result.json" in files:
            with open(os.path.join(here, "result.json")) as f:
                config = json.load(f)["config"]
            with open(os.path.join(here, "final_check.json")) as f:
                found[setting_key(config)].append((config, json.load(f)))
    if not found:
        return None
    rows = []
    for key in sorted(found):
        config, first = found[key][0]
        checks = [check for _, check in found[key]]
        (name, threshold), = list(thresholds(config).items())[:1]
        rows.append([config["part"], config["batch_size"], f"{config['lr']:g}", f"{name} = {threshold:g}",
                     first["num_batches"], spread([c["batch_sharpness"] for c in checks]),
                     ratio([c["batch_sharpness"] for c in checks], threshold),
                     spread([c["ratio_of_means"] for c in checks]),
                     ratio([c["ratio_of_means"] for c in checks], threshold),
                     spread([c["lambda_full"] for c in checks]), len(checks)])
    return markdown_table(["part", "batch", "lr", "threshold", "batches", "E[g'Hg / g'g]", "/ threshold",
                                  "E[g'Hg] / E[g'g]", "/ threshold", "final lambda_1 all", "seeds"], rows)


def crossing_step(result: dict, key: str, threshold: float) -> float:
    """First measured step with the quantity at or above ``threshold`` (NaN if never)."""
    steps, values = curve(result, key)
    above = np.flatnonzero(values >= threshold)
    return float(steps[above[0]]) if above.size else float("nan")


def minibatch_table(groups) -> str:
    rows = []
    for runs in groups.values():
        c = runs[0]["config"]
        limits = thresholds(c)
        cells = [c["batch_size"], f"{c['lr']:g}", " / ".join(f"{v:.0f}" for v in limits.values())]
        for key, _ in sgd_quantities(c):
            later = [later_half_mean(*curve(r, key)) for r in runs]
            cells.append(f"{spread(later)} [{ratios(later, limits.values())}]")
        peaks = [smoothed_peak(curve(r, "lambda_full")[1]) for r in runs]
        cells.append(f"{spread(peaks)} [{ratios(peaks, limits.values())}]")
        for key, _ in sgd_quantities(c)[1:-1]:
            cells.append(spread([sample_to_full(r, key) for r in runs], ".3f"))
        # Is lambda_1 above or below the batch sharpness? Both are measured in every seed: a paired comparison.
        cells.append(paired_cell([later_half_mean(*curve(r, "lambda_full")) for r in runs],
                                 [later_half_mean(*curve(r, "batch_sharpness")) for r in runs], "+.1f"))
        cells += [*accuracy_cells(runs), sum(r["diverged"] for r in runs)]
        rows.append(cells)
    first = next(iter(groups.values()))[0]["config"]
    names = " / ".join(thresholds(first))
    sample_columns = [f"lambda_1 {key[len('lambda_'):]}" for key, _ in sgd_quantities(first)[1:-1]]
    ratio_columns = [f"{column} / lambda_1 all" for column in sample_columns]
    return markdown_table(["batch", "lr", names, "lambda_1 all (later half)", *sample_columns,
                                  "batch sharpness", "lambda_1 all, smoothed peak", *ratio_columns,
                                  "lambda_1 all - batch sharpness, later half (paired over seeds, 95% t)",
                                  "val acc final", "val acc best", "diverged"], rows)


def adam_table(groups) -> str:
    rows = []
    for runs in groups.values():
        c = runs[0]["config"]
        limit = next(iter(thresholds(c).values()))  # (2 + 2 beta1) / ((1 - beta1) eta): 38/eta at beta1 = 0.9
        pre = [later_half_mean(*curve(r, "lambda_preconditioned")) for r in runs]
        pre_peak = [smoothed_peak(curve(r, "lambda_preconditioned")[1]) for r in runs]
        lam = [later_half_mean(*curve(r, "lambda_full")) for r in runs]
        rows.append(["full" if c["batch_size"] is None else c["batch_size"], f"{c['lr']:g}", f"{limit:.0f}",
                     spread(pre, ".0f"), ratio(pre, limit), spread(pre_peak, ".0f"), spread(lam),
                     ratio(lam, 2 / c["lr"]), *accuracy_cells(runs), sum(r["diverged"] for r in runs)])
    return markdown_table(["batch", "lr", "38/eta", "lambda_1(P^-1 H) later half", "/ (38/eta)",
                                  "smoothed peak", "plain lambda_1 later half", "/ (2/eta)", "val acc final",
                                  "val acc best", "diverged"], rows)


def read_summary(path: str) -> list[dict]:
    """The rows of a study's ``summary.csv`` (strings, as :func:`paired_summary_table` accepts them)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def paired_summary_table(summary: list[dict]) -> str:
    """From the per-run summary rows (:func:`run_summary`, or ``summary.csv`` read back): per mini-batch setting,
    lambda_1 of every example and the batch sharpness over the later half, seed by seed, their difference paired
    by seed with its 95% t-interval, and lambda_1 / threshold with a one-sample 95% t-interval over seeds
    (empty if no mini-batch run)."""
    rows = [row for row in summary if row["part"] in ("sgd", "momentum")]
    if not rows:
        return ""
    settings = collections.defaultdict(list)
    for row in rows:
        settings[(row["part"], int(row["batch_size"]), float(row["lr"]))].append(row)
    table = []
    for (part, batch, lr), runs in sorted(settings.items()):
        runs.sort(key=lambda row: int(row["seed"]))
        lam = [float(row["lambda_full_later_half"]) for row in runs]
        sharp = [float(row["batch_sharpness_later_half"]) for row in runs]
        name, threshold = next((k[len("threshold "):], float(v)) for k, v in runs[0].items()
                               if k.startswith("threshold ") and v not in ("", None))
        ratio = paired_difference(np.divide(lam, threshold), np.zeros(len(lam)))  # one-sample: the mean's interval
        ratio_cell = f"{ratio['mean']:.2f} [{ratio['low']:.2f}, {ratio['high']:.2f}]"
        table.append([part, batch, f"{lr:g}", ", ".join(str(row["seed"]) for row in runs),
                      " / ".join(f"{v:.1f}" for v in lam), " / ".join(f"{v:.1f}" for v in sharp),
                      paired_cell(lam, sharp, "+.1f"), f"{name} = {threshold:g}", ratio_cell])
    return markdown_table(["part", "batch", "lr", "seeds", "lambda_1 all, later half, per seed",
                           "batch sharpness, later half, per seed",
                           "lambda_1 all - batch sharpness (paired, 95% t)", "threshold",
                           "lambda_1 all / threshold (95% t)"], table)


def write_summary_csv(results: list[dict], path: str) -> list[dict]:
    rows = [run_summary(r) for r in sorted(results, key=lambda r: (setting_key(r["config"]), r["config"]["seed"]))]
    keys = list(dict.fromkeys(k for row in rows for k in row))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def caption(results: list[dict], what: str) -> str:
    c = results[0]["config"]
    s = Scale(**c["scale"])
    seeds = sorted({r["config"]["seed"] for r in results})
    sizes = sorted({(r["config"]["n_train"], r["config"]["batch_size"] is None) for r in results})
    examples = " / ".join(f"{n:,}" + (" (full batch)" if full and len(sizes) > 1 else "") for n, full in sizes)
    return (f"{what}. SimpleCNN-root (F={s.n_filters}), real Fashion-MNIST, {examples} training examples, "
            f"seeds {', '.join(map(str, seeds))} (thin: each seed; thick: their mean); Lanczos tol {s.tol:g}.")


def by_part(results: list[dict]) -> dict[str, list[dict]]:
    """The runs of each part (``gd``, ``sgd``, ``momentum``, ``adam``; empty for a part not run)."""
    parts = collections.defaultdict(list)
    for result in results:
        parts[result["config"]["part"]].append(result)
    return parts


def study_tables(results: list[dict], out: str) -> tuple[str, ...]:
    """The study's tables, named by :data:`TABLE_NAMES` (empty where the runs hold no such part)."""
    parts = by_part(results)
    return (gd_table(group(parts["gd"])) if parts["gd"] else "",
            minibatch_table(group(parts["sgd"])) if parts["sgd"] else "",
            minibatch_table(group(parts["momentum"])) if parts["momentum"] else "",
            adam_table(group(parts["adam"])) if parts["adam"] else "",
            final_check_table(out) or "",
            paired_summary_table([run_summary(r) for r in results]))


def main(argv=None) -> str:
    parser = plot_parser(__doc__, STUDY)
    args = parser.parse_args(argv)
    results = load_results(args.out)
    plt = pyplot()
    os.makedirs(args.figures, exist_ok=True)
    write_summary_csv(results, os.path.join(args.figures, "summary.csv"))
    parts = by_part(results)
    tables = dict(zip(TABLE_NAMES, study_tables(results, args.out)))
    sections, figures = [], []
    if parts["gd"]:
        path = os.path.join(args.figures, "gd.png")
        plot_gd(plt, group(parts["gd"]), path, caption(parts["gd"], "Part 1, full-batch GD"))
        sections.append("### Part 1: full-batch GD\n\n" + tables["gd"])
        figures.append(path)
    for part, title in (("sgd", "SGD"), ("momentum", "SGD + momentum")):
        if parts[part]:
            path = os.path.join(args.figures, f"{part}.png")
            beta = parts[part][0]["config"]["momentum"]
            name = title if not beta else f"{title} {beta:g}"
            plot_minibatch(plt, group(parts[part]), path, caption(parts[part], f"{name}; later half: "
                           "measurements from half of the run on"), name)
            number = 2 if part == "sgd" else 3
            sections.append(f"### Part {number}: {name}\n\nLater-half mean ± std over seeds [mean over seeds of its "
                            "ratio to each threshold, in the order of the threshold column]\n\n" + tables[part])
            figures.append(path)
    if parts["adam"]:
        path = os.path.join(args.figures, "adam.png")
        plot_adam(plt, group(parts["adam"]), path, caption(parts["adam"], "Part 4, Adam"))
        sections.append("### Part 4: Adam\n\n" + tables["adam"])
        figures.append(path)
    if tables["final_check"]:
        sections.append("### Batch sharpness at the final weights, both readings (final_check.py)\n\n"
                        + tables["final_check"])
    if tables["paired"]:
        sections.append("### lambda_1 against the batch sharpness, paired by seed\n\n" + tables["paired"])
    return write_table("\n\n".join(sections), args.figures, *figures)


def kept_study_tables(folder: str) -> tuple[str, ...]:
    """The tables of the kept runs under ``folder`` (their final checks are kept beside them)."""
    return study_tables(load_results(folder), folder)


#: RESULTS.md tables recomputed by ``python -m experiments.verify``: every table of the kept runs, the parity
#: check's GD table, and the stationarity campaign's.
TABLES = {**kept_tables(STUDY, TABLE_NAMES, KEPT_RUNS, kept_study_tables),
          **kept_tables(STUDY, ("gd",), KEPT_PARITY_RUNS, kept_study_tables, ".parity"),
          **stationarity.TABLES}


if __name__ == "__main__":
    main()
