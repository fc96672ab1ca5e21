"""The eigensolvers' progress bar (``verbose=1``): products spent and the current residual, no guessed ETA."""

from __future__ import annotations

# Shown as they are at each update, not averaged over the solve: the residual
# falls by orders of magnitude, so its running mean says nothing about where
# the solve stands, and tol and the budget do not change.
STATEFUL = ("worst_residual", "tol", "max_matvecs")


class SolverProgress:
    """A ``keras.utils.Progbar`` of matvecs with no target.

    A solve stops when its residuals reach ``tol``, usually long before the
    budget ``max_matvecs``, so the budget is not the bar's total (that would
    promise an ETA for products that never run). The bar counts the products
    spent; ``worst_residual`` is the current ``max_i ||A v_i - lambda_i v_i|| /
    |lambda_max|`` of the wanted pairs, to be compared with ``tol``, and
    ``max_matvecs`` shows the budget as such.
    """

    def __init__(self, max_matvecs: int, tol: float):
        import keras  # Keras is needed only for the progress bar

        self.max_matvecs, self.tol = int(max_matvecs), float(tol)
        self.bar = keras.utils.Progbar(None, unit_name="matvec", stateful_metrics=list(STATEFUL))

    def update(self, spent: int, worst_residual: float, *, finalize: bool = False) -> None:
        values = [("worst_residual", float(worst_residual)), ("tol", self.tol), ("max_matvecs", self.max_matvecs)]
        self.bar.update(int(spent), values, finalize=finalize)


def progress(verbose: int, max_matvecs: int, tol: float) -> SolverProgress | None:
    """A :class:`SolverProgress` when ``verbose`` asks for one, else None."""
    return SolverProgress(max_matvecs, tol) if verbose else None
