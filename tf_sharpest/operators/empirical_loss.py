"""The mean training loss of a Keras model over a fixed, finite sample of data.

Every curvature operator (the Hessian today; GGN and Fisher later) and every
analysis of the loss (gradients, the loss along a direction) needs the same
things: the loss a training step would compute, the data cut into batches, and
a mean weighted by examples. This module holds them once.
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from tf_sharpest.utils.batches import as_batched_dataset, count_examples
from tf_sharpest.utils.flat import FlatLayout


class EmpiricalLoss:
    """The loss of ``model`` averaged over ``data``, with its gradient, batch by batch.

    The loss is the compiled loss (or ``loss``) plus the model's regularization
    losses, as in a training step; the mean is weighted by each batch's number
    of examples, so it is exact however the last batch is cut. Construction
    evaluates the loss once, which validates the data.

    Example:

    ```python
    objective = EmpiricalLoss(model, (x, y), batch_size=256)
    objective.value            # mean loss at the current weights
    g = objective.gradient()   # flat tf.Tensor in the model.trainable_variables layout
    ```

    Args:
      model: a built Keras model.
      data: ``(x, y)`` (or ``(x, y, sample_weight)``) arrays or tensors, or a
        finite batched ``tf.data.Dataset`` that yields the same examples on
        every pass (no shuffling or random augmentation in it).
      loss: ``None`` for the model's compiled loss (``model.compute_loss``), or a
        Keras loss (name or object) or a callable ``loss(y_true, y_pred)``.
      batch_size: batch size for array ``data`` (default 128).
      training: the mode the model is called in (``False``: BatchNorm in
        inference mode, dropout off).

    Raises:
      ValueError: for empty, infinite or malformed data, a model without a
        loss or trainable variables, or a non-finite loss (naming the batch).
    """

    def __init__(self, model: keras.Model, data, *, loss=None, batch_size: int | None = None,
                 training: bool = False):
        self.model = model
        self.training = bool(training)
        self.variables = list(model.trainable_variables)
        if not self.variables:
            raise ValueError("The model has no trainable variables; build it (call it once) first.")
        dtypes = {tf.as_dtype(v.dtype) for v in self.variables}
        if len(dtypes) != 1:
            raise ValueError(f"All trainable variables must share one dtype, got {sorted(d.name for d in dtypes)}.")
        self.dtype = dtypes.pop()
        self.layout = FlatLayout.from_variables(self.variables)
        self._loss_fn = _resolve_loss(model, loss)
        self.batch_size = batch_size
        self._attach(data)
        # The batch dimension is left open so the last, smaller batch reuses a trace.
        self.batch_spec = tuple(_relax_batch_dim(spec) for spec in self.dataset.element_spec)
        self._graph_loss = tf.function(self.batch_loss, input_signature=[self.batch_spec])
        self._graph_gradient, self._graph_gradient_spec = None, None
        self.value = self.evaluate()

    def _attach(self, data):
        self.dataset = as_batched_dataset(data, self.batch_size)
        # Arrays are cut into batches once and kept; a user's dataset is read on every pass.
        self._cached_batches = None if isinstance(data, tf.data.Dataset) else list(self.dataset)

    def set_data(self, data) -> None:
        """Moves the loss to a new sample with the same structure, keeping the traced graphs.

        A measurement repeated along training (a new sample each time) then
        costs no new trace: tracing the double backprop of a network takes
        seconds, and TensorFlow warns when functions are re-created in a loop.
        The loss is evaluated on the new data (``value``), which validates it.

        Raises:
          ValueError: if the new batches differ from the old ones in anything
            but the batch size (shapes, dtypes, with or without sample weights),
            or the data is empty or gives a non-finite loss.
        """
        previous = (self.dataset, self._cached_batches, self.num_examples, self.num_batches, self.trace_spec,
                    self.value)
        try:
            self._attach(data)
            spec = tuple(_relax_batch_dim(s) for s in self.dataset.element_spec)
            if spec != self.batch_spec:
                raise ValueError(f"The new data's batches {spec} do not match the operator's {self.batch_spec}; "
                                 "build a new operator for data of another structure.")
            self.value = self.evaluate()
        except ValueError:
            # The operator stays as it was: still usable on its old data.
            (self.dataset, self._cached_batches, self.num_examples, self.num_batches, self.trace_spec,
             self.value) = previous
            raise

    def batches(self):
        """The batches of one pass over the data."""
        return self._cached_batches if self._cached_batches is not None else self.dataset

    def batch_weights(self):
        """Yields ``(batch, weight)`` with ``weight = examples in batch / examples in all``."""
        total = float(self.num_examples)
        for batch in self.batches():
            yield batch, tf.constant(float(count_examples(batch)) / total, self.dtype)

    def batch_loss(self, batch) -> tf.Tensor:
        """The loss on one ``(x, y[, w])`` batch, as a training step computes it (usable in graphs)."""
        x, y = batch[0], batch[1]
        sample_weight = batch[2] if len(batch) == 3 else None
        y_pred = self.model(x, training=self.training)
        return tf.cast(self._loss_fn(x, y, y_pred, sample_weight, self.training), self.dtype)

    def evaluate(self) -> float:
        """Mean loss over the data at the current weights; also sets ``num_examples``/``num_batches``.

        Raises:
          ValueError: if the data is empty or the loss of any batch is not finite.
        """
        losses, sizes = [], []
        for batch in self.batches():
            losses.append(float(self._graph_loss(batch)))
            sizes.append(int(count_examples(batch)))
        losses, sizes = np.array(losses), np.array(sizes)
        self.num_examples = int(sizes.sum())
        self.num_batches = int(len(sizes))
        # The batch signature the heavy graphs (gradients, HVPs) are traced with. When
        # every batch has the same size, that size is written into it: TensorFlow then
        # plans the convolutions' second-order kernels for a known shape, which made a
        # SimpleCNN HVP 10-15% faster on CPU than with an open batch dimension. Otherwise
        # the dimension stays open, so that one trace serves the last, smaller batch too.
        self.trace_spec = self.batch_spec if len(set(sizes.tolist())) != 1 else tf.nest.map_structure(
            lambda s: tf.TensorSpec([int(sizes[0])] + list(s.shape[1:]), s.dtype), self.batch_spec)
        if self.num_examples == 0:
            raise ValueError("The data is empty: need at least one example.")
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            raise ValueError(
                f"The loss is not finite (value {losses[bad[0]]}) on batch {int(bad[0])} "
                f"(0-based; {bad.size} of {self.num_batches} batches affected). Check the data for "
                "NaN/inf values and the model for diverged weights."
            )
        return float(np.sum(losses * sizes) / self.num_examples)

    def gradient(self) -> tf.Tensor:
        """The gradient of the mean loss at the current weights, as a flat vector."""
        if self._graph_gradient is None or self._graph_gradient_spec != self.trace_spec:
            parts_spec = [tf.TensorSpec(shape, self.dtype) for shape in self.layout.shapes]
            self._graph_gradient_spec = self.trace_spec
            self._graph_gradient = tf.function(
                self._accumulate_gradient,
                input_signature=[self._graph_gradient_spec, parts_spec, tf.TensorSpec([], self.dtype)])
        accumulated = [tf.zeros(shape, self.dtype) for shape in self.layout.shapes]
        for batch, weight in self.batch_weights():
            accumulated = self._graph_gradient(batch, accumulated, weight)
        return self.layout.flatten(accumulated)

    def _accumulate_gradient(self, batch, accumulated, weight):
        with tf.GradientTape() as tape:
            loss = self.batch_loss(batch)
        grads = tape.gradient(loss, self.variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return [a + weight * tf.cast(g, self.dtype) for a, g in zip(accumulated, grads)]


def _resolve_loss(model: keras.Model, loss) -> Callable:
    """Returns ``f(x, y, y_pred, sample_weight, training) -> scalar`` including regularization losses."""
    if loss is None:
        if getattr(model, "_compile_loss", None) is None and getattr(model, "loss", None) is None:
            raise ValueError(
                "The model has no loss: compile it with model.compile(loss=...) or pass loss= "
                "(e.g. keras.losses.SparseCategoricalCrossentropy(from_logits=True))."
            )

        def compiled(x, y, y_pred, sample_weight, training):
            return model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)

        return compiled

    loss_object = keras.losses.get(loss) if isinstance(loss, (str, dict)) else loss
    if not callable(loss_object):
        raise ValueError(f"loss must be a Keras loss, its name, or a callable loss(y_true, y_pred); got {loss!r}.")

    def explicit(x, y, y_pred, sample_weight, training):
        if sample_weight is not None and isinstance(loss_object, keras.losses.Loss):
            value = loss_object(y, y_pred, sample_weight=sample_weight)
        else:
            value = loss_object(y, y_pred)
            if sample_weight is not None:
                value = value * tf.cast(sample_weight, value.dtype)
        value = tf.reduce_mean(value)  # a per-example callable becomes the batch mean
        regularization = model.losses
        if regularization:
            value = value + tf.cast(tf.add_n(regularization), value.dtype)
        return value

    return explicit


def _relax_batch_dim(spec):
    """The same ``TensorSpec`` with an unknown leading (batch) dimension."""
    return tf.nest.map_structure(lambda s: tf.TensorSpec([None] + list(s.shape[1:]), s.dtype), spec)
