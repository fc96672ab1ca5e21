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

import numpy as np
import tensorflow as tf

from tf_sharpest.linalg.result import EigenResult
from tf_sharpest.operators.base import as_operator

STOP_CHOICES = ("residual", "eigenvalues")
WHICH_CHOICES = ("largest", "smallest")
# Random directions added to the warm start by default, so that a direction that
# was not among the previous eigenvectors (a new sharp direction) has a way into
# the search space besides the residuals; they also guard the k-th pair.
FRESH_DIRECTIONS = 2
# In the eigenvalue stop, |lambda_i| is floored at this share of |lambda_max|:
# the relative change of an eigenvalue near zero is noise, not a convergence signal.
EIGENVALUE_FLOOR = 1e-2


def lobpcg(operator, k: int = 5, *, tol: float = 1e-3, max_iterations: int | None = None,
           initial_vectors=None, block_size: int | None = None, max_basis_size: int | None = None,
           stop_on: str = "residual", which: str = "largest", seed: int | None = 0, dim: int | None = None,
           dtype=None, verbose: int = 0) -> EigenResult:
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
      max_iterations: most matvecs to spend, as in ``lanczos`` (default
        ``max(300, 20 * k)``). The last block is cut to fit.
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
      verbose: 1 shows a ``keras.utils.Progbar`` of matvecs and the worst residual.

    Returns:
      An :class:`~tf_sharpest.linalg.EigenResult`; ``residual_norms`` are the
      norms of ``A v - lambda v`` of the returned pairs, computed from the
      products kept with the basis.

    Raises:
      ValueError: for bad arguments, non-finite initial vectors, or an
        operator that returns non-finite values.
    """
    operator = as_operator(operator, dim, dtype)
    n = operator.dim
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer with 1 <= k <= dim={n}, got {k!r}.")
    k = int(k)
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating, np.integer)) \
            or not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}.")
    if stop_on not in STOP_CHOICES:
        raise ValueError(f"stop_on must be one of {STOP_CHOICES}, got {stop_on!r}.")
    if which not in WHICH_CHOICES:
        raise ValueError(f"which must be one of {WHICH_CHOICES}, got {which!r}.")
    guesses = _check_initial_vectors(initial_vectors, n)
    num_guesses = 0 if guesses is None else guesses.shape[1]
    if block_size is None:
        block_size = min(n, max(k, num_guesses) + FRESH_DIRECTIONS)
    elif isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) \
            or not max(k, num_guesses) <= block_size <= n:
        raise ValueError(
            f"block_size must be an integer with max(k, number of initial_vectors) = {max(k, num_guesses)} "
            f"<= block_size <= dim={n}, got {block_size!r}.")
    m = int(block_size)
    if max_iterations is None:
        max_iterations = max(300, 20 * k)
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, (int, np.integer)) \
            or max_iterations < m:
        raise ValueError(
            f"max_iterations={max_iterations!r} matvecs cannot even multiply the first block of {m} vectors.")
    if max_basis_size is None:
        max_basis_size = max(6 * m, 30)
    if isinstance(max_basis_size, bool) or not isinstance(max_basis_size, (int, np.integer)) \
            or max_basis_size < 3 * m:
        raise ValueError(f"max_basis_size must be an integer >= 3 * block_size = {3 * m}, got {max_basis_size!r}.")
    basis_limit = min(int(max_basis_size), n)

    rng = np.random.default_rng(seed)
    dtype = operator.dtype
    sign = 1.0 if which == "largest" else -1.0  # "smallest" is "largest" of -A
    first_matvec = operator.num_matvecs
    progbar = _progbar(max_iterations) if verbose else None

    def multiply(block: tf.Tensor) -> tf.Tensor:
        product = operator.matmat(block)
        if not bool(tf.reduce_all(tf.math.is_finite(product))):
            raise ValueError(
                f"The operator returned non-finite values at matvec {operator.num_matvecs - first_matvec}; "
                "the loss or the weights have diverged.")
        return product if sign > 0 else -product

    # The starting block: the guesses as they are, topped up with random directions;
    # guesses that add nothing new (dependent, zero) are replaced by more random ones.
    start = tf.zeros([n, 0], dtype)
    if guesses is not None:
        start = _orthonormal_block(tf.constant(guesses, dtype), None)
    while start.shape[1] < m:
        fresh = tf.constant(rng.standard_normal((n, m - start.shape[1])), dtype)
        start = tf.concat([start, _orthonormal_block(fresh, start)], axis=1)
    basis, products = start, multiply(start)
    projected = _symmetric(_to_numpy(tf.matmul(basis, products, transpose_a=True)))

    previous_values, previous_coefficients = None, None
    restarts, converged = 0, False
    while True:
        ritz_values, ritz_coefficients = np.linalg.eigh(projected)
        order = np.argsort(-ritz_values, kind="stable")[:m]
        values, coefficients = ritz_values[order], ritz_coefficients[:, order]
        block = tf.constant(coefficients, dtype)
        x = tf.matmul(basis, block)
        ax = tf.matmul(products, block)
        residuals = ax - x * tf.constant(values, dtype)[None, :]
        residual_norms = _to_numpy(tf.norm(residuals, axis=0))
        scale = max(float(np.max(np.abs(ritz_values))), np.finfo(float).tiny)
        residual_ok = residual_norms[:k] <= tol * scale
        # Residuals below tol mean converged under either rule: eigenvalue errors are
        # bounded by the residual norms (and shrink like their squares).
        converged = bool(np.all(residual_ok))
        if stop_on == "eigenvalues" and previous_values is not None:
            floor = EIGENVALUE_FLOOR * scale
            change = np.abs(values[:k] - previous_values[:k]) / np.maximum(np.abs(values[:k]), floor)
            converged = bool(np.all((change <= tol) | residual_ok))
        spent = operator.num_matvecs - first_matvec
        if progbar is not None:
            progbar.update(min(spent, max_iterations), [("worst_residual", float(np.max(residual_norms[:k]) / scale))])
        if converged or spent >= max_iterations or basis.shape[1] == n:
            break

        # Soft locking: converged wanted pairs cost no more products. The guard columns
        # (the fresh directions) are expanded as long as anything is: that is how a
        # direction that was not among the previous eigenvectors gets in, and it speeds
        # up the k-th pair. On Hessians along training this cost no more products to
        # the same accuracy than leaving them passive (benchmarks/RESULTS.md).
        active = np.concatenate([np.flatnonzero(~residual_ok), np.arange(k, m)])[: max_iterations - spent]
        if basis.shape[1] + active.size > basis_limit:
            # Compress to [X, P]: the current Ritz vectors and the part of the previous
            # ones outside them (the LOBPCG recurrence), rotated in coefficient space.
            keep = coefficients
            if previous_coefficients is not None:
                padded = np.zeros((basis.shape[1], previous_coefficients.shape[1]))
                padded[: previous_coefficients.shape[0]] = previous_coefficients
                extra = _orthonormal_complement(padded, keep)
                keep = np.concatenate([keep, extra[:, : basis_limit - m - active.size]], axis=1)
            rotation = tf.constant(keep, dtype)
            basis, products = tf.matmul(basis, rotation), tf.matmul(products, rotation)
            projected = _symmetric(keep.T @ projected @ keep)
            coefficients = np.eye(keep.shape[1], m)  # X is now the first m columns
            restarts += 1
        new = _orthonormal_block(tf.gather(residuals, active, axis=1), basis)
        if new.shape[1] == 0:
            # The residuals lie in the basis to working precision: it spans an invariant
            # subspace. Grow it with random directions so the search can go on.
            new = _orthonormal_block(tf.constant(rng.standard_normal((n, active.size)), dtype), basis)
            if new.shape[1] == 0:
                break
        new_products = multiply(new)
        coupling = _to_numpy(tf.matmul(basis, new_products, transpose_a=True))
        corner = _to_numpy(tf.matmul(new, new_products, transpose_a=True))
        projected = _symmetric(np.block([[projected, coupling], [coupling.T, corner]]))
        basis = tf.concat([basis, new], axis=1)
        products = tf.concat([products, new_products], axis=1)
        previous_values, previous_coefficients = values, coefficients

    if progbar is not None:
        progbar.update(min(operator.num_matvecs - first_matvec, max_iterations), finalize=True)
    return EigenResult(
        eigenvalues=(sign * values[:k]).astype(np.float64),
        eigenvectors=x[:, :k].numpy(),
        residual_norms=residual_norms[:k].astype(np.float64),
        num_matvecs=operator.num_matvecs - first_matvec,
        converged=converged or basis.shape[1] == n,
        num_restarts=restarts,
    )


def _check_initial_vectors(initial_vectors, n: int) -> np.ndarray | None:
    if initial_vectors is None:
        return None
    guesses = np.asarray(initial_vectors, dtype=np.float64)
    if guesses.ndim == 1:
        guesses = guesses[:, None]
    if guesses.ndim != 2 or guesses.shape[0] != n or guesses.shape[1] == 0:
        raise ValueError(
            f"initial_vectors must have shape [dim={n}] or [dim={n}, p] with p >= 1; got {guesses.shape}.")
    if not np.all(np.isfinite(guesses)):
        raise ValueError("initial_vectors contain NaN or inf values.")
    return guesses


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


def _progbar(target: int):
    import keras  # Keras is needed only for the progress bar

    return keras.utils.Progbar(target, unit_name="matvec")
