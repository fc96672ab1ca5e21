"""Candidate Hessian block products measured beside ``HessianOperator.matmat`` in memory_cost.py (issue 25).

Each is ``HessianOperator`` with its per-batch block product (the documented extension point) changed; all
compute the same ``H V``, only how many columns are in flight, and what is kept for them, differ.
"""

from __future__ import annotations

import tensorflow as tf

from tf_sharpest.operators import HessianOperator
from tf_sharpest.operators._autodiff import gradients


def _recorded_gradient_columns(operator, batch, parallel_iterations):
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            loss = operator.objective.batch_loss(batch)
        grads = gradients(inner, loss, operator.variables)

    def column(vector):
        parts = operator.layout.unflatten(vector)
        return operator.layout.flatten(gradients(outer, grads, operator.variables, output_gradients=parts))

    return column, parallel_iterations


class BlockHessianInFlight(HessianOperator):
    """The block product with ``parallel_iterations`` columns in flight (the operator's constant by default)."""

    parallel_iterations = 10

    def _batch_block_product(self, batch, rows):
        column, parallel = _recorded_gradient_columns(self, batch, self.parallel_iterations)
        return tf.map_fn(column, rows, parallel_iterations=parallel)


class SerialBlockHessian(BlockHessianInFlight):
    """One column at a time through the recorded first backward pass (``parallel_iterations=1``)."""

    parallel_iterations = 1


class ColumnByColumnHessian(HessianOperator):
    """No block product: ``matmat`` is K forward-over-reverse matvecs, sharing nothing."""

    _batch_block_product = None
