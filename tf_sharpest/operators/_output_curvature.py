"""Curvature of the form ``J^T M J``: the model's Jacobian around an output-space matrix.

The generalized Gauss-Newton (``M`` = the loss's Hessian in ``y_pred``) and
the empirical Fisher (``M`` = per-example ``r r^T``, ``r`` the loss's
gradient in ``y_pred``) share everything but ``M``. Their per-batch product
is matrix-free, without ever forming ``J``:

1. one forward pass with a ``tf.autodiff.ForwardAccumulator``: ``y_pred`` and
   the Jacobian-vector product ``J v``;
2. the output-space product ``u = M (J v)`` (small: batch x outputs);
3. one backward pass: the vector-Jacobian product ``J^T u``.

The model's regularization losses are added with their exact Hessian
(double backprop of ``R`` alone), in the same backward pass.

The block product ``matmat`` shares the forward pass and one backward pass
of each batch among a block's ``k`` columns: the backward pass ``J^T s`` is
recorded once for a symbolic output seed ``s``; since it is linear in ``s``,
its gradient with respect to ``s`` along ``v`` is ``J v``. Each column then
costs two backward passes (``J v`` through the recorded backward pass, and
``J^T u``), and no forward pass.
"""

from __future__ import annotations

import abc

import tensorflow as tf

from tf_sharpest.operators._autodiff import dot, gradients
from tf_sharpest.operators._curvature import CurvatureOperator
from tf_sharpest.operators._model_loss import unpack

ZERO = tf.UnconnectedGradients.ZERO

#: Columns of a block product in flight at once (``tf.map_fn``'s ``parallel_iterations``).
BLOCK_PARALLEL_ITERATIONS = 10


class OutputCurvatureOperator(CurvatureOperator):
    """Base of ``(1/N) sum_i J_i^T M_i J_i`` operators (plus the regularizer's Hessian).

    Subclasses implement ``_output_product(x, y, sample_weight, y_pred, tangent)``
    returning ``M (J v)`` with the structure of ``y_pred``.
    """

    def _batch_product(self, batch, vectors):
        x, y, sample_weight = unpack(batch)
        primals = [getattr(v, "value", v) for v in self.variables]  # the tf.Variables behind Keras variables
        with tf.GradientTape() as backward:
            with tf.GradientTape() as regularization_tape:
                with tf.autodiff.ForwardAccumulator(primals, vectors) as forward:
                    y_pred, regularization = self.model_loss.forward(x)
                tangent = forward.jvp(y_pred, unconnected_gradients=ZERO)
            targets = tf.nest.flatten(y_pred)
            if regularization is not None:
                # grad(R) . v, differentiated again below: the regularizer's exact Hessian product.
                regularization_grads = gradients(regularization_tape, regularization, self.variables)
                targets.append(dot(regularization_grads, vectors))
        fixed = tf.nest.map_structure(tf.stop_gradient, y_pred)
        output_product = tf.nest.map_structure(
            tf.stop_gradient, self._output_product(x, y, sample_weight, fixed, tangent))
        seeds = tf.nest.flatten(output_product)
        if regularization is not None:
            seeds.append(tf.ones([], targets[-1].dtype))
        return gradients(backward, targets, self.variables, output_gradients=seeds)

    def _batch_block_product(self, batch, rows):
        x, y, sample_weight = unpack(batch)
        with tf.GradientTape(persistent=True) as backward:
            with tf.GradientTape() as regularization_tape:
                y_pred, regularization = self.model_loss.forward(x)
            targets = tf.nest.flatten(y_pred)
            if regularization is not None:
                targets = targets + gradients(regularization_tape, regularization, self.variables)
        outputs = tf.nest.flatten(y_pred)
        # J^T s for a symbolic seed s (zeros: only its derivative in s is used), recorded once for the block.
        seeds = [tf.zeros_like(output) for output in outputs]
        with tf.GradientTape(persistent=True) as transpose:
            transpose.watch(seeds)
            pulled_back = gradients(backward, outputs, self.variables, output_gradients=seeds)
        fixed = tf.nest.map_structure(tf.stop_gradient, y_pred)

        def column(vector):
            parts = self.layout.unflatten(vector)
            # d(J^T s . v)/ds = J v: the tangent of the outputs, without a forward pass.
            tangent = transpose.gradient(pulled_back, seeds, output_gradients=parts, unconnected_gradients=ZERO)
            product = self._output_product(x, y, sample_weight, fixed, tf.nest.pack_sequence_as(y_pred, tangent))
            output_seeds = [tf.stop_gradient(p) for p in tf.nest.flatten(product)]
            if regularization is not None:
                output_seeds = output_seeds + parts  # grad(R)'s VJP with v: the regularizer's Hessian product
            return self.layout.flatten(gradients(backward, targets, self.variables, output_gradients=output_seeds))

        return tf.map_fn(column, rows, parallel_iterations=BLOCK_PARALLEL_ITERATIONS)

    @abc.abstractmethod
    def _output_product(self, x, y, sample_weight, y_pred, tangent):
        """``M @ tangent`` in output space, for one batch (same structure as ``y_pred``)."""
