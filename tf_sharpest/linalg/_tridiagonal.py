"""The Lanczos recurrence shared by the eigensolver and stochastic Lanczos quadrature.

One Lanczos step multiplies the newest basis vector ``q`` by the operator and
removes from ``A q`` its components along every basis vector held so far (full
reorthogonalization). In exact arithmetic only the last two components are
non-zero (the tridiagonal ``alpha`` and ``beta``); in floating point the others
keep the basis orthogonal, so no spurious copies of converged Ritz values
appear. The coefficients are returned in float64 whatever the operator's
dtype, because the small projected matrices built from them are solved in
NumPy float64.

:func:`lanczos_step` and :func:`next_basis_vector` are the building blocks
(:func:`tf_sharpest.linalg.lanczos` adds thick restarts around them);
:func:`tridiagonalize` runs the plain recurrence from one start vector and
returns the tridiagonal matrix ``T`` (stochastic Lanczos quadrature reads its
Gauss quadrature nodes and weights).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tf_sharpest.linalg._probes import refuse_non_finite
from tf_sharpest.operators._base import LinearOperator
from tf_sharpest.utils._checks import integer

# A residual below this many machine epsilons times ||A q|| is rounding noise:
# the basis already spans an invariant subspace of the operator.
BREAKDOWN_EPS = 100.0


@dataclasses.dataclass
class LanczosStep:
    """What one Lanczos step computed for the basis vector ``q = basis[size]``.

    Attributes:
      product: ``A q``, in the operator's dtype.
      coefficients: ``[size + 1]`` float64, the projections ``basis[:size + 1] @ A q``
        (a column of the projected matrix ``Q^T A Q``); the last one is ``alpha``.
      residual: ``A q`` minus those projections, orthogonal to the basis.
      beta: ``||residual||``, the coupling of ``q`` to the next basis vector.
    """

    product: tf.Tensor
    coefficients: np.ndarray
    residual: tf.Tensor
    beta: float

    @property
    def alpha(self) -> float:
        """The Rayleigh quotient ``q^T A q``, the diagonal entry of ``T``."""
        return float(self.coefficients[-1])

    def is_breakdown(self) -> bool:
        """Whether the residual is only rounding noise (the basis spans an invariant subspace)."""
        eps = float(np.finfo(self.product.dtype.as_numpy_dtype).eps)
        return self.beta <= BREAKDOWN_EPS * eps * float(tf.norm(self.product))


def lanczos_step(operator: LinearOperator, basis: tf.Variable, size: int, vector: tf.Tensor, *,
                 first_matvec: int = 0) -> LanczosStep:
    """Stores unit ``vector`` as ``basis[size]``, multiplies it and orthogonalizes the product.

    Args:
      operator: the operator; one matvec is spent.
      basis: a ``[max_size, dim]`` variable whose first ``size`` rows are orthonormal.
      size: how many rows of ``basis`` are in use before this step.
      vector: the next unit basis vector, orthogonal to ``basis[:size]``.
      first_matvec: ``operator.num_matvecs`` when the calling algorithm began,
        so a non-finite product is reported by its position in that algorithm.

    Raises:
      ValueError: when the operator returns NaN or inf (a diverged loss or weights).
    """
    basis[size].assign(vector)
    product = refuse_non_finite(operator.matvec(vector), operator.num_matvecs - first_matvec)
    residual, coefficients = orthogonalize(basis[: size + 1], product)
    return LanczosStep(product=product, coefficients=coefficients, residual=residual,
                       beta=float(tf.norm(residual)))


def next_basis_vector(step: LanczosStep, basis: tf.Tensor, rng: np.random.Generator) -> tuple[tf.Tensor, float]:
    """The unit vector that extends ``basis`` after ``step``, and its coupling ``beta``.

    Normally the normalized residual. After a breakdown the Krylov space is
    exhausted, so the basis continues from a random direction orthogonal to it
    (drawn from ``rng``), with coupling 0: the projected matrix then splits
    into independent blocks, which is exact.

    Args:
      step: the step that produced the residual.
      basis: the basis vectors in use, ``[size, dim]`` (the step's vector included).
      rng: source of the fresh direction after a breakdown.
    """
    residual, beta = step.residual, step.beta
    if step.is_breakdown():
        random = tf.constant(rng.standard_normal(basis.shape[1]), basis.dtype)
        residual, _ = orthogonalize(basis, random)
        beta = 0.0
    return residual / tf.norm(residual), beta


def orthogonalize(basis: tf.Tensor, vector: tf.Tensor) -> tuple[tf.Tensor, np.ndarray]:
    """Removes the ``basis`` rows' components from ``vector``; returns it and those components (float64).

    Two classical Gram-Schmidt passes: one pass loses orthogonality when
    ``vector`` is nearly in the span of the basis, two are enough ("twice is
    enough", Giraud et al. 2005), and each pass is one matrix product.
    """
    first = tf.linalg.matvec(basis, vector)
    vector = vector - tf.linalg.matvec(basis, first, transpose_a=True)
    second = tf.linalg.matvec(basis, vector)
    vector = vector - tf.linalg.matvec(basis, second, transpose_a=True)
    return vector, (first + second).numpy().astype(np.float64)


@dataclasses.dataclass
class Tridiagonal:
    """The symmetric tridiagonal matrix ``T = Q^T A Q`` of a Lanczos run from one start vector.

    Attributes:
      alphas: ``[m]`` float64 diagonal.
      betas: ``[m - 1]`` float64 off-diagonal.
      start_product: ``A q_0`` for the start vector ``q_0`` (callers use it for
        checks that must not cost another matvec).
      breakdown: whether the run stopped early because the Krylov space was
        exhausted (then ``T``'s eigenvalues are exact eigenvalues of ``A``).
    """

    alphas: np.ndarray
    betas: np.ndarray
    start_product: tf.Tensor
    breakdown: bool

    @property
    def size(self) -> int:
        return len(self.alphas)

    def matrix(self) -> np.ndarray:
        """``T`` as a dense ``[m, m]`` float64 matrix."""
        return np.diag(self.alphas) + np.diag(self.betas, 1) + np.diag(self.betas, -1)

    def gauss_quadrature(self) -> tuple[np.ndarray, np.ndarray]:
        """Nodes (Ritz values, ascending) and weights (squared first components of ``T``'s eigenvectors).

        For the start vector ``q_0``, ``sum(weights * f(nodes))`` is the
        ``m``-point Gauss quadrature of ``q_0^T f(A) q_0``: exact for
        polynomials ``f`` of degree up to ``2m - 1``. The weights sum to 1.
        """
        nodes, vectors = np.linalg.eigh(self.matrix())
        return nodes, vectors[0] ** 2


def tridiagonalize(operator: LinearOperator, start, num_steps: int) -> Tridiagonal:
    """Runs ``num_steps`` Lanczos steps from ``start`` (fewer if the Krylov space is exhausted first).

    Spends one matvec per step and holds ``num_steps`` vectors of length
    ``dim`` (the fully reorthogonalized basis).

    Example:

    ```python
    t = tridiagonalize(MatrixOperator(a), np.ones(n) / np.sqrt(n), 30)
    nodes, weights = t.gauss_quadrature()   # sum(weights * nodes**2) == q0 @ a @ a @ q0
    ```

    Args:
      operator: a symmetric :class:`~tf_sharpest.operators.LinearOperator`.
      start: ``[dim]`` start vector (normalized here; must be non-zero).
      num_steps: most steps, ``>= 1``; at most ``dim`` are ever taken.

    Raises:
      ValueError: for a zero or malformed start vector, ``num_steps < 1``, or
        an operator that returns non-finite values.
    """
    n = operator.dim
    num_steps = min(integer("num_steps", num_steps, low=1), n)  # the Krylov space has at most dim dimensions
    start = np.asarray(start, dtype=np.float64)
    if start.shape != (n,) or not np.all(np.isfinite(start)) or not np.any(start):
        raise ValueError(f"start must be a finite, non-zero vector of shape [dim={n}]; got shape {start.shape}.")

    basis = tf.Variable(tf.zeros([num_steps, n], operator.dtype), trainable=False)
    vector = tf.constant(start / np.linalg.norm(start), operator.dtype)
    first_matvec = operator.num_matvecs
    alphas, betas = [], []
    start_product, breakdown = None, False
    for size in range(num_steps):
        step = lanczos_step(operator, basis, size, vector, first_matvec=first_matvec)
        if start_product is None:
            start_product = step.product
        alphas.append(step.alpha)
        if size + 1 == num_steps:
            break
        if step.is_breakdown():
            # The quadrature over the invariant subspace found so far is already exact.
            breakdown = True
            break
        betas.append(step.beta)
        vector = step.residual / step.beta
    return Tridiagonal(alphas=np.asarray(alphas), betas=np.asarray(betas), start_product=start_product,
                       breakdown=breakdown)
