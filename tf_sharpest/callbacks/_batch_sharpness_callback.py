"""BatchSharpnessCallback: the batch sharpness along training, logged like any metric."""

from __future__ import annotations

import time

import numpy as np

from tf_sharpest.analysis._sharpness import BatchSharpnessMeter
from tf_sharpest.callbacks._measurement_log import Measurement
from tf_sharpest.callbacks._measuring import MEASUREMENT_ERRORS, MeasuringCallback, describe_error
from tf_sharpest.utils._checks import positive_int

#: The keys a measurement logs (each prefixed with ``log_prefix``).
KEYS = ("batch_sharpness", "batch_sharpness_stderr")


class BatchSharpnessCallback(MeasuringCallback):
    """Measures the batch sharpness of the loss as ``model.fit`` runs.

    At the start of every epoch (or every ``frequency`` training batches), and
    once after training, the callback draws ``num_samples`` examples from
    ``data`` and measures :func:`tf_sharpest.analysis.batch_sharpness` on
    them: the mean over ``num_batches`` random mini-batches ``B`` of
    ``batch_size`` examples of ``g_B^T H_B g_B / ||g_B||^2``, the curvature
    along the step SGD takes on ``B`` (it settles at ``2 / lr`` at the "edge of
    stochastic stability"). The value and its standard error over the batches
    go into that epoch's ``logs`` as ``batch_sharpness`` and
    ``batch_sharpness_stderr`` (prefixed with ``log_prefix``). A measurement
    never changes the model and never stops training: one that fails (e.g. a
    sample smaller than one batch, a zero gradient) logs NaN and warns once.

    Cost: ``num_batches`` gradients and Hessian-vector products of one
    mini-batch each; the graph is traced once per model.

    Example:

    ```python
    sharpness = BatchSharpnessCallback((x_train, y_train), batch_size=128)
    history = model.fit(x_train, y_train, batch_size=128, epochs=10, callbacks=[sharpness])
    history.history["batch_sharpness"]        # one value per epoch; compare with 2 / lr
    sharpness.result.values                   # the latest measurement, batch by batch
    ```

    Args:
      data: ``(x, y)`` arrays or a batched ``tf.data.Dataset`` of ``(x, y)`` (it may repeat forever).
      batch_size: examples per mini-batch ``B``: the training batch size (Keras 3's
        ``fit`` does not tell callbacks its own).
      num_batches: random mini-batches per measurement (``>= 2`` for a standard error).
      num_samples: examples drawn per measurement, from which the batches are taken
        without replacement (default: ``batch_size * num_batches``).
      frequency: ``"epoch"``, or an int to measure every that many training batches.
      resample: draw a fresh sample for every measurement (seeded); ``False`` keeps the first.
      seed: seed of the sampling and of the batches.
      loss: the loss to differentiate; ``None`` uses the model's compiled loss.
      training: call the model in training mode (BatchNorm batch statistics); the model is left unchanged.
      save_dir: folder for ``batch_sharpness.npz``/``.csv`` (every measurement); ``None`` saves nothing.
      verbose: ``"auto"`` (one line per measurement unless ``fit`` runs with ``verbose=0``), 0, 1 or 2.
      log_prefix: prefix of every logged key.
    """

    _log_name = "batch_sharpness"

    def __init__(self, data, batch_size: int, num_batches: int = 8, num_samples: int | None = None,
                 frequency="epoch", resample: bool = True, seed: int | None = None, loss=None,
                 training: bool = False, save_dir: str | None = None, verbose="auto", log_prefix: str = ""):
        batch_size = positive_int("batch_size", batch_size)
        self.num_batches = positive_int("num_batches", num_batches)
        num_samples = batch_size * self.num_batches if num_samples is None else num_samples
        super().__init__(data, num_samples, batch_size, frequency, resample, seed, save_dir, verbose, log_prefix)
        self.loss = loss
        self.training = bool(training)
        #: The latest :class:`~tf_sharpest.analysis.BatchSharpness` (with its batches); None before the first.
        self.result = None
        self._meter = None  # one BatchSharpnessMeter per model: its graph is traced once

    def _fresh_on_copy(self) -> dict:
        return {**super()._fresh_on_copy(), "_meter": None}  # traced for the original's model

    def _logged_keys(self) -> list:
        return [self.key(name) for name in KEYS]

    def _take_measurement(self, epoch: int, final: bool) -> Measurement:
        start = time.perf_counter()
        try:
            sample = self._source.draw()
            self._warn_about_batchnorm(self.training)
            self._meter = meter_for(self._meter, self.model, self.loss, self.training)
            self.result = self._meter.measure(sample, batch_size=self.batch_size, num_batches=self.num_batches,
                                              seed=int(self._rng.integers(2**31)))
        except MEASUREMENT_ERRORS as error:
            return Measurement(epoch, self._global_step, np.zeros(0), 0, time.perf_counter() - start, float("nan"),
                               error=describe_error(error), values=dict.fromkeys(KEYS, float("nan")))
        result = self.result
        return Measurement(epoch, self._global_step, np.zeros(0), result.num_batches,
                           time.perf_counter() - start, float(np.mean(result.losses)),
                           values={"batch_sharpness": result.value, "batch_sharpness_stderr": result.stderr})

    def _measurement_logs(self, measurement: Measurement) -> dict:
        return {self.key(name): float(measurement.values[name]) for name in KEYS}

    def _describe(self, measurement: Measurement) -> str:
        return (f"batch sharpness {measurement.values['batch_sharpness']:.6g} +- "
                f"{measurement.values['batch_sharpness_stderr']:.2g} ({self.num_batches} batches of {self.batch_size})")

    def _progress_mode(self) -> int:
        return 2 if super()._progress_mode() else 0  # no progress bar: one line per measurement


def meter_for(meter, model, loss, training: bool) -> BatchSharpnessMeter:
    """``meter`` if it measures ``model``, else a new one (its graph traced for ``model``)."""
    if meter is None or meter.model is not model:
        meter = BatchSharpnessMeter(model, loss=loss, training=training)
    return meter
