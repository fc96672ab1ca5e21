"""LanczosCallback: the top curvature eigenvalues along training, logged like any metric."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import tensorflow as tf

from tf_sharpest._keras_compat import unwrap_optimizer
from tf_sharpest.callbacks._batch_sharpness_callback import KEYS as SHARPNESS_KEYS
from tf_sharpest.callbacks._batch_sharpness_callback import meter_for
from tf_sharpest.callbacks._legacy import (
    CURVATURE_KEYWORDS,
    OTHER_KEYWORDS,
    SOLVER_KEYWORDS,
    as_curvature,
    legacy_blocks,
    legacy_sharpness,
    legacy_solver,
)
from tf_sharpest.callbacks._measurement_log import Measurement
from tf_sharpest.callbacks._measuring import MEASUREMENT_ERRORS, MeasuringCallback, describe_error
from tf_sharpest.linalg._solvers import LanczosSolver, LOBPCGSolver, relative_residual
from tf_sharpest.linalg._stderr import has_batches, sampling_stderr
from tf_sharpest.operators._preconditioned import PreconditionedOperator
from tf_sharpest.operators._spec import Curvature
from tf_sharpest.optimizers._steering import DirectionConsumer
from tf_sharpest.utils._checks import positive_int
from tf_sharpest.utils._files import atomic_path

_OWNER = "LanczosCallback"


class LanczosCallback(MeasuringCallback):
    """Measures the top-K eigenvalues of the loss's curvature as ``model.fit`` runs.

    A measurement is *what* is measured (``curvature``: an operator formed
    from the model and a sample), *how* (``solver``) and *when*
    (``frequency``). At the start of every epoch (or every ``frequency``
    training batches), and once after training, the callback draws
    ``num_samples`` examples from ``data``, forms the curvature (the Hessian
    by default, BatchNorm in inference mode and dropout off) at the current
    weights on them, and finds its top ``top_k`` eigenpairs with the solver
    (warm-started Lanczos by default). The epoch's ``logs`` get
    ``lambda_1`` ... ``lambda_K``, their standard errors due to the sample
    ``lambda_1_stderr`` ... ``lambda_K_stderr`` (:func:`tf_sharpest.linalg.sampling_stderr`:
    from the spread of the eigenvectors' Rayleigh quotients over the sample's
    batches; the products it costs are counted in the matvecs),
    ``lanczos_matvecs``, ``lanczos_seconds``, ``lanczos_epoch_equivalents``
    (the seconds over the seconds of one epoch of this ``fit``, timed on its
    training batches; a measurement taken before the first timed batch, as
    at the start of a run, is costed when its epoch ends),
    ``lanczos_fallbacks`` (LOBPCG solves redone by Lanczos) and
    ``lanczos_converged`` (1.0, or 0.0 when the solver ran out of
    ``max_matvecs`` first: the eigenvalues are then approximate, and the
    callback warns once), all prefixed with ``log_prefix``, so ``History``,
    ``CSVLogger``, ``TensorBoard`` and keras-tuner see them like any metric.
    Place this callback before ``CSVLogger``/``TensorBoard`` in the list:
    Keras hands each callback the epoch's logs in list order.

    Steering: if the model's optimizer (unwrapped from a mixed-precision
    ``LossScaleOptimizer``) is a :class:`tf_sharpest.optimizers.DirectionConsumer`
    (e.g. :class:`~tf_sharpest.optimizers.NSGD`), it is handed the eigenvalues
    and eigenvectors after each measurement of the whole parameter vector
    (unpreconditioned), and what it reports (``direction_logs()``, e.g.
    NSGD's ``nsgd_alpha_i``) is logged. ``fit`` is refused at its start when
    the consumer needs more directions than ``top_k``.

    Two measuring callbacks of one ``fit`` that would log the same keys (two
    ``LanczosCallback``s with the default prefix, say one on the Hessian and
    one on the GGN) are refused when ``fit`` starts: give each a ``log_prefix``.

    A measurement never changes the model, and never stops training: one that
    fails (non-finite loss or eigenvalues, any error in the solver or in
    handing the directions over, a file that cannot be written) logs NaN,
    warns once with the reason, and the optimizer keeps its previous
    directions. A new model, or a new set of trainable variables (layers
    frozen or unfrozen), starts the solver cold.

    BatchNorm: in inference mode the network measured uses the moving
    statistics, which early in training have not caught up with the network
    being trained (a ResNet-32 measured λ1 ≈ 10^6 at step 0). The callback
    warns once while they have seen fewer than about ``1 / (1 - momentum)``
    updates; ``curvature=Curvature(training=True)`` measures with batch
    statistics instead, leaving the moving statistics untouched.

    Example:

    ```python
    model.compile(optimizer=tf_sharpest.optimizers.NSGD(0.01, top_k=5, gamma=0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    lanczos = LanczosCallback((x_train, y_train), top_k=5, num_samples=2250)
    head = LanczosCallback((x_train, y_train), top_k=2, curvature=Curvature("ggn", variables=model.layers[-1]),
                           solver=LanczosSolver(tol=1e-4), log_prefix="head_")
    history = model.fit(x_train, y_train, epochs=10,
                        callbacks=[lanczos, head, keras.callbacks.CSVLogger("log.csv")])
    history.history["lambda_1"], history.history["head_lambda_1"]    # one value per epoch
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
      frequency: ``"epoch"`` to measure at the start of each epoch, an int
        to measure every that many training batches, or a
        :class:`~tf_sharpest.callbacks.OverheadBudget` (e.g.
        ``OverheadBudget(max_overhead=0.1, frequency=100)``), which skips the
        scheduled measurements that would take more than ``max_overhead`` of
        the training time, warns once when it does, and logs
        ``lanczos_overhead`` and ``lanczos_skipped``.
      resample: draw a fresh sample for every measurement (seeded; a dataset
        is drawn through a seeded shuffle buffer); ``False`` keeps the first draw.
      seed: seed of the sampling and of the solver's start vectors.
      curvature: what is measured: ``"hessian"`` (default), ``"ggn"``,
        ``"empirical_fisher"``, a :class:`tf_sharpest.operators.Curvature`
        (a block of variables, the loss, training mode, preconditioning by
        the model's adaptive optimizer), or any callable
        ``(model, sample) -> LinearOperator`` (``sample`` a
        :class:`tf_sharpest.operators.Sample`).
      solver: how: :class:`tf_sharpest.linalg.LanczosSolver` (default:
        ``LanczosSolver(eigenvalue_tol="sampling")``, warm-started from the
        previous eigenvectors, stops when its error bound on every eigenvalue
        is within 0.66 of that eigenvalue's sampling error, so solver and
        sample together are within 1.2 times the sampling error alone; an
        operator without batches falls back to ``tol=1e-3``) or
        :class:`tf_sharpest.linalg.LOBPCGSolver`.
      save_dir: folder for ``lanczos.npz``/``lanczos.csv`` (every measurement,
        with its ``converged`` flag) and eigenvector files; ``None`` saves
        nothing. Under ``MultiWorkerMirroredStrategy`` only the chief writes.
      save_eigenvectors_every: save the eigenvectors every this many epochs
        (0: never) as ``eigenvectors_epoch{E:04d}.npz``.
      verbose: ``"auto"`` (default) follows ``fit``'s verbosity: a progress
        bar per measurement with ``verbose=1`` (one line instead when measuring
        every few batches, not to break the epoch's bar), one line per
        measurement with ``verbose=2``, nothing with ``verbose=0``. Or 0, 1, 2.
      log_prefix: prefix of every logged key.
      **deprecated: the keywords of the previous release, each with a
        ``DeprecationWarning`` saying what to write instead: ``tol``,
        ``max_iterations``, ``warm_start``, ``method`` (now ``solver=``);
        ``loss``, ``training``, ``variables``, ``preconditioned`` (now
        ``curvature=Curvature(...)``); ``blocks`` (now one more
        ``LanczosCallback`` per block); ``batch_sharpness``,
        ``batch_sharpness_batch_size``, ``batch_sharpness_num_batches`` (now
        :class:`~tf_sharpest.callbacks.BatchSharpnessCallback`).
    """

    _log_name = "lanczos"
    _shared_on_copy = MeasuringCallback._shared_on_copy + ("_blocks",)  # they hold the model's layers

    def __init__(self, data, top_k: int = 5, num_samples: int = 2250, batch_size: int = 128, frequency="epoch",
                 resample: bool = True, seed: int | None = None, curvature="hessian",
                 solver: LanczosSolver | LOBPCGSolver | None = None, save_dir: str | None = None,
                 save_eigenvectors_every: int = 0, verbose="auto", log_prefix: str = "", **deprecated):
        unknown = sorted(set(deprecated) - set(SOLVER_KEYWORDS + CURVATURE_KEYWORDS + OTHER_KEYWORDS))
        if unknown:
            raise TypeError(f"{_OWNER}() got an unexpected keyword argument {unknown[0]!r}.")
        super().__init__(data, num_samples, batch_size, frequency, resample, seed, save_dir, verbose, log_prefix)
        self.top_k = positive_int("top_k", top_k)
        if isinstance(save_eigenvectors_every, bool) or not isinstance(save_eigenvectors_every, (int, np.integer)) \
                or save_eigenvectors_every < 0:
            raise ValueError(f"save_eigenvectors_every must be an integer >= 0, got {save_eigenvectors_every!r}.")
        self.save_eigenvectors_every = int(save_eigenvectors_every)
        self.curvature = as_curvature(_OWNER, curvature, deprecated)
        self.solver = legacy_solver(solver, deprecated)
        if not isinstance(self.solver, (LanczosSolver, LOBPCGSolver)):
            raise ValueError(f"solver must be a tf_sharpest.linalg.LanczosSolver or LOBPCGSolver, got {solver!r}.")
        self._blocks = legacy_blocks(deprecated.pop("blocks", None), self.curvature)
        self._sharpness = legacy_sharpness(deprecated)
        #: The latest :class:`~tf_sharpest.analysis.BatchSharpness` (deprecated ``batch_sharpness=True`` only).
        self.batch_sharpness_result = None
        self._sharpness_meter = None
        #: The eigenvectors of the latest successful measurement, ``[dim, top_k]`` (None before).
        self.eigenvectors: np.ndarray | None = None

    def _fresh_on_copy(self) -> dict:
        return {**super()._fresh_on_copy(), "_sharpness_meter": None}  # traced for the original's model

    # -- configuration ------------------------------------------------------------------------
    def _logged_keys(self) -> list:
        names = [f"lambda_{i + 1}" for i in range(self.top_k)]
        names += [f"lambda_{i + 1}_stderr" for i in range(self.top_k)]
        names += ["lanczos_matvecs", "lanczos_seconds", "lanczos_epoch_equivalents", "lanczos_fallbacks",
                  "lanczos_converged"]
        names += [f"{block}_lambda_{i + 1}" for block in self._blocks for i in range(self.top_k)]
        names += list(SHARPNESS_KEYS) if self._sharpness else []
        return [self.key(name) for name in names]

    def _check_configuration(self):
        # A block that is not the model's, or preconditioning an SGD, is a configuration error:
        # refused before training, not logged as NaN at every measurement.
        if isinstance(self.curvature, Curvature):
            self.curvature.check(self.model)
        for block in self._blocks.values():
            block.check(self.model)
        consumer = self._consumer()
        if consumer is not None and self._steers() and consumer.num_directions > self.top_k:
            raise ValueError(
                f"{type(consumer).__name__} needs num_directions={consumer.num_directions} directions but "
                f"{_OWNER} measures only top_k={self.top_k}; pass {_OWNER}(..., top_k={consumer.num_directions}) "
                f"(or more).")

    def _consumer(self) -> DirectionConsumer | None:
        optimizer = unwrap_optimizer(getattr(self.model, "optimizer", None))
        return optimizer if isinstance(optimizer, DirectionConsumer) else None

    def _steers(self, operator=None) -> bool:
        """Whether the measured eigenvectors are directions in the full flat parameter space."""
        if isinstance(self.curvature, Curvature):
            return self.curvature.whole_model
        if operator is None:
            return True  # a callable's operator is checked when there is one
        measured = [id(v) for v in getattr(operator, "variables", ())]
        return not isinstance(operator, PreconditionedOperator) and \
            measured == [id(v) for v in self.model.trainable_variables]

    # -- Keras hooks -------------------------------------------------------------------
    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        super().on_epoch_end(epoch, logs)
        consumer = self._consumer()
        if consumer is not None:
            logs.update({self.key(name): float(value) for name, value in consumer.direction_logs().items()})
        if self.save_eigenvectors_every and self._writes_files() and (epoch + 1) % self.save_eigenvectors_every == 0 \
                and self.eigenvectors is not None:
            self._save_eigenvectors(epoch)

    # -- measurement ---------------------------------------------------------------------
    def _take_measurement(self, epoch: int, final: bool) -> Measurement:
        start = time.perf_counter()
        progress = self._progress_mode()
        try:
            arrays = self._source.draw()
            sample = self._as_sample(arrays)
            self._warn_about_batchnorm(getattr(self.curvature, "training", False))
            result, eigenvalues, operator = self._solve("", self.curvature, sample, progress)
        except MEASUREMENT_ERRORS as error:
            nan = float("nan")
            return Measurement(epoch, self._global_step, np.full(self.top_k, np.nan), 0, time.perf_counter() - start,
                               nan, error=describe_error(error), values={"fallbacks": 0.0, "converged": nan,
                                                                         "stderr": np.full(self.top_k, np.nan)})
        self.eigenvectors = result.eigenvectors
        if self._steers(operator):
            self._hand_over(eigenvalues[: result.eigenvectors.shape[1]], result.eigenvectors)
        stderr = self._stderr(operator, result)
        matvecs = result.num_matvecs
        values = {"fallbacks": float(result.fallbacks), "converged": float(result.converged), "stderr": stderr}
        for name, block in self._blocks.items():
            try:
                block_result, block_values, _ = self._solve(name, block, sample, 0)
                matvecs += block_result.num_matvecs
            except MEASUREMENT_ERRORS as error:
                block_values = np.full(self.top_k, np.nan)
                self._warn_once(f"block:{name}", f"the measurement of block {name!r} failed and was logged as "
                                                 f"NaN; training goes on. Reason: {describe_error(error)}")
            values[f"{name}_lambda"] = block_values
        if self._sharpness:
            values.update(self._measure_batch_sharpness(arrays))
        return Measurement(epoch, self._global_step, eigenvalues, matvecs, time.perf_counter() - start,
                           float(operator.loss), values=values)

    def _solve(self, name: str, curvature, sample, progress):
        """The solver's result, the eigenvalues padded to ``top_k`` with NaN, and the operator of one target."""
        target = self._target(name, curvature, sample)
        if not name and target.eigenvectors is None:
            self.eigenvectors = None  # a new model or variable set: nothing to warm-start from
        operator = target.operator
        k = min(self.top_k, operator.dim)
        if k < self.top_k:
            self._warn_once(f"dim:{name}", f"top_k={self.top_k} exceeds the {operator.dim} parameters measured"
                                           f"{' in block ' + repr(name) if name else ''}: eigenvalues "
                                           f"{k + 1}..{self.top_k} are logged as NaN.")
        initial = target.eigenvectors if self.solver.warm_start else None
        solver = self.solver
        if getattr(solver, "eigenvalue_tol", None) == "sampling" and not has_batches(operator):
            solver = dataclasses.replace(solver, eigenvalue_tol=None)  # a callable's operator without batches
        result = solver.solve(operator, k, initial_vectors=initial, seed=int(self._rng.integers(2**31)),
                                   verbose=int(progress == 1))
        if not np.all(np.isfinite(result.eigenvalues)):
            raise ValueError(f"The eigensolver returned non-finite eigenvalues {result.eigenvalues}.")
        if not result.converged:
            where = f" on block {name!r}" if name else ""
            self._warn_once(f"converged:{name}", (
                f"the eigensolver used its {result.num_matvecs} matvecs without converging{where} (largest "
                f"residual {relative_residual(result):.2g} of the top eigenvalue, above tol={self.solver.tol:g}): "
                f"the logged eigenvalues are approximate ({self.key('lanczos_converged')}=0.0, also in the saved "
                f"log). Raise max_matvecs (or tol) of solver=, e.g. solver={type(self.solver).__name__}"
                f"(tol={self.solver.tol:g}, max_matvecs={2 * result.num_matvecs})."))
        target.eigenvectors = result.eigenvectors
        eigenvalues = np.full(self.top_k, np.nan)
        eigenvalues[:k] = result.eigenvalues
        return result, eigenvalues, operator

    def _stderr(self, operator, result) -> np.ndarray:
        """Each logged eigenvalue's sampling error ([top_k], NaN where it cannot be measured); its products are
        added to ``result.num_matvecs``."""
        stderr = np.full(self.top_k, np.nan)
        if result.stderr is None and has_batches(operator):
            before = operator.num_matvecs
            try:
                result.stderr = sampling_stderr(operator, result)
            except MEASUREMENT_ERRORS as error:
                self._warn_once("stderr", f"the sampling error could not be measured and was logged as NaN; "
                                          f"training goes on. Reason: {describe_error(error)}")
            result.num_matvecs += operator.num_matvecs - before
        if result.stderr is not None:
            stderr[: len(result.stderr)] = result.stderr
        return stderr

    def _measurement_logs(self, measurement: Measurement) -> dict:
        logs = {self.key(f"lambda_{i + 1}"): float(v) for i, v in enumerate(measurement.eigenvalues)}
        stderr = measurement.values.get("stderr", np.full(self.top_k, np.nan))
        logs.update({self.key(f"lambda_{i + 1}_stderr"): float(v) for i, v in enumerate(stderr)})
        logs[self.key("lanczos_matvecs")] = float(measurement.matvecs)
        logs[self.key("lanczos_seconds")] = float(measurement.seconds)
        logs[self.key("lanczos_epoch_equivalents")] = float(measurement.values.get("epoch_equivalents", np.nan))
        logs[self.key("lanczos_fallbacks")] = float(measurement.values.get("fallbacks", 0.0))
        logs[self.key("lanczos_converged")] = float(measurement.values.get("converged", np.nan))
        for name in self._blocks:
            values = measurement.values.get(f"{name}_lambda", np.full(self.top_k, np.nan))
            logs.update({self.key(f"{name}_lambda_{i + 1}"): float(v) for i, v in enumerate(values)})
        for name in SHARPNESS_KEYS if self._sharpness else ():
            logs[self.key(name)] = float(measurement.values.get(name, np.nan))
        return logs

    def _describe(self, measurement: Measurement) -> str:
        stderr = measurement.values.get("stderr", np.full(self.top_k, np.nan))
        return (f"top-{self.top_k} eigenvalues {np.array2string(measurement.eigenvalues, precision=4)} "
                f"+- {np.array2string(np.asarray(stderr), precision=2)} (sampling error)")

    def _hand_over(self, eigenvalues, eigenvectors):
        consumer = self._consumer()
        if consumer is None:
            return
        try:
            consumer.set_directions(eigenvalues, eigenvectors)
        except (ValueError, tf.errors.OpError) as error:
            self._warn_once("directions", f"{type(consumer).__name__}.set_directions refused the measured "
                                          f"eigenvectors ({describe_error(error)}); it keeps its previous "
                                          "directions and training goes on.")

    # -- deprecated: batch_sharpness=True --------------------------------------------------
    def _measure_batch_sharpness(self, arrays) -> dict:
        """``batch_sharpness`` and its standard error on random batches of the sample; NaN and a warning on failure."""
        batch_size = self._sharpness["batch_size"] or int((self.params or {}).get("batch_size") or 128)
        training = getattr(self.curvature, "training", False)
        self._sharpness_meter = meter_for(self._sharpness_meter, self.model, getattr(self.curvature, "loss", None),
                                          training)
        # Seeded by the run's seed and the step, apart from the solver's generator, whose
        # sequence (and so every eigenvalue) is the same with and without this option.
        entropy = [0 if self._run_seed is None else int(self._run_seed), self._global_step, self._epoch]
        seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
        try:
            result = self._sharpness_meter.measure(arrays, batch_size=batch_size,
                                                   num_batches=self._sharpness["num_batches"], seed=seed)
        except MEASUREMENT_ERRORS as error:
            self._warn_once("batch_sharpness", f"the batch sharpness failed and was logged as NaN; training goes "
                                               f"on. Reason: {describe_error(error)}")
            return dict.fromkeys(SHARPNESS_KEYS, float("nan"))
        self.batch_sharpness_result = result
        return {"batch_sharpness": result.value, "batch_sharpness_stderr": result.stderr}

    # -- files -------------------------------------------------------------------------------
    def _log_top_k(self) -> int:
        return self.top_k

    def _save_eigenvectors(self, epoch: int):
        target = self._targets.get("")
        variables = getattr(target.operator, "variables", None) if target is not None else None
        variables = self.model.trainable_variables if variables is None else variables
        last = self.history[-1]
        path = os.path.join(self.save_dir, f"eigenvectors_epoch{epoch:04d}.npz")
        try:
            with atomic_path(path) as temporary:
                np.savez(temporary, eigenvectors=self.eigenvectors, eigenvalues=last.eigenvalues, epoch=epoch,
                         step=last.step,
                         variable_names=np.array([getattr(v, "path", v.name) for v in variables], dtype=str),
                         variable_shapes=np.array([shape_text(v.shape) for v in variables], dtype=str))
        except OSError as error:
            self._warn_once("save_eigenvectors", f"could not write {path} ({error}); training goes on.")


def shape_text(shape) -> str:
    """A variable's shape as comma-separated text, e.g. ``"3,3,1,32"`` (``""`` for a scalar)."""
    return ",".join(str(int(d)) for d in shape)
