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
        self.objective = EmpiricalLoss(model, data, loss=loss, batch_size=batch_size, training=training)
        super().__init__(self.objective.layout.dim, self.objective.dtype)
        self.model = model
        self.layout = self.objective.layout
        self.variables = self.objective.variables
        self.num_traces = 0
        # One graph per batch, called from a Python loop: a loop over the dataset
        # inside the graph ran the double backprop about 2.5x slower on CPU.
        parts_spec = [tf.TensorSpec(shape, self.dtype) for shape in self.layout.shapes]
        self._accumulate_fn = tf.function(
            self._accumulate_batch,
            input_signature=[self.objective.batch_spec, parts_spec, parts_spec, tf.TensorSpec([], self.dtype)])

    def set_data(self, data) -> None:
        """The Hessian over a new sample of the same structure, without tracing again.

        See :meth:`EmpiricalLoss.set_data`; ``num_matvecs`` keeps counting.
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

    def _accumulate_batch(self, batch, vectors, accumulated, weight):
        self.num_traces += 1  # runs only while tracing: tests use it to catch retracing
        products = self._batch_hvp(batch, vectors)
        return [a + weight * tf.cast(p, self.dtype) for a, p in zip(accumulated, products)]

    def _hvp_all_batches(self, vectors):
        accumulated = [tf.zeros(shape, self.dtype) for shape in self.layout.shapes]
        for batch, weight in self.objective.batch_weights():
            accumulated = self._accumulate_fn(batch, vectors, accumulated, weight)
        return accumulated

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
