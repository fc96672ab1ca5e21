"""Reading a study's runs back: results, their measurements, and the curves and summaries taken from them."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence

import numpy as np

# tf_sharpest (and with it TensorFlow) is imported only where a run is read, so that the scripts that import
# this module answer --help at once.


def with_measurements(result: dict, folder: str) -> dict:
    """``result`` with ``measurements``: the run's saved Lanczos measurements (none if it did not measure)."""
    from experiments._cli import import_tensorflow_quietly

    import_tensorflow_quietly()
    from tf_sharpest.callbacks import MeasurementLog

    log = MeasurementLog(folder)
    return {**result, "measurements": log.read() if log.exists() else []}


def load_results(folder: str) -> list[dict]:
    """Every run (``result.json``, with its measurements) under ``folder``, sorted by path."""
    found = []
    for here, _, files in sorted(os.walk(folder)):
        if "result.json" in files:
            with open(os.path.join(here, "result.json")) as f:
                found.append(with_measurements(json.load(f), here))
    if not found:
        raise SystemExit(f"no result.json under {folder}: run the study's run script first.")
    return found


def run_label(result: dict) -> str:
    c = result["config"]
    if c["gamma"] is None:
        return f"SGD lr={c['lr']:g} bs={c['batch_size']}"
    return f"NSGD gamma={c['gamma']:g} lr={c['lr']:g}"


def eigenvalue_curve(result: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(epochs, [n, K] eigenvalues)`` of every measurement, in order (epoch e = after e epochs)."""
    measurements = result["measurements"]
    epochs = np.array([m.epoch for m in measurements], dtype=float)
    values = np.array([m.eigenvalues for m in measurements], dtype=float)
    return epochs, values


def best_validation_epoch(logs: dict) -> int:
    """Index of the epoch with the highest validation accuracy (the first if tied)."""
    accuracy = np.asarray(logs["val_accuracy"], dtype=float)
    return int(np.nanargmax(accuracy))


def top_k_norm(values: np.ndarray) -> np.ndarray:
    """``sqrt(sum_k lambda_k^2)`` per measurement: the Frobenius norm of the Hessian restricted to the top K."""
    return np.sqrt(np.sum(np.asarray(values, dtype=float) ** 2, axis=-1))


def by_setting(results: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    """Runs grouped by the configuration ``keys`` (all but the seed), each group sorted by seed."""
    groups: dict[tuple, list[dict]] = {}
    for result in results:
        groups.setdefault(tuple(result["config"][k] for k in keys), []).append(result)
    return {k: sorted(groups[k], key=lambda r: r["config"]["seed"]) for k in sorted(groups)}


def kept_tables(prefix: str, names: Sequence[str], folder: str, tables_of: Callable[[str], Sequence[str]],
                suffix: str = "") -> dict:
    """``verify`` entries for a study's kept runs under ``folder``: ``{prefix}.{name}{suffix}`` for each of
    ``names``, in the order of the tables that ``tables_of(folder)`` returns. The runs are read once, on the
    first entry asked for; there are no entries until the runs are kept (``folder`` exists)."""
    if not os.path.isdir(folder):
        return {}
    computed = functools.cache(lambda: tuple(tables_of(folder)))

    def entry(index: int) -> Callable[[], str]:
        return lambda: computed()[index]

    return {f"{prefix}.{name}{suffix}": entry(i) for i, name in enumerate(names)}
