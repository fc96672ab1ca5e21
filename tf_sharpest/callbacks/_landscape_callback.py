"""LandscapeCallback: pictures of the loss around the weights (and of the spectrum) every few epochs."""

from __future__ import annotations

import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from tf_sharpest._keras_compat import unwrap_optimizer
from tf_sharpest.analysis import (
    LandscapeEvaluator,
    plot_loss_lines,
    plot_loss_surface,
    plot_spectrogram,
    random_directions,
    read_densities,
)
from tf_sharpest.analysis._plots import figure_png
from tf_sharpest.callbacks._measurement_log import MeasurementLog
from tf_sharpest.hessian import top_eigenpairs
from tf_sharpest.operators._sample import Sample
from tf_sharpest.utils._checks import positive_int
from tf_sharpest.utils._files import atomic_path

#: Subfolder of ``tensorboard_dir`` the images go to (a run of its own in TensorBoard).
TENSORBOARD_SUBDIR = "landscape"
#: What the callback can draw.
PICTURES = ("lines", "surface", "spectrogram")
# Errors a picture may fail with; it warns and training goes on.
_PICTURE_ERRORS = (ValueError, ArithmeticError, RuntimeError, OSError, ImportError, tf.errors.OpError)


class LandscapeCallback(keras.callbacks.Callback):
    """Draws the loss around the current weights every ``every`` epochs, to ``save_dir`` and TensorBoard's image tab.

    After every ``every``-th epoch it takes a fixed sample of ``data`` (drawn
    once, seeded, so the pictures of a run are comparable) and draws:

    * ``"lines"``: the loss along the top two Hessian eigenvectors ``e1``,
      ``e2`` (or two filter-normalized random directions, ``directions="random"``)
      with the quadratic models of ``lambda_1``, ``lambda_2`` and of the
      critical curvature ``2/eta`` (:func:`~tf_sharpest.analysis.plot_loss_lines`);
    * ``"surface"``: the loss on the plane of the same two directions
      (:func:`~tf_sharpest.analysis.plot_loss_surface`);
    * ``"spectrogram"``: the spectral densities a
      :class:`~tf_sharpest.callbacks.SpectrumCallback` saved in
      ``spectrum_dir`` so far, with the ``lambda_1..K`` a
      :class:`~tf_sharpest.callbacks.LanczosCallback` saved there
      (:func:`~tf_sharpest.analysis.plot_spectrogram`).

    Each picture is saved as ``landscape_epoch{E:04d}_{picture}.png`` in
    ``save_dir`` and written as an image (step ``E``, the epochs done) to
    ``tensorboard_dir/landscape``, or, without ``tensorboard_dir``, to the
    default ``tf.summary`` writer if the caller set one (``with
    writer.as_default(): model.fit(...)``). The model is never changed (the
    landscape is evaluated statelessly). A picture that fails warns once per
    kind of failure and training goes on. Only the chief worker writes.

    Cost per drawing: the Lanczos iterations for two eigenpairs (``directions="hessian"``),
    plus ``len(steps)`` (lines, per direction) and ``len(steps)**2`` (surface)
    forward passes over the sample.

    Example:

    ```python
    pictures = LandscapeCallback((x_train, y_train), every=5, num_samples=1024, save_dir="runs/sgd",
                                 tensorboard_dir="runs/sgd/tb", spectrum_dir="runs/sgd")
    model.fit(x_train, y_train, epochs=10, callbacks=[pictures])
    pictures.landscapes[10]["lines"]["e1"].losses    # the loss along e1 after epoch 10
    ```

    Args:
      data: ``(x, y)`` arrays (``x`` may be a dict) or a batched ``tf.data.Dataset`` of ``(x, y)``.
      every: draw after every that many epochs.
      num_samples: examples the loss is averaged over.
      batch_size: batch size of the evaluations.
      steps: coefficients along each direction; default ``np.linspace(-0.5, 0.5, 21)``
        for eigenvectors (unit norm), ``np.linspace(-1, 1, 21)`` for random directions.
      directions: ``"hessian"`` (the top two eigenvectors) or ``"random"``
        (filter-normalized, Li et al. 2018; drawn anew at each drawing, from ``seed``).
      pictures: which of ``"lines"``, ``"surface"``, ``"spectrogram"`` to draw.
      learning_rate: ``eta`` of the ``2/eta`` curves; ``None`` reads the optimizer's current one.
      save_dir: folder for the PNG files (None: no files).
      tensorboard_dir: a TensorBoard log dir (the images go to its ``landscape``
        subfolder), or None for the default ``tf.summary`` writer, if any.
      spectrum_dir: the ``save_dir`` of a SpectrumCallback (and LanczosCallback)
        of the same run, for the spectrogram.
      final: also draw after training when the last epoch was not a multiple of ``every``.
      loss: loss to evaluate; None for the model's compiled loss.
      training: evaluate in training mode (BatchNorm batch statistics; nothing is updated).
      seed: seed of the sample, the eigensolver's start and the random directions.
    """

    def __init__(self, data, *, every: int = 5, num_samples: int = 1024, batch_size: int = 256, steps=None,
                 directions: str = "hessian", pictures=("lines", "surface"), learning_rate: float | None = None,
                 save_dir: str | None = None, tensorboard_dir: str | None = None, spectrum_dir: str | None = None,
                 final: bool = True, loss=None, training: bool = False, seed: int = 0):
        super().__init__()
        self.data = data
        self.every = positive_int("every", every)
        self.num_samples = positive_int("num_samples", num_samples)
        self.batch_size = positive_int("batch_size", batch_size)
        if directions not in ("hessian", "random"):
            raise ValueError(f"directions must be 'hessian' (top eigenvectors) or 'random' (filter-normalized), "
                             f"got {directions!r}.")
        self.directions = directions
        default = np.linspace(-0.5, 0.5, 21) if directions == "hessian" else np.linspace(-1.0, 1.0, 21)
        self.steps = LandscapeEvaluator.check_steps(default if steps is None else steps)
        pictures = (pictures,) if isinstance(pictures, str) else tuple(pictures)
        unknown = [p for p in pictures if p not in PICTURES]
        if unknown or not pictures:
            raise ValueError(f"pictures must be some of {PICTURES}, got {pictures!r}.")
        if "spectrogram" in pictures and spectrum_dir is None:
            raise ValueError("The spectrogram needs spectrum_dir= (the save_dir of a SpectrumCallback).")
        self.pictures = pictures
        if learning_rate is not None and not (np.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"learning_rate must be a positive number or None (the optimizer's), got "
                             f"{learning_rate!r}.")
        self.learning_rate = learning_rate
        self.save_dir = None if save_dir is None else os.fspath(save_dir)
        self.tensorboard_dir = None if tensorboard_dir is None else os.fspath(tensorboard_dir)
        self.spectrum_dir = None if spectrum_dir is None else os.fspath(spectrum_dir)
        self.final = bool(final)
        self.loss = loss
        self.training = bool(training)
        self.seed = int(seed)
        #: What each drawing measured, by epoch: ``{"lines": {label: Landscape}, "surface": Landscape,
        #: "directions": [2, dim], "eigenvalues": array or None, "learning_rate": float, "files": [paths]}``.
        self.landscapes: dict[int, dict] = {}
        self._sample = None
        self._evaluator = None
        self._writer = None
        self._warned = set()
        self._last_epoch = None

    # -- Keras hooks -----------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._last_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        self._last_epoch = epoch + 1
        if (epoch + 1) % self.every == 0:
            self.draw(epoch + 1)

    def on_train_end(self, logs=None):
        try:
            if self.final and self._last_epoch is not None and self._last_epoch not in self.landscapes:
                self.draw(self._last_epoch)
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    # -- drawing ---------------------------------------------------------------------------------
    def draw(self, epoch: int) -> dict:
        """Measures and draws the pictures at the current weights, labelled ``epoch``; never raises for a failure.

        Returns what was measured (also kept in ``landscapes[epoch]``).
        """
        record = {"lines": {}, "surface": None, "directions": None, "eigenvalues": None, "learning_rate": None,
                  "files": []}
        self.landscapes[epoch] = record
        try:
            evaluator = self._landscape_evaluator()
            record["learning_rate"] = self._current_learning_rate()
            rows, labels = self._directions(evaluator, record, epoch)
            record["directions"] = rows
        except _PICTURE_ERRORS as error:
            self._warn("directions", f"the landscape at epoch {epoch} was not drawn ({_describe(error)}); training "
                                     "goes on.")
            return record
        if "lines" in self.pictures:
            self._picture(epoch, "lines", record, lambda: self._lines(evaluator, rows, labels, record, epoch))
        if "surface" in self.pictures:
            self._picture(epoch, "surface", record, lambda: self._surface(evaluator, rows, labels, record, epoch))
        if "spectrogram" in self.pictures:
            self._picture(epoch, "spectrogram", record, lambda: self._spectrogram(record, epoch))
        return record

    def _landscape_evaluator(self) -> LandscapeEvaluator:
        if self._evaluator is None:
            self._sample = self._draw_sample()
            self._evaluator = LandscapeEvaluator(self.model, self._sample, loss=self.loss, training=self.training)
        return self._evaluator

    def _draw_sample(self) -> Sample:
        """A fixed, seeded sample of ``num_samples`` examples of ``data``."""
        if isinstance(self.data, tf.data.Dataset):
            dataset = self.data.unbatch().take(self.num_samples).batch(self.batch_size)
            return Sample.from_data(dataset)
        x, y = self.data[0], self.data[1]
        count = len(tf.nest.flatten(x)[0])
        rng = np.random.default_rng(self.seed)
        pick = np.sort(rng.choice(count, size=min(count, self.num_samples), replace=False))
        take = lambda array: np.asarray(array)[pick]  # noqa: E731
        return Sample.from_data((tf.nest.map_structure(take, x), take(y)), self.batch_size)

    def _current_learning_rate(self) -> float | None:
        if self.learning_rate is not None:
            return float(self.learning_rate)
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return None
        rate = float(np.asarray(unwrap_optimizer(optimizer).learning_rate))
        return rate if np.isfinite(rate) and rate > 0 else None

    def _directions(self, evaluator, record, epoch):
        if self.directions == "random":
            rows = random_directions(self.model, 2, seed=self.seed + epoch)
            return rows, ("random direction 1", "random direction 2")
        pairs = top_eigenpairs(self.model, self._sample, k=2, loss=self.loss, training=self.training, tol=1e-3,
                               seed=self.seed)
        record["eigenvalues"] = np.asarray(pairs.eigenvalues, dtype=np.float64)
        return np.asarray(pairs.eigenvectors).T, ("e1", "e2")

    def _lines(self, evaluator, rows, labels, record, epoch):
        lines = {label: evaluator.landscape(row, self.steps) for label, row in zip(labels, rows)}
        record["lines"] = lines
        what = "top Hessian eigenvectors" if self.directions == "hessian" else "random filter-normalized directions"
        return plot_loss_lines(lines, eigenvalues=record["eigenvalues"], learning_rate=record["learning_rate"],
                               title=f"Loss along the {what}, after epoch {epoch} ({self._sample.num_examples} "
                                     "examples)")

    def _surface(self, evaluator, rows, labels, record, epoch):
        surface = evaluator.landscape(rows, self.steps)
        record["surface"] = surface
        return plot_loss_surface(surface, labels=labels, title=f"Loss on the plane of {labels[0]}, {labels[1]}, "
                                                               f"after epoch {epoch}")

    def _spectrogram(self, record, epoch):
        densities = read_densities(self.spectrum_dir)
        if not densities:
            return None  # no density saved yet: nothing to draw, nothing wrong
        log = MeasurementLog(self.spectrum_dir, "lanczos")
        return plot_spectrogram(densities, eigenvalues=log if log.exists() else None,
                                learning_rate=record["learning_rate"],
                                title=f"Spectral density along training, up to epoch {epoch}")

    def _picture(self, epoch: int, name: str, record: dict, make):
        try:
            figure = make()
            if figure is None:
                return
            png = figure_png(figure)
            self._save(epoch, name, png, record)
            self._summarize(epoch, name, png)
        except _PICTURE_ERRORS as error:
            self._warn(name, f"the {name} picture at epoch {epoch} failed ({_describe(error)}); training goes on.")

    def _save(self, epoch: int, name: str, png: bytes, record: dict):
        if self.save_dir is None or not self.model.distribute_strategy.extended.should_checkpoint:
            return
        os.makedirs(self.save_dir, exist_ok=True)
        path = os.path.join(self.save_dir, f"landscape_epoch{epoch:04d}_{name}.png")
        with atomic_path(path) as temporary, open(temporary, "wb") as handle:
            handle.write(png)
        record["files"].append(path)

    def _summarize(self, epoch: int, name: str, png: bytes):
        if not self.model.distribute_strategy.extended.should_save_summary:
            return
        image = tf.image.decode_png(png, channels=3)[None]
        if self.tensorboard_dir is None:
            tf.summary.image(f"landscape/{name}", image, step=epoch)  # the default writer, if the caller set one
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.tensorboard_dir, TENSORBOARD_SUBDIR))
        with self._writer.as_default():
            tf.summary.image(f"landscape/{name}", image, step=epoch)
        self._writer.flush()

    def _warn(self, kind: str, message: str):
        if kind in self._warned:
            return
        self._warned.add(kind)
        warnings.warn(f"LandscapeCallback: {message} (further failures of this kind are not reported)",
                      RuntimeWarning, stacklevel=3)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
