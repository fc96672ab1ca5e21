"""SpectrumCallback: the trace and the spectral density of the loss's curvature along training."""

from __future__ import annotations

import io
import os
import time

import keras
import numpy as np
import tensorflow as tf

from tf_sharpest.callbacks._legacy import as_curvature, deprecated
from tf_sharpest.callbacks._measurement_log import Measurement
from tf_sharpest.callbacks._measuring import MEASUREMENT_ERRORS, MeasuringCallback, describe_error
from tf_sharpest.linalg._density import SpectralDensity, spectral_density
from tf_sharpest.linalg._trace import MIN_MATVECS, TRACE_METHODS, trace
from tf_sharpest.operators._spec import Curvature
from tf_sharpest.utils._checks import positive_int
from tf_sharpest.utils._files import atomic_path

#: Subfolder of a TensorBoard log dir that the callback's summaries go to (a run of its own in TensorBoard).
TENSORBOARD_SUBDIR = "spectrum"
#: Buckets of the density histogram written to TensorBoard.
HISTOGRAM_BUCKETS = 60
# Names of the curvatures in plot titles.
_TITLES = {"hessian": "Hessian", "ggn": "Gauss-Newton", "empirical_fisher": "Empirical Fisher"}


class SpectrumCallback(MeasuringCallback):
    """Measures the trace and the spectral density of the loss's curvature as ``model.fit`` runs.

    A sibling of :class:`~tf_sharpest.callbacks.LanczosCallback` with the
    same sampling, operator choice, files and schedule. At the start of every
    epoch (or every ``frequency`` training batches), and once after training,
    it draws ``num_samples`` examples from ``data``, forms the curvature (the
    Hessian by default) of the loss at the current weights on them, and
    estimates its trace with :func:`tf_sharpest.linalg.trace`
    (``trace_method``, ``trace_matvecs`` products). The estimate goes into
    that epoch's ``logs`` as ``hessian_trace`` (``ggn_trace``,
    ``empirical_fisher_trace`` for the other curvatures) with
    ``hessian_trace_stderr``, ``spectrum_matvecs`` and ``spectrum_seconds``
    (all prefixed with ``log_prefix``), so ``History``, ``CSVLogger``,
    ``TensorBoard`` and keras-tuner see it like any metric. Place this callback
    before ``CSVLogger``/``TensorBoard`` in the list: Keras hands each callback
    the epoch's logs in list order.

    Every ``density_every`` epochs (epochs 0, N, 2N, ...) and after training
    (``final_density``), the same measurement also computes the spectral
    density by stochastic Lanczos quadrature
    (:func:`tf_sharpest.linalg.spectral_density`, ``num_probes`` x
    ``num_steps`` products) on the same sample, and writes it:

    * to ``save_dir`` as ``density_epoch{E:04d}.npz`` (``nodes``, ``weights``,
      ``dim``, ``epoch``, ``step``, ...; read back with :func:`load_density`)
      and, when matplotlib is installed, ``density_epoch{E:04d}.png`` (log
      scale, as PyHessian's plots);
    * to TensorBoard: into the ``spectrum`` subfolder of ``tensorboard_dir``
      (a log folder, or a ``keras.callbacks.TensorBoard`` whose ``log_dir`` is
      used), or, without one, to the default ``tf.summary`` writer if one is
      set around ``fit`` (``with writer.as_default(): model.fit(...)``): the
      same plot as an image (``spectral_density``, the view that shows the
      outliers next to the bulk), and a histogram (``eigenvalue_histogram``)
      whose bucket counts are the estimated number of eigenvalues in each
      bucket (they sum to ``dim``), so the Histograms dashboard shows how the
      bulk moves from epoch to epoch. The step of both is the epoch. The
      trace is written there too as a scalar, at every measurement (step:
      the epoch, or the global training step when measuring every
      ``frequency`` batches).

    Every measurement of a run uses one operator, moved to each new sample
    with ``set_data``: its graph is traced once. A measurement never changes
    the model and never stops training: one that fails (a non-finite loss or
    estimate, an error in the estimators, a file that cannot be written) logs
    NaN, warns once with the reason, and training goes on. Under
    ``tf.distribute`` with several workers, only the chief writes files and
    summaries (``strategy.extended.should_checkpoint`` /
    ``should_save_summary``); every worker measures.

    Cost: ``trace_matvecs`` curvature-vector products per measurement, plus
    ``num_probes * num_steps`` for each density; each product is about two
    to three gradients' work on ``num_samples`` examples.

    Example:

    ```python
    board = keras.callbacks.TensorBoard("runs/sgd/tb")
    spectrum = SpectrumCallback((x_train, y_train), num_samples=2048, trace_matvecs=30,
                                density_every=5, num_probes=5, num_steps=50, save_dir="runs/sgd",
                                tensorboard_dir=board)       # densities also in TensorBoard
    history = model.fit(x_train, y_train, epochs=10, callbacks=[spectrum, board])
    history.history["hessian_trace"]          # one estimate per epoch
    spectrum.density.plot(log=True)           # the density measured after training
    spectrum.densities[5].moment(1, normalized=False)   # trace from the density at epoch 5
    ```

    Args:
      data: ``(x, y)`` arrays (``x`` may be a dict for multi-input models), or
        a batched ``tf.data.Dataset`` of ``(x, y)`` (it may repeat forever).
      num_samples: examples per measurement.
      batch_size: largest batch size of the curvature products (the sample is
        cut into equal batches where a size of at least half of this allows).
      frequency: ``"epoch"`` to measure the trace at the start of each epoch,
        an int to measure it every that many training batches (a density
        then goes with the first measurement in each of its epochs), or
        ``None`` to measure only once, after training (with ``final_density``:
        the trace and the density of the trained model).
      trace_method: ``"hutch++"`` (default), ``"hutchinson"``, ``"xtrace"``
        or ``"exact"`` (``dim`` products: small models only).
      trace_matvecs: products per trace estimate (at least 3 for Hutch++, 4
        for XTrace; ignored by ``"exact"``). An operator with at most this many
        parameters (a small ``variables`` block) gets its exact trace instead,
        which costs no more.
      density_every: compute the density at the start of every that many
        epochs (0: not during training).
      final_density: also compute the density after training.
      num_probes: SLQ probes per density, ``>= 1``.
      num_steps: Lanczos steps per probe, ``>= 1``.
      resample: draw a fresh sample for every measurement (seeded); ``False``
        keeps the first draw.
      save_dir: folder for ``spectrum.npz``/``spectrum.csv`` (every
        measurement: epoch, step, matvecs, seconds, loss, ``trace``,
        ``trace_stderr``, ``density_matvecs``) and the density files;
        ``None`` saves nothing.
      tensorboard_dir: a log folder, or a ``keras.callbacks.TensorBoard``
        (its ``log_dir``): the summaries go to its ``spectrum`` subfolder.
        ``None`` (default): to the default ``tf.summary`` writer when one is
        set while ``fit`` runs, else nowhere. (``"auto"``, which looked for a
        TensorBoard callback in the same ``fit``, is deprecated: pass the
        callback itself.)
      seed: seed of the sampling and of the estimators' probes.
      verbose: ``"auto"`` (default) prints one line per measurement unless
        ``fit`` runs with ``verbose=0``; or 0 (silent), 1, 2 (one line each).
      log_prefix: prefix of every logged key.
      curvature: what is measured: ``"hessian"`` (default), ``"ggn"``,
        ``"empirical_fisher"``, a :class:`tf_sharpest.operators.Curvature`
        (a block, the loss, training mode, preconditioning) or a callable
        ``(model, sample) -> LinearOperator``.
      **deprecated: ``loss``, ``training``, ``variables`` (now
        ``curvature=Curvature(...)``), with a ``DeprecationWarning``.
    """

    _log_name = "spectrum"
    _measures_only_at_end = True

    def __init__(self, data, num_samples: int = 2250, batch_size: int = 128, frequency="epoch",
                 trace_method: str = "hutch++", trace_matvecs: int = 30, density_every: int = 10,
                 final_density: bool = True, num_probes: int = 5, num_steps: int = 50, resample: bool = True,
                 save_dir: str | None = None, tensorboard_dir=None, seed: int | None = None, verbose="auto",
                 log_prefix: str = "", curvature="hessian", **deprecated_keywords):
        unknown = sorted(set(deprecated_keywords) - {"loss", "training", "variables"})
        if unknown:
            raise TypeError(f"SpectrumCallback() got an unexpected keyword argument {unknown[0]!r}.")
        super().__init__(data, num_samples, batch_size, frequency, resample, seed, save_dir, verbose, log_prefix)
        self.curvature = as_curvature("SpectrumCallback", curvature, deprecated_keywords)
        if trace_method not in TRACE_METHODS:
            raise ValueError(f"trace_method must be one of {TRACE_METHODS}, got {trace_method!r}.")
        if trace_method != "exact":
            least = MIN_MATVECS[trace_method]
            if isinstance(trace_matvecs, bool) or not isinstance(trace_matvecs, (int, np.integer)) \
                    or trace_matvecs < least:
                raise ValueError(f"trace_matvecs must be an integer >= {least} for trace_method={trace_method!r}, "
                                 f"got {trace_matvecs!r}.")
        if isinstance(density_every, bool) or not isinstance(density_every, (int, np.integer)) or density_every < 0:
            raise ValueError(f"density_every must be an integer >= 0 (0: not during training), got "
                             f"{density_every!r}.")
        if tensorboard_dir == "auto":
            deprecated("SpectrumCallback", "tensorboard_dir='auto'", "tensorboard_dir=board with board the "
                       "keras.callbacks.TensorBoard of the same fit (or its log folder); 'auto' now writes only to "
                       "a default tf.summary writer", stacklevel=3)
            tensorboard_dir = None
        if isinstance(tensorboard_dir, keras.callbacks.TensorBoard):
            tensorboard_dir = tensorboard_dir.log_dir
        if tensorboard_dir is not None and not (isinstance(tensorboard_dir, (str, os.PathLike))
                                                and os.fspath(tensorboard_dir)):
            raise ValueError(f"tensorboard_dir must be a log folder, a keras.callbacks.TensorBoard or None, got "
                             f"{tensorboard_dir!r}.")
        self.trace_method = trace_method
        self.trace_matvecs = trace_matvecs  # checked above; "exact" ignores it
        self.density_every = int(density_every)
        self.final_density = bool(final_density)
        self.num_probes = positive_int("num_probes", num_probes)
        self.num_steps = positive_int("num_steps", num_steps)
        self.tensorboard_dir = None if tensorboard_dir is None else os.fspath(tensorboard_dir)
        #: The densities of the latest run, by epoch (the one after training has the number of epochs run).
        self.densities: dict[int, SpectralDensity] = {}
        self._writer = None
        self._trace_method_used = trace_method

    def _fresh_on_copy(self) -> dict:
        return {**super()._fresh_on_copy(), "_writer": None}  # the original's open event file

    @property
    def density(self) -> SpectralDensity | None:
        """The latest density (None before the first)."""
        return self.densities[max(self.densities)] if self.densities else None

    @property
    def trace_key(self) -> str:
        """The logged key of the trace, e.g. ``"hessian_trace"``."""
        return self.key(f"{self._kind}_trace")

    @property
    def _kind(self) -> str:
        """The curvature's name in keys and titles (``"curvature"`` for a callable)."""
        return self.curvature.kind if isinstance(self.curvature, Curvature) else "curvature"

    def _logged_keys(self) -> list:
        return [self.trace_key, self.key(f"{self._kind}_trace_stderr"), self.key("spectrum_matvecs"),
                self.key("spectrum_seconds")]

    def _check_configuration(self):
        if isinstance(self.curvature, Curvature):
            self.curvature.check(self.model)

    # -- Keras hooks -------------------------------------------------------------------
    def on_train_end(self, logs=None):
        try:
            super().on_train_end(logs)
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    # -- measurement ---------------------------------------------------------------------
    def _density_due(self, epoch: int, final: bool) -> bool:
        if final:
            return self.final_density
        if not self.density_every or epoch % self.density_every:
            return False
        return epoch not in self.densities  # with frequency in batches: the first measurement of the epoch

    def _forget_from(self, epoch: int):
        super()._forget_from(epoch)
        self.densities = {}

    def _take_measurement(self, epoch: int, final: bool) -> Measurement:
        start = time.perf_counter()
        try:
            sample = self._as_sample(self._source.draw())
            self._warn_about_batchnorm(getattr(self.curvature, "training", False))
            operator = self._target("", self.curvature, sample).operator
            # With no more parameters than trace_matvecs, the exact trace costs no more (and Hutch++
            # and XTrace cannot run at all): a small block is measured exactly.
            method = "exact" if self.trace_method == "exact" or operator.dim <= self.trace_matvecs \
                else self.trace_method
            result = trace(operator, method=method, num_matvecs=self.trace_matvecs,
                           seed=int(self._rng.integers(2**31)))
            if not np.isfinite(result.value):
                raise ValueError(f"the trace estimate {result.value} is not finite.")
        except MEASUREMENT_ERRORS as error:
            measurement = Measurement(epoch, self._global_step, np.zeros(0), 0, time.perf_counter() - start,
                                      float("nan"), error=describe_error(error),
                                      values={"trace": np.nan, "trace_stderr": np.nan, "density_matvecs": 0.0})
        else:
            density_seed = int(self._rng.integers(2**31))  # drawn either way: a run's estimates do not depend on
            density_matvecs = 0                            # which epochs have a density
            if self._density_due(epoch, final):
                density_matvecs = self._measure_density(operator, epoch, density_seed, final)
            stderr = np.nan if result.stderr is None else float(result.stderr)
            self._trace_method_used = result.method
            measurement = Measurement(epoch, self._global_step, np.zeros(0), result.num_matvecs + density_matvecs,
                                      time.perf_counter() - start, float(operator.loss),
                                      values={"trace": float(result.value), "trace_stderr": stderr,
                                              "density_matvecs": float(density_matvecs)})
        self._write_trace_summary(measurement)
        return measurement

    def _describe(self, measurement: Measurement) -> str:
        density = measurement.values["density_matvecs"]
        note = f"; density at epoch {measurement.epoch} ({density:.0f} matvecs)" if density else ""
        return (f"{self._kind} trace {measurement.values['trace']:.6g} +- {measurement.values['trace_stderr']:.2g} "
                f"({self._trace_method_used}{note})")

    def _measure_density(self, operator, epoch: int, seed: int, final: bool) -> int:
        """Computes, keeps and writes the density at ``epoch``; returns its matvecs (0 if it failed)."""
        try:
            density = spectral_density(operator, num_probes=self.num_probes, num_steps=self.num_steps, seed=seed)
            if not (np.all(np.isfinite(density.nodes)) and np.all(np.isfinite(density.weights))):
                raise ValueError("the density's nodes or weights are not finite.")
        except MEASUREMENT_ERRORS as error:
            self._warn_once("density", f"the spectral density at epoch {epoch} failed and was not written; training "
                                       f"goes on (further failures are not reported). Reason: {describe_error(error)}")
            return 0
        self.densities[epoch] = density
        self._write_density(density, epoch, operator, final)
        return int(density.num_matvecs)

    def _measurement_logs(self, measurement: Measurement) -> dict:
        return {self.trace_key: float(measurement.values["trace"]),
                self.key(f"{self._kind}_trace_stderr"): float(measurement.values["trace_stderr"]),
                self.key("spectrum_matvecs"): float(measurement.matvecs),
                self.key("spectrum_seconds"): float(measurement.seconds)}

    def _progress_mode(self) -> int:
        return 2 if super()._progress_mode() else 0  # no progress bar: one line per measurement

    # -- files and summaries -----------------------------------------------------------------
    def _writes_summaries(self) -> bool:
        """Only the chief writes summaries, as only it writes files (True without a cluster)."""
        return bool(self.model.distribute_strategy.extended.should_save_summary)

    def _summary_writer(self):
        """The callback's own writer under ``tensorboard_dir`` (None without one: the default writer is used)."""
        if self.tensorboard_dir is None:
            return None
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.tensorboard_dir, TENSORBOARD_SUBDIR))
        return self._writer

    def _write_trace_summary(self, measurement: Measurement):
        step = measurement.step if isinstance(self.frequency, (int, np.integer)) else measurement.epoch
        self._summarize("trace", lambda: tf.summary.scalar(self.trace_key, measurement.values["trace"], step=step))

    def _summarize(self, what: str, write):
        """Runs ``write`` with the callback's writer, or the default ``tf.summary`` writer if one is set."""
        if not self._writes_summaries():
            return
        try:
            writer = self._summary_writer()
            if writer is None:
                write()  # tf.summary writes nothing (and says so) without a default writer
                return
            with writer.as_default():
                write()
            writer.flush()
        except (OSError, ValueError, tf.errors.OpError) as error:
            where = self.tensorboard_dir or "the default tf.summary writer"
            self._warn_once(f"summary:{what}", f"could not write the {what} to TensorBoard under {where} "
                                               f"({describe_error(error)}); training goes on.")

    def _write_density(self, density: SpectralDensity, epoch: int, operator, final: bool):
        png = self._density_png(density, epoch, operator, final) if self.save_dir or self.tensorboard_dir else None
        if self._writes_files():
            stem = os.path.join(self.save_dir, f"density_epoch{epoch:04d}")
            try:
                with atomic_path(stem + ".npz") as path:
                    np.savez(path, nodes=density.nodes, weights=density.weights, dim=density.dim,
                             num_matvecs=density.num_matvecs, epoch=epoch, step=self._global_step,
                             num_examples=getattr(operator, "num_examples", -1), curvature=self._kind)
                if png is not None:
                    with atomic_path(stem + ".png") as path, open(path, "wb") as handle:
                        handle.write(png)
            except OSError as error:
                self._warn_once("save_density", f"could not write {stem}.npz/.png ({error}); training goes on.")

        def write():
            written = tf.summary.write("eigenvalue_histogram", tf.constant(histogram_buckets(density)), step=epoch,
                                       metadata=_histogram_metadata(
                                           f"Estimated number of {self._kind} eigenvalues per bucket (sums to dim)"))
            # The plot is drawn for a default writer only once the histogram shows there is one.
            image = png if png is not None or not bool(written) else self._density_png(density, epoch, operator,
                                                                                        final)
            if image is not None:
                tf.summary.image("spectral_density", tf.image.decode_png(image, channels=3)[None], step=epoch,
                                 description=f"{self._kind} spectral density (SLQ), log scale")
        self._summarize("density", write)

    def _density_png(self, density: SpectralDensity, epoch: int, operator, final: bool) -> bytes | None:
        """The log-scale plot as PNG bytes; None without matplotlib."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            self._warn_once("matplotlib", "matplotlib is not installed (pip install tf_sharpest[plot]): the density "
                                          "is saved as .npz only, without a plot.")
            return None
        # A bare Figure (not pyplot): no global figure state, no GUI backend, safe in any thread.
        figure = Figure(figsize=(6.4, 4.0), dpi=100)
        FigureCanvasAgg(figure)
        ax = figure.add_subplot()
        density.plot(ax=ax, log=True)
        title = _TITLES.get(self._kind, self._kind)
        ax.set_xlabel(f"{title} eigenvalue")
        when = f"after training (epoch {epoch})" if final else f"start of epoch {epoch}"
        ax.set_title(f"{title} spectral density, {when}\n{density.num_probes} probes x {self.num_steps} "
                     f"steps, {getattr(operator, 'num_examples', '?')} examples, dim {density.dim:,}", fontsize=9)
        ax.grid(alpha=0.3)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()


def histogram_buckets(density: SpectralDensity, buckets: int = HISTOGRAM_BUCKETS) -> np.ndarray:
    """The density as TensorBoard histogram data: ``[buckets, 3]`` rows of (left edge, right edge, count).

    A count is the estimated number of eigenvalues in the bucket: the SLQ
    weights (averaged over probes) falling in it, times ``dim``; the counts
    sum to ``dim``. Buckets span the nodes that carry weight.

    Example:

    ```python
    buckets = histogram_buckets(spectrum.density)
    buckets[:, 2].sum()            # == density.dim
    ```
    """
    used = density.weights > 0
    nodes, mass = density.nodes[used], density.weights[used] / density.num_probes * density.dim
    low, high = float(np.min(nodes)), float(np.max(nodes))
    if high <= low:  # all weight on one value: one bucket around it
        low, high = low - 0.5 * max(abs(low), 1.0) * 1e-3, high + 0.5 * max(abs(high), 1.0) * 1e-3
    counts, edges = np.histogram(nodes, bins=int(buckets), range=(low, high), weights=mass)
    return np.stack([edges[:-1], edges[1:], counts], axis=1).astype(np.float64)


def load_density(path: str | os.PathLike) -> SpectralDensity:
    """The :class:`~tf_sharpest.linalg.SpectralDensity` a :class:`SpectrumCallback` saved in ``path``.

    Example:

    ```python
    density = load_density("runs/sgd/density_epoch0000.npz")   # the density before training
    density.moment(1, normalized=False)     # the trace, with its standard error
    ```
    """
    with np.load(path) as saved:
        return SpectralDensity(nodes=np.array(saved["nodes"]), weights=np.array(saved["weights"]),
                               dim=int(saved["dim"]), num_matvecs=int(saved["num_matvecs"]))


def _histogram_metadata(description: str):
    # TensorBoard's histogram plugin reads [k, 3] tensors (left, right, count) tagged with its
    # metadata; tf.summary.histogram can only count samples, and the density has weights.
    from tensorboard.plugins.histogram import metadata

    return metadata.create_summary_metadata(display_name=None, description=description)
