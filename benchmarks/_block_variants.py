"""Candidate Hessian block products measured beside ``HessianOperator.matmat`` in memory_cost.py and hvp_cost.py.

All compute the same ``H V`` (issue 25); only how many columns run at once through the recorded first backward
pass, or whether the columns share it at all, differ.
"""

from __future__ import annotations

from tf_sharpest.operators import HessianOperator


class BlockHessianInFlight(HessianOperator):
    """The block product with 10 columns in flight (``tf.map_fn``'s ``parallel_iterations``)."""

    block_parallel_iterations = 10


class SerialBlockHessian(HessianOperator):
    """The block product one column at a time through the recorded first backward pass."""

    block_parallel_iterations = 1


class ColumnByColumnHessian(HessianOperator):
    """No block product: ``matmat`` is K forward-over-reverse matvecs, sharing nothing."""

    _batch_block_product = None
