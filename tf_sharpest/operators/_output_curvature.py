"""Curvature of the form ``J^T M J``: the model's Jacobian around an output-space matrix.

The generalized Gauss-Newton (``M`` = the loss's Hessian in ``y_pred``) and
the empirical Fisher (``M`` = per-example ``r r^T``, ``r`` the loss's
gradient in ``y_pred``) share everything but ``M``. Their per-batch product
is matrix-free, without ever forming ``J``:

1. one forward pass, recorded, giving ``y_pred``;
2. the Jacobian-vector product ``J v``: the backward pass ``J^T s`` is
   recorded for a symbolic output seed ``s``; since it is linear in ``s``,
   its gradient with respect to ``s`` along ``v`` is ``J v`` (a pass as cheap
   as the forward pass, over the activations the backward pass keeps anyway);
3. the output-space product ``u = M (J v)`` (small: batch x outputs);
4. one backward pass: the vector-Jacobian product ``J^T u``.

A ``tf.autodiff.ForwardAccumulator`` gives the same ``J v`` in the forward
pass, but its JVP rules hold more memory: the GGN then peaked at 2.7x a
gradient's memory on SimpleCNN-medium at batch 256, this at 2.0x-2.3x.

The model's regularization losses are added with their exact Hessian
(double backprop of ``R`` alone), in the same backward pass.

The block product ``matmat`` shares the forward pass and the recorded
backward pass of each batch among a block's ``k`` columns: each column
costs two backward-like passes (``J v`` and ``J^T u``), and no forward pass.
"""

from __future__ import annotations

import abc

import tensorflow as tf

from tf_sharpest.operators._autodiff import gradients
from tf_sharpest.operators._curvature import CurvatureOperator
from tf_sharpest.operators._model_loss import unpack

ZERO = tf.UnconnectedGradients.ZERO


class OutputCurvatureOperator(CurvatureOperator):
    """Base of ``(1/N) sum_i J_i^T M_i J_i`` operators (plus the regularizer's Hessian).

    Subclasses implement ``_output_product(x, y, sample_weight, y_pred, tangent)``
    returning ``M (J v)`` with the structure of ``y_pred``.
    """

    def _batch_product(self, batch, vectors):
        return self._recorded_batch(batch)(list(vectors))

    def _batch_block_product(self, batch, rows):
        column = self._recorded_batch(batch)
        return tf.map_fn(lambda vector: self.layout.flatten(column(self.layout.unflatten(vector))), rows,
                         parallel_iterations=self.block_parallel_iterations)

    def _recorded_batch(self, batch):
        """One batch's forward pass, recorded once; returns ``column(parts) -> (J^T M J + H_R) v`` per variable.

        ``J v`` is taken through the recorded backward pass (the derivative of
        ``J^T s`` in its seed ``s``), not with a ``tf.autodiff.ForwardAccumulator``:
        the forward-mode pass alone peaked at 1.7x a gradient's memory on
        SimpleCNN-medium at batch 64, which put the GGN at 2.1x there (2.7x at
        batch 256); through the backward pass it peaked at 1.3x-1.45x (2.0x-2.3x
        at batch 256), and ran faster (``benchmarks/memory_cost.py``, RESULTS.md).
        """
        x, y, sample_weight = unpack(batch)
        with tf.GradientTape(persistent=True) as backward:
            with tf.GradientTape() as regularization_tape:
                y_pred, regularization = self.model_loss.forward(x)
            targets = tf.nest.flatten(y_pred)
            if regularization is not None:
                targets = targets + gradients(regularization_tape, regularization, self.variables)
        outputs = tf.nest.flatten(y_pred)
        # J^T s for a symbolic seed s (zeros: only its derivative in s is used), recorded once for the batch.
        seeds = [tf.zeros_like(output) for output in outputs]
        with tf.GradientTape(persistent=True) as transpose:
            transpose.watch(seeds)
            pulled_back = gradients(backward, outputs, self.variables, output_gradients=seeds)
        fixed = tf.nest.map_structure(tf.stop_gradient, y_pred)

        def column(parts):
            # d(J^T s . v)/ds = J v: the tangent of the outputs, without a forward-mode pass.
            tangent = transpose.gradient(pulled_back, seeds, output_gradients=parts, unconnected_gradients=ZERO)
            product = self._output_product(x, y, sample_weight, fixed, tf.nest.pack_sequence_as(y_pred, tangent))
            output_seeds = [tf.stop_gradient(p) for p in tf.nest.flatten(product)]
            if regularization is not None:
                output_seeds = output_seeds + list(parts)  # grad(R)'s VJP with v: the regularizer's Hessian product
            return gradients(backward, targets, self.variables, output_gradients=output_seeds)

        return column

    @abc.abstractmethod
    def _output_product(self, x, y, sample_weight, y_pred, tangent):
        """``M @ tangent`` in output space, for one batch (same structure as ``y_pred``)."""
