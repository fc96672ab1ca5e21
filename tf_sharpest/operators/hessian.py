"""Hessian of a Keras model's training loss, as a matrix-free operator."""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_sharpest.operators.base import LinearOperator
from tf_sharpest.operators.empirical_loss import EmpiricalLoss


class HessianOperator(LinearOperator):
    """The Hessian of the mean training loss over ``data`` w.r.t. ``model.trainable_variables``.

    Products ``H @ v`` are computed by double backpropagation (a
    ``tf.GradientTape`` inside another, in a ``tf.function``) batch by batch
    and weighted by each batch's number of examples, so the result is exact for
    the mean loss over all examples, however the last batch is cut. The loss
    includes the model's regularization losses (``model.losses``), as a training
    step does.

    The per-batch product is one ``tf.function``, traced once per operator
    (the last, smaller batch reuses the trace; when all batches have one size,
    the trace is for that size, which runs faster).

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
        self.objective = EmpiricalLoss(model, data, loss=loss, batch_size=batch_size, training=training)
        super().__init__(self.objective.layout.dim, self.objective.dtype)
        self.model = model
        self.layout = self.objective.layout
        self.variables = self.objective.variables
        self.num_traces = 0
        self._accumulate_fn, self._traced_spec = None, None

    def set_data(self, data) -> None:
        """The Hessian over a new sample of the same structure, without tracing again.

        See :meth:`EmpiricalLoss.set_data`; ``num_matvecs`` keeps counting. New
        data cut into batches of other sizes than before costs one new trace.
        """
        self.objective.set_data(data)

    @property
    def loss(self) -> float:
        """Mean loss over the data at the weights the operator was built at."""
        return self.objective.value

    @property
    def num_examples(self) -> int:
        return self.objective.num_examples

    @property
    def num_batches(self) -> int:
        return self.objective.num_batches

    def _batch_hvp(self, batch, vectors):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                loss = self.objective.batch_loss(batch)
            grads = inner.gradient(loss, self.variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            grad_dot_v = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vectors)])
        return outer.gradient(grad_dot_v, self.variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def _accumulate_batch(self, batch, vector, accumulated, weight):
        self.num_traces += 1  # runs only while tracing: tests use it to catch retracing
        products = self._batch_hvp(batch, self.layout.unflatten(vector))
        return accumulated + weight * tf.cast(self.layout.flatten(products), self.dtype)

    def _accumulate_function(self):
        """The traced per-batch product; traced again only if new data changed the batch signature."""
        if self._accumulate_fn is None or self._traced_spec != self.objective.trace_spec:
            # One graph per batch, called from a Python loop: a loop over the dataset
            # inside the graph ran the double backprop about 2.5x slower on CPU. The
            # graph takes and returns flat vectors: splitting and concatenating them
            # eagerly, and passing one tensor per variable, cost ~10% of a small HVP.
            self._traced_spec = self.objective.trace_spec
            flat_spec = tf.TensorSpec([self.dim], self.dtype)
            self._accumulate_fn = tf.function(
                self._accumulate_batch,
                input_signature=[self._traced_spec, flat_spec, flat_spec, tf.TensorSpec([], self.dtype)])
        return self._accumulate_fn

    def _matvec(self, vector):
        accumulate = self._accumulate_function()
        accumulated = tf.zeros([self.dim], self.dtype)
        for batch, weight in self.objective.batch_weights():
            accumulated = accumulate(batch, vector, accumulated, weight)
        return accumulated

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
        result = self._matvec(self.layout.flatten(converted))
        self.num_matvecs += 1
        return self.layout.unflatten(result)
