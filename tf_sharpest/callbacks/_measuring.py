"""MeasuringCallback: what every measuring callback shares, whatever it measures.

Each draws a sample of ``data`` on a schedule (every epoch or every few
batches, and once after training), measures something about the loss on it,
logs the result with the epoch's metrics and keeps a :class:`MeasurementLog`.
The state of a run (sampling, seeds, warnings, the global step), its deep copy
for keras-tuner, the refusal of clashing logged keys, the reuse of one operator
per model, progress lines and the chief-only files are one piece of logic, kept
here once so that the callbacks cannot drift apart; each subclass says only what
one measurement is and which keys it logs.
"""

from __future__ import annotations

import abc
import copy
import os
import time
import warnings
import weakref

import keras
import numpy as np
import tensorflow as tf

from tf_sharpest.callbacks._budget import OverheadBudget
from tf_sharpest.callbacks._measurement_log import Measurement, MeasurementLog
from tf_sharpest.callbacks._progress import fit_verbosity
from tf_sharpest.callbacks._sampling import SampleSource, shared_seed
from tf_sharpest.operators._sample import Sample
from tf_sharpest.operators._spec import Curvature
from tf_sharpest.operators._strategy import is_chief
from tf_sharpest.utils._batches import even_batch_size, num_examples_of
from tf_sharpest.utils._checks import positive_int

# Errors a measurement may raise that must not stop training: bad data or
# diverged weights (ValueError), numerical failures, and TensorFlow op errors.
MEASUREMENT_ERRORS = (ValueError, ArithmeticError, tf.errors.OpError, np.linalg.LinAlgError)
VERBOSE_CHOICES = ("auto", 0, 1, 2)

# The measuring callbacks of each running fit, by the id of the params dict Keras's CallbackList hands to
# every callback of one fit (the same object: tests/test_callback_robustness.py checks this contract):
# id -> (the params dict, {claimed key: weak reference to the callback}). Holding the dict keeps its id
# from being reused while the entry lives; a callback drops its claims at on_train_end, and at the start
# of its next fit, so a fit that crashed before on_train_end never causes a false refusal later.
_RUNNING: dict[int, tuple[dict, dict]] = {}
#: Training batches whose median time gives the training speed (recent ones: the speed changes as TF warms up).
_SPEED_WINDOW = 50


class MeasuringCallback(keras.callbacks.Callback, metaclass=abc.ABCMeta):
    """The base of the callbacks that measure the loss's curvature on samples of ``data`` as ``model.fit`` runs.

    A subclass gives ``_take_measurement`` (one measurement, as a
    :class:`Measurement`), ``_logged_keys`` (the keys it logs, known before
    training), ``_measurement_logs`` (their values) and ``_log_name`` (the stem
    of its files in ``save_dir``); this class runs the schedule, refuses
    clashing keys, logs, saves and resumes. The arguments mean what the
    subclasses' docstrings say.
    """

    #: Stem of the measurement log in ``save_dir`` (``<stem>.npz`` / ``<stem>.csv``).
    _log_name = ""
    #: Whether ``frequency=None`` (only after training) is a schedule this callback takes.
    _measures_only_at_end = False
    #: Attributes a deep copy shares with the original instead of copying: the callback only reads them.
    _shared_on_copy = ("data", "_model", "curvature")

    def __init__(self, data, num_samples: int, batch_size: int, frequency, resample: bool, seed: int | None,
                 save_dir, verbose, log_prefix: str):
        super().__init__()
        if not isinstance(data, tf.data.Dataset) and not (isinstance(data, (tuple, list)) and len(data) in (2, 3)):
            raise ValueError("data must be (x, y) arrays or a batched tf.data.Dataset of (x, y).")
        if verbose not in VERBOSE_CHOICES or isinstance(verbose, bool):
            raise ValueError(f"verbose must be one of {VERBOSE_CHOICES}, got {verbose!r}.")
        self.budget = frequency if isinstance(frequency, OverheadBudget) else None
        frequency = frequency.frequency if self.budget is not None else frequency
        by_batches = not isinstance(frequency, bool) and isinstance(frequency, (int, np.integer)) and frequency >= 1
        if not (frequency == "epoch" or by_batches or (frequency is None and self._measures_only_at_end)):
            also = " or None (only after training)" if self._measures_only_at_end else ""
            raise ValueError(f"frequency must be 'epoch' or a positive number of batches{also}, got {frequency!r}.")
        if save_dir is not None and not (isinstance(save_dir, (str, os.PathLike)) and os.fspath(save_dir)):
            raise ValueError(f"save_dir must be a folder (a non-empty path) or None to save nothing, got "
                             f"{save_dir!r}.")
        if not isinstance(log_prefix, str):
            raise ValueError(f"log_prefix must be a string, got {log_prefix!r}.")
        self.data = data
        self.num_samples = positive_int("num_samples", num_samples)
        self.batch_size = positive_int("batch_size", batch_size)
        self.frequency = frequency
        self.resample = bool(resample)
        self.save_dir = None if save_dir is None else os.fspath(save_dir)
        self.seed = seed
        self.verbose = verbose
        self.log_prefix = log_prefix
        #: Every measurement, in order: one per epoch or per ``frequency`` batches, and one after training.
        self.history: list[Measurement] = []
        self._source = SampleSource(data, self.num_samples, resample=self.resample, seed=seed)
        self._targets = {}  # target name ("" for the main one) -> _Target
        self._run_seed = seed
        self._reset_run_state()

    def _reset_run_state(self):
        """Starts a run afresh: the same seed draws the same samples and start vectors in every run."""
        self._source.reset(self._run_seed)
        self._rng = np.random.default_rng(self._run_seed)
        self._epoch = 0
        self._global_step = 0
        self._pending_logs: dict = {}
        self._pending_source = None  # the measurement whose values _pending_logs holds
        self._warned = set()
        self._first_measurement_of_run = True
        # Training speed from fit: the seconds of the latest training batches, measurements excluded.
        self._batch_started = None
        self._batch_seconds: list = []
        self._training_seconds = 0.0
        self._measuring_seconds = 0.0
        self._skipped = 0
        # Measurements taken before any training batch was timed (a run's first): costed at the epoch's end.
        self._uncosted: list = []

    def _fresh_on_copy(self) -> dict:
        """Attributes a deep copy starts afresh, by name: what was traced or opened for the original's model."""
        return {"_targets": {}}

    # keras-tuner deep-copies callbacks for every trial; a tf.data.Dataset (and
    # large arrays) are shared instead of copied: the callback only reads them.
    def __deepcopy__(self, memo):
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        fresh = self._fresh_on_copy()
        for name, value in self.__dict__.items():
            if name in fresh:
                clone.__dict__[name] = fresh[name]
            elif name in self._shared_on_copy or isinstance(value, (tf.data.Dataset, keras.Model)):
                clone.__dict__[name] = value
            else:
                clone.__dict__[name] = copy.deepcopy(value, memo)
        return clone

    @property
    def operator(self):
        """The operator of the latest measurement (None before the first); reused across measurements."""
        target = self._targets.get("")
        return None if target is None else target.operator

    def key(self, name: str) -> str:
        """The logged key for ``name`` (with ``log_prefix``)."""
        return f"{self.log_prefix}{name}"

    # -- Keras hooks -------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._claim_keys()
        self._source.check()  # empty or endlessly empty data: a configuration error, refused before training
        self._check_configuration()
        # Under MultiWorkerMirroredStrategy every worker must draw the same samples.
        self._run_seed = shared_seed(self.seed, self.model.distribute_strategy)
        self._reset_run_state()
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and getattr(optimizer, "built", False):
            # The global step survives a resumed run (BackupAndRestore restores the optimizer).
            self._global_step = int(optimizer.iterations.numpy())
        if self.save_dir and self._log.exists():
            try:
                self.history = self._log.read()  # a resumed run continues the saved history
            except (OSError, ValueError, KeyError) as error:
                self._warn_once("read", f"could not read {self._log.npz_path} ({error}); starting a new history.")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = int(epoch)
        self._pending_logs = {}
        self._pending_source = None
        if self.frequency == "epoch":
            self._measure()

    def on_train_batch_begin(self, batch, logs=None):
        if self.frequency not in ("epoch", None) and self._global_step % int(self.frequency) == 0:
            self._measure()
        self._batch_started = time.perf_counter()  # after the measurement: its time is not training time

    def on_train_batch_end(self, batch, logs=None):
        self._global_step += 1
        if self._batch_started is not None:
            seconds = time.perf_counter() - self._batch_started
            self._training_seconds += seconds
            self._batch_seconds = self._batch_seconds[-(_SPEED_WINDOW - 1):] + [seconds]
            self._batch_started = None

    def epoch_seconds(self) -> float:
        """Seconds one epoch of ``fit`` takes (median of the latest training batches, measurements excluded;
        NaN before the first batch): the unit of a measurement's ``epoch_equivalents``."""
        steps = (self.params or {}).get("steps") if isinstance(self.params, dict) else None
        if not self._batch_seconds or not steps:
            return float("nan")
        return float(np.median(self._batch_seconds)) * int(steps)

    def on_epoch_end(self, epoch, logs=None):
        self._cost_uncosted()
        if logs is not None:
            logs.update(self._pending_logs)
            if self.budget is not None:
                logs.update(self._budget_logged())

    def on_train_end(self, logs=None):
        try:
            self._cost_uncosted()
            self._measure(final=True)
        finally:
            self._release_keys()

    # -- configuration -------------------------------------------------------------------
    def _check_configuration(self) -> None:
        """Refuses, when ``fit`` starts, what can never work with this model (nothing by default)."""

    @abc.abstractmethod
    def _logged_keys(self) -> list:
        """Every key this callback adds to the epoch's logs (with ``log_prefix``), known before training."""

    def _budget_logged(self) -> dict:
        return {self.key(f"{self._log_name}_{name}"): value for name, value in self.budget_logs().items()}

    def _claims(self) -> list:
        claims = list(self._logged_keys()) + (list(self._budget_logged()) if self.budget is not None else [])
        if self.save_dir:
            claims.append("file " + os.path.abspath(self._log.npz_path))
        return claims

    def _claim_keys(self) -> None:
        """Refuses a second measuring callback of the same ``fit`` that would log (or save) what this one does."""
        params = self.params
        if getattr(self, "_claimed_in", None) != id(params):
            self._release_keys()  # claims left by an earlier fit that crashed before on_train_end
        if not isinstance(params, dict):
            return  # not called by fit's CallbackList: no siblings to clash with
        held, owners = _RUNNING.setdefault(id(params), (params, {}))
        if held is not params:  # cannot happen while the entry holds its dict; kept as a guard
            held, owners = _RUNNING[id(params)] = (params, {})
        clashes = {}
        for claim in self._claims():
            owner = owners.get(claim)
            owner = owner() if owner is not None else None
            if owner is not None:
                clashes.setdefault(id(owner), (owner, []))[1].append(claim)
        for owner, claims in clashes.values():
            keys = [c for c in claims if not c.startswith("file ")]
            files = [c[5:] for c in claims if c.startswith("file ")]
            if owner is self:
                raise ValueError(f"The same {type(self).__name__} is listed twice in fit's callbacks: it would "
                                 f"measure twice per epoch and log {keys[:3]}... twice. List it once.")
            what = " and ".join(([f"log the same keys {keys}"] if keys else [])
                                + ([f"write the same file {files[0]}"] if files else []))
            raise ValueError(f"{type(owner).__name__} and {type(self).__name__} in the same fit both {what}: "
                             f"the second would overwrite the first. Give each its own log_prefix= (e.g. "
                             f"log_prefix='ggn_')" + (" and its own save_dir=" if files else "") + ".")
        reference = weakref.ref(self)
        for claim in self._claims():
            owners[claim] = reference
        self._claimed_in = id(params)

    def _release_keys(self) -> None:
        entry = _RUNNING.get(getattr(self, "_claimed_in", None))
        self._claimed_in = None
        if entry is None:
            return
        owners = entry[1]
        for claim in [c for c, owner in owners.items() if owner() is self or owner() is None]:
            del owners[claim]
        if not owners:
            _RUNNING.pop(id(entry[0]), None)

    # -- measurement ---------------------------------------------------------------------
    def _measure(self, final: bool = False):
        if self._first_measurement_of_run:
            # A run measures again from its first epoch on (a fresh fit() from 0, a run
            # resumed by BackupAndRestore from where it stopped): drop what it redoes.
            self._forget_from(self._epoch)
            self._first_measurement_of_run = False
        epoch = self._epoch + 1 if final else self._epoch  # the final one follows the last epoch
        if not final and self._over_budget():
            return
        measurement = self._take_measurement(epoch, final)
        self._measuring_seconds += measurement.seconds
        measurement.values["epoch_equivalents"] = measurement.seconds / self.epoch_seconds()
        if not np.isfinite(measurement.values["epoch_equivalents"]):
            self._uncosted.append(measurement)
        if measurement.error:
            self._warn_failure(measurement)
        elif self._progress_mode():
            print(f"{type(self).__name__} at epoch {epoch}, step {self._global_step}: "
                  f"{self._describe(measurement)} ({measurement.matvecs} matvecs, {measurement.seconds:.1f}s)",
                  flush=True)
        self.history.append(measurement)
        if not final:
            self._pending_logs = self._measurement_logs(measurement)
            self._pending_source = measurement
        self._save_history()

    def _save_history(self) -> None:
        """Writes the measurements so far to ``save_dir`` (if any); a failed write warns once, training goes on."""
        if self._writes_files():
            try:
                self._log.write(self.history, self._log_top_k())
            except OSError as error:
                self._warn_once("save", f"could not write {self._log.npz_path} ({error}); training goes on.")

    def _cost_uncosted(self) -> None:
        """Gives the measurements taken before the first timed training batch (the start of a run, fresh or
        resumed) their epoch-equivalents once an epoch's batches have been timed, in the epoch's logs and in the
        saved log."""
        unit = self.epoch_seconds()
        if not self._uncosted or not np.isfinite(unit):
            return
        for measurement in self._uncosted:
            measurement.values["epoch_equivalents"] = measurement.seconds / unit
            if measurement is self._pending_source:
                self._pending_logs = self._measurement_logs(measurement)
        self._uncosted = []
        self._save_history()

    def _over_budget(self) -> bool:
        """Whether ``frequency=OverheadBudget(...)`` skips this scheduled measurement (logged as NaN)."""
        if self.budget is None or not self.history:
            return False
        if self.budget.allows(self._measuring_seconds, self.history[-1].seconds, self._training_seconds):
            return False
        self._skipped += 1
        if not self._pending_logs:  # NaN for an epoch without any measurement, not over an earlier one
            self._pending_logs = dict.fromkeys(self._logged_keys(), float("nan"))
        self._warn_once("budget", f"max_overhead={self.budget.max_overhead:g}: measuring took "
                                  f"{self._measuring_seconds:.1f}s against {self._training_seconds:.1f}s of training, "
                                  f"so the measurement at step {self._global_step} and the ones that would exceed the "
                                  f"budget are skipped (logged as NaN; the logs' overhead and skipped count say how "
                                  f"many). Raise max_overhead, or measure less often or on fewer examples.")
        return True

    def budget_logs(self) -> dict:
        """The overhead so far (measuring over training seconds) and the scheduled measurements skipped."""
        overhead = self._measuring_seconds / self._training_seconds if self._training_seconds else float("nan")
        return {"overhead": overhead, "skipped": float(self._skipped)}

    @abc.abstractmethod
    def _take_measurement(self, epoch: int, final: bool) -> Measurement:
        """One measurement on a fresh sample; a failed one is a Measurement with NaN values and ``error``."""

    @abc.abstractmethod
    def _measurement_logs(self, measurement: Measurement) -> dict:
        """The keys and values ``measurement`` adds to its epoch's logs."""

    def _describe(self, measurement: Measurement) -> str:
        """What one progress line says about a measurement."""
        return f"top eigenvalues {np.array2string(measurement.eigenvalues, precision=4)}"

    def _progress_mode(self) -> int:
        """0: silent; 1: a progress bar and a line; 2: a line per measurement."""
        if self.verbose != "auto":
            return int(self.verbose)
        fit_verbose = fit_verbosity(self.params)
        if fit_verbose == 0:
            return 0
        return 1 if fit_verbose == 1 and self.frequency == "epoch" else 2

    def _forget_from(self, epoch: int):
        """Drops the measurements from ``epoch`` on, which this run measures again."""
        self.history = [m for m in self.history if m.epoch < epoch]

    def _as_sample(self, arrays) -> Sample:
        """A drawn sample cut into equal batches (at most ``batch_size``): one fixed, faster batch shape."""
        return Sample.from_data(arrays, batch_size=even_batch_size(num_examples_of(arrays), self.batch_size))

    def _target(self, name: str, curvature, sample: Sample) -> _Target:
        """The operator for one target on ``sample``: reused (no new trace) while the model's variables stay."""
        # Identity and shape of every trainable variable: a new model, or layers frozen or
        # unfrozen, changes it, and then warm-start vectors and traced graphs are stale.
        signature = (id(self.model), tuple((id(v), tuple(v.shape)) for v in self.model.trainable_variables))
        target = self._targets.get(name)
        if target is not None and target.signature == signature:
            try:
                target.operator = curvature(self.model, sample, previous=target.operator) \
                    if isinstance(curvature, Curvature) else curvature(self.model, sample)
                return target
            except ValueError:
                pass  # a sample of another structure: build afresh (and report its error)
        target = _Target(signature, curvature(self.model, sample))
        self._targets[name] = target
        return target

    def _warn_once(self, key: str, message: str):
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"{type(self).__name__}: {message}", RuntimeWarning, stacklevel=3)

    def _warn_failure(self, measurement: Measurement):
        self._warn_once("failure", f"the measurement at epoch {measurement.epoch}, step {measurement.step} failed "
                                   f"and was logged as NaN; training goes on (further failures are not reported). "
                                   f"Reason: {measurement.error}")

    def _warn_about_batchnorm(self, training: bool):
        if training or "batchnorm" in self._warned:
            return
        steps = self._global_step
        for layer in all_layers(self.model):
            if isinstance(layer, keras.layers.BatchNormalization):
                settle = 1.0 / max(1.0 - float(layer.momentum), 1e-12)
                if steps < settle:
                    self._warn_once("batchnorm", (
                        f"BatchNorm layer {layer.name!r} has seen only {steps} updates of its moving statistics "
                        f"(momentum {layer.momentum}: they settle after about {settle:.0f}); in inference mode "
                        "the measured network is not yet the one being trained and its curvature can be far off. "
                        "Measure with batch statistics: curvature=Curvature(training=True) (the moving "
                        "statistics are left untouched)."))
                return

    # -- files -------------------------------------------------------------------------------
    def _writes_files(self) -> bool:
        """Only the chief writes (Keras's multi-worker convention); the other workers log the same values."""
        return bool(self.save_dir) and is_chief(self.model.distribute_strategy)

    @property
    def _log(self) -> MeasurementLog:
        return MeasurementLog(self.save_dir, self._log_name)

    def _log_top_k(self) -> int | None:
        """Eigenvalue columns of the saved log (None: as many as the measurements have)."""
        return None


class _Target:
    """One measured operator (the main one or a block) and its latest eigenvectors (for warm starts)."""

    def __init__(self, signature, operator):
        self.signature = signature
        self.operator = operator
        self.eigenvectors = None


def all_layers(model) -> list:
    """Every layer inside ``model``, nested models included (depth first)."""
    found = []
    for layer in getattr(model, "layers", []):
        found.append(layer)
        found.extend(all_layers(layer))
    return found


def describe_error(error: BaseException) -> str:
    """The line of an error's message that says what went wrong.

    TensorFlow's graph errors open with a generic line ("Graph execution
    error:", "in user code:") followed by where the op was defined; the op's
    own message comes after the stack frames and their source lines.
    """
    text = error.message if isinstance(error, tf.errors.OpError) else str(error)
    lines = text.splitlines()
    first = next((line.strip() for line in lines if line.strip()), "")
    if first not in ("Graph execution error:", "in user code:"):
        return first or type(error).__name__
    kept, after_frame = [], False
    for line in lines[1:]:
        stripped = line.strip()
        if after_frame and stripped:  # the source line TensorFlow echoes under a frame
            after_frame = False
            continue
        after_frame = stripped.startswith('File "')
        if after_frame or not stripped or stripped.startswith(("Detected at node", "[[")):
            continue
        kept.append(stripped)
    return kept[-1] if kept else first
