"""One record per curvature measurement, and the one writer that saves and reloads them.

The callback writes its measurements with :class:`MeasurementLog` after each
one (so a killed run loses nothing), and reads them back when a run
resumes; the experiments read and write the same files with it.

Files in ``folder``:

* ``{name}.npz``: arrays ``epoch``, ``step``, ``eigenvalues`` ``[n, k]``,
  ``matvecs``, ``seconds``, ``loss``, ``error``, and ``values.<key>`` for each
  extra value (e.g. a block's eigenvalues), ``[n, ...]``;
* ``{name}.csv``: the same, one row per measurement, for a spreadsheet.
"""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np

from tf_sharpest.utils._files import atomic_path

_VALUE_PREFIX = "values."


@dataclasses.dataclass
class Measurement:
    """One measurement of the top eigenvalues (NaN where it failed).

    Attributes:
      epoch: the epoch it was taken at the start of (the last one follows the last epoch).
      step: the global training step (optimizer steps taken before it).
      eigenvalues: ``[k]`` descending.
      matvecs: operator products it spent.
      seconds: wall time it took.
      loss: the mean loss on its sample.
      error: why it failed (empty when it did not).
      values: further named results, e.g. ``{"dense_lambda": array([...])}`` for a block.
    """

    epoch: int
    step: int
    eigenvalues: np.ndarray
    matvecs: int
    seconds: float
    loss: float
    error: str = ""
    values: dict = dataclasses.field(default_factory=dict)


class MeasurementLog:
    """Saves a list of :class:`Measurement` atomically as ``{name}.npz`` and ``{name}.csv``, and reads it back.

    Example:

    ```python
    log = MeasurementLog("runs/sgd", name="lanczos")
    log.write(callback.history)
    again = log.read()            # equal to callback.history
    ```
    """

    def __init__(self, folder: str, name: str = "lanczos"):
        self.folder = folder
        self.name = name

    @property
    def npz_path(self) -> str:
        return os.path.join(self.folder, f"{self.name}.npz")

    @property
    def csv_path(self) -> str:
        return os.path.join(self.folder, f"{self.name}.csv")

    def exists(self) -> bool:
        return os.path.exists(self.npz_path)

    def write(self, history: list, top_k: int | None = None) -> None:
        """Writes every measurement in ``history`` (both files, each replaced in one step)."""
        top_k = top_k or max((len(m.eigenvalues) for m in history), default=0)
        eigenvalues = np.full((len(history), top_k), np.nan)
        for row, measurement in enumerate(history):
            eigenvalues[row, : len(measurement.eigenvalues)] = measurement.eigenvalues[:top_k]
        columns = {
            "epoch": np.array([m.epoch for m in history], dtype=np.int64),
            "step": np.array([m.step for m in history], dtype=np.int64),
            "eigenvalues": eigenvalues,
            "matvecs": np.array([m.matvecs for m in history], dtype=np.int64),
            "seconds": np.array([m.seconds for m in history], dtype=np.float64),
            "loss": np.array([m.loss for m in history], dtype=np.float64),
            "error": np.array([m.error for m in history], dtype=str),
        }
        extra = _stack_values(history)
        columns.update({_VALUE_PREFIX + key: value for key, value in extra.items()})
        with atomic_path(self.npz_path) as path:
            np.savez(path, **columns)
        with atomic_path(self.csv_path) as path, open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            header = ["epoch", "step"] + [f"lambda_{i + 1}" for i in range(top_k)] + ["matvecs", "seconds", "loss"]
            for key, value in extra.items():
                header += [f"{key}_{i + 1}" for i in range(value.shape[1])] if value.ndim == 2 else [key]
            writer.writerow(header + ["error"])
            for row, m in enumerate(history):
                cells = [m.epoch, m.step] + [repr(float(v)) for v in eigenvalues[row]]
                cells += [m.matvecs, f"{m.seconds:.3f}", repr(float(m.loss))]
                for value in extra.values():
                    cells += [repr(float(v)) for v in np.atleast_1d(value[row])]
                writer.writerow(cells + [m.error])

    def read(self) -> list:
        """The measurements saved in ``{name}.npz``, in order."""
        with np.load(self.npz_path) as saved:
            extra = {key[len(_VALUE_PREFIX):]: saved[key] for key in saved.files if key.startswith(_VALUE_PREFIX)}
            return [Measurement(int(saved["epoch"][i]), int(saved["step"][i]), np.array(saved["eigenvalues"][i]),
                                int(saved["matvecs"][i]), float(saved["seconds"][i]), float(saved["loss"][i]),
                                str(saved["error"][i]), {key: np.array(value[i]) for key, value in extra.items()})
                    for i in range(len(saved["epoch"]))]


def _stack_values(history: list) -> dict:
    """Each extra value as one ``[n, ...]`` float array (NaN where a measurement lacks it)."""
    shapes = {}
    for measurement in history:
        for key, value in measurement.values.items():
            shapes.setdefault(key, np.shape(value))
    stacked = {}
    for key, shape in shapes.items():
        array = np.full((len(history),) + tuple(shape), np.nan)
        for row, measurement in enumerate(history):
            if key in measurement.values and np.shape(measurement.values[key]) == shape:
                array[row] = measurement.values[key]
        stacked[key] = array
    return stacked
