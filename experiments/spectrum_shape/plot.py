"""Plots study 1: lambda_1..lambda_K per epoch for each learning rate, with 2/eta; writes a table.

    python -m experiments.spectrum_shape.plot [--out RUNS] [--figures FOLDER]
"""

from __future__ import annotations

import os

import numpy as np

from experiments import figures
from experiments._cli import markdown_table
from experiments.results import eigenvalue_curve, load_results
from experiments.scale import Scale
from experiments.statistics import peak

STUDY = "spectrum_shape"

#: The committed raw runs (``python -m experiments.keep_runs spectrum_shape``) the RESULTS.md table comes from.
COMMITTED = os.path.join(figures.default_figures(STUDY), "runs")


def summarize(result: dict) -> dict:
    """Peak of lambda_1 (value, epoch), its final value, and 2/eta."""
    epochs, values = eigenvalue_curve(result)
    i, top = peak(values[:, 0])
    lr = result["config"]["lr"]
    return {"lr": lr, "peak": top, "peak_epoch": float(epochs[i]) if i >= 0 else float("nan"),
            "final": float(values[-1, 0]), "first": float(values[0, 0]), "two_over_lr": 2.0 / lr,
            "below_two_over_lr": bool(top < 2.0 / lr), "last_epoch": float(epochs[-1])}


def spectrum_table(results: list[dict]) -> str:
    """The study's table: per learning rate, lambda_1 at initialisation, its peak (value, epoch), its final value
    and whether the peak lies below 2/eta (one seed per learning rate)."""
    rows = []
    for result in results:
        s = summarize(result)
        rows.append([f"{s['lr']:g}", f"{s['first']:.2f}", f"{s['peak']:.2f}", f"{s['peak_epoch']:g}",
                     f"{s['final']:.2f}", f"{s['two_over_lr']:g}", "yes" if s["below_two_over_lr"] else "**no**"])
    table = markdown_table(["lr", "lambda_1 at init", "peak lambda_1", "peak epoch", "final lambda_1",
                                   "2/eta", "peak < 2/eta"], rows)
    return table


def load_sorted(out: str) -> list[dict]:
    return sorted(load_results(out), key=lambda r: r["config"]["lr"])


def main(argv=None) -> str:
    parser = figures.plot_parser(__doc__, STUDY)
    args = parser.parse_args(argv)
    results = load_sorted(args.out)
    scale = Scale(**results[0]["config"]["scale"])
    plt = figures.pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.2), squeeze=False)
    for ax, result in zip(axes[0], results):
        epochs, values = eigenvalue_curve(result)
        colors = plt.cm.viridis(np.linspace(0, 0.9, values.shape[1]))
        for k in range(values.shape[1]):
            ax.plot(epochs, values[:, k], marker="o", ms=3, color=colors[k], label=f"$\\lambda_{{{k + 1}}}$")
        lr = result["config"]["lr"]
        ax.axhline(2 / lr, color="red", linestyle="--", label=f"$2/\\eta$ = {2 / lr:g}")
        ax.set_yscale("log")
        ax.set_xlabel("epochs of training")
        ax.set_ylabel("Hessian eigenvalue")
        ax.set_title(f"SGD, $\\eta$ = {lr:g}, batch {result['config']['batch_size']}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, ncol=2, loc="lower right")
    path = os.path.join(args.figures, "spectrum.png")
    figures.save_figure(fig, path, f"Top-{values.shape[1]} eigenvalues at the start of each epoch and after the "
                                  f"last. One seed ({results[0]['config']['seed']}) per learning rate. "
                                  f"{scale.describe()}.")
    table = spectrum_table(results)
    return figures.write_table(table, args.figures, path)


#: RESULTS.md tables recomputed from the committed runs by ``python -m experiments.verify``.
TABLES = {"spectrum_shape.runs": lambda: spectrum_table(load_sorted(COMMITTED))}


if __name__ == "__main__":
    main()
