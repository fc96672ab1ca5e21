"""Hessian of a Keras model's training loss, as a matrix-free operator."""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from tf_sharpest.operators.base import LinearOperator
from tf_sharpest.utils.batches import as_batched_dataset, count_examples
from tf_sharpest.utils.flat import FlatLayout


class HessianOperator(LinearOperator):
    """The Hessian of the mean training loss over ``data`` w.r.t. ``model.trainable_variables``.

    Products ``H @ v`` are computed by double backpropagation (a
    ``tf.GradientTape`` inside another, in one ``tf.function``) batch by batch
    and weighted by each batch's number of examples, so the result is exact for
    the mean loss over all examples, however the last batch is cut. The loss
    includes the model's regularization losses (``model.losses``), as a training
    step does.

    The per-batch product is one ``tf.function``, traced once per operator
    (the last, smaller batch reuses the trace).

    Example:

    ```python
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    hessian = HessianOperator(model, (x_sample, y_sample), batch_size=256)
    hv = hessian.matvec(v)                 # flat vector of length hessian.dim
    parts = hessian.matvec_structured(vs)  # per-variable tensors
    print(hessian.loss, hessian.num_matvecs)
    ```

    Args:
      model: a built Keras model.
      data: ``(x, y)`` (or ``(x, y, sample_weight)``) arrays or tensors, or a
        finite batched ``tf.data.Dataset`` of them. It must yield the same
        examples on every pass (no shuffling or random augmentation in it):
        each matvec is one pass.
      loss: ``None`` to use the model's compiled loss (``model.compute_loss``),
        or a Keras loss (name or object) or a callable ``loss(y_true, y_pred)``.
      batch_size: batch size for array ``data`` (default 128).
      training: the mode the model is called in. ``False`` (default) puts
        BatchNorm in inference mode and turns dropout off, as in the paper.

    Raises:
      ValueError: for empty, infinite or malformed data, a model without a
        loss, or a non-finite loss (naming the batch).
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
        self.layout = FlatLayout.from_variables(self.variables)
        super().__init__(self.layout.dim, dtypes.pop())
        self._loss_fn = _resolve_loss(model, loss)
        self.dataset = as_batched_dataset(data, batch_size)
        # Arrays are cut into batches once and kept; a user's dataset is read on every pass.
        self._cached_batches = None if isinstance(data, tf.data.Dataset) else list(self.dataset)
        self.num_traces = 0

        # One graph per batch, called from a Python loop: a loop over the dataset
        # inside the graph ran the double backprop about 2.5x slower on CPU.
        # The batch dimension is left open so the last, smaller batch reuses the trace.
        batch_spec = tuple(_relax_batch_dim(spec) for spec in self.dataset.element_spec)
        parts_spec = [tf.TensorSpec(shape, self.dtype) for shape in self.layout.shapes]
        scalar_spec = tf.TensorSpec([], self.dtype)
        self._accumulate_fn = tf.function(self._accumulate_batch,
                                          input_signature=[batch_spec, parts_spec, parts_spec, scalar_spec])
        loss_fn = tf.function(self._batch_loss, input_signature=[batch_spec])

        batch_losses, batch_sizes = [], []
        for batch in self._batches():
            batch_losses.append(float(loss_fn(batch)))
            batch_sizes.append(int(count_examples(batch)))
        batch_losses, batch_sizes = np.array(batch_losses), np.array(batch_sizes)
        self.num_examples = int(batch_sizes.sum())
        self.num_batches = int(len(batch_sizes))
        if self.num_examples == 0:
            raise ValueError("The data is empty: need at least one example.")
        bad = np.flatnonzero(~np.isfinite(batch_losses))
        if bad.size:
            raise ValueError(
                f"The loss is not finite (value {batch_losses[bad[0]]}) on batch {int(bad[0])} "
                f"(0-based; {bad.size} of {self.num_batches} batches affected). Check the data for "
                "NaN/inf values and the model for diverged weights."
            )
        #: Mean loss over the data at the weights the operator was built at.
        self.loss = float(np.sum(batch_losses * batch_sizes) / self.num_examples)

    def _batches(self):
        return self._cached_batches if self._cached_batches is not None else self.dataset

    # -- the per-batch quantities -------------------------------------------------
    def _batch_loss(self, batch) -> tf.Tensor:
        x, y = batch[0], batch[1]
        sample_weight = batch[2] if len(batch) == 3 else None
        y_pred = self.model(x, training=self.training)
        return tf.cast(self._loss_fn(x, y, y_pred, sample_weight, self.training), self.dtype)

    def _batch_hvp(self, batch, vectors):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                loss = self._batch_loss(batch)
            grads = inner.gradient(loss, self.variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            grad_dot_v = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vectors)])
        return outer.gradient(grad_dot_v, self.variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def _accumulate_batch(self, batch, vectors, accumulated, weight):
        self.num_traces += 1  # runs only while tracing: tests use it to catch retracing
        products = self._batch_hvp(batch, vectors)
        return [a + weight * tf.cast(p, self.dtype) for a, p in zip(accumulated, products)]

    def _hvp_all_batches(self, vectors):
        accumulated = [tf.zeros(shape, self.dtype) for shape in self.layout.shapes]
        total = float(self.num_examples)
        for batch in self._batches():
            weight = tf.constant(float(count_examples(batch)) / total, self.dtype)
            accumulated = self._accumulate_fn(batch, vectors, accumulated, weight)
        return accumulated

    # -- public products ------------------------------------------------------------
    def _matvec(self, vector):
        return self.layout.flatten(self._hvp_all_batches(self.layout.unflatten(vector)))

    def matvec_structured(self, vectors) -> list[tf.Tensor]:
        """Returns ``H @ v`` for ``v`` given as variable-shaped tensors (one per trainable variable)."""
        vectors = list(vectors)
        if len(vectors) != len(self.layout):
            raise ValueError(f"Expected {len(self.layout)} tensors (one per trainable variable), got {len(vectors)}.")
        converted = []
        for v, shape in zip(vectors, self.layout.shapes):
            v = tf.convert_to_tensor(v, dtype=self.dtype)
            if tuple(v.shape) != shape:
                raise ValueError(f"A vector part has shape {tuple(v.shape)} where its variable has {shape}.")
            converted.append(v)
        result = self._hvp_all_batches(converted)
        self.num_matvecs += 1
        return result


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
