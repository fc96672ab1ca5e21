"""Writing a study's figures and its ``table.md``: the scale always travels with them."""

from __future__ import annotations

import argparse
import os

from experiments.scale import ROOT, default_out


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_table(table: str, folder: str, *figures: str) -> str:
    """Writes ``table.md`` next to the figures and prints both."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "table.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    print("figures: " + ", ".join(figures))
    return table


def plot_parser(doc: str, study: str) -> argparse.ArgumentParser:
    """``--out`` (the runs) and ``--figures`` (where the PNGs and ``table.md`` go)."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--out", default=default_out(study), help="folder of the runs")
    parser.add_argument("--figures", default=default_figures(study), help="folder of the PNGs and table.md")
    return parser


def save_figure(fig, path: str, caption: str) -> None:
    """Saves with the scale written under the axes, so the figure never travels without it."""
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        if ax.get_xlabel().startswith("epoch"):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.text(0.5, 0.005, caption, ha="center", va="bottom", fontsize=7, color="dimgray", wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


def default_figures(study: str) -> str:
    """Where a study's figures go: ``experiments/<study>/results``."""
    return os.path.join(ROOT, "experiments", study, "results")
