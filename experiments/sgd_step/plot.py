"""Plots study 4: loss change after partial SGD steps along e_i, random directions and g; gradient alignment.

    python -m experiments.sgd_step.plot [--out RUNS] [--figures FOLDER]
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

from experiments import figures
from experiments._cli import markdown_table
from experiments.scale import Scale

STUDY = "sgd_step"

#: The committed raw run (``python -m experiments.keep_runs sgd_step``) the RESULTS.md table is recomputed from.
COMMITTED = os.path.join(figures.default_figures(STUDY), "runs")


def loss_changes(record: dict) -> dict:
    """Loss after each partial step minus the loss before, per kind of direction (``[.., multipliers]``)."""
    loss = record["loss"]
    return {"eigenvectors": np.asarray(record["along_eigenvectors"]) - loss,
            "random": np.asarray(record["along_random"]) - loss,
            "full": np.asarray(record["full_step"]) - loss}


def quadratic_prediction(record: dict, learning_rate: float) -> np.ndarray:
    """``[k, m]`` loss change a quadratic model predicts along e_i.

    ``-a g_i^2 (1 - a lambda_i / 2)`` with ``a = gamma' eta``: positive (the
    step overshoots) once ``a lambda_i > 2``.

    ``g_i = g . e_i = |cos(g, e_i)| ||g||``; the sign of ``g_i`` does not matter.
    """
    step = np.asarray(record["multipliers"])[None, :] * learning_rate
    g_i = (np.asarray(record["alignment"]) * record["gradient_norm"])[:, None]
    lam = np.asarray(record["eigenvalues"])[:, None]
    return -step * g_i ** 2 * (1 - step * lam / 2)


def step_losses_figure(plt, records: list[dict], lr: float, columns: int = 3):
    """Loss change after partial steps, one panel per analysed epoch, ``columns`` panels a row (a readable grid,
    not a strip); the legend, the same for every panel, gets the first free cell (or goes below the grid)."""
    rows = -(-len(records) // columns)
    free = rows * columns - len(records)
    fig, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 3.9 * rows + (0 if free else 0.9)),
                             squeeze=False, sharey=True)
    cells = axes.ravel()
    largest = max(np.max(np.abs(np.concatenate([c.ravel() for c in loss_changes(r).values()]))) for r in records)
    linthresh = 10.0 ** np.floor(np.log10(max(largest, 1e-12) * 1e-3))  # three decades shown linearly near 0
    for ax, record in zip(cells, records):
        changes, mult = loss_changes(record), np.asarray(record["multipliers"])
        k = changes["eigenvectors"].shape[0]
        colors = plt.cm.viridis(np.linspace(0, 0.85, k))
        for i in range(k):
            ax.plot(mult, changes["eigenvectors"][i], marker="o", ms=3, color=colors[i], lw=2.2 if i == 0 else 1,
                    label=f"along $e_{{{i + 1}}}$")
        r = changes["random"]
        ax.fill_between(mult, r.min(axis=0), r.max(axis=0), color="gray", alpha=0.35,
                        label=f"along {r.shape[0]} random directions")
        ax.plot(mult, changes["full"], color="black", linestyle="--", marker="s", ms=3, label="full step $g$")
        ax.axhline(0, color="red", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("symlog", linthresh=linthresh)
        ax.set_xlabel("$\\gamma'$ (step = $\\gamma' \\eta$ times the SGD step's part)", fontsize=9)
        etas = ", ".join(f"{lr * v:.2f}" for v in record["eigenvalues"])
        ax.set_title(f"after {record['epoch']} epoch(s); loss {record['loss']:.3f}\n"
                     f"$\\eta\\lambda_{{1..{k}}}$ = {etas}", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"loss change (symlog, linear within ±{linthresh:g})", fontsize=9)
    handles, labels = cells[0].get_legend_handles_labels()
    for ax in cells[len(records):]:
        ax.axis("off")
    if free:
        cells[len(records)].legend(handles, labels, loc="center", fontsize=9)
    else:
        fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=9, bbox_to_anchor=(0.5, 0.04))
    fig.suptitle(f"Loss change after a partial SGD step, SGD $\\eta$ = {lr:g} (full gradient of the sample)")
    return fig


def step_table(analysis: dict) -> str:
    """The study's table: per analysed epoch, lambda_1, the loss changes along e_1, g and random directions, and
    the gradient's alignment."""
    lr, records = analysis["learning_rate"], analysis["records"]
    rows = []
    for record in records:
        changes, mult = loss_changes(record), list(record["multipliers"])
        at = {m: mult.index(m) for m in (0.5, 1.0, 2.0) if m in mult}
        e1 = changes["eigenvectors"][0]
        rows.append([record["epoch"], f"{record['eigenvalues'][0]:.2f}", f"{lr * record['eigenvalues'][0]:.2f}",
                     *[f"{e1[at[m]]:+.2e}" if m in at else "" for m in (0.5, 1.0, 2.0)],
                     f"{changes['full'][at[1.0]]:+.2e}" if 1.0 in at else "",
                     f"{np.mean(changes['random'][:, at[1.0]]):+.1e}" if 1.0 in at else "",
                     f"{record['alignment'][0]:.3f}", f"{max(record['alignment']):.3f}",
                     f"{np.mean(record['random_alignment']):.1e}", f"{record['expected_random_alignment']:.1e}"])
    table = markdown_table(
        ["epoch", "lambda_1", "eta lambda_1", "dL along e_1, 0.5 eta", "... 1 eta", "... 2 eta", "dL full step",
         "dL random, 1 eta", "abs cos(g, e_1)", "max_i abs cos(g, e_i)", "abs cos(g, r) drawn", "E abs cos(g, r)"],
        rows)
    return table


def load_analysis(out: str) -> tuple[dict, Scale]:
    """The run's ``step_analysis.json`` under ``out`` and its scale."""
    found = sorted(glob.glob(os.path.join(out, "*", "step_analysis.json")))
    if not found:
        raise SystemExit(f"no step_analysis.json under {out}: run experiments.sgd_step.run first.")
    with open(found[0]) as f:
        analysis = json.load(f)
    with open(os.path.join(os.path.dirname(found[0]), "result.json")) as f:
        config = json.load(f)["config"]
    return {**analysis, "seed": config["seed"]}, Scale(**config["scale"])


def main(argv=None) -> str:
    parser = figures.plot_parser(__doc__, STUDY)
    args = parser.parse_args(argv)
    analysis, scale = load_analysis(args.out)
    lr, records = analysis["learning_rate"], analysis["records"]
    plt = figures.pyplot()
    fig = step_losses_figure(plt, records, lr)
    step_path = os.path.join(args.figures, "step_losses.png")
    figures.save_figure(fig, step_path, f"One run (seed {analysis['seed']}). {scale.describe()}; the step, "
                                       f"its gradient and its loss all on the same {scale.num_samples:,} training "
                                       "examples.")

    fig, ax = plt.subplots(figsize=(8.5, 4))
    k = len(records[0]["alignment"])
    width = 0.8 / (k + 1)
    positions = np.arange(len(records))
    colors = plt.cm.viridis(np.linspace(0, 0.85, k))
    for i in range(k):
        ax.bar(positions + i * width, [r["alignment"][i] for r in records], width, color=colors[i],
               label=f"$|\\cos(g, e_{{{i + 1}}})|$")
    ax.bar(positions + k * width, [np.mean(r["random_alignment"]) for r in records], width, color="gray",
           label="$|\\cos(g, r)|$, random $r$ (mean)")
    ax.axhline(records[0]["expected_random_alignment"], color="red", linestyle="--",
               label="$E|\\cos(g, r)|$ in this dimension")
    ax.set_yscale("log")
    ax.set_xticks(positions + 0.4, [f"epoch {r['epoch']}" for r in records])
    ax.set_ylabel("alignment with the gradient")
    ax.set_title("Gradient alignment with the top eigenvectors")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: the bars fill the axes
    ax.grid(alpha=0.3, axis="y", which="both")
    align_path = os.path.join(args.figures, "alignment.png")
    figures.save_figure(fig, align_path, scale.describe())

    table = step_table(analysis)
    return figures.write_table(table, args.figures, step_path, align_path)


#: RESULTS.md tables recomputed from the committed run by ``python -m experiments.verify``.
TABLES = {"sgd_step.steps": lambda: step_table(load_analysis(COMMITTED)[0])}


if __name__ == "__main__":
    main()
