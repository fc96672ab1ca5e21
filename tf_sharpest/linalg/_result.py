"""The result every eigen-algorithm in tf_sharpest returns."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class EigenResult:
    """Eigenpairs of a symmetric operator.

    Attributes:
      eigenvalues: ``[k]`` float64, descending for ``which="largest"``,
        ascending for ``which="smallest"``.
      eigenvectors: ``[dim, k]`` with orthonormal columns, in the operator's
        flat layout and dtype; column ``i`` belongs to ``eigenvalues[i]``.
      residual_norms: ``[k]`` float64, ``||A v_i - lambda_i v_i||`` for each pair.
      num_matvecs: operator products spent.
      converged: whether every residual met the requested tolerance.
      num_restarts: how many times the search space was compressed.
      error_bounds: ``[k]`` float64 bounds on each eigenvalue's error as an
        eigenvalue of the operator (the solver's error, not the sample's);
        ``None`` where the algorithm gives none.
      stderr: ``[k]`` float64 standard errors of the eigenvalues due to the
        sample (:func:`tf_sharpest.linalg.sampling_stderr`); ``None`` unless asked for.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    residual_norms: np.ndarray
    num_matvecs: int
    converged: bool
    num_restarts: int = 0
    error_bounds: np.ndarray | None = None
    stderr: np.ndarray | None = None
