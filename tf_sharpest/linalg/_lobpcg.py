"""Warm-started block eigensolver (LOBPCG with a growing search space) for a few extreme eigenpairs.

Lanczos starts from one vector, so a warm start can only hand it the sum of
the previous eigenvectors; a block method starts from all of them at once and
only has to correct them, and it multiplies whole blocks (``matmat``), which
an operator may do faster than one vector at a time. In products, it wins
when the start is close (vectors about 1e-3 away: one block, 7 products,
against 14 for a warm Lanczos); from a distant start it needs more products
than Lanczos, whose single Krylov chain builds a higher polynomial degree per
product (along SGD at lr 0.05, about twice as many measuring every 100 steps:
``benchmarks/RESULTS.md``, "Tracking cost").
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tf_sharpest.linalg import _options
from tf_sharpest.linalg._probes import refuse_non_finite
from tf_sharpest.linalg._progress import progress
from tf_sharpest.linalg._result import EigenResult
from tf_sharpest.operators._base import LinearOperator, as_operator
from tf_sharpest.utils._checks import choice, integer
from tf_sharpest.utils._deprecation import renamed_argument

STOP_CHOICES = ("residual", "eigenvalues")
# Random directions added to the warm start by default, so that a direction that
# was not among the previous eigenvectors (a new sharp direction) has a way into
# the search space besides the residuals; they also guard the k-th pair.
FRESH_DIRECTIONS = 2
# In the eigenvalue stop, |lambda_i| is floored at this share of |lambda_max|:
# the relative change of an eigenvalue near zero is noise, not a convergence signal.
EIGENVALUE_FLOOR = 1e-2


def lobpcg(operator, k: int = 5, *, tol: float = 1e-3, max_matvecs: int | None = None,
           initial_vectors=None, block_size: int | None = None, max_basis_size: int | None = None,
           stop_on: str = "residual", which: str = "largest", seed: int | None = 0, dim: int | None = None,
           dtype=None, verbose: int = 0, max_iterations: int | None = None) -> EigenResult:
    """Top-``k`` (or bottom-``k``) eigenpairs of a symmetric operator by a warm-started block method.

    The method is LOBPCG without a preconditioner in its robust form: the
    search space is kept as an orthonormal basis ``S`` together with ``A S``,
    every iteration appends the residuals ``A x - theta x`` of the pairs that
    have not converged yet (soft locking: converged pairs cost no more
    products), and a Rayleigh-Ritz step on ``S`` gives the new Ritz pairs.
    While the basis is below ``max_basis_size`` every block is kept (the
    search space is then the block Krylov space of the start, the best
    subspace for the products spent); when it is full, it is compressed to
    the current Ritz vectors and the previous ones, ``[X, P]``, which is the
    classic LOBPCG recurrence (``max_basis_size = 3 * block_size`` gives
    LOBPCG exactly). Products go through ``operator.matmat`` one block at a
    time, so an operator with a cheaper block product is used as such.

    Orthogonality never relies on the Gram matrix being well conditioned:
    each new block is projected out of the basis twice and then cleaned by an
    eigendecomposition of its small Gram matrix in float64, dropping the
    directions it does not add (repeated eigenvalues, converged residuals,
    dependent warm-start vectors), so clustered and exactly repeated
    eigenvalues are handled and the returned vectors of a repeated eigenvalue
    span its eigenspace.

    Example:

    ```python
    hessian = tf_sharpest.operators.HessianOperator(model, (x, y))
    first = lobpcg(hessian, 5)                       # cold: random start
    # ... some training steps later, with the operator moved to the new weights:
    later = lobpcg(hessian, 5, initial_vectors=first.eigenvectors)
    later.eigenvalues, later.num_matvecs
    # Only eigenvalues are logged: stop when they stop moving.
    quick = lobpcg(hessian, 5, initial_vectors=later.eigenvectors, stop_on="eigenvalues")
    ```

    Args:
      operator: a :class:`~tf_sharpest.operators.LinearOperator`, a square
        matrix, or a callable ``v -> A v`` on flat vectors (then ``dim`` is
        required).
      k: number of eigenpairs, ``1 <= k <= dim``.
      tol: with ``stop_on="residual"`` a pair has converged when
        ``||A v - lambda v|| <= tol * |lambda_max|`` (``lambda_max`` the Ritz
        value of largest magnitude), as in :func:`~tf_sharpest.linalg.lanczos`;
        with ``stop_on="eigenvalues"`` the search stops when no eigenvalue
        ``lambda_1..lambda_k`` moved by more than ``tol`` times its size
        between two iterations.
      max_matvecs: most matvecs to spend, as in ``lanczos`` (default
        ``max(300, 20 * k)``), at least ``block_size``. The last block is cut to fit.
      initial_vectors: ``[dim]`` or ``[dim, p]`` guesses, e.g. the previous
        eigenvectors along training. They start the block as they are (no
        mixing), topped up with random directions.
      block_size: columns of the iterated block ``X`` (default: ``k`` or the
        number of initial vectors, whichever is larger, plus
        ``FRESH_DIRECTIONS`` random ones). Must be at least ``k`` and at least
        the number of initial vectors. The columns beyond ``k`` are guards:
        they are iterated with the unconverged pairs (one product each per
        iteration) but never wait to converge themselves; they keep the
        ``k``-th pair from being confused with the next and give directions
        outside the warm start a way in, for as long as the wanted pairs
        iterate. ``block_size=k`` drops them, which saves products: 2-4 per
        measurement on a SimpleCNN Hessian 100 SGD steps after the warm
        start, a third of a cold run on explicit test matrices.
      max_basis_size: most basis vectors held at once (memory is twice this
        many vectors of length ``dim``); default ``max(6 * block_size, 30)``,
        at least ``3 * block_size``.
      stop_on: ``"residual"`` (every pair's residual below ``tol``; the
        eigenvectors are then accurate too) or ``"eigenvalues"`` (the
        eigenvalues have stopped changing; cheaper when only eigenvalues are
        logged; ``converged`` then reports this criterion).
      which: ``"largest"`` (algebraic, descending) or ``"smallest"``
        (algebraic, ascending).
      seed: seed of the random directions (results are deterministic for it).
      dim: length of the vectors of a callable ``operator``.
      dtype: dtype of a callable's vectors (default float32).
      verbose: 1 shows a ``keras.utils.Progbar`` of the matvecs spent and the
        current worst relative residual, as in ``lanczos`` (no total, no ETA).
      max_iterations: deprecated name of ``max_matvecs`` (it always counted
        matvecs); it still works, with a ``DeprecationWarning``, until 0.3.

    Returns:
      An :class:`~tf_sharpest.linalg.EigenResult`; ``residual_norms`` are the
      norms of ``A v - lambda v`` of the returned pairs, computed from the
      products kept with the basis.

    Raises:
      ValueError: for bad arguments, non-finite initial vectors, or an
        operator that returns non-finite values.
    """
    max_matvecs = renamed_argument("lobpcg", "max_iterations", "max_matvecs", max_iterations, max_matvecs)
    operator = as_operator(operator, dim, dtype)
    options = _Options.check(operator.dim, k, tol, max_matvecs, initial_vectors, block_size, max_basis_size,
                             stop_on, which)
    rng = np.random.default_rng(seed)
    # "smallest" is "largest" of -A: the products are negated, and so are the eigenvalues returned.
    sign = 1.0 if which == "largest" else -1.0
    first_matvec = operator.num_matvecs
    progbar = progress(verbose, options.max_matvecs, options.tol)

    def multiply(block: tf.Tensor) -> tf.Tensor:
        return _multiply(operator, block, sign, first_matvec)

    space = _SearchSpace.start(_start_block(options, operator.dtype, rng), multiply)
    previous, restarts = None, 0
    while True:
        ritz = _rayleigh_ritz(space, options.block_size)
        converged, residual_ok = _converged(ritz, previous, options)
        spent = operator.num_matvecs - first_matvec
        if converged or spent >= options.max_matvecs or space.size == options.dim:
            break
        if progbar is not None:  # the last state is shown once, as the bar's final line
            progbar.update(spent, ritz.worst_residual(options.k))
        active = _active_columns(residual_ok, options, options.max_matvecs - spent)
        coefficients = ritz.coefficients
        if space.size + active.size > options.basis_limit:
            coefficients = _restart(space, ritz, previous, options.basis_limit - options.block_size - active.size)
            restarts += 1
        new = _expansion(ritz.residuals, active, space.basis, rng)
        if new is None:
            break
        space.extend(new, multiply(new))
        previous = ritz.values, coefficients

    if progbar is not None:
        progbar.update(operator.num_matvecs - first_matvec, ritz.worst_residual(options.k), finalize=True)
    return EigenResult(
        eigenvalues=(sign * ritz.values[: options.k]).astype(np.float64),
        eigenvectors=ritz.vectors[:, : options.k].numpy(),
        residual_norms=ritz.residual_norms[: options.k].astype(np.float64),
        num_matvecs=operator.num_matvecs - first_matvec,
        converged=converged or space.size == options.dim,
        num_restarts=restarts,
    )


@dataclasses.dataclass(frozen=True)
class _Options:
    """The checked arguments of one solve."""

    dim: int
    k: int
    tol: float
    max_matvecs: int
    guesses: np.ndarray | None  # [dim, p] float64 initial vectors
    block_size: int  # columns of the iterated block X
    basis_limit: int  # most basis vectors, never above dim
    stop_on: str

    @classmethod
    def check(cls, n, k, tol, max_matvecs, initial_vectors, block_size, max_basis_size, stop_on, which):
        k = _options.eigen_count(k, n)
        tol = _options.tolerance(tol)
        choice("stop_on", stop_on, STOP_CHOICES)
        _options.which(which)
        guesses = _options.initial_vectors(initial_vectors, n)
        least = max(k, 0 if guesses is None else guesses.shape[1])
        if block_size is None:
            m = min(n, least + FRESH_DIRECTIONS)
        else:
            m = integer("block_size", block_size, low=least, high=n,
                        bounds=f"with max(k, number of initial_vectors) = {least} <= block_size <= dim={n}")
        max_matvecs = _options.matvec_budget(max_matvecs, k=k, least=m,
                                             needs=f"to multiply the first block of {m} vectors")
        if max_basis_size is None:
            max_basis_size = max(6 * m, 30)
        max_basis_size = integer("max_basis_size", max_basis_size, low=3 * m,
                                 bounds=f">= 3 * block_size = {3 * m}")
        return cls(n, k, tol, max_matvecs, guesses, m, min(max_basis_size, n), stop_on)


@dataclasses.dataclass
class _SearchSpace:
    """The orthonormal basis ``S`` ``[dim, s]``, its products ``A S`` and the projected matrix ``S^T A S`` (float64)."""

    basis: tf.Tensor
    products: tf.Tensor
    projected: np.ndarray

    @classmethod
    def start(cls, block: tf.Tensor, multiply) -> _SearchSpace:
        products = multiply(block)
        return cls(block, products, _symmetric(_to_numpy(tf.matmul(block, products, transpose_a=True))))

    @property
    def size(self) -> int:
        return self.basis.shape[1]

    def extend(self, new: tf.Tensor, new_products: tf.Tensor) -> None:
        """Appends orthonormal columns ``new`` (orthogonal to the basis) and their products."""
        coupling = _to_numpy(tf.matmul(self.basis, new_products, transpose_a=True))
        corner = _to_numpy(tf.matmul(new, new_products, transpose_a=True))
        self.projected = _symmetric(np.block([[self.projected, coupling], [coupling.T, corner]]))
        self.basis = tf.concat([self.basis, new], axis=1)
        self.products = tf.concat([self.products, new_products], axis=1)

    def rotate(self, keep: np.ndarray) -> None:
        """Replaces the basis by ``S @ keep`` (``keep`` orthonormal columns), with no product."""
        rotation = tf.constant(keep, self.basis.dtype)
        self.basis, self.products = tf.matmul(self.basis, rotation), tf.matmul(self.products, rotation)
        self.projected = _symmetric(keep.T @ self.projected @ keep)


@dataclasses.dataclass
class _Ritz:
    """The block's Ritz pairs from one Rayleigh-Ritz step, best first, with their residuals."""

    values: np.ndarray  # [m] float64
    coefficients: np.ndarray  # [s, m] float64, in the basis
    vectors: tf.Tensor  # [dim, m], X = S @ coefficients
    residuals: tf.Tensor  # [dim, m], A X - X diag(values)
    residual_norms: np.ndarray  # [m] float64
    scale: float  # |lambda_max| over every Ritz value of the basis

    def worst_residual(self, k: int) -> float:
        """The largest relative residual of the wanted pairs, what ``tol`` is compared with."""
        return float(np.max(self.residual_norms[:k]) / self.scale)


def _start_block(options: _Options, dtype, rng: np.random.Generator) -> tf.Tensor:
    """The starting block: the guesses as they are, topped up with random directions.

    Guesses that add nothing new (dependent, zero) are replaced by more random ones.
    """
    n, m = options.dim, options.block_size
    start = tf.zeros([n, 0], dtype)
    if options.guesses is not None:
        start = _orthonormal_block(tf.constant(options.guesses, dtype), None)
    while start.shape[1] < m:
        fresh = tf.constant(rng.standard_normal((n, m - start.shape[1])), dtype)
        start = tf.concat([start, _orthonormal_block(fresh, start)], axis=1)
    return start


def _multiply(operator: LinearOperator, block: tf.Tensor, sign: float, first_matvec: int) -> tf.Tensor:
    """``sign * A @ block`` through ``matmat``, refusing non-finite products."""
    product = refuse_non_finite(operator.matmat(block), operator.num_matvecs - first_matvec)
    return product if sign > 0 else -product


def _rayleigh_ritz(space: _SearchSpace, m: int) -> _Ritz:
    """The ``m`` largest Ritz pairs of the search space and their residuals (from the kept products, no matvec)."""
    ritz_values, ritz_coefficients = np.linalg.eigh(space.projected)
    order = np.argsort(-ritz_values, kind="stable")[:m]
    values, coefficients = ritz_values[order], ritz_coefficients[:, order]
    block = tf.constant(coefficients, space.basis.dtype)
    vectors = tf.matmul(space.basis, block)
    residuals = tf.matmul(space.products, block) - vectors * tf.constant(values, space.basis.dtype)[None, :]
    scale = max(float(np.max(np.abs(ritz_values))), np.finfo(float).tiny)
    return _Ritz(values, coefficients, vectors, residuals, _to_numpy(tf.norm(residuals, axis=0)), scale)


def _converged(ritz: _Ritz, previous, options: _Options) -> tuple[bool, np.ndarray]:
    """Whether the solve has converged, and which wanted pairs have (their residual is below ``tol``).

    Residuals below tol mean converged under either rule: eigenvalue errors are
    bounded by the residual norms (and shrink like their squares).
    """
    k = options.k
    residual_ok = ritz.residual_norms[:k] <= options.tol * ritz.scale
    converged = bool(np.all(residual_ok))
    if options.stop_on == "eigenvalues" and previous is not None:
        previous_values = previous[0]
        floor = EIGENVALUE_FLOOR * ritz.scale
        change = np.abs(ritz.values[:k] - previous_values[:k]) / np.maximum(np.abs(ritz.values[:k]), floor)
        converged = bool(np.all((change <= options.tol) | residual_ok))
    return converged, residual_ok


def _active_columns(residual_ok: np.ndarray, options: _Options, matvecs_left: int) -> np.ndarray:
    """The block columns whose residuals are expanded next, at most ``matvecs_left`` of them.

    Soft locking: converged wanted pairs cost no more products. The guard columns
    (the fresh directions) are expanded as long as anything is: that is how a
    direction that was not among the previous eigenvectors gets in, and it speeds
    up the k-th pair. On Hessians along training this cost no more products to
    the same accuracy than leaving them passive (benchmarks/RESULTS.md).
    """
    unconverged = np.flatnonzero(~residual_ok)
    return np.concatenate([unconverged, np.arange(options.k, options.block_size)])[:matvecs_left]


def _restart(space: _SearchSpace, ritz: _Ritz, previous, room: int) -> np.ndarray:
    """Compresses the basis to ``[X, P]`` and returns the block's coefficients in it (``X`` first).

    ``X`` are the current Ritz vectors and ``P`` the part of the previous ones
    outside them (the LOBPCG recurrence), at most ``room`` columns, rotated in
    coefficient space at no product.
    """
    keep = ritz.coefficients
    if previous is not None:
        previous_coefficients = previous[1]
        padded = np.zeros((space.size, previous_coefficients.shape[1]))
        padded[: previous_coefficients.shape[0]] = previous_coefficients
        extra = _orthonormal_complement(padded, keep)
        keep = np.concatenate([keep, extra[:, :room]], axis=1)
    space.rotate(keep)
    return np.eye(keep.shape[1], ritz.coefficients.shape[1])  # X is now the first m columns


def _expansion(residuals: tf.Tensor, active: np.ndarray, basis: tf.Tensor, rng: np.random.Generator):
    """The new orthonormal block: the active residuals' part outside the basis; None when nothing is left.

    When the residuals lie in the basis to working precision it spans an
    invariant subspace; the search goes on from random directions instead.
    """
    new = _orthonormal_block(tf.gather(residuals, active, axis=1), basis)
    if new.shape[1] == 0:
        new = _orthonormal_block(tf.constant(rng.standard_normal((basis.shape[0], active.size)), basis.dtype), basis)
        if new.shape[1] == 0:
            return None
    return new


def _orthonormal_block(block: tf.Tensor, basis: tf.Tensor | None) -> tf.Tensor:
    """An orthonormal basis of the part of ``block``'s span outside ``basis`` (orthonormal columns).

    Columns are first scaled to unit length, so a direction is judged by how
    much of it is new, not by its size. Two rounds ("twice is enough") of
    projecting out ``basis`` and cleaning by the eigendecomposition of the
    small float64 Gram matrix; directions whose new part is below about
    ``1e3 * eps`` of a unit vector are dropped instead of being blown up into
    noise. The result may have fewer columns than ``block``, or none.
    """
    eps = float(np.finfo(block.dtype.as_numpy_dtype).eps)
    norms = tf.norm(block, axis=0)
    keep = np.flatnonzero(_to_numpy(norms) > 0)
    block = tf.gather(block, keep, axis=1) / tf.gather(norms, keep)[None, :]
    for round_ in range(2):
        if basis is not None and basis.shape[1] > 0:
            block = block - tf.matmul(basis, tf.matmul(basis, block, transpose_a=True))
        if block.shape[1] == 0:
            return block
        gram = _symmetric(_to_numpy(tf.matmul(block, block, transpose_a=True)))
        values, vectors = np.linalg.eigh(gram)
        # First round: new parts smaller than 1e3 eps (in norm) of a unit vector are
        # rounding noise of the projection. Second round: the block is already
        # orthonormal up to rounding, so only exact dependence remains to drop.
        threshold = (1e3 * eps) ** 2 * max(1.0, float(values[-1])) if round_ == 0 else 1e2 * eps * float(values[-1])
        kept = values > threshold
        transform = vectors[:, kept] / np.sqrt(values[kept])[None, :]
        block = tf.matmul(block, tf.constant(transform[:, ::-1].copy(), block.dtype))
    return block


def _orthonormal_complement(matrix: np.ndarray, against: np.ndarray) -> np.ndarray:
    """Orthonormal float64 basis of the part of a small coefficient ``matrix``'s span outside ``against``.

    ``against`` has orthonormal columns. Near convergence the previous Ritz
    vectors differ from the current ones by tiny steps, and those steps are
    exactly the directions LOBPCG needs, so the part outside ``against`` is
    normalized and projected a second time (one pass leaves it
    non-orthogonal by rounding / step size), and only parts at float64
    rounding level are dropped. A kept noise direction would be harmless: it
    is a rotation inside the basis and costs no product.
    """
    for _ in range(2):
        matrix = matrix - against @ (against.T @ matrix)
        if matrix.shape[1] == 0:
            return matrix
        u, s, _ = np.linalg.svd(matrix, full_matrices=False)
        matrix = u[:, s > 1e-13]
    return matrix


def _symmetric(matrix: np.ndarray) -> np.ndarray:
    return 0.5 * (matrix + matrix.T)


def _to_numpy(tensor: tf.Tensor) -> np.ndarray:
    return tensor.numpy().astype(np.float64)

