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
"""

from __future__ import annotations

import abc

import tensorflow as tf

from tf_sharpest.operators.curvature import CurvatureOperator, dot, gradients
from tf_sharpest.operators.model_loss import unpack

ZERO = tf.UnconnectedGradients.ZERO


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

    @abc.abstractmethod
    def _output_product(self, x, y, sample_weight, y_pred, tangent):
        """``M @ tangent`` in output space, for one batch (same structure as ``y_pred``)."""
