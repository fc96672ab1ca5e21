"""The paper-scale tables, computed from the committed files in ``experiments/paper_scale/results/``.

``experiments.verify`` recomputes them and compares them with experiments/RESULTS.md; ``plot.py`` draws
the same statistics. Everything here reads only the committed CSV/JSON files (no TensorFlow).
"""

from __future__ import annotations

import ast
import csv
import json
import os

import numpy as np

from experiments.statistics import later_half_mean, smoothed_peak, smoothed_peak_index

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

#: The comparisons the paper makes, as (label, run, reference run).
PAIRS = (("NSGD γ=0.1 vs SGD, η=0.01", "nsgd_gamma0.1", "sgd_lr0.01"),
         ("NSGD γ=5 vs SGD, η=0.01", "nsgd_gamma5", "sgd_lr0.01"),
         ("SGD η=0.05 vs SGD η=0.01", "sgd_lr0.05", "sgd_lr0.01"))


def _floats(rows: list[dict], key: str) -> np.ndarray:
    return np.array([float(row[key]) if row.get(key) not in (None, "") else np.nan for row in rows])


def load_run(name: str, results: str = RESULTS) -> dict | None:
    """One run's committed files as arrays, or ``None`` if it has not been collected."""
    folder = os.path.join(results, name)
    if not os.path.exists(os.path.join(folder, "history.csv")):
        return None
    with open(os.path.join(folder, "history.csv"), newline="") as f:
        history = list(csv.DictReader(f))
    if any(None in row or None in row.values() for row in history):
        raise ValueError(f"{folder}/history.csv has rows with more or fewer cells than its header: a resumed run "
                         "logged other keys; its columns cannot be trusted.")
    with open(os.path.join(folder, "lanczos.csv"), newline="") as f:
        measurements = list(csv.DictReader(f))
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    final = None
    if os.path.exists(os.path.join(folder, "final.json")):
        with open(os.path.join(folder, "final.json")) as f:
            final = json.load(f)
    flags = config["flags"]
    gamma = None
    if flags["optim"] == "nsgd":
        gamma = float(ast.literal_eval(flags["opt_kwargs"]).get("overshoot", 1.0))
    return {
        "name": name, "optimizer": flags["optim"].upper(), "lr": float(flags["lr"]), "gamma": gamma,
        "epochs_planned": int(flags["n_epochs"]), "final": final,
        # Measurement e is taken at the start of epoch e (after e epochs of training); the last after training.
        "measured_epoch": _floats(measurements, "epoch"), "lambda": np.stack(
            [_floats(measurements, f"lambda_{i}") for i in range(1, 6)], axis=1),
        "matvecs": _floats(measurements, "matvecs"),
        "loss": _floats(history, "loss"), "accuracy": _floats(history, "accuracy"),
        "val_accuracy": _floats(history, "val_accuracy"), "val_loss": _floats(history, "val_loss"),
    }


def load_runs(results: str = RESULTS) -> dict[str, dict]:
    from experiments.paper_scale.run import RUNS

    runs = {name: load_run(name, results) for name in RUNS}
    return {name: run for name, run in runs.items() if run is not None}


def edge(run: dict) -> float:
    """The stability threshold the run's step sets on λ1: 2/η for SGD, 2/(γη) inside NSGD's nudged subspace."""
    return 2.0 / (run["lr"] * (run["gamma"] or 1.0))


def summary(run: dict) -> dict:
    """The per-run statistics of the tables and the figure."""
    lam1 = run["lambda"][:, 0]
    finite_epochs = run["measured_epoch"][np.isfinite(lam1)]
    peak_at = smoothed_peak_index(lam1)
    late = later_half_mean(run["measured_epoch"], lam1)
    best = int(np.nanargmax(run["val_accuracy"]))
    return {
        "epochs": len(run["loss"]), "edge": edge(run), "sgd_edge": 2.0 / run["lr"],
        "peak": smoothed_peak(lam1),
        "peak_epoch": int(finite_epochs[peak_at]) if peak_at >= 0 else -1,
        # The highest window is the run's last one: λ1 may still be rising, so that is no peak.
        "peak_is_last": peak_at >= 0 and peak_at >= len(finite_epochs) - 2,
        "late": late, "late_over_sgd_edge": late * run["lr"] / 2.0,
        "final_loss": float(run["loss"][-1]), "best_val": float(run["val_accuracy"][best]), "best_epoch": best + 1,
        "final_val": float(run["val_accuracy"][-1]),
        "test": run["final"]["test_accuracy"] if run["final"] else np.nan,
        "matvecs": float(np.nanmedian(run["matvecs"][1:])) if len(run["matvecs"]) > 1 else np.nan,
    }


def matched_loss_accuracy(runs: list[dict]) -> tuple[float, list[tuple[int, float]]]:
    """Validation accuracy of each run at the first epoch its training loss reaches the level every run reaches.

    The level is the largest of the runs' lowest training losses, so every run reaches it; comparing there
    separates generalization from training speed.
    """
    level = max(float(np.nanmin(run["loss"])) for run in runs)
    matched = []
    for run in runs:
        epoch = int(np.argmax(run["loss"] <= level + 1e-12))
        matched.append((epoch + 1, float(run["val_accuracy"][epoch])))
    return level, matched


def _f(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}g}"


def runs_table(runs: dict[str, dict]) -> str:
    """One row per run: λ1's smoothed peak, later-half mean against 2/η, losses and accuracies."""
    lines = ["| run | optimizer | η | γ | epochs | 2/η | threshold 2/(γη) | λ1 smoothed peak (epoch) | "
             "λ1 later-half mean | later-half λ1 / (2/η) | final train loss | best val acc (epoch) | "
             "final val acc | test acc | products per measurement (median) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        s = summary(run)
        lines.append(
            f"| `{name}` | {run['optimizer']} | {run['lr']:g} | {_f(run['gamma']) if run['gamma'] else '-'} | "
            f"{s['epochs']} | {s['sgd_edge']:.0f} | {s['edge']:.0f} | {_f(s['peak'])} ({s['peak_epoch']}"
            f"{', last window' if s['peak_is_last'] else ''}) | "
            f"{_f(s['late'])} | {s['late_over_sgd_edge']:.2f} | {s['final_loss']:.4f} | {s['best_val']:.4f} "
            f"({s['best_epoch']}) | {s['final_val']:.4f} | {_f(s['test'], 4)} | {_f(s['matvecs'])} |")
    return "\n".join(lines)


def pairs_table(runs: dict[str, dict]) -> str:
    """The paper's comparisons, each run against its reference: λ1, final loss, test accuracy, matched loss."""
    lines = ["| comparison | later-half λ1 (run / reference) | ratio | final train loss | test acc | "
             "train-loss level matched | val acc at that level (epoch) |",
             "|---|---|---|---|---|---|---|"]
    for label, name, reference in PAIRS:
        if name not in runs or reference not in runs:
            continue
        a, b = summary(runs[name]), summary(runs[reference])
        level, ((ea, va), (eb, vb)) = matched_loss_accuracy([runs[name], runs[reference]])
        lines.append(
            f"| {label} | {_f(a['late'])} / {_f(b['late'])} | {a['late'] / b['late']:.2f} | "
            f"{a['final_loss']:.4f} / {b['final_loss']:.4f} | {_f(a['test'], 4)} / {_f(b['test'], 4)} | "
            f"{level:.4f} | {va:.4f} ({ea}) / {vb:.4f} ({eb}) |")
    return "\n".join(lines)


#: Tables that experiments.verify checks against RESULTS.md, by the name in their marker.
TABLES = {"paper_scale.runs": lambda: runs_table(load_runs()),
          "paper_scale.pairs": lambda: pairs_table(load_runs())}
