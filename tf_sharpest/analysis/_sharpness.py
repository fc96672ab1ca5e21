"""Batch sharpness: the curvature a mini-batch SGD step actually feels along its own direction.

For a mini-batch ``B`` with gradient ``g_B`` and Hessian ``H_B`` of the
batch's own mean loss, the step ``-eta g_B`` is stable for that batch's
quadratic model only if the curvature along it, ``g_B^T H_B g_B / ||g_B||^2``,
stays below ``2 / eta``. Its mean over mini-batches is the *batch sharpness*
of Andreyev & Beneventano ("Edge of Stochastic Stability", arXiv 2412.20553),
who find it, not the full-batch ``lambda_max``, sitting at ``2 / eta`` during
mini-batch SGD.

Each batch costs one gradient and one Hessian-vector product, through one
:class:`~tf_sharpest.operators.HessianOperator` moved from batch to batch
with ``set_data`` (its double-backprop graph is traced once per batch size).
The Hessian is never formed, and the model is never changed.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from tf_sharpest.operators._hessian import HessianOperator
from tf_sharpest.utils._batches import num_examples_of
from tf_sharpest.utils._checks import positive_int


@dataclasses.dataclass(frozen=True)
class BatchSharpness:
    """The mean of ``g_B^T H_B g_B / ||g_B||^2`` over mini-batches ``B`` (see :func:`batch_sharpness`).

    Attributes:
      value: the mean over the batches (each batch counts once, as each SGD step does).
      stderr: its standard error, ``std(values, ddof=1) / sqrt(num_batches)`` (NaN for one batch).
      num_batches: how many batches were measured.
      batch_size: the requested batch size (a consecutive pass may end in a smaller batch).
      values: ``[num_batches]`` the per-batch Rayleigh quotients, in the order measured.
      gradient_norms: ``[num_batches]`` ``||g_B||`` of each batch.
      losses: ``[num_batches]`` each batch's mean loss (with regularization).
      indices: the example indices of each batch, in the order measured (into ``data``).
    """

    value: float
    stderr: float
    num_batches: int
    batch_size: int
    values: np.ndarray
    gradient_norms: np.ndarray
    losses: np.ndarray
    indices: tuple

    @property
    def ratio_of_means(self) -> float:
        """``sum_B g_B^T H_B g_B / sum_B ||g_B||^2``: the batches weighted by their squared gradient norm.

        The other reading of "expected directional curvature along the stochastic gradients",
        ``E[g^T H g] / E[||g||^2]``; ``value`` is ``E[g^T H g / ||g||^2]``. They differ when batches
        with larger gradients see another curvature.
        """
        squared = self.gradient_norms ** 2
        return float(np.sum(self.values * squared) / np.sum(squared))

    def __float__(self) -> float:
        return float(self.value)


def batch_indices(num_examples: int, batch_size: int, *, num_batches: int | None = None, shuffle: bool = True,
                  seed: int | None = 0) -> list[np.ndarray]:
    """The example indices of each batch :func:`batch_sharpness` measures, in order.

    * ``shuffle=False``: consecutive slices ``[i * batch_size, (i + 1) * batch_size)`` in data order, the
      last one possibly smaller (as one epoch of ``model.fit`` without shuffling); all of them with
      ``num_batches=None``, else the first ``num_batches``.
    * ``shuffle=True``, ``num_batches=None``: one pass over a random permutation
      (``np.random.default_rng(seed).permutation(num_examples)``) cut the same way: one shuffled epoch.
    * ``shuffle=True``, ``num_batches=k``: ``k`` independent batches of exactly ``batch_size`` distinct
      examples, each ``rng.choice(num_examples, batch_size, replace=False)`` with one
      ``rng = np.random.default_rng(seed)``, so the batches are i.i.d. and the standard error applies.

    Example:

    ```python
    batch_indices(10, 4, shuffle=False)        # [0..3], [4..7], [8, 9]
    batch_indices(10, 4, num_batches=3, seed=1) # three random batches of 4
    ```

    Raises:
      ValueError: for ``batch_size < 1``, ``num_batches < 1``, fewer examples than one batch, or
        ``shuffle=False`` with more ``num_batches`` than one pass holds.
    """
    batch_size = positive_int("batch_size", batch_size)
    num_batches = positive_int("num_batches", num_batches, allow_none=True)
    num_examples = int(num_examples)
    if num_examples < batch_size:
        raise ValueError(f"The data holds {num_examples} examples, fewer than one batch of {batch_size}: "
                         "batch sharpness needs at least one full batch. Pass a smaller batch_size or more data.")
    per_pass = math.ceil(num_examples / batch_size)
    if shuffle and num_batches is not None:
        rng = np.random.default_rng(seed)
        return [rng.choice(num_examples, batch_size, replace=False) for _ in range(num_batches)]
    if num_batches is not None and num_batches > per_pass:
        raise ValueError(f"shuffle=False takes consecutive batches of one pass, which holds {per_pass} batches of "
                         f"{batch_size} from {num_examples} examples; num_batches={num_batches} is more. Pass "
                         "shuffle=True to draw random batches, or num_batches <= "
                         f"{per_pass}.")
    order = np.random.default_rng(seed).permutation(num_examples) if shuffle else np.arange(num_examples)
    count = per_pass if num_batches is None else num_batches
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(count)]


class BatchSharpnessMeter:
    """Measures batch sharpness of one model repeatedly, tracing its Hessian-vector product graph once.

    :func:`batch_sharpness` builds one of these per call; a callback that
    measures along training keeps one, so every measurement after the first
    costs no new trace. A new set of trainable variables (layers frozen or
    unfrozen) builds a new operator.

    Example:

    ```python
    meter = BatchSharpnessMeter(model)
    for epoch in range(10):
        model.fit(x, y, batch_size=128, epochs=1)
        result = meter.measure((x, y), batch_size=128, num_batches=8, seed=epoch)
        print(result.value, "+-", result.stderr, "against 2 / lr =", 2 / lr)
    ```

    Args:
      model: a built Keras model.
      loss: ``None`` for the model's compiled loss, or a Keras loss or callable ``loss(y_true, y_pred)``.
      training: the mode the model is called in (``False``: inference mode, as the curvature operators).
    """

    def __init__(self, model: keras.Model, *, loss=None, training: bool = False):
        self.model = model
        self.loss = loss
        self.training = bool(training)
        self._operator: HessianOperator | None = None
        self._signature = None

    @property
    def operator(self) -> HessianOperator | None:
        """The Hessian operator of the latest batch (None before the first measurement)."""
        return self._operator

    def measure(self, data, *, batch_size: int, num_batches: int | None = None, shuffle: bool = True,
                seed: int | None = 0) -> BatchSharpness:
        """Batch sharpness over the batches :func:`batch_indices` picks from ``data``; see :func:`batch_sharpness`."""
        arrays = _as_arrays(data)
        indices = batch_indices(num_examples_of(arrays), batch_size, num_batches=num_batches, shuffle=shuffle,
                                seed=seed)
        values, norms, losses = [], [], []
        for number, index in enumerate(indices):
            batch = tuple(tf.nest.map_structure(lambda a, index=index: a[index], arrays))
            operator = self._operator_on(batch)
            # The gradient and the Hessian of the batch's own mean loss: one batch, so weight 1.
            gradient = operator.objective.gradient()
            curvature = operator.matvec(gradient)
            g = gradient.numpy().astype(np.float64)
            squared_norm = float(g @ g)
            if not np.isfinite(squared_norm):
                raise ValueError(f"The gradient of batch {number} (0-based) is not finite.")
            if squared_norm == 0.0:
                raise ValueError(f"The gradient of batch {number} (0-based) is zero, so its batch sharpness "
                                 "g^T H g / ||g||^2 is undefined (a minimum of the batch loss, or a model "
                                 "whose output does not depend on its weights).")
            values.append(float(g @ curvature.numpy().astype(np.float64)) / squared_norm)
            norms.append(math.sqrt(squared_norm))
            losses.append(operator.loss)
        values = np.asarray(values, dtype=np.float64)
        stderr = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
        return BatchSharpness(value=float(np.mean(values)), stderr=stderr, num_batches=len(values),
                              batch_size=int(batch_size), values=values,
                              gradient_norms=np.asarray(norms, dtype=np.float64),
                              losses=np.asarray(losses, dtype=np.float64), indices=tuple(indices))

    def _operator_on(self, batch) -> HessianOperator:
        """The operator on ``batch``: the existing one moved there while the model's variables stay the same."""
        size = num_examples_of(batch)
        signature = (id(self.model), tuple((id(v), tuple(v.shape)) for v in self.model.trainable_variables))
        if self._operator is not None and self._signature == signature:
            self._operator.set_data(batch, batch_size=size)  # one batch: the whole of it
            return self._operator
        self._operator = HessianOperator(self.model, batch, loss=self.loss, batch_size=size, training=self.training)
        self._signature = signature
        return self._operator


def batch_sharpness(model: keras.Model, data, *, batch_size: int, num_batches: int | None = None,
                    shuffle: bool = True, seed: int | None = 0, loss=None, training: bool = False) -> BatchSharpness:
    """Mean over mini-batches ``B`` of ``data`` of ``g_B^T H_B g_B / ||g_B||^2``: the batch sharpness.

    ``g_B`` and ``H_B`` are the gradient and Hessian of batch ``B``'s own
    mean loss (the compiled loss or ``loss``, plus the model's regularization
    losses, as in a training step). The curvature along the step an SGD step
    on ``B`` takes: the step is unstable on that batch's quadratic model when
    it exceeds ``2 / lr``. Each batch costs one gradient and one
    Hessian-vector product; the Hessian is never formed and the model is not
    changed.

    Which batches (see :func:`batch_indices`):

    * ``shuffle=False, num_batches=None``: one pass of consecutive batches in data order (the last may be
      smaller, as in ``model.fit``); ``shuffle=False, num_batches=k``: the first ``k`` of them;
    * ``shuffle=True, num_batches=None``: one pass over a seeded random permutation;
    * ``shuffle=True, num_batches=k``: ``k`` independent random batches of ``batch_size`` examples.

    The mean counts every batch once (each is one SGD step), also a smaller last one.

    Example:

    ```python
    result = tf_sharpest.analysis.batch_sharpness(model, (x_train, y_train), batch_size=128,
                                                  num_batches=16, seed=0)
    print(f"{result.value:.1f} +- {result.stderr:.1f} over {result.num_batches} batches; 2/lr = {2 / lr:.1f}")
    ```

    Args:
      model: a built Keras model.
      data: ``(x, y)`` or ``(x, y, sample_weight)`` arrays (``x`` may be a dict or list of arrays).
      batch_size: examples per batch (the training batch size of the SGD run studied).
      num_batches: batches to average over; ``None`` for one pass over ``data``.
      shuffle: random batches (``True``) or consecutive ones in data order (``False``).
      seed: seed of the random batches.
      loss: ``None`` for the model's compiled loss, or a Keras loss or callable ``loss(y_true, y_pred)``.
      training: the mode the model is called in (``False``: BatchNorm in inference mode, dropout off).

    Returns:
      a :class:`BatchSharpness` with ``value``, ``stderr``, ``num_batches`` and the per-batch ``values``.

    Raises:
      ValueError: for ``batch_size < 1`` or ``num_batches < 1``, data that is not ``(x, y[, w])`` arrays or holds
        fewer examples than one batch, ``shuffle=False`` with ``num_batches`` larger than one pass holds, a
        non-finite loss, or a batch whose gradient is zero.
    """
    meter = BatchSharpnessMeter(model, loss=loss, training=training)
    return meter.measure(data, batch_size=batch_size, num_batches=num_batches, shuffle=shuffle, seed=seed)


def _as_arrays(data) -> tuple:
    """``data`` as a tuple of NumPy arrays ``(x, y[, w])`` of one length, or a ``ValueError``."""
    if isinstance(data, tf.data.Dataset) or not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        raise ValueError("batch_sharpness takes data as arrays (x, y) or (x, y, sample_weight), "
                         f"got {type(data).__name__}; draw a dataset into arrays first.")
    arrays = tuple(tf.nest.map_structure(np.asarray, tuple(data)))
    lengths = set()
    for array in tf.nest.flatten(arrays):
        if array.ndim == 0:
            raise ValueError("x, y (and sample_weight) must be arrays with a leading example dimension.")
        lengths.add(int(array.shape[0]))
    if len(lengths) != 1:
        raise ValueError(f"x, y (and sample_weight) must hold the same number of examples, got {sorted(lengths)}.")
    return arrays
