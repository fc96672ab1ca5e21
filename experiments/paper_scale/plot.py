"""Study 6's figure and tables, from the committed files in ``experiments/paper_scale/results/``.

    python -m experiments.paper_scale.collect && python -m experiments.paper_scale.plot

Writes ``results/paper_scale.png`` (λ1 per epoch with each run's threshold, training loss, validation
accuracy) and ``results/table.md`` (the tables of experiments/RESULTS.md, which ``experiments.verify`` checks).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from experiments.figures import pyplot, save_figure, write_table
from experiments.paper_scale.tables import RESULTS, edge, load_runs, pairs_table, runs_table
from experiments.statistics import smoothed

COLORS = {"sgd_lr0.01": "tab:blue", "sgd_lr0.05": "tab:green", "nsgd_gamma0.1": "tab:red",
          "nsgd_gamma5": "tab:purple"}

CAPTION = ("SimpleCNN-root on 45,000 real Fashion-MNIST images, batch 128, top-5 Hessian eigenvalues on 2,250 "
           "training examples at the start of every epoch (Lanczos tol 1e-3); one seed. Thin: each measurement; "
           "thick: 3-point running mean (the tables' smoothed peak); dashed: 2/η; dotted: NSGD's 2/(γη).")


def plot(runs: dict[str, dict], path: str) -> None:
    plt = pyplot()
    fig, (ax_lambda, ax_loss, ax_val) = plt.subplots(1, 3, figsize=(15, 4.6))
    for name, run in runs.items():
        color = COLORS.get(name)
        epochs, lam1 = run["measured_epoch"], run["lambda"][:, 0]
        finite = np.isfinite(lam1)
        ax_lambda.plot(epochs[finite], lam1[finite], color=color, lw=0.8, alpha=0.5)
        curve = smoothed(lam1[finite])
        centres = epochs[finite][1:-1] if curve.size == finite.sum() - 2 else epochs[finite][:1]
        ax_lambda.plot(centres, curve, color=color, lw=2.2, label=name)
        ax_lambda.axhline(2 / run["lr"], color=color, ls="--", lw=1)
        if run["gamma"]:
            ax_lambda.axhline(edge(run), color=color, ls=":", lw=1.2)
        trained = np.arange(1, len(run["loss"]) + 1)
        ax_loss.plot(trained, run["loss"], color=color, label=name)
        ax_val.plot(trained, run["val_accuracy"], color=color, label=name)
    # λ1 spans three decades (about 3 at initialization, up to 2/(γη) = 2,000): a log axis, on which every
    # measured value is positive (a non-positive one would be dropped, so it is reported instead).
    nonpositive = sum(int(np.sum(run["lambda"][:, 0] <= 0)) for run in runs.values())
    ax_lambda.set_yscale("log")
    ax_lambda.set(xlabel="epoch (measured at its start)", ylabel="λ1",
                  title="λ1" + (f" ({nonpositive} non-positive values not shown)" if nonpositive else ""))
    ax_loss.set(xlabel="epoch", ylabel="training loss (running, per epoch)", yscale="log", title="training loss")
    ax_val.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy (10,000 held out)")
    for ax in (ax_lambda, ax_loss, ax_val):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    save_figure(fig, path, CAPTION)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=RESULTS, help="folder of the collected runs and of the outputs")
    args = parser.parse_args(argv)
    runs = load_runs(args.results)
    if not runs:
        raise SystemExit(f"no runs under {args.results}: run experiments.paper_scale.run, then collect.")
    path = os.path.join(args.results, "paper_scale.png")
    plot(runs, path)
    write_table(runs_table(runs) + "\n\n" + pairs_table(runs), args.results, path)


if __name__ == "__main__":
    main()
