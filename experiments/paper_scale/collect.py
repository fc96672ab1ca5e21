"""Copies each paper-scale run's small result files from ``runs/`` into ``experiments/paper_scale/results/``.

Per run: ``history.csv`` (one row per epoch: losses, accuracies, λ1..λ5 measured at the start of that epoch),
``lanczos.csv`` (every measurement, including the one after the last epoch), ``config.json`` and, once the run
is complete, ``final.json`` (test metrics). A run still training is copied as far as it got; ``--help`` lists
the flags.

    python -m experiments.paper_scale.collect
"""

from __future__ import annotations

import argparse
import os
import shutil

from experiments.paper_scale.run import DEFAULT_OUT, ROOT, RUNS

RESULTS = os.path.join(ROOT, "experiments", "paper_scale", "results")
FILES = ("history.csv", "lanczos.csv", "config.json", "final.json")


def _has_a_finished_epoch(source: str) -> bool:
    """Whether the run folder holds a measurement log and at least one epoch's row of history."""
    history = os.path.join(source, "history.csv")
    if not (os.path.exists(history) and os.path.exists(os.path.join(source, "lanczos.csv"))):
        return False
    with open(history) as f:
        return sum(1 for line in f if line.strip()) > 1  # the header and a row


def collect(out: str = DEFAULT_OUT, results: str = RESULTS) -> list[str]:
    """Copies every run found under ``out``; returns the names of the runs copied."""
    copied = []
    for name in RUNS:
        source = os.path.join(out, name)
        if not _has_a_finished_epoch(source):  # a run just started has no measurement log to plot yet
            continue
        target = os.path.join(results, name)
        os.makedirs(target, exist_ok=True)
        for file in FILES:
            if os.path.exists(os.path.join(source, file)):
                shutil.copyfile(os.path.join(source, file), os.path.join(target, file))
        copied.append(name)
    return copied


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder of the runs")
    parser.add_argument("--results", default=RESULTS, help="where the copies go")
    args = parser.parse_args(argv)
    copied = collect(args.out, args.results)
    print(f"copied {', '.join(copied) or 'nothing'} into {args.results}")


if __name__ == "__main__":
    main()
