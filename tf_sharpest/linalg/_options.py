"""The solvers' shared argument checks, in one place (built on ``tf_sharpest.utils._checks``).

Every public function of :mod:`tf_sharpest.linalg` (and
:func:`tf_sharpest.hessian.top_eigenpairs`) validates its arguments through
these functions, so one argument is checked the same way, with the same
message, wherever it is accepted. Each returns the normalized value.
"""

from __future__ import annotations

import numpy as np

from tf_sharpest.utils._checks import choice, integer, is_integer, positive_float, positive_int

WHICH_CHOICES = ("largest", "smallest")
TRACE_METHODS = ("hutch++", "hutchinson", "xtrace", "exact")
DIAGONAL_METHODS = ("hutchinson", "exact")
# Fewest matvecs each estimator can work with: Hutch++ needs a sketch vector,
# its product with A and one test vector; XTrace needs two probes (each one is
# tested against the sketch of the other) and their two products each.
MIN_MATVECS = {"hutchinson": 1, "hutch++": 3, "xtrace": 4}


def default_max_matvecs(k: int) -> int:
    """The eigensolvers' default matvec budget for ``k`` pairs."""
    return max(300, 20 * k)


def eigen_count(k, dim: int) -> int:
    """The number ``k`` of eigenpairs, ``1 <= k <= dim``."""
    return integer("k", k, low=1, high=dim, bounds=f"with 1 <= k <= dim={dim}")


def which(value) -> str:
    """``"largest"`` or ``"smallest"``."""
    return choice("which", value, WHICH_CHOICES)


def tolerance(tol) -> float:
    """A convergence tolerance: a positive finite number."""
    return positive_float("tol", tol)


def initial_vectors(vectors, dim: int) -> np.ndarray | None:
    """Warm-start guesses as a ``[dim, p]`` float64 array (``p >= 1``), or None for none."""
    if vectors is None:
        return None
    guesses = np.asarray(vectors, dtype=np.float64)
    if guesses.ndim == 1:
        guesses = guesses[:, None]
    if guesses.ndim != 2 or guesses.shape[0] != dim or guesses.shape[1] == 0:
        raise ValueError(
            f"initial_vectors must have shape [dim={dim}] or [dim={dim}, p] with p >= 1; got {guesses.shape}.")
    if not np.all(np.isfinite(guesses)):
        raise ValueError("initial_vectors contain NaN or inf values.")
    return guesses


def matvec_budget(max_matvecs, *, k: int | None = None, least: int = 1, needs: str = "") -> int | None:
    """``max_matvecs``: a positive integer of at least ``least``; ``None`` becomes the default for ``k``.

    Args:
      max_matvecs: what the caller passed.
      k: number of eigenpairs, for the default; ``None`` leaves ``None`` as it is
        (a caller that passes the budget on to a solver).
      least: the fewest products the solver can work with.
      needs: what those ``least`` products are for, for the message.
    """
    if max_matvecs is None:
        return None if k is None else default_max_matvecs(k)
    if least <= 1:
        return positive_int("max_matvecs", max_matvecs)
    return integer("max_matvecs", max_matvecs, low=least,
                   hint=f"{least} matvecs are needed {needs}; raise max_matvecs." if needs else "")


def probe_budget(num_matvecs, method: str, dim: int, *, computes: str = "trace") -> int:
    """``num_matvecs`` of a stochastic trace or diagonal estimator: enough for ``method`` and fewer than ``dim``.

    ``dim`` unit vectors give the exact ``computes`` (``method="exact"``), so
    a larger budget can never help, and refusing it keeps a mistyped budget
    (``10**12``) from running without bound.
    """
    least = MIN_MATVECS[method]
    if not is_integer(num_matvecs) or num_matvecs < least:
        raise ValueError(f"method={method!r} needs num_matvecs >= {least} (an integer), got {num_matvecs!r}.")
    if num_matvecs >= dim:
        raise ValueError(
            f"method={method!r} needs num_matvecs < dim={dim}, got {num_matvecs}; with that many products, "
            f"method='exact' gives the exact {computes} (dim matvecs): pass method='exact'.")
    return int(num_matvecs)
