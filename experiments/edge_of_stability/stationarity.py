"""Study 5's stationarity campaign: is a run's late phase stationary, and does the edge scale as 1/eta?

Two questions the single-learning-rate runs of study 5 could not answer:

* **Has the run reached stationarity?** For one quantity of one run (lambda_1,
  the batch sharpness, or Adam's preconditioned sharpness), :func:`stationarity`
  compares the means of the last two quarter-windows of the run (measurements in
  ``[T/2, 3T/4)`` and ``[3T/4, T]``, ``T`` the last measured step) and fits a
  line to the later half (least squares, value against step). The run counts as
  stationary when the two window means differ by at most ``tol`` (5%) of the
  earlier one *and* the fitted drift over the later half, ``slope * T/2 / mean``,
  is not significantly larger than ``tol``: its 95% t-interval reaches inside
  ``[-tol, tol]``. Successive measurements of an edge-of-stability curve are
  correlated (GD flips every step, SGD's sharpness wanders), so the interval is
  too narrow rather than too wide; the window criterion does not rely on it.
* **Is the edge a line in 1/eta?** :func:`inverse_lr_fit` fits, per optimizer
  setting (optimizer, batch size, momentum, beta1, training-set size), the
  later-half mean of a quantity against ``1/eta`` over every run (each seed a
  point): ``value = slope / eta + intercept`` with 95% t-intervals (n - 2 degrees
  of freedom), and the line through the origin ``value = slope0 / eta`` (n - 1).
  The stability theory predicts a slope of 2 (GD's lambda_1; SGD's batch
  sharpness), 2(1+beta) or 2(1-beta) (heavy-ball momentum at large or small
  batches) and (2 + 2 beta1) / (1 - beta1) (Adam's preconditioned sharpness; 38
  at beta1 = 0.9, 6 at 0.5), with no intercept.

The tables are computed from the kept compact run files (``result.json``, as
``python -m experiments.keep_runs`` copies them to
``experiments/edge_of_stability/results/stationarity/runs``); once that folder
exists its tables are registered for ``python -m experiments.verify`` (see
:data:`TABLES`).

    python -m experiments.edge_of_stability.stationarity [--out RUNS] [--figures FOLDER]   # tables and figure
"""

from __future__ import annotations

import collections
import json
import os

import numpy as np

from experiments._cli import markdown_table
from experiments.statistics import smoothed_peak

STUDY = "edge_of_stability"
HERE = os.path.dirname(os.path.abspath(__file__))

#: Where the campaign's runs are trained (``run --campaign stationarity``) and where their compact copies are kept.
CAMPAIGN_OUT = os.path.join(os.path.dirname(os.path.dirname(HERE)), "runs", "experiments",
                            "edge_of_stability_stationarity")
KEPT_RUNS = os.path.join(HERE, "results", "stationarity", "runs")
#: SGD at batch 32 run to 6,000 steps (its 3,000-step runs were still rising), trained with ``--out
#: runs/experiments/edge_of_stability_stationarity_long`` and kept apart, so that no fit mixes run lengths.
KEPT_LONG_RUNS = os.path.join(HERE, "results", "stationarity", "long", "runs")

#: Relative change between the last two quarter-windows (and fitted later-half drift) that still counts as stationary.
TOLERANCE = 0.05


def _t_quantile(dof: int, confidence: float = 0.95) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, dof))


def stationarity(steps, values, tol: float = TOLERANCE, confidence: float = 0.95) -> dict:
    """Whether one measured curve has stopped drifting over the later half of its run (see the module docstring).

    Returns ``window_means`` (the means of the finite values in ``[T/2, 3T/4)`` and ``[3T/4, T]``), ``change``
    (their relative difference, second minus first over the first's magnitude), ``drift`` with ``drift_low`` and
    ``drift_high`` (the fitted later-half slope times ``T/2``, over the later-half mean, with its t-interval),
    ``n`` (finite later-half measurements) and ``stationary``; with fewer than two finite values in either window
    (or fewer than three in the later half) the numbers that need them are NaN and ``stationary`` is False.
    """
    steps, values = np.asarray(steps, float), np.asarray(values, float)
    finite = np.isfinite(values) & np.isfinite(steps)
    nan = float("nan")
    out = {"window_means": (nan, nan), "change": nan, "drift": nan, "drift_low": nan, "drift_high": nan, "n": 0,
           "stationary": False}
    if not finite.any():
        return out
    end = steps[finite].max()
    later = finite & (steps >= end / 2)
    first = later & (steps < 3 * end / 4)
    second = later & (steps >= 3 * end / 4)
    out["n"] = int(later.sum())
    if first.sum() >= 2 and second.sum() >= 2:
        m1, m2 = float(values[first].mean()), float(values[second].mean())
        out["window_means"] = (m1, m2)
        out["change"] = (m2 - m1) / abs(m1) if m1 else nan
    if later.sum() >= 3:
        x, y = steps[later], values[later]
        slope, intercept = np.polyfit(x, y, 1)
        residuals = y - (slope * x + intercept)
        dof = x.size - 2
        sxx = float(np.sum((x - x.mean()) ** 2))
        stderr = float(np.sqrt(np.sum(residuals ** 2) / dof / sxx)) if sxx > 0 else nan
        scale = (end / 2) / abs(float(y.mean()))
        half = _t_quantile(dof, confidence) * stderr
        out["drift"] = float(slope) * scale
        out["drift_low"], out["drift_high"] = (float(slope) - half) * scale, (float(slope) + half) * scale
    out["stationary"] = bool(abs(out["change"]) <= tol and out["drift_low"] <= tol and out["drift_high"] >= -tol)
    return out


def inverse_lr_fit(lrs, values, confidence: float = 0.95) -> dict:
    """Least-squares line of ``values`` against ``1/lr``, with and without an intercept, and t-intervals.

    One point per run (``lrs[i]``, ``values[i]``; non-finite values are left out). Returns ``n``, ``slope``,
    ``slope_low``, ``slope_high``, ``intercept``, ``intercept_low``, ``intercept_high`` (n - 2 degrees of freedom;
    NaN intervals with fewer than three points or a single learning rate) and ``slope0``, ``slope0_low``,
    ``slope0_high`` (the line through the origin, n - 1 degrees of freedom).
    """
    x = 1.0 / np.asarray(lrs, float)
    y = np.asarray(values, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    nan = float("nan")
    fit = {"n": n, "slope": nan, "slope_low": nan, "slope_high": nan, "intercept": nan, "intercept_low": nan,
           "intercept_high": nan, "slope0": nan, "slope0_low": nan, "slope0_high": nan}
    if n >= 1 and np.any(x):
        sxx0 = float(np.sum(x * x))
        fit["slope0"] = float(np.sum(x * y)) / sxx0
        if n >= 2:
            residual = float(np.sum((y - fit["slope0"] * x) ** 2))
            half = _t_quantile(n - 1, confidence) * np.sqrt(residual / (n - 1) / sxx0)
            fit["slope0_low"], fit["slope0_high"] = fit["slope0"] - half, fit["slope0"] + half
    sxx = float(np.sum((x - x.mean()) ** 2)) if n else 0.0
    if n >= 2 and sxx > 0:
        slope = float(np.sum((x - x.mean()) * (y - y.mean()))) / sxx
        intercept = float(y.mean() - slope * x.mean())
        fit["slope"], fit["intercept"] = slope, intercept
        if n >= 3:
            s2 = float(np.sum((y - slope * x - intercept) ** 2)) / (n - 2)
            q = _t_quantile(n - 2, confidence)
            slope_half = q * np.sqrt(s2 / sxx)
            intercept_half = q * np.sqrt(s2 * (1.0 / n + x.mean() ** 2 / sxx))
            fit["slope_low"], fit["slope_high"] = slope - slope_half, slope + slope_half
            fit["intercept_low"], fit["intercept_high"] = intercept - intercept_half, intercept + intercept_half
    return fit


# -- runs -> rows ------------------------------------------------------------------------------------------------

def beta1(config: dict) -> float:
    """Adam's beta1 of a run (Keras's default 0.9 where the configuration does not name one)."""
    return float(config.get("beta1", 0.9))


def predicted_slopes(config: dict) -> dict[str, float]:
    """The slopes of the edge against 1/eta that the theory predicts for a run's optimizer, by name."""
    if config["optimizer"] == "adam":
        b = beta1(config)
        return {f"(2+2b1)/(1-b1) = {(2 + 2 * b) / (1 - b):g}": (2 + 2 * b) / (1 - b)}
    beta = float(config.get("momentum", 0.0))
    if beta:
        return {f"2(1+b) = {2 * (1 + beta):g}": 2 * (1 + beta), f"2(1-b) = {2 * (1 - beta):g}": 2 * (1 - beta)}
    return {"2": 2.0}


def quantities(config: dict) -> list[str]:
    """The quantities whose edge is tested for a run: lambda_1 always, the batch sharpness for mini-batch SGD,
    the preconditioned sharpness for Adam."""
    if config["optimizer"] == "adam":
        return ["lambda_preconditioned", "lambda_full"]
    if config.get("batch_size"):
        return ["lambda_full", "batch_sharpness"]
    return ["lambda_full"]


def curve(result: dict, key: str) -> tuple[np.ndarray, np.ndarray]:
    records = result["records"]
    return (np.array([r["step"] for r in records], float), np.array([r.get(key, np.nan) for r in records], float))


def later_half(result: dict, key: str) -> float:
    steps, values = curve(result, key)
    keep = np.isfinite(values) & (steps >= np.nanmax(steps) / 2)
    return float(values[keep].mean()) if keep.any() else float("nan")


def setting(config: dict) -> tuple:
    """What a 1/eta line is fitted over: everything but the learning rate and the seed."""
    return (config["part"], config["optimizer"], config.get("model", "simple_cnn"), config.get("batch_size") or 0,
            float(config.get("momentum", 0.0)), beta1(config) if config["optimizer"] == "adam" else None,
            int(config["n_train"]), config.get("loss", "cross_entropy"))


def describe_setting(key: tuple) -> str:
    part, optimizer, model, batch, momentum, b1, n_train, loss = key
    text = f"{part}: {optimizer}" + (f" beta1={b1:g}" if b1 is not None else "")
    text += f" momentum={momentum:g}" if momentum else ""
    text += f", batch {batch or 'full'}, {n_train:,} ex."
    text += "" if model == "simple_cnn" else f", {model}"
    # The eoss part runs the same MLP with either loss: name the loss there, so its control reads as such.
    if loss != "cross_entropy":
        return text + f", {loss} loss"
    return text + (", cross-entropy" if part == "eoss" else "")


def load_runs(folder: str) -> list[dict]:
    """Every ``result.json`` under ``folder`` (no TensorFlow needed), sorted by path."""
    runs = []
    for here, _, files in sorted(os.walk(folder)):
        if "result.json" in files:
            with open(os.path.join(here, "result.json")) as f:
                runs.append({**json.load(f), "folder": os.path.relpath(here, folder)})
    if not runs:
        raise SystemExit(f"no result.json under {folder}: run the campaign first "
                         "(python -m experiments.edge_of_stability.run --campaign stationarity).")
    return runs


def _cell(value: float, low: float, high: float, fmt: str = ".2f") -> str:
    if not np.isfinite(value):
        return "n/a"
    if not (np.isfinite(low) and np.isfinite(high)):
        return format(value, fmt)
    return f"{format(value, fmt)} [{format(low, fmt)}, {format(high, fmt)}]"


def stationarity_table(runs: list[dict], tol: float = TOLERANCE) -> str:
    """One row per run and quantity: steps, the two late windows' means as eta * value / 2, their relative change,
    the fitted later-half drift with its 95% interval, and the verdict."""
    rows = []
    for run in sorted(runs, key=lambda r: (setting(r["config"]), r["config"]["lr"], r["config"]["seed"])):
        c = run["config"]
        for key in quantities(c):
            s = stationarity(*curve(run, key), tol=tol)
            m1, m2 = s["window_means"]
            rows.append([describe_setting(setting(c)), f"{c['lr']:g}", c["seed"], run["steps"], key,
                         f"{c['lr'] * m1 / 2:.3f} / {c['lr'] * m2 / 2:.3f}" if np.isfinite(m1) else "n/a",
                         f"{s['change']:+.1%}" if np.isfinite(s["change"]) else "n/a",
                         _cell(100 * s["drift"], 100 * s["drift_low"], 100 * s["drift_high"], "+.1f"),
                         "yes" if s["stationary"] else "no" + (" (diverged)" if run.get("diverged") else "")])
    return markdown_table(["setting", "lr", "seed", "steps", "quantity",
                           "eta x mean / 2, windows [T/2, 3T/4) / [3T/4, T]", "change",
                           "later-half drift, % (95% t)", f"stationary (±{tol:.0%})"], rows)


def fit_table(runs: list[dict]) -> str:
    """Per setting and quantity: the later-half means against 1/eta, fitted (see :func:`inverse_lr_fit`), beside
    the predicted slopes; only runs that did not diverge; ``stationary`` counts the runs that passed; the last
    column fits the runs' smoothed peaks the same way (through the origin), over the first predicted slope."""
    groups = collections.defaultdict(list)
    for run in runs:
        if not run.get("diverged"):
            groups[setting(run["config"])].append(run)
    rows = []
    for key in sorted(groups, key=str):
        members = sorted(groups[key], key=lambda r: (r["config"]["lr"], r["config"]["seed"]))
        config = members[0]["config"]
        lrs = [r["config"]["lr"] for r in members]
        for quantity in quantities(config):
            values = [later_half(r, quantity) for r in members]
            fit = inverse_lr_fit(lrs, values)
            predicted = predicted_slopes(config) if quantity != "lambda_full" or config["optimizer"] != "adam" \
                else {"2": 2.0}
            passed = sum(stationarity(*curve(r, quantity))["stationary"] for r in members)
            # The edge phase before a run interpolates: once the training loss nears zero the sharpness leaves
            # the edge (GD, Adam), so the later half can miss a threshold the run did hold; the peak of the
            # 3-point running mean does not.
            peak = inverse_lr_fit(lrs, [smoothed_peak(curve(r, quantity)[1]) for r in members])
            first = next(iter(predicted.values()))
            rows.append([describe_setting(key), quantity, ", ".join(f"{lr:g}" for lr in sorted(set(lrs))), fit["n"],
                         _cell(fit["slope"], fit["slope_low"], fit["slope_high"]),
                         _cell(fit["intercept"], fit["intercept_low"], fit["intercept_high"], ".1f"),
                         _cell(fit["slope0"], fit["slope0_low"], fit["slope0_high"]),
                         "; ".join(f"{name} (x{fit['slope0'] / value:.2f})" for name, value in predicted.items()),
                         f"{passed}/{len(members)}",
                         _cell(peak["slope0"], peak["slope0_low"], peak["slope0_high"])
                         + f" (x{peak['slope0'] / first:.2f})"])
    return markdown_table(["setting", "quantity", "lrs", "runs", "slope of value vs 1/eta (95% t)",
                           "intercept (95% t)", "slope through 0 (95% t)", "predicted slope (fitted / predicted)",
                           "stationary runs", "smoothed peak: slope through 0 (95% t) (x predicted)"], rows)


# -- figure ------------------------------------------------------------------------------------------------------

#: Below this magnitude the figure's axes are linear (symlog), so an early negative batch sharpness is drawn too.
LINEAR_BELOW = 0.1
LR_COLORS = ("tab:blue", "tab:orange", "tab:red", "tab:purple", "tab:green")
LABELS = {"lambda_full": "$\\lambda_1$, training set", "batch_sharpness": "batch sharpness",
          "lambda_preconditioned": "$\\lambda_1(P^{-1}H)$"}


def theory_first(config: dict) -> list[str]:
    """A run's quantities with the one the stability theory is about first (the batch sharpness for SGD)."""
    names = quantities(config)
    return sorted(names, key=lambda name: name != "batch_sharpness")


def campaign_figure(plt, runs: list[dict]):
    """One panel per setting: each run's quantities times eta against the step, one colour per learning rate.

    Times eta, a quantity on the edge reads as the slope of its 1/eta line, so if the edge scales as 1/eta the
    learning rates' curves meet at the predicted slope (dashed: 2, 2(1+beta) and 2(1-beta), or (2+2b1)/(1-b1));
    the shaded later half is what the tables average and judge stationary. The quantity the theory is about
    (GD's and Adam's lambda_1, the batch sharpness, the preconditioned sharpness) is drawn solid, lambda_1 of
    the training set beside it dashed."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, NullFormatter

    groups = collections.defaultdict(list)
    for run in runs:
        groups[setting(run["config"])].append(run)
    keys = sorted(groups, key=str)
    columns = min(4, len(keys))
    rows = -(-len(keys) // columns)
    # At least two panels wide, so that the caption under a single panel stays on a line or two.
    fig, axes = plt.subplots(rows, columns, figsize=(4.4 * max(columns, 2), 3.6 * rows + 0.4), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, keys):
        members = sorted(groups[key], key=lambda r: (r["config"]["lr"], r["config"]["seed"]))
        config = members[0]["config"]
        lrs = sorted({r["config"]["lr"] for r in members})
        names = theory_first(config)
        predicted = predicted_slopes(config)
        low = 0.0
        for run in members:
            color = LR_COLORS[lrs.index(run["config"]["lr"]) % len(LR_COLORS)]
            for quantity, style, width in zip(names, ("-", "--"), (1.6, 1.0)):
                steps, values = curve(run, quantity)
                scaled = run["config"]["lr"] * values
                ax.plot(steps, scaled, style, color=color, lw=width, alpha=0.9)
                if np.isfinite(scaled).any():
                    low = min(low, float(np.nanmin(scaled)))
        for (name, slope), style in zip(predicted.items(), ("--", ":")):
            ax.axhline(slope, color="gray", ls=style, lw=1.2, zorder=1)
            ax.annotate(name.split(" = ")[0], (0.98, slope), xycoords=("axes fraction", "data"), fontsize=7,
                        ha="right", va="bottom", color="gray")
        last = max(float(np.nanmax(curve(r, names[0])[0])) for r in members)
        ax.axvspan(last / 2, last, color="0.9", zorder=0)
        ax.set_yscale("symlog", linthresh=LINEAR_BELOW, linscale=0.4)
        top = max(ax.get_ylim()[1], 1.5 * max(predicted.values()))
        ax.set_ylim(1.3 * low if low < 0 else 0.0, top)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3, which="both")
        ax.set_title(describe_setting(key), fontsize=8.5)
        ax.set_xlabel("step")
        ax.set_ylabel("$\\eta$ x curvature (symlog)", fontsize=8)
        handles = [Line2D([], [], color=LR_COLORS[i % len(LR_COLORS)], label=f"eta = {lr:g}")
                   for i, lr in enumerate(lrs)]
        handles += [Line2D([], [], color="k", ls=style, lw=width, label=LABELS.get(quantity, quantity))
                    for quantity, style, width in zip(names, ("-", "--"), (1.6, 1.0))]
        ax.legend(handles=handles, fontsize=6.5, loc="lower right")
    fig.tight_layout()
    return fig


def plot_campaign(runs: list[dict], path: str) -> None:
    """Saves :func:`campaign_figure` with its caption."""
    from experiments.figures import pyplot, save_figure

    seeds = sorted({r["config"]["seed"] for r in runs})
    save_figure(campaign_figure(pyplot(), runs), path,
                "Stationarity campaign: each quantity times eta (the slope of its 1/eta line) against the step; "
                f"dashed grey: the predicted slopes; shaded: the later half; seeds {', '.join(map(str, seeds))}; "
                f"axes symlog, linear within ±{LINEAR_BELOW:g} (no value is cut off)")


def tables(folder: str) -> str:
    runs = load_runs(folder)
    return ("### Stationarity campaign: the edge against 1/eta\n\n" + fit_table(runs)
            + "\n\n### Stationarity of every run\n\n" + stationarity_table(runs))


def main(argv=None) -> str:
    import argparse

    from experiments.figures import write_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=CAMPAIGN_OUT, help="folder of the campaign's runs")
    parser.add_argument("--figures", default=os.path.dirname(KEPT_RUNS),
                        help="where table.md and stationarity.png go")
    args = parser.parse_args(argv)
    path = os.path.join(args.figures, "stationarity.png")
    os.makedirs(args.figures, exist_ok=True)
    plot_campaign(load_runs(args.out), path)
    return write_table(tables(args.out), args.figures, path)


def _kept(folder: str, suffix: str = "") -> dict:
    """The two tables of the runs kept under ``folder`` (none while it does not exist)."""
    if not os.path.isdir(folder):
        return {}
    return {f"{STUDY}.stationarity_fit{suffix}": lambda: fit_table(load_runs(folder)),
            f"{STUDY}.stationarity_runs{suffix}": lambda: stationarity_table(load_runs(folder))}


#: RESULTS.md tables recomputed by ``python -m experiments.verify``: registered once the campaign's runs are kept
#: (``python -m experiments.keep_runs edge_of_stability --src runs/experiments/edge_of_stability_stationarity
#: --dest experiments/edge_of_stability/results/stationarity/runs``; the long batch-32 runs to ``.../long/runs``),
#: so that a checkout without them still verifies.
TABLES = {**_kept(KEPT_RUNS), **_kept(KEPT_LONG_RUNS, "_long")}


if __name__ == "__main__":
    main()
