"""How a measurement finds the top eigenpairs: small frozen solver configurations with one ``solve`` method.

A callback (or any code measuring along training) takes a solver object
instead of a handful of loose options: :class:`LanczosSolver` (the paper's
protocol) or :class:`LOBPCGSolver` (the warm-started block method, redone by
Lanczos when its residuals miss ``tol``). Both are immutable, comparable and
serializable with ``get_config``/``from_config``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tf_sharpest.linalg.lanczos import lanczos
from tf_sharpest.linalg.lobpcg import lobpcg
from tf_sharpest.linalg.result import EigenResult
from tf_sharpest.utils.checks import positive_float, positive_int

__all__ = ["LanczosSolver", "LOBPCGSolver", "SolverResult"]


@dataclasses.dataclass
class SolverResult(EigenResult):
    """An :class:`~tf_sharpest.linalg.EigenResult` with how often the solver fell back to Lanczos (0 or 1)."""

    fallbacks: int = 0


def _check(tol, max_matvecs):
    return positive_float("tol", tol), positive_int("max_matvecs", max_matvecs, allow_none=True)


def relative_residual(result: EigenResult) -> float:
    """The largest ``||A v - lambda v||`` relative to the largest ``|lambda|``: what ``tol`` bounds."""
    scale = max(float(np.max(np.abs(result.eigenvalues))), np.finfo(float).tiny) if len(result.eigenvalues) else 1.0
    return float(np.max(result.residual_norms)) / scale if len(result.residual_norms) else 0.0


@dataclasses.dataclass(frozen=True)
class _Solver:
    """The options every solver takes; a subclass adds ``solve``."""

    tol: float = 1e-3
    max_matvecs: int | None = None
    warm_start: bool = True

    def __post_init__(self):
        tol, budget = _check(self.tol, self.max_matvecs)
        object.__setattr__(self, "tol", tol)
        object.__setattr__(self, "max_matvecs", budget)
        object.__setattr__(self, "warm_start", bool(self.warm_start))

    def get_config(self) -> dict:
        """The constructor arguments (``type(solver)(**solver.get_config())`` is an equal solver)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)


@dataclasses.dataclass(frozen=True)
class LanczosSolver(_Solver):
    """Thick-restart Lanczos (:func:`tf_sharpest.linalg.lanczos`), warm-started from the previous eigenvectors.

    Example:

    ```python
    solver = LanczosSolver(tol=1e-4, max_matvecs=100)
    result = solver.solve(hessian, 5)
    later = solver.solve(hessian, 5, initial_vectors=result.eigenvectors)
    LanczosCallback(data, solver=solver)
    ```

    Args:
      tol: a pair has converged when ``||A v - lambda v|| <= tol * |lambda_max|``.
      max_matvecs: most operator products per solve (None: ``max(300, 20 k)``).
      warm_start: whether a caller that tracks the eigenpairs along training
        should pass the previous eigenvectors as ``initial_vectors``.
    """

    def solve(self, operator, k: int, *, initial_vectors=None, seed: int | None = None,
              verbose: int = 0) -> SolverResult:
        """The top ``k`` eigenpairs of ``operator`` (a new :class:`SolverResult`)."""
        result = lanczos(operator, k=k, tol=self.tol, seed=seed, initial_vectors=initial_vectors, verbose=verbose,
                         max_matvecs=self.max_matvecs)
        return SolverResult(**{f.name: getattr(result, f.name) for f in dataclasses.fields(EigenResult)})


@dataclasses.dataclass(frozen=True)
class LOBPCGSolver(_Solver):
    """The warm-started block solver (:func:`tf_sharpest.linalg.lobpcg`), checked against ``tol``.

    A solve whose residuals miss ``tol`` (relative to the largest eigenvalue) is
    redone by Lanczos from the block's vectors, so no accuracy is lost
    silently; the result's ``fallbacks`` is then 1 and its ``num_matvecs``
    counts both solves.

    Example:

    ```python
    solver = LOBPCGSolver(tol=1e-3)
    result = solver.solve(hessian, 5, initial_vectors=previous.eigenvectors)
    result.fallbacks            # 1 if Lanczos had to finish the job
    ```

    Args:
      tol, max_matvecs, warm_start: as for :class:`LanczosSolver` (``max_matvecs`` bounds each of the two solves).
    """

    def solve(self, operator, k: int, *, initial_vectors=None, seed: int | None = None,
              verbose: int = 0) -> SolverResult:
        """The top ``k`` eigenpairs of ``operator``; a block solve that misses ``tol`` is redone by Lanczos."""
        block = lobpcg(operator, k, tol=self.tol, seed=seed, initial_vectors=initial_vectors, verbose=verbose,
                       max_matvecs=self.max_matvecs)
        if block.converged and relative_residual(block) <= self.tol:
            return SolverResult(**{f.name: getattr(block, f.name) for f in dataclasses.fields(EigenResult)})
        finish = LanczosSolver(self.tol, self.max_matvecs).solve(operator, k, initial_vectors=block.eigenvectors,
                                                                  seed=seed, verbose=verbose)
        return dataclasses.replace(finish, num_matvecs=finish.num_matvecs + block.num_matvecs, fallbacks=1)
