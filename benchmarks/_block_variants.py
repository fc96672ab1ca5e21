"""Candidate block products measured beside the operators' ``matmat`` in memory_cost.py and hvp_cost.py (issue 25).

All compute the same ``A V``; only how many columns run at once through a batch's recorded passes, or whether
the columns share them at all, differ. The operators run one column at a time
(``CurvatureOperator.block_parallel_iterations = 1``); these are what they were measured against.
"""

from __future__ import annotations

from tf_sharpest.operators import GGNOperator, HessianOperator


class BlockHessianInFlight(HessianOperator):
    """The Hessian's block product with 10 columns in flight (``tf.map_fn``'s ``parallel_iterations``), as
    before issue 25."""

    block_parallel_iterations = 10


class ColumnByColumnHessian(HessianOperator):
    """No block product: ``matmat`` is K forward-over-reverse matvecs, sharing nothing."""

    _batch_block_product = None


class BlockGGNInFlight(GGNOperator):
    """The GGN's block product with 10 columns in flight, as before issue 25."""

    block_parallel_iterations = 10
