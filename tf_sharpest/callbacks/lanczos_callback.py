"""LanczosCallback: the top curvature eigenvalues along training, logged like any metric."""

from __future__ import annotations

import os
import time

import numpy as np
import tensorflow as tf

from tf_sharpest.analysis.sharpness import BatchSharpnessMeter
from tf_sharpest.callbacks.measurement_log import Measurement
from tf_sharpest.callbacks.measuring_callback import MEASUREMENT_ERRORS, MeasuringCallback, describe_error
from tf_sharpest.callbacks.progress import fit_verbosity
from tf_sharpest.linalg.lanczos import lanczos
from tf_sharpest.linalg.lobpcg import lobpcg
from tf_sharpest.operators.blocks import resolve_variables
from tf_sharpest.operators.preconditioned import (
    PreconditionedOperator,
    optimizer_preconditioner,
    optimizer_preconditioner_supports,
)
from tf_sharpest.utils.checks import positive_float, positive_int
from tf_sharpest.utils.files import atomic_path

METHODS = ("auto", "lanczos", "lobpcg")


class LanczosCallback(MeasuringCallback):
    """Measures the top-K eigenvalues of the loss's curvature as ``model.fit`` runs.

    At the start of every epoch (or every ``frequency`` training batches), the
    callback draws ``num_samples`` examples from ``data``, forms the curvature
    (the Hessian by default) of the loss at the current weights on them
    (BatchNorm in inference mode and dropout off unless ``training=True``) and
    finds its top ``top_k`` eigenpairs by Lanczos. The eigenvalues go into that
    epoch's ``logs`` as ``lambda_1`` ... ``lambda_K`` with ``lanczos_matvecs``,
    ``lanczos_seconds`` and ``lanczos_fallbacks`` (all prefixed with ``log_prefix``), so ``History``,
    ``CSVLogger``, ``TensorBoard`` and keras-tuner see them like any metric.
    Place this callback before ``CSVLogger``/``TensorBoard`` in the list:
    Keras hands each callback the epoch's logs in list order.

    If the model's optimizer has ``set_directions`` (e.g.
    :class:`tf_sharpest.optimizers.NSGD`), it is handed the eigenvectors after
    each measurement of the whole parameter vector; NSGD's projections of the
    gradient on them are logged as ``nsgd_alpha_i`` and ``nsgd_alpha_ratio_i``.

    A measurement never changes the model, and never stops training: one that
    fails (non-finite loss or eigenvalues, any error in the eigensolver or in
    handing the directions over) logs NaN, warns once with the reason, and the
    optimizer keeps its previous directions. A new model, or a new set of
    trainable variables (layers frozen or unfrozen), starts Lanczos cold.

    BatchNorm: in inference mode (``training=False``) the network measured uses
    the moving statistics. Early in training they have not yet caught up with
    the network being trained, and the curvature of the inference-mode network
    can be orders of magnitude off (a ResNet-32 measured λ1 ≈ 10^6 at step 0).
    The callback warns once when a BatchNorm layer's moving statistics have
    seen fewer than about ``1 / (1 - momentum)`` updates; ``training=True``
    measures with batch statistics instead, leaving the moving statistics untouched.

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
      data: ``(x, y)`` arrays (``x`` may be a dict for multi-input models), or
        a batched ``tf.data.Dataset`` of ``(x, y)`` (e.g. the augmented
        training stream; it may repeat forever).
      top_k: number of eigenvalues measured (beyond the number of parameters,
        the extra ones are logged as NaN).
      num_samples: examples per measurement (the paper: 2,250).
      batch_size: largest batch size of the curvature products (the sample is
        cut into equal batches where a size of at least half of this allows,
        e.g. 2,250 examples into 18 batches of 125).
      frequency: ``"epoch"`` to measure at the start of each epoch, or an int
        to measure every that many training batches.
      resample: draw a fresh sample for every measurement (seeded; a dataset
        is drawn through a seeded shuffle buffer); ``False`` keeps the first draw.
      training: measure with the model in training mode (BatchNorm batch
        statistics, one fixed dropout mask); the model is left unchanged.
      warm_start: start Lanczos from the previous eigenvectors.
      save_dir: folder for ``lanczos.npz``/``lanczos.csv`` (every measurement)
        and eigenvector files; ``None`` saves nothing. Under
        ``MultiWorkerMirroredStrategy`` only the chief writes.
      save_eigenvectors_every: save the eigenvectors every this many epochs
        (0: never) as ``eigenvectors_epoch{E:04d}.npz``.
      seed: seed of the sampling and of Lanczos's start vectors.
      verbose: ``"auto"`` (default) follows ``fit``'s verbosity: a progress
        bar per measurement with ``verbose=1`` (one line instead when measuring
        every few batches, not to break the epoch's bar), one line per
        measurement with ``verbose=2``, nothing with ``verbose=0``. Or 0, 1, 2.
      log_prefix: prefix of every logged key.
      tol: Lanczos residual tolerance, relative to the largest eigenvalue.
      max_iterations: most matvecs per measurement.
      loss: loss to differentiate; ``None`` uses the model's compiled loss.
      curvature: ``"hessian"`` (default), ``"ggn"`` or ``"empirical_fisher"``.
      variables: ``None`` for all trainable variables, or a block: a layer, a
        variable, or a list of them (eigenvectors are then in the block's layout).
      preconditioned: measure ``D^-1/2 A D^-1/2`` with ``D`` read from the
        model's adaptive optimizer (Adam, RMSprop, ...) at each measurement:
        the preconditioned sharpness that sets Adam's stability.
      blocks: ``{"name": layer_or_variables, ...}``: also measure each block's
        own top-K eigenvalues, logged as ``<name>_lambda_i``.
      method: ``"auto"`` (default: the fastest method that met the accuracy
        in ``benchmarks/tracking_cost.py``, today warm-started Lanczos),
        ``"lanczos"`` (the paper's protocol) or ``"lobpcg"`` (the warm-started
        block solver ``tf_sharpest.linalg.lobpcg``). A block solve whose
        residuals miss ``tol`` is redone by Lanczos; ``lanczos_fallbacks``
        logs how often.
      batch_sharpness: also log ``batch_sharpness`` and ``batch_sharpness_stderr``
        at each measurement: ``tf_sharpest.analysis.batch_sharpness``, the mean of
        ``g_B^T H_B g_B / ||g_B||^2`` over random mini-batches ``B`` of the
        measurement's sample (the quantity that sits at ``2 / lr`` at the "edge of
        stochastic stability"). NaN, with a warning, where it fails (e.g. a sample
        smaller than one batch).
      batch_sharpness_batch_size: the mini-batch size; default: the training
        batch size if ``fit`` passes it in ``self.params``, else 128 (Keras 3's
        ``fit`` does not pass it: give the training batch size here).
      batch_sharpness_num_batches: random batches per measurement (default 8).
    """

    _log_name = "lanczos"
    _shared_on_copy = MeasuringCallback._shared_on_copy + ("blocks",)

    def __init__(self, data, top_k: int = 5, num_samples: int = 2250, batch_size: int = 128,
                 frequency="epoch", resample: bool = True, training: bool = False, warm_start: bool = True,
                 save_dir: str | None = None, save_eigenvectors_every: int = 0, seed: int | None = None,
                 verbose="auto", log_prefix: str = "", tol: float = 1e-3, max_iterations: int | None = None,
                 loss=None, curvature: str = "hessian", variables=None, preconditioned: bool = False,
                 blocks: dict | None = None, method: str = "auto", batch_sharpness: bool = False,
                 batch_sharpness_batch_size: int | None = None, batch_sharpness_num_batches: int = 8):
        super().__init__(data, num_samples, batch_size, frequency, resample, training, save_dir, seed, verbose,
                         log_prefix, loss, curvature, variables)
        self.top_k = positive_int("top_k", top_k)
        if frequency != "epoch" and (isinstance(frequency, bool) or not isinstance(frequency, (int, np.integer))
                                     or frequency < 1):
            raise ValueError(f"frequency must be 'epoch' or a positive number of batches, got {frequency!r}.")
        if isinstance(save_eigenvectors_every, bool) or not isinstance(save_eigenvectors_every, (int, np.integer)) \
                or save_eigenvectors_every < 0:
            raise ValueError(f"save_eigenvectors_every must be an integer >= 0, got {save_eigenvectors_every!r}.")
        if blocks is not None and (not isinstance(blocks, dict) or not all(isinstance(k, str) and k
                                                                           for k in blocks)):
            raise ValueError("blocks must be a dict {name: layer or variables}, with non-empty string names.")
        self.warm_start = bool(warm_start)
        self.save_eigenvectors_every = int(save_eigenvectors_every)
        self.tol = positive_float("tol", tol)
        self.max_iterations = positive_int("max_iterations", max_iterations, allow_none=True)
        self.preconditioned = bool(preconditioned)
        self.blocks = dict(blocks or {})
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
        self.method = method
        self.batch_sharpness = bool(batch_sharpness)
        self.batch_sharpness_batch_size = positive_int("batch_sharpness_batch_size", batch_sharpness_batch_size,
                                                       allow_none=True)
        self.batch_sharpness_num_batches = positive_int("batch_sharpness_num_batches", batch_sharpness_num_batches)
        #: The latest :class:`~tf_sharpest.analysis.BatchSharpness` (with its batches), when measured.
        self.batch_sharpness_result = None
        self._sharpness_meter = None  # one BatchSharpnessMeter per model: its graph is traced once
        self.eigenvectors: np.ndarray | None = None

    def _reset_run_state(self):
        super()._reset_run_state()
        self._fallbacks = 0

    def _fresh_on_copy(self) -> dict:
        return {**super()._fresh_on_copy(), "_sharpness_meter": None}  # traced for the original's model

    # -- Keras hooks -------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._check_optimizer()
        super().on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        super().on_epoch_end(epoch, logs)
        logs.update(self._nsgd_logs())
        if self.save_eigenvectors_every and self._writes_files() and (epoch + 1) % self.save_eigenvectors_every == 0 \
                and self.eigenvectors is not None:
            self._save_eigenvectors(epoch)

    # -- measurement ---------------------------------------------------------------------
    def _take_measurement(self, epoch: int, final: bool) -> Measurement:
        start = time.perf_counter()
        progress = self._progress_mode()
        fallbacks_before = self._fallbacks
        try:
            sample = self._source.draw()
            self._warn_about_batchnorm()
            main = self._solve("", self.variables, sample, progress)
        except MEASUREMENT_ERRORS as error:
            measurement = Measurement(epoch, self._global_step, np.full(self.top_k, np.nan), 0,
                                      time.perf_counter() - start, float("nan"), error=describe_error(error))
            self._warn_failure(measurement)
        else:
            eigenvalues, matvecs, loss, vectors = main
            self.eigenvectors = vectors
            if self.variables is None and not self.preconditioned:
                self._hand_to_optimizer(vectors)
            values = {}
            for name, block in self.blocks.items():
                try:
                    block_values, block_matvecs, _, _ = self._solve(name, block, sample, 0)
                except MEASUREMENT_ERRORS as error:
                    block_values, block_matvecs = np.full(self.top_k, np.nan), 0
                    self._warn_once(f"block:{name}", f"the measurement of block {name!r} failed and was logged as "
                                                     f"NaN; training goes on. Reason: {describe_error(error)}")
                values[f"{name}_lambda"] = block_values
                matvecs += block_matvecs
            values["fallbacks"] = float(self._fallbacks - fallbacks_before)
            if self.batch_sharpness:
                values.update(self._measure_batch_sharpness(sample))
            measurement = Measurement(epoch, self._global_step, eigenvalues, matvecs, time.perf_counter() - start,
                                      loss, values=values)
            if progress:
                print(f"{type(self).__name__} at epoch {epoch}, step {self._global_step}: top-{self.top_k} "
                      f"eigenvalues {np.array2string(eigenvalues, precision=4)} ({measurement.matvecs} matvecs, "
                      f"{measurement.seconds:.1f}s)", flush=True)
        return measurement

    def _solve(self, name: str, variables, sample, progress):
        """Eigenvalues (padded to ``top_k`` with NaN), matvecs, loss and eigenvectors of one target."""
        target = self._target(name, variables, sample)
        operator = target.operator
        if self.preconditioned:
            operator = PreconditionedOperator(operator, optimizer_preconditioner(self.model.optimizer,
                                                                                operator.variables))
        k = min(self.top_k, operator.dim)
        if k < self.top_k:
            self._warn_once(f"dim:{name}", f"top_k={self.top_k} exceeds the {operator.dim} parameters measured"
                                           f"{' in block ' + repr(name) if name else ''}: eigenvalues "
                                           f"{k + 1}..{self.top_k} are logged as NaN.")
        initial = target.eigenvectors if self.warm_start else None
        result = self._eigensolve(operator, k, initial, progress)
        if not np.all(np.isfinite(result.eigenvalues)):
            raise ValueError(f"The eigensolver returned non-finite eigenvalues {result.eigenvalues}.")
        target.eigenvectors = result.eigenvectors
        eigenvalues = np.full(self.top_k, np.nan)
        eigenvalues[:k] = result.eigenvalues
        return eigenvalues, result.num_matvecs, target.operator.loss, result.eigenvectors

    def _eigensolve(self, operator, k: int, initial, progress):
        """The top-k eigenpairs by the chosen method; a warm block solve that misses ``tol`` falls back to Lanczos."""
        method = self.method
        if method == "auto":
            # The fastest method that meets the accuracy along a real run: warm-started
            # Lanczos (17-18 products per measurement against 37-39 for warm LOBPCG on
            # SimpleCNN-root; benchmarks/tracking_cost.py).
            method = "lanczos"
        seed = int(self._rng.integers(2**31))
        if method == "lanczos":
            return lanczos(operator, k=k, tol=self.tol, max_iterations=self.max_iterations, seed=seed,
                           initial_vectors=initial, verbose=int(progress == 1))
        result = lobpcg(operator, k, tol=self.tol, max_iterations=self.max_iterations, seed=seed,
                        initial_vectors=initial, verbose=int(progress == 1))
        scale = max(float(np.max(np.abs(result.eigenvalues))), np.finfo(float).tiny)
        if result.converged and np.all(result.residual_norms <= self.tol * scale):
            return result
        # No accuracy lost silently: this measurement is redone by Lanczos, from the block's vectors.
        self._fallbacks += 1
        fallback = lanczos(operator, k=k, tol=self.tol, max_iterations=self.max_iterations, seed=seed,
                           initial_vectors=result.eigenvectors, verbose=int(progress == 1))
        fallback.num_matvecs += result.num_matvecs
        return fallback

    def _target(self, name: str, variables, sample):
        previous = self._targets.get(name)
        target = super()._target(name, variables, sample)
        if not name and target is not previous:
            self.eigenvectors = None  # of another model or variable set
        return target

    def _measurement_logs(self, measurement: Measurement) -> dict:
        logs = {self.key(f"lambda_{i + 1}"): float(v) for i, v in enumerate(measurement.eigenvalues)}
        logs[self.key("lanczos_matvecs")] = float(measurement.matvecs)
        logs[self.key("lanczos_seconds")] = float(measurement.seconds)
        logs[self.key("lanczos_fallbacks")] = float(measurement.values.get("fallbacks", 0.0))
        for name in self.blocks:
            values = measurement.values.get(f"{name}_lambda", np.full(self.top_k, np.nan))
            logs.update({self.key(f"{name}_lambda_{i + 1}"): float(v) for i, v in enumerate(values)})
        if self.batch_sharpness:
            for name in ("batch_sharpness", "batch_sharpness_stderr"):
                logs[self.key(name)] = float(measurement.values.get(name, np.nan))
        return logs

    # -- batch sharpness (batch_sharpness=True) --------------------------------------------------
    def _measure_batch_sharpness(self, sample) -> dict:
        """``batch_sharpness`` and its standard error on random batches of ``sample``; NaN and a warning on failure."""
        batch_size = self.batch_sharpness_batch_size or int((self.params or {}).get("batch_size") or 128)
        if self._sharpness_meter is None or self._sharpness_meter.model is not self.model:
            self._sharpness_meter = BatchSharpnessMeter(self.model, loss=self.loss, training=self.training)
        # Seeded by the run's seed and the step, apart from the eigensolver's generator, whose
        # sequence (and so every eigenvalue) is the same with and without this option.
        entropy = [0 if self._run_seed is None else int(self._run_seed), self._global_step, self._epoch]
        seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
        try:
            result = self._sharpness_meter.measure(sample, batch_size=batch_size,
                                                   num_batches=self.batch_sharpness_num_batches, seed=seed)
        except MEASUREMENT_ERRORS as error:
            self._warn_once("batch_sharpness", f"the batch sharpness failed and was logged as NaN; training goes "
                                               f"on. Reason: {describe_error(error)}")
            return {"batch_sharpness": float("nan"), "batch_sharpness_stderr": float("nan")}
        self.batch_sharpness_result = result
        return {"batch_sharpness": result.value, "batch_sharpness_stderr": result.stderr}

    def _progress_mode(self) -> int:
        """0: silent; 1: a progress bar and a line; 2: a line per measurement."""
        if self.verbose != "auto":
            return int(self.verbose)
        fit_verbose = fit_verbosity(self.params)
        if fit_verbose == 0:
            return 0
        return 1 if fit_verbose == 1 and self.frequency == "epoch" else 2

    # -- the optimizer -------------------------------------------------------------------------
    def _steered_optimizer(self):
        optimizer = getattr(self.model, "optimizer", None)
        return optimizer if callable(getattr(optimizer, "set_directions", None)) else None

    def _check_optimizer(self):
        # A block that is not the model's is a configuration error: refused before training,
        # not logged as NaN at every measurement.
        resolve_variables(self.model, self.variables)
        for block in self.blocks.values():
            resolve_variables(self.model, block)
        if self.preconditioned:
            # Refused before training (not at every measurement) when it can never work.
            optimizer_preconditioner_supports(getattr(self.model, "optimizer", None))
        optimizer = self._steered_optimizer()
        needed = getattr(optimizer, "top_k", None)
        if isinstance(needed, (int, np.integer)) and needed > self.top_k:
            raise ValueError(
                f"{type(optimizer).__name__} nudges top_k={needed} directions but LanczosCallback measures only "
                f"top_k={self.top_k}; give the callback top_k >= {needed}."
            )

    def _hand_to_optimizer(self, eigenvectors):
        optimizer = self._steered_optimizer()
        if optimizer is None:
            return
        try:
            optimizer.set_directions(eigenvectors)
        except (ValueError, tf.errors.OpError) as error:
            self._warn_once("directions", f"{type(optimizer).__name__}.set_directions refused the measured "
                                          f"eigenvectors ({describe_error(error)}); it keeps its previous "
                                          "directions and training goes on.")

    def _nsgd_logs(self) -> dict:
        optimizer = self._steered_optimizer()
        if optimizer is None or not getattr(optimizer, "built", False) or not hasattr(optimizer, "alpha"):
            return {}
        logs = {}
        for name, values in (("nsgd_alpha", optimizer.alpha), ("nsgd_alpha_ratio", optimizer.alpha_ratio)):
            for i, value in enumerate(values.numpy()):
                logs[self.key(f"{name}_{i + 1}")] = float(value)
        return logs

    # -- files -------------------------------------------------------------------------------
    def _log_top_k(self) -> int:
        return self.top_k

    def _save_eigenvectors(self, epoch: int):
        target = self._targets.get("")
        variables = target.operator.variables if target is not None else self.model.trainable_variables
        last = self.history[-1]
        with atomic_path(os.path.join(self.save_dir, f"eigenvectors_epoch{epoch:04d}.npz")) as path:
            np.savez(path, eigenvectors=self.eigenvectors, eigenvalues=last.eigenvalues, epoch=epoch,
                     step=last.step,
                     variable_names=np.array([getattr(v, "path", v.name) for v in variables], dtype=str),
                     variable_shapes=np.array([shape_text(v.shape) for v in variables], dtype=str))


def shape_text(shape) -> str:
    """A variable's shape as comma-separated text, e.g. ``"3,3,1,32"`` (``""`` for a scalar)."""
    return ",".join(str(int(d)) for d in shape)

