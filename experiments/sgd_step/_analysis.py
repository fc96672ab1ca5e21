"""The callback of study 4 (``experiments.sgd_step.run``): the SGD step analysed at chosen epochs.

Apart from the run script so that its ``--help`` answers before TensorFlow is imported.
"""

from __future__ import annotations

import json

import keras
import numpy as np

from tf_sharpest.analysis import analyze_sgd_step
from tf_sharpest.hessian import top_eigenpairs
from tf_sharpest.utils import atomic_path

#: The step multipliers gamma' the loss is evaluated at.
MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)


class StepAnalysisAt(keras.callbacks.Callback):
    """Analyses the SGD step at the start of the chosen epochs (and after training if ``epochs`` is among them)."""

    def __init__(self, sample, epochs, last_epoch: int, *, learning_rate: float, top_k: int, num_random: int,
                 batch_size: int, tol: float, path: str, seed: int):
        super().__init__()
        self.sample, self.epochs, self.last_epoch = sample, sorted(set(epochs)), last_epoch
        self.learning_rate, self.top_k, self.num_random = learning_rate, top_k, num_random
        self.batch_size, self.tol, self.path, self.seed = batch_size, tol, path, seed
        self.records: list[dict] = []
        self._previous = None

    def on_epoch_begin(self, epoch, logs=None):
        if epoch in self.epochs:
            self._analyse(epoch)

    def on_train_end(self, logs=None):
        if self.last_epoch in self.epochs:
            self._analyse(self.last_epoch)

    def _analyse(self, epoch: int):
        pairs = top_eigenpairs(self.model, self.sample, k=self.top_k, batch_size=self.batch_size, tol=self.tol,
                               seed=self.seed + epoch, initial_vectors=self._previous)
        self._previous = pairs.eigenvectors
        report = analyze_sgd_step(self.model, self.sample, pairs.eigenvectors, self.learning_rate,
                                  eigenvalues=pairs.eigenvalues, multipliers=MULTIPLIERS,
                                  num_random=self.num_random, seed=self.seed + epoch, batch_size=self.batch_size)
        record = {"epoch": epoch, "matvecs": pairs.num_matvecs}
        for name, value in vars(report).items():
            record[name] = np.asarray(value).tolist()
        self.records.append(record)
        with atomic_path(self.path) as temporary, open(temporary, "w") as f:
            json.dump({"learning_rate": self.learning_rate, "records": self.records}, f, indent=1)
        print(f"  epoch {epoch}: lambda {np.round(pairs.eigenvalues, 2)}, loss {report.loss:.4f}, "
              f"loss change along e_1 at gamma' {MULTIPLIERS}: "
              f"{np.round(report.along_eigenvectors[0] - report.loss, 5)}", flush=True)
