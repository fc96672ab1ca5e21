"""Hessian of a Keras model's training loss, as a matrix-free operator."""

from __future__ import annotations

import tensorflow as tf

from tf_sharpest.operators._autodiff import gradients
from tf_sharpest.operators._curvature import CurvatureOperator


class HessianOperator(CurvatureOperator):
    """The Hessian of the mean training loss over ``data`` w.r.t. the model's trainable variables.

    Products ``H @ v`` are computed forward-over-reverse (the gradient's
    directional derivative along ``v``: a ``tf.autodiff.ForwardAccumulator``
    around a ``tf.GradientTape``, in a ``tf.function``), which peaks at about
    twice a gradient's memory against three times for double backprop, batch by batch
    and weighted by each batch's number of examples, so the result is exact for
    the mean loss over all examples, however the last batch is cut. The loss
    includes the model's regularization losses (``model.losses``), as a training
    step does. With ``variables=`` it is the matching diagonal block of the
    Hessian (a per-layer Hessian).

    The per-batch product is one ``tf.function``, traced once per operator
    (the last, smaller batch reuses the trace; when all batches have one size,
    the trace is for that size, which runs faster).

    ``matmat`` on a ``[dim, k]`` block shares the forward pass and the first
    backward pass of each batch among the ``k`` vectors: ``H v_j`` is the
    vector-Jacobian product of the gradient with ``v_j``, so each column
    costs one more backward pass through the recorded graph (a ``tf.map_fn``
    over the columns, one trace for every ``k``). ``num_matvecs`` still
    counts ``k`` products.

    Example:

    ```python
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    hessian = HessianOperator(model, (x_sample, y_sample), batch_size=256)
    hv = hessian.matvec(v)                 # flat vector of length hessian.dim
    parts = hessian.matvec_structured(vs)  # per-variable tensors
    print(hessian.loss, hessian.num_matvecs)
    dense_block = HessianOperator(model, (x_sample, y_sample), variables=model.layers[-1])
    ```

    Args are those of :class:`~tf_sharpest.operators.CurvatureOperator`:
    ``model``, ``data``, and keyword-only ``loss``, ``batch_size``,
    ``training`` and ``variables``.

    Raises:
      ValueError: for empty, infinite or malformed data, a model without a
        loss, a variable not in the model, or a non-finite loss (naming the batch).
    """

    def _batch_product(self, batch, vectors):
        # Forward-over-reverse: H v is the directional derivative of the gradient along v, carried
        # forward through the one backward pass (a ForwardAccumulator around the gradient tape).
        # Reverse-over-reverse (a tape around the tape) keeps the whole first backward pass alive
        # for the second: on SimpleCNN-medium at batch 256 it peaked at 2.9x a gradient's memory,
        # this at about 2x, in the same time (benchmarks/memory_cost.py, RESULTS.md).
        primals = [getattr(v, "value", v) for v in self.variables]  # the tf.Variables behind Keras variables
        tangents = [tf.cast(t, p.dtype) for t, p in zip(vectors, primals)]
        with tf.autodiff.ForwardAccumulator(primals, tangents) as forward:
            with tf.GradientTape() as tape:
                loss = self.objective.batch_loss(batch)
            grads = gradients(tape, loss, self.variables)
        return forward.jvp(grads, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def _batch_block_product(self, batch, rows):
        with tf.GradientTape(persistent=True) as outer:
            with tf.GradientTape() as inner:
                loss = self.objective.batch_loss(batch)
            grads = gradients(inner, loss, self.variables)

        def column(vector):
            # H v = d(g . v)/dθ = (dg/dθ)^T v: the gradient's VJP with v, through the graph recorded once.
            parts = self.layout.unflatten(vector)
            return self.layout.flatten(gradients(outer, grads, self.variables, output_gradients=parts))

        return tf.map_fn(column, rows, parallel_iterations=self.block_parallel_iterations)
