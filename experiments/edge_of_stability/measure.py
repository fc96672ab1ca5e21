"""What the edge-of-stability study measures at one point of a run, and the two ways it trains.

At each measurement point (every few GD steps, or every few epochs of
``model.fit``), :class:`EdgeMeasurer` records on the run's own training set:

* ``lambda_full``: the top Hessian eigenvalue of the mean loss over *every*
  training example of the run (the objective GD descends);
* ``lambda_<m>``: the same on a fresh random sample of ``m`` examples (2,250:
  the paper's sample; 512: the earlier studies' sample);
* ``batch_sharpness``: :func:`tf_sharpest.analysis.batch_sharpness` at the
  run's batch size over random batches (mini-batch runs only);
* ``lambda_preconditioned``: the top eigenvalue of ``D^-1/2 H D^-1/2`` on
  every example, ``D`` read from Adam's state (Adam runs only);
* the training loss on every example and the validation accuracy.

Every operator is built once per run and moved between samples with
``set_data``, and Lanczos starts warm from the previous eigenvector, so a
measurement costs a handful of Hessian-vector products per quantity.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_sharpest.analysis import BatchSharpnessMeter
from tf_sharpest.linalg import lanczos
from tf_sharpest.operators import HessianOperator, PreconditionedOperator, optimizer_preconditioner
from tf_sharpest.utils import even_batch_size


class EdgeMeasurer:
    """Measures one run's sharpness quantities at chosen points; operators and warm starts persist across points.

    Example:

    ```python
    measurer = EdgeMeasurer(model, (x, y), valid, sample_sizes=(2250, 512), batch_size=128,
                            num_batches=8, operator_batch_size=500, tol=1e-2, seed=0)
    record = measurer.measure(step=0, epoch=0)   # {'lambda_full': ..., 'lambda_2250': ..., ...}
    ```

    Args:
      model: the compiled model being trained.
      train: ``(x, y)`` arrays: every training example of the run.
      valid: ``(x, y)`` validation arrays (accuracy only).
      sample_sizes: sizes of the random samples whose lambda_1 is also measured (sizes not below the
        training set's are skipped: they would be ``lambda_full``).
      batch_size: the run's training batch size, for the batch sharpness; ``None`` measures none.
      num_batches: random batches per batch-sharpness measurement.
      preconditioned: also measure Adam's preconditioned sharpness.
      operator_batch_size: largest batch of the curvature products (memory, not the result).
      tol: Lanczos residual tolerance relative to lambda_1.
      seed: seed of the samples, the batches and Lanczos's start vectors.
    """

    def __init__(self, model: keras.Model, train, valid, *, sample_sizes: Sequence[int] = (), batch_size=None,
                 num_batches: int = 8, preconditioned: bool = False, operator_batch_size: int = 500,
                 tol: float = 1e-2, seed: int = 0):
        self.model, self.train, self.valid = model, train, valid
        self.n = len(train[1])
        self.sample_sizes = sorted({int(m) for m in sample_sizes if int(m) < self.n}, reverse=True)
        self.batch_size, self.num_batches = batch_size, int(num_batches)
        self.preconditioned = bool(preconditioned)
        self.operator_batch_size, self.tol, self.seed = int(operator_batch_size), float(tol), int(seed)
        # Equal batches let each operator trace one fixed batch shape (faster products).
        self.full = HessianOperator(model, train, batch_size=even_batch_size(self.n, self.operator_batch_size))
        self._samples: dict[int, HessianOperator] = {}
        self._meter = BatchSharpnessMeter(model) if batch_size else None
        self._vectors: dict[str, np.ndarray] = {}
        self._rng = np.random.default_rng([self.seed, 2024])
        self.records: list[dict] = []

    @property
    def gradient_source(self):
        """The :class:`~tf_sharpest.operators.EmpiricalLoss` of every training example (GD's objective)."""
        return self.full.objective

    def _top(self, name: str, operator) -> tuple[float, int]:
        result = lanczos(operator, k=1, tol=self.tol, seed=int(self._rng.integers(2**31)),
                         initial_vectors=self._vectors.get(name))
        self._vectors[name] = result.eigenvectors
        return float(result.eigenvalues[0]), int(result.num_matvecs)

    def _sample_operator(self, size: int) -> HessianOperator:
        pick = np.sort(self._rng.choice(self.n, size, replace=False))
        sample = (self.train[0][pick], self.train[1][pick])
        if size in self._samples:
            self._samples[size].set_data(sample)  # a fresh sample, the same traced graph
        else:
            self._samples[size] = HessianOperator(self.model, sample,
                                                  batch_size=even_batch_size(size, self.operator_batch_size))
        return self._samples[size]

    def measure(self, *, step: int, epoch: float) -> dict:
        """Measures everything at the current weights and appends the record to ``records``."""
        start = time.perf_counter()
        record: dict = {"step": int(step), "epoch": float(epoch)}
        record["train_loss"] = self.full.objective.evaluate()
        if not np.isfinite(record["train_loss"]):
            record["diverged"] = True
            self.records.append(record)
            return record
        matvecs = 0
        record["lambda_full"], used = self._top("full", self.full)
        matvecs += used
        for size in self.sample_sizes:
            record[f"lambda_{size}"], used = self._top(f"sample{size}", self._sample_operator(size))
            matvecs += used
        if self._meter is not None:
            seed = int(self._rng.integers(2**31))
            result = self._meter.measure(self.train, batch_size=self.batch_size, num_batches=self.num_batches,
                                         seed=seed)
            record["batch_sharpness"], record["batch_sharpness_stderr"] = result.value, result.stderr
            record["batch_sharpness_seed"] = seed  # the batches can be drawn again (tests do)
            matvecs += result.num_batches
        if self.preconditioned and int(self.model.optimizer.iterations.numpy()) == 0:
            record["lambda_preconditioned"] = float("nan")  # Adam has no second moments before its first step
        elif self.preconditioned:
            diagonal = optimizer_preconditioner(self.model.optimizer, self.full.variables)
            record["lambda_preconditioned"], used = self._top("preconditioned",
                                                              PreconditionedOperator(self.full, diagonal))
            matvecs += used
        _, record["val_accuracy"] = [float(v) for v in self.model.evaluate(*self.valid, batch_size=500, verbose=0)]
        record["matvecs"], record["seconds"] = matvecs, time.perf_counter() - start
        self.records.append(record)
        return record


class MeasureEveryEpochs(keras.callbacks.Callback):
    """Calls the measurer at the start of every ``every``-th epoch and once after training (``model.fit`` runs)."""

    def __init__(self, measurer: EdgeMeasurer, every: int, log=print):
        super().__init__()
        self.measurer, self.every, self.log = measurer, int(every), log
        self._epoch = 0

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if epoch % self.every == 0:
            self.log(describe(self.measurer.measure(step=self._step(), epoch=epoch)))

    def on_epoch_end(self, epoch, logs=None):
        self._epoch = epoch + 1

    def on_train_end(self, logs=None):
        self.log(describe(self.measurer.measure(step=self._step(), epoch=self._epoch)))


def train_full_batch(model: keras.Model, measurer: EdgeMeasurer, *, steps: int, measure_every: int, log=print) -> dict:
    """Full-batch training: ``steps`` steps of ``model.optimizer`` on the exact gradient over every example.

    The gradient is the mean over all of ``measurer.train`` (accumulated in
    batches, so it is that of one full batch), applied by the model's own
    optimizer (``SGD`` gives gradient descent, ``Adam`` full-batch Adam).
    Measures every ``measure_every`` steps and after the last; stops early
    when the weights or the loss stop being finite.

    Returns ``{"steps": steps taken, "diverged": bool}``.
    """
    objective = measurer.gradient_source
    variables, optimizer = objective.variables, model.optimizer
    optimizer.build(variables)
    apply = tf.function(lambda flat: optimizer.apply_gradients(zip(objective.layout.unflatten(flat), variables)))
    diverged = False
    step = 0
    for step in range(steps):
        if step % measure_every == 0:
            record = measurer.measure(step=step, epoch=step)
            log(describe(record))
            if record.get("diverged"):
                return {"steps": step, "diverged": True}
        gradient = objective.gradient()
        if not bool(tf.reduce_all(tf.math.is_finite(gradient))):
            diverged = True
            break
        apply(gradient)
    else:
        step = steps
    if not diverged:
        record = measurer.measure(step=step, epoch=step)
        log(describe(record))
        diverged = bool(record.get("diverged", False))
    return {"steps": int(step), "diverged": diverged}


def describe(record: dict) -> str:
    """One line per measurement for the run's log."""
    keys = [k for k in record if k.startswith("lambda_") or k == "batch_sharpness"]
    values = ", ".join(f"{k} {record[k]:.2f}" for k in keys)
    return (f"  step {record['step']:5d} (epoch {record['epoch']:g}): loss {record['train_loss']:.4f}, {values}, "
            f"val acc {record.get('val_accuracy', float('nan')):.3f} ({record.get('seconds', 0):.1f} s)")


def save_weights(model: keras.Model, out_dir: str) -> str:
    """The final weights, so a measurement can be checked afterwards (tests recompute lambda_1 from them)."""
    path = os.path.join(out_dir, "final.weights.h5")
    model.save_weights(path)
    return path
