"""Copies a study's raw runs, compactly, into the repository, so that its tables can be recomputed by a reader.

``runs/`` is not committed (model weights, backups). This copies only the small per-run files, the configuration
and the per-epoch logs and measurements, from ``runs/experiments/<study>`` to
``experiments/<study>/results/runs`` (same folder layout), where the study's plot (``--out``) and
``python -m experiments.verify`` read them:

    python -m experiments.keep_runs sgd_step       # runs/experiments/sgd_step -> experiments/sgd_step/results/runs
    python -m experiments.keep_runs spectrum_shape --src runs/elsewhere
"""

from __future__ import annotations

import argparse
import os
import shutil

from experiments.figures import default_figures
from experiments.scale import default_out

#: The files of a run that are kept: configuration, per-epoch history, the measurement log, the study's own
#: analysis records. Nothing else (no weights, no checkpoints, no backups).
KEPT = ("result.json", "config.json", "history.csv", "lanczos.csv", "lanczos.npz", "step_analysis.json",
        "measurements.csv", "final_check.json")

#: A study's kept runs above this many bytes are refused: the repository holds small logs, not checkpoints.
LIMIT = 5_000_000


def keep(src: str, dest: str, limit: int = LIMIT) -> list[str]:
    """Copies the :data:`KEPT` files of every finished run folder (one with a ``result.json``) under ``src`` to the
    same place under ``dest``.

    Returns the copied paths (relative to ``dest``). Raises ``SystemExit`` if ``src`` holds no run, or if the
    copies would exceed ``limit`` bytes (nothing is copied then).
    """
    chosen = []
    for here, _, files in sorted(os.walk(src)):
        if "result.json" not in files:
            continue  # a run still training (or one that crashed): nothing of it is kept
        for name in sorted(files):
            if name in KEPT:
                chosen.append(os.path.relpath(os.path.join(here, name), src))
    if not any(os.path.basename(path) == "result.json" for path in chosen):
        raise SystemExit(f"no result.json under {src}: run the study first.")
    size = sum(os.path.getsize(os.path.join(src, path)) for path in chosen)
    if size > limit:
        raise SystemExit(f"the runs' kept files under {src} take {size:,} bytes, over the limit of {limit:,}: "
                         "keep fewer runs, or raise --limit knowingly.")
    for path in chosen:
        target = os.path.join(dest, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(src, path), target)
    return chosen


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", help="the study's folder name, e.g. sgd_step")
    parser.add_argument("--src", default=None, help="its runs (default runs/experiments/<study>)")
    parser.add_argument("--dest", default=None, help="where they go (default experiments/<study>/results/runs)")
    parser.add_argument("--limit", type=int, default=LIMIT, help=f"bytes at most (default {LIMIT:,})")
    args = parser.parse_args(argv)
    src = args.src or default_out(args.study)
    dest = args.dest or os.path.join(default_figures(args.study), "runs")
    copied = keep(src, dest, args.limit)
    size = sum(os.path.getsize(os.path.join(dest, path)) for path in copied)
    print(f"{len(copied)} files, {size:,} bytes: {src} -> {dest}")
    return copied


if __name__ == "__main__":
    main()
