"""The Hessian product by double backprop (a tape around the gradient tape): what ``HessianOperator`` ran
before it went forward-over-reverse, kept for the side-by-side comparisons in hvp_cost.py and memory_cost.py."""

from __future__ import annotations

import tensorflow as tf

from tf_sharpest.operators import HessianOperator


class ReverseOverReverseHessian(HessianOperator):
    """``HessianOperator`` with its per-batch product (the documented extension point) by double backprop."""

    def _batch_product(self, batch, vectors):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                value = self.objective.batch_loss(batch)
            grads = inner.gradient(value, self.variables)
            grad_dot_v = tf.add_n([tf.reduce_sum(g * tf.cast(v, g.dtype))
                                   for g, v in zip(grads, vectors) if g is not None])
        return outer.gradient(grad_dot_v, self.variables)  # None (no curvature) for unconnected variables
