"""Plots study 2: lambda_1 and lambda_2 per epoch (log scale) across learning rates and batch sizes.

    python -m experiments.lr_batch_size.plot [--out RUNS] [--figures FOLDER]
"""

from __future__ import annotations

import os

import numpy as np

from experiments import common

STUDY = "lr_batch_size"


def peak_summary(result: dict, k: int = 0) -> tuple[float, float]:
    """``(peak value, epoch of the peak)`` of lambda_{k+1}."""
    epochs, values = common.eigenvalue_curve(result)
    i, top = common.peak(values[:, k])
    return top, (float(epochs[i]) if i >= 0 else float("nan"))


def main(argv=None) -> str:
    parser = common.plot_parser(__doc__, STUDY)
    args = parser.parse_args(argv)
    lr_sweep = sorted(common.load_results(os.path.join(args.out, "lr_sweep")), key=lambda r: r["config"]["lr"])
    batch_sweep = sorted(common.load_results(os.path.join(args.out, "batch_sweep")),
                         key=lambda r: r["config"]["batch_size"])
    scale = common.Scale(**lr_sweep[0]["config"]["scale"])
    plt = common.pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10.5, 8))
    for row, (sweep, results, key) in enumerate([("learning rate", lr_sweep, "lr"),
                                                  ("batch size", batch_sweep, "batch_size")]):
        colors = plt.cm.plasma(np.linspace(0, 0.8, len(results)))
        for k in range(2):
            ax = axes[row, k]
            for color, result in zip(colors, results):
                epochs, values = common.eigenvalue_curve(result)
                c = result["config"]
                label = f"$\\eta$ = {c['lr']:g}" if key == "lr" else f"batch {c['batch_size']}"
                ax.plot(epochs, values[:, k], marker="o", ms=3, color=color, label=label)
            ax.set_yscale("log")
            ax.set_xlabel("epochs of training")
            ax.set_ylabel(f"$\\lambda_{k + 1}$")
            fixed = (f"batch {results[0]['config']['batch_size']}" if key == "lr"
                     else f"$\\eta$ = {results[0]['config']['lr']:g}")
            ax.set_title(f"$\\lambda_{k + 1}$ across {sweep} (SGD, {fixed})")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
    path = os.path.join(args.figures, "lr_batch_size.png")
    common.save_figure(fig, path, f"Measured at the start of each epoch and after the last. {scale.describe()}.")
    rows = []
    for sweep, results in (("lr", lr_sweep), ("batch", batch_sweep)):
        for result in results:
            c = result["config"]
            p1, e1 = peak_summary(result, 0)
            p2, e2 = peak_summary(result, 1)
            _, values = common.eigenvalue_curve(result)
            rows.append([sweep, f"{c['lr']:g}", c["batch_size"], f"{p1:.2f}", f"{e1:g}", f"{values[-1, 0]:.2f}",
                         f"{p2:.2f}", f"{e2:g}", f"{result['final']['train_loss']:.3f}",
                         "yes" if result["final"]["diverged"] else "no"])
    table = common.markdown_table(["sweep", "lr", "batch", "peak lambda_1", "at epoch", "final lambda_1",
                                   "peak lambda_2", "at epoch", "final train loss", "diverged"], rows)
    return common.write_table(table, args.figures, path)

if __name__ == "__main__":
    main()
