"""Trace and diagonal of a symmetric operator from matrix-vector products.

Estimators:

- ``"hutchinson"`` (Hutchinson 1989): the mean of ``z^T A z`` over Rademacher
  probes ``z``. Unbiased; the error falls like ``1/sqrt(m)`` in the number
  ``m`` of matvecs.
- ``"hutch++"`` (Meyer, Musco, Musco, Woodruff 2021): a third of the budget
  sketches the top of the spectrum (``Q = orth(A S)``), whose trace
  ``tr(Q^T A Q)`` is taken exactly (another third), and Hutchinson estimates
  only the rest, ``tr((I - QQ^T) A (I - QQ^T))``. Unbiased; for a positive
  semidefinite ``A`` the error falls like ``1/m``, and on the fast-decaying
  spectra of network Hessians it is far below Hutchinson's.
- ``"xtrace"`` (Epperly, Tropp, Webber 2024): Hutch++ with nothing set aside.
  Each of the ``m/2`` probes serves as a test vector for the sketch formed by
  all the others, and the ``m/2`` such estimates are averaged (an exchangeable
  estimator); their spread gives the error estimate.
- ``"exact"``: unit vectors, ``dim`` matvecs, no error (small operators).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tf_sharpest.linalg import _options
from tf_sharpest.linalg._options import DIAGONAL_METHODS, MIN_MATVECS, TRACE_METHODS  # noqa: F401  (importable here)
from tf_sharpest.linalg._probes import (
    apply,
    as_symmetric_operator,
    block_sizes,
    check_symmetric,
    rademacher,
    representable,
    symmetry_tolerance,
)
from tf_sharpest.operators._base import LinearOperator
from tf_sharpest.utils._checks import choice

# Below this ratio of R's smallest to largest singular value, XTrace's sketch
# is treated as rank deficient and downdated by SVD instead of by R^{-T}.
XTRACE_RCOND = 1e-8


@dataclasses.dataclass(frozen=True)
class TraceResult:
    """An estimate of ``tr(A)``.

    Attributes:
      value: the estimate.
      stderr: its estimated standard error: for ``"hutchinson"`` the probes'
        sample standard deviation over ``sqrt(m)``; for ``"hutch++"`` that of
        the Hutchinson part given the sketch; for ``"xtrace"`` the spread of its
        exchangeable estimates over ``sqrt(m / 2)`` (approximate: those
        estimates share probes, so are correlated); 0.0 for ``"exact"``; None
        where a single probe leaves nothing to measure.
      num_matvecs: operator products spent.
      method: the estimator used.
    """

    value: float
    stderr: float | None
    num_matvecs: int
    method: str


@dataclasses.dataclass(frozen=True)
class DiagonalResult:
    """An estimate of ``diag(A)``.

    Attributes:
      values: ``[dim]`` float64 estimate.
      stderr: ``[dim]`` float64 standard error of each entry (zeros for
        ``"exact"``; None for a single probe).
      num_matvecs: operator products spent.
      method: the estimator used.
    """

    values: np.ndarray
    stderr: np.ndarray | None
    num_matvecs: int
    method: str


def trace(operator, *, method: str = "hutch++", num_matvecs: int = 100, seed: int | None = 0) -> TraceResult:
    """Estimates the trace of a symmetric operator (a Hessian's: the sum of its eigenvalues).

    Example:

    ```python
    hessian = tf_sharpest.operators.HessianOperator(model, (x, y))
    result = trace(hessian, num_matvecs=150)      # Hutch++ by default
    print(result.value, "+-", result.stderr)
    trace(hessian, method="xtrace", num_matvecs=150).value
    ```

    Args:
      operator: a :class:`~tf_sharpest.operators.LinearOperator` or a
        symmetric square matrix.
      method: ``"hutch++"``, ``"hutchinson"``, ``"xtrace"`` or ``"exact"``
        (see the module docstring).
      num_matvecs: products to spend: at least 1 for Hutchinson, 3 for Hutch++
        and 4 for XTrace (which spends an even number, one less when odd), and
        fewer than ``dim``: at ``dim`` or more, ``"exact"`` costs no more and is
        exact, so a larger budget is refused rather than run. Ignored by
        ``"exact"`` (``dim`` products).
      seed: seed of the Rademacher probes; the result is deterministic for it.

    Returns:
      A :class:`TraceResult`.

    Raises:
      ValueError: for an unknown method, too few or too many matvecs for it, a
        non-symmetric operator (where the probes show it), or non-finite products.
    """
    operator = as_symmetric_operator(operator, "trace")
    choice("method", method, TRACE_METHODS)
    if method == "exact":
        return TraceResult(float(np.sum(_exact_diagonal(operator))), 0.0, operator.dim, method)
    num_matvecs = _options.probe_budget(num_matvecs, method, operator.dim, computes="trace")
    rng = np.random.default_rng(seed)
    if method == "hutchinson":
        return _hutchinson(operator, num_matvecs, rng)
    if method == "hutch++":
        return _hutch_plus_plus(operator, num_matvecs, rng)
    return _xtrace(operator, num_matvecs, rng)


def diagonal(operator, *, method: str = "hutchinson", num_matvecs: int = 100,
             seed: int | None = 0) -> DiagonalResult:
    """Estimates the diagonal of a symmetric operator (Bekas, Kokiopoulou, Saad 2007).

    With Rademacher probes ``z``, ``z * (A z)`` is an unbiased estimate of
    ``diag(A)`` (``z * z = 1``); the estimate is their mean over the probes,
    accumulated in float64.

    Example:

    ```python
    result = diagonal(hessian, num_matvecs=200)
    result.values, result.stderr           # [dim] each
    diagonal(small_operator, method="exact").values
    ```

    Args:
      operator: a :class:`~tf_sharpest.operators.LinearOperator` or a
        symmetric square matrix.
      method: ``"hutchinson"`` or ``"exact"`` (``dim`` unit vectors: small operators).
      num_matvecs: probes to spend (Hutchinson), at least 1 and fewer than
        ``dim`` (``"exact"`` gives the exact diagonal with ``dim``); ignored by ``"exact"``.
      seed: seed of the probes; the result is deterministic for it.

    Returns:
      A :class:`DiagonalResult`.

    Raises:
      ValueError: for an unknown method, ``num_matvecs`` below 1 or not below ``dim``, a non-symmetric
        operator (where the probes show it), or non-finite products.
    """
    operator = as_symmetric_operator(operator, "diagonal")
    choice("method", method, DIAGONAL_METHODS)
    if method == "exact":
        return DiagonalResult(_exact_diagonal(operator), np.zeros(operator.dim), operator.dim, method)
    num_matvecs = _options.probe_budget(num_matvecs, method, operator.dim, computes="diagonal")
    rng = np.random.default_rng(seed)
    # Running mean and sum of squared deviations per entry, merged block by block
    # (Chan et al.), so only one block of probes is held and no variance is lost
    # to cancellation when the diagonal is large against its noise.
    count, mean, squares = 0, tf.zeros([operator.dim], tf.float64), tf.zeros([operator.dim], tf.float64)
    for size in block_sizes(num_matvecs):
        probes = rademacher(rng, operator.dim, size)
        products = apply(operator, probes)
        check_symmetric(probes, products, operator.dtype)
        samples = probes * products
        block_mean = tf.reduce_mean(samples, axis=1)
        block_squares = tf.reduce_sum(tf.square(samples - block_mean[:, None]), axis=1)
        delta = block_mean - mean
        total = count + size
        mean = mean + delta * (size / total)
        squares = squares + block_squares + tf.square(delta) * (count * size / total)
        count = total
    stderr = None if count < 2 else np.sqrt(squares.numpy() / (count - 1) / count)
    return DiagonalResult(mean.numpy(), stderr, count, method)


def _hutchinson(operator: LinearOperator, num_matvecs: int, rng: np.random.Generator) -> TraceResult:
    samples = []
    for size in block_sizes(num_matvecs):
        probes = rademacher(rng, operator.dim, size)
        products = apply(operator, probes)
        check_symmetric(probes, products, operator.dtype)
        samples.append(tf.reduce_sum(probes * products, axis=0).numpy())
    samples = np.concatenate(samples)
    return TraceResult(float(np.mean(samples)), _stderr(samples), num_matvecs, "hutchinson")


def _hutch_plus_plus(operator: LinearOperator, num_matvecs: int, rng: np.random.Generator) -> TraceResult:
    # A third sketches, a third multiplies the sketch's basis, and the rest
    # (at least a third) are Hutchinson probes of what the sketch missed.
    sketch_size = num_matvecs // 3
    num_tests = num_matvecs - 2 * sketch_size
    sketch = rademacher(rng, operator.dim, sketch_size)
    sketched = apply(operator, sketch)
    check_symmetric(sketch, sketched, operator.dtype)
    basis = representable(operator, tf.linalg.qr(sketched).q)
    top = float(tf.reduce_sum(basis * apply(operator, basis)))  # tr(Q^T A Q), exact given Q

    samples = []
    for size in block_sizes(num_tests):
        tests = rademacher(rng, operator.dim, size)
        # Hutchinson on (I - QQ^T) A (I - QQ^T): probe with the projected vectors.
        projected = representable(operator, tests - tf.matmul(basis, tf.matmul(basis, tests, transpose_a=True)))
        samples.append(tf.reduce_sum(projected * apply(operator, projected), axis=0).numpy())
    samples = np.concatenate(samples)
    return TraceResult(top + float(np.mean(samples)), _stderr(samples), num_matvecs, "hutch++")


def _xtrace(operator: LinearOperator, num_matvecs: int, rng: np.random.Generator) -> TraceResult:
    """XTrace: the mean over probes ``i`` of ``tr(A P_i) + w_i^T (I - P_i) A (I - P_i) w_i``.

    ``P_i`` projects onto the span of ``A w_j`` for every probe ``j != i``, so
    it is independent of ``w_i`` and each term is an unbiased Hutch++-like
    estimate. All ``P_i`` live inside the span of ``Q`` (``A W = QR``), so one
    product ``A Q`` serves them all: ``P_i = Q (I - N_i N_i^T) Q^T``, where
    ``N_i`` spans the directions of coefficient space that the other columns
    of ``R`` miss.
    """
    num_probes = num_matvecs // 2
    probes = rademacher(rng, operator.dim, num_probes)
    sketched = apply(operator, probes)
    check_symmetric(probes, sketched, operator.dtype)
    q, r = tf.linalg.qr(sketched)
    basis = representable(operator, q)
    basis_product = apply(operator, basis)
    projected = tf.matmul(basis, basis_product, transpose_a=True).numpy()  # Q^T A Q
    coefficients = tf.matmul(basis, probes, transpose_a=True).numpy()  # Q^T W
    missed = _left_out_directions(r.numpy())

    # Column i: the coordinates in Q of P_i w_i, so (I - P_i) w_i = w_i - Q u_i.
    kept = np.stack([coefficients[:, i] - n @ (n.T @ coefficients[:, i]) for i, n in enumerate(missed)], axis=1)
    tests, start = [], 0
    for size in block_sizes(num_probes):  # a block of columns at a time bounds the extra memory
        columns = slice(start, start + size)
        residuals = probes[:, columns] - tf.matmul(basis, kept[:, columns])
        residual_products = sketched[:, columns] - tf.matmul(basis_product, kept[:, columns])  # by linearity
        tests.append(tf.reduce_sum(residuals * residual_products, axis=0).numpy())
        start += size
    tests = np.concatenate(tests)
    sketch_traces = np.array([np.trace(projected) - np.trace(n.T @ projected @ n) for n in missed])
    samples = sketch_traces + tests
    return TraceResult(float(np.mean(samples)), _stderr(samples), 2 * num_probes, "xtrace")


def _left_out_directions(r: np.ndarray) -> list[np.ndarray]:
    """For each column ``i`` of the ``[s, s]`` factor ``R``: an orthonormal basis of what the other columns miss.

    When ``R`` is well conditioned this is one vector, column ``i`` of
    ``R^{-T}`` normalized (it is orthogonal to every other column of ``R``).
    When the sketch is rank deficient (an operator of rank below ``s``) that
    inverse does not exist, and the complement of the other columns' span is
    read from an SVD per column (``O(s^4)``, only in that case).
    """
    singular_values = np.linalg.svd(r, compute_uv=False)
    largest = max(float(singular_values[0]), np.finfo(float).tiny)
    if singular_values[-1] > XTRACE_RCOND * largest:
        directions = np.linalg.inv(r).T
        directions /= np.linalg.norm(directions, axis=0)
        return [directions[:, [i]] for i in range(r.shape[1])]
    missed = []
    for i in range(r.shape[1]):
        others = np.delete(r, i, axis=1)
        u, values, _ = np.linalg.svd(others, full_matrices=True)
        rank = int(np.sum(values > XTRACE_RCOND * largest))
        missed.append(u[:, rank:])
    return missed


def _exact_diagonal(operator: LinearOperator) -> np.ndarray:
    """``diag(A)`` from ``dim`` unit vectors, a block at a time."""
    n, values, start = operator.dim, [], 0
    for size in block_sizes(n):
        columns = apply(operator, tf.one_hot(tf.range(start, start + size), n, axis=0, dtype=tf.float64))
        block = columns[start: start + size].numpy()  # A[start:end, start:end]
        _check_symmetric_block(block, operator.dtype)
        values.append(np.diag(block))
        start += size
    return np.concatenate(values)


def _check_symmetric_block(block: np.ndarray, dtype) -> None:
    """Refuses a diagonal block ``A[J, J]`` that is not symmetric: a free check for the exact methods."""
    asymmetry = float(np.max(np.abs(block - block.T)))
    if asymmetry > symmetry_tolerance(dtype) * max(float(np.max(np.abs(block))), np.finfo(float).tiny):
        raise ValueError(f"The operator is not symmetric: max |A[J, J] - A[J, J]^T| = {asymmetry:.3g} on a "
                         "diagonal block. These estimators need a symmetric operator.")


def _stderr(samples: np.ndarray) -> float | None:
    """Standard error of the mean of ``samples``; None for a single sample."""
    if len(samples) < 2:
        return None
    return float(np.std(samples, ddof=1) / np.sqrt(len(samples)))

