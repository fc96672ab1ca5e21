"""LanczosCallback: the top Hessian eigenvalues along training, logged like any metric."""

from __future__ import annotations

import copy
import csv
import dataclasses
import os
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from tf_sharpest.linalg.lanczos import lanczos
from tf_sharpest.operators.hessian import HessianOperator
from tf_sharpest.utils.batches import even_batch_size, materialize
from tf_sharpest.utils.files import atomic_path


@dataclasses.dataclass
class Measurement:
    """One measurement of the top eigenvalues (NaN where it failed)."""

    epoch: int
    step: int
    eigenvalues: np.ndarray
    matvecs: int
    seconds: float
    loss: float
    error: str = ""


class LanczosCallback(keras.callbacks.Callback):
    """Measures the top-K Hessian eigenvalues of the training loss as ``model.fit`` runs.

    At the start of every epoch (or every ``frequency`` training batches), the
    callback draws ``num_samples`` examples from ``data``, forms the Hessian of
    the loss at the current weights on them (BatchNorm in inference mode and
    dropout off unless ``training=True``) and finds its top ``top_k``
    eigenpairs by Lanczos. The eigenvalues go into that epoch's ``logs`` as
    ``lambda_1`` ... ``lambda_K`` with ``lanczos_matvecs`` and
    ``lanczos_seconds`` (all prefixed with ``log_prefix``), so ``History``,
    ``CSVLogger``, ``TensorBoard`` and keras-tuner see them like any metric.
    Place this callback before ``CSVLogger``/``TensorBoard`` in the list:
    Keras hands each callback the epoch's logs in list order.

    If the model's optimizer is :class:`tf_sharpest.optimizers.NSGD`, it is
    handed the eigenvectors after each measurement, and its projections of the
    gradient on them are logged as ``nsgd_alpha_i`` and ``nsgd_alpha_ratio_i``.

    A measurement that fails (non-finite loss or eigenvalues, or any error in
    the eigensolver) never stops training: it logs NaN, warns once with the
    reason, and NSGD keeps its previous directions.

    Example:

    ```python
    lanczos = LanczosCallback((x_train, y_train), top_k=5, num_samples=2250)
    model.compile(optimizer=tf_sharpest.optimizers.NSGD(0.01, gamma=0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x_train, y_train, epochs=10,
                        callbacks=[lanczos, keras.callbacks.CSVLogger("log.csv")])
    history.history["lambda_1"]        # one value per epoch
    lanczos.history                   # every measurement, including one after training
    ```

    Args:
      data: ``(x, y)`` arrays, or a batched ``tf.data.Dataset`` of ``(x, y)``
        (e.g. the augmented training stream; it may repeat forever).
      top_k: number of eigenvalues measured.
      num_samples: examples per measurement (the paper: 2,250).
      batch_size: largest batch size of the Hessian-vector products (the
        sample is cut into equal batches where a size of at least half of
        this allows, e.g. 2,250 examples into 18 batches of 125).
      frequency: ``"epoch"`` to measure at the start of each epoch, or an int
        to measure every that many training batches.
      resample: draw a fresh sample for every measurement (seeded); ``False``
        keeps the first draw.
      training: call the model in training mode while measuring.
      warm_start: start Lanczos from the previous eigenvectors.
      save_dir: folder for ``lanczos.npz``/``lanczos.csv`` (every measurement)
        and eigenvector files; ``None`` saves nothing.
      save_eigenvectors_every: save the eigenvectors every this many epochs
        (0: never) as ``eigenvectors_epoch{E:04d}.npz``.
      seed: seed of the sampling and of Lanczos's start vectors.
      verbose: 1 shows a progress bar per measurement and a line with its result.
      log_prefix: prefix of every logged key.
      tol: Lanczos residual tolerance, relative to the largest eigenvalue.
      max_iterations: most matvecs per measurement.
      loss: loss to differentiate; ``None`` uses the model's compiled loss.
    """

    def __init__(self, data, top_k: int = 5, num_samples: int = 2250, batch_size: int = 128,
                 frequency="epoch", resample: bool = True, training: bool = False, warm_start: bool = True,
                 save_dir: str | None = None, save_eigenvectors_every: int = 0, seed: int | None = None,
                 verbose: int = 0, log_prefix: str = "", tol: float = 1e-3, max_iterations: int | None = None,
                 loss=None):
        super().__init__()
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}.")
        if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
        if frequency != "epoch" and (isinstance(frequency, bool) or not isinstance(frequency, (int, np.integer))
                                     or frequency < 1):
            raise ValueError(f"frequency must be 'epoch' or a positive number of batches, got {frequency!r}.")
        if not isinstance(data, tf.data.Dataset) and not (isinstance(data, (tuple, list)) and len(data) in (2, 3)):
            raise ValueError("data must be (x, y) arrays or a batched tf.data.Dataset of (x, y).")
        self.data = data
        self.top_k = int(top_k)
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.frequency = frequency
        self.resample = bool(resample)
        self.training = bool(training)
        self.warm_start = bool(warm_start)
        self.save_dir = save_dir
        self.save_eigenvectors_every = int(save_eigenvectors_every)
        self.seed = seed
        self.verbose = int(verbose)
        self.log_prefix = log_prefix
        self.tol = tol
        self.max_iterations = max_iterations
        self.loss = loss
        #: Every measurement, in order: one per epoch or per ``frequency`` batches, and one after training.
        self.history: list[Measurement] = []
        self.eigenvectors: np.ndarray | None = None
        self._reset_run_state()

    def _reset_run_state(self):
        self._rng = np.random.default_rng(self.seed)
        self._fixed_sample = None
        self._epoch = 0
        self._global_step = 0
        self._pending_logs: dict = {}
        self._warned = False
        self._first_measurement_of_run = True
        self._operator = None  # reused across measurements so its graphs are traced once per run

    # keras-tuner deep-copies callbacks for every trial; a tf.data.Dataset (and
    # large arrays) are shared instead of copied: the callback only reads them.
    def __deepcopy__(self, memo):
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        for name, value in self.__dict__.items():
            if name == "_operator":
                clone._operator = None  # traced graphs of the original's model: the clone builds its own
                continue
            shared = name in ("data", "_model") or isinstance(value, (tf.data.Dataset, keras.Model))
            clone.__dict__[name] = value if shared else copy.deepcopy(value, memo)
        return clone

    def key(self, name: str) -> str:
        """The logged key for ``name`` (with ``log_prefix``)."""
        return f"{self.log_prefix}{name}"

    # -- Keras hooks -------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._reset_run_state()
        self._check_optimizer()
        if self.save_dir and os.path.exists(self._history_path):
            self.history = _load_history(self._history_path)  # a resumed run continues the saved history

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = int(epoch)
        self._pending_logs = {}
        if self.frequency == "epoch":
            self._measure()

    def on_train_batch_begin(self, batch, logs=None):
        if self.frequency != "epoch" and self._global_step % int(self.frequency) == 0:
            self._measure()

    def on_train_batch_end(self, batch, logs=None):
        self._global_step += 1

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs.update(self._pending_logs)
        logs.update(self._nsgd_logs())
        if self.save_eigenvectors_every and self.save_dir and (epoch + 1) % self.save_eigenvectors_every == 0 \
                and self.eigenvectors is not None:
            self._save_eigenvectors(epoch)

    def on_train_end(self, logs=None):
        self._measure(final=True)

    # -- measurement ---------------------------------------------------------------------
    def _sample(self):
        if self._fixed_sample is not None:
            return self._fixed_sample
        sample = materialize(self.data, self.num_samples, seed=int(self._rng.integers(2**31)))
        if not self.resample:
            self._fixed_sample = sample
        return sample

    def _measure(self, final: bool = False):
        if self._first_measurement_of_run:
            # A run measures again from its first epoch on (a fresh fit() from 0, a run
            # resumed by BackupAndRestore from where it stopped): drop what it redoes.
            self.history = [m for m in self.history if m.epoch < self._epoch]
            self._first_measurement_of_run = False
        epoch = self._epoch + 1 if final else self._epoch  # the final one follows the last epoch
        start = time.perf_counter()
        operator, first_matvec = None, 0
        try:
            operator = self._operator_on(self._sample())
            first_matvec = operator.num_matvecs
            result = lanczos(operator, k=min(self.top_k, operator.dim), tol=self.tol,
                             max_iterations=self.max_iterations, seed=int(self._rng.integers(2**31)),
                             initial_vectors=self.eigenvectors if self.warm_start else None,
                             verbose=self.verbose)
            if not np.all(np.isfinite(result.eigenvalues)):
                raise ValueError(f"Lanczos returned non-finite eigenvalues {result.eigenvalues}.")
        except (ValueError, ArithmeticError, tf.errors.OpError) as error:
            measurement = Measurement(epoch, self._global_step, np.full(self.top_k, np.nan),
                                      operator.num_matvecs - first_matvec if operator else 0,
                                      time.perf_counter() - start,
                                      float("nan"), error=str(error).splitlines()[0])
            self._warn(measurement)
        else:
            self.eigenvectors = result.eigenvectors
            self._hand_to_optimizer(result.eigenvectors)
            measurement = Measurement(epoch, self._global_step, result.eigenvalues, result.num_matvecs,
                                      time.perf_counter() - start, operator.loss)
            if self.verbose:
                print(f"Lanczos at epoch {epoch}, step {self._global_step}: top-{self.top_k} eigenvalues "
                      f"{np.array2string(result.eigenvalues, precision=4)} ({result.num_matvecs} matvecs, "
                      f"{measurement.seconds:.1f}s)")
        self.history.append(measurement)
        if not final:
            self._pending_logs = self._measurement_logs(measurement)
        if self.save_dir:
            self._save_history()

    def _operator_on(self, sample) -> HessianOperator:
        """The Hessian on ``sample``: the previous operator moved to it when the model's variables are unchanged."""
        variables = [id(v) for v in self.model.trainable_variables]
        if self._operator is not None and self._operator.model is self.model and \
                [id(v) for v in self._operator.variables] == variables:
            try:
                self._operator.set_data(sample)
                return self._operator
            except ValueError:
                self._operator = None  # a sample of another structure: build afresh (and report its error)
        # Equal batches (at most batch_size) let the operator trace one fixed, faster batch shape.
        batch_size = even_batch_size(len(tf.nest.flatten(sample[1])[0]), self.batch_size)
        self._operator = HessianOperator(self.model, sample, loss=self.loss, batch_size=batch_size,
                                         training=self.training)
        return self._operator

    def _measurement_logs(self, measurement: Measurement) -> dict:
        logs = {self.key(f"lambda_{i + 1}"): float(v) for i, v in enumerate(measurement.eigenvalues)}
        logs[self.key("lanczos_matvecs")] = float(measurement.matvecs)
        logs[self.key("lanczos_seconds")] = float(measurement.seconds)
        return logs

    def _warn(self, measurement: Measurement):
        if not self._warned:
            warnings.warn(
                f"LanczosCallback: the measurement at epoch {measurement.epoch}, step {measurement.step} failed "
                f"and was logged as NaN; training goes on (further failures are not reported). Reason: "
                f"{measurement.error}", RuntimeWarning, stacklevel=2)
            self._warned = True

    # -- NSGD --------------------------------------------------------------------------------
    def _nsgd(self):
        from tf_sharpest.optimizers import NSGD  # the optimizer is optional for this callback

        optimizer = getattr(self.model, "optimizer", None)
        return optimizer if isinstance(optimizer, NSGD) else None

    def _check_optimizer(self):
        optimizer = self._nsgd()
        if optimizer is not None and optimizer.top_k > self.top_k:
            raise ValueError(
                f"NSGD nudges top_k={optimizer.top_k} directions but LanczosCallback measures only "
                f"top_k={self.top_k}; give the callback top_k >= {optimizer.top_k}."
            )

    def _hand_to_optimizer(self, eigenvectors):
        optimizer = self._nsgd()
        if optimizer is not None:
            optimizer.set_directions(eigenvectors)

    def _nsgd_logs(self) -> dict:
        optimizer = self._nsgd()
        if optimizer is None or not optimizer.built:
            return {}
        logs = {}
        for name, values in (("nsgd_alpha", optimizer.alpha), ("nsgd_alpha_ratio", optimizer.alpha_ratio)):
            for i, value in enumerate(values.numpy()):
                logs[self.key(f"{name}_{i + 1}")] = float(value)
        return logs

    # -- files -------------------------------------------------------------------------------
    @property
    def _history_path(self) -> str:
        return os.path.join(self.save_dir, "lanczos.npz")

    def _save_history(self):
        eigenvalues = np.array([m.eigenvalues for m in self.history], dtype=np.float64).reshape(-1, self.top_k)
        columns = {
            "epoch": np.array([m.epoch for m in self.history], dtype=np.int64),
            "step": np.array([m.step for m in self.history], dtype=np.int64),
            "eigenvalues": eigenvalues,
            "matvecs": np.array([m.matvecs for m in self.history], dtype=np.int64),
            "seconds": np.array([m.seconds for m in self.history], dtype=np.float64),
            "loss": np.array([m.loss for m in self.history], dtype=np.float64),
            "error": np.array([m.error for m in self.history], dtype=str),
        }
        with atomic_path(self._history_path) as path:
            np.savez(path, **columns)
        with atomic_path(os.path.join(self.save_dir, "lanczos.csv")) as path, open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", "step"] + [f"lambda_{i + 1}" for i in range(self.top_k)]
                            + ["matvecs", "seconds", "loss", "error"])
            for m in self.history:
                writer.writerow([m.epoch, m.step] + [repr(float(v)) for v in m.eigenvalues]
                                + [m.matvecs, f"{m.seconds:.3f}", repr(float(m.loss)), m.error])

    def _save_eigenvectors(self, epoch: int):
        variables = self.model.trainable_variables
        last = self.history[-1]
        with atomic_path(os.path.join(self.save_dir, f"eigenvectors_epoch{epoch:04d}.npz")) as path:
            np.savez(path, eigenvectors=self.eigenvectors, eigenvalues=last.eigenvalues, epoch=epoch,
                     step=last.step,
                     variable_names=np.array([getattr(v, "path", v.name) for v in variables], dtype=str),
                     variable_shapes=np.array([json_shape(v.shape) for v in variables], dtype=str))


def json_shape(shape) -> str:
    """A variable's shape as text, e.g. ``"3,3,1,32"`` (``""`` for a scalar)."""
    return ",".join(str(int(d)) for d in shape)


def _load_history(path: str) -> list[Measurement]:
    with np.load(path) as saved:
        return [Measurement(int(e), int(s), np.array(v), int(m), float(sec), float(l), str(err))
                for e, s, v, m, sec, l, err in zip(saved["epoch"], saved["step"], saved["eigenvalues"],
                                                   saved["matvecs"], saved["seconds"], saved["loss"],
                                                   saved["error"])]
