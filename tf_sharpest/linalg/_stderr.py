"""The sampling error of eigenvalues measured on a sample: one standard error per eigenvalue, from the same sample.

A curvature operator is a mean over the batches of its sample, ``H_S = sum_b
w_b H_b`` (``w_b`` the batch's share of the examples). For a found eigenvector
``v`` the eigenvalue is its Rayleigh quotient ``v^T H_S v = sum_b w_b (v^T H_b
v)``: a weighted mean of per-batch Rayleigh quotients. Their spread over the
batches gives the standard error of that mean, the sampling error of the
eigenvalue: ``stderr^2 = B / (B - 1) * sum_b w_b^2 (r_b - r)^2`` (for equal
batches, the batches' standard deviation over ``sqrt(B)``).

Why it is the sampling error of ``lambda_1(H_S)`` and not just of a fixed
direction's curvature: to first order in ``H_S - H``, the top eigenvalue
moves by ``v_1^T (H_S - H) v_1`` (the eigenvector's own change enters only at
second order), so the spread of ``lambda_1`` over samples is the spread of
the Rayleigh quotient of a fixed ``v_1``. What it leaves out is second order:
``lambda_1(H_S)`` is biased upward (``E[lambda_1(H_S)] >= lambda_1(H)``) by
about the squared sampling noise over the gap to ``lambda_2``; with close or
crossing eigenvalues the spread can differ from this estimate.
``tests/test_sampling_stderr.py`` checks it against the real spread of
``lambda_1`` over disjoint samples, and ``benchmarks/stderr_calibration.py``
on a real network.

Two ways to get the per-batch quotients:

* :func:`batch_rayleigh_quotients` multiplies given vectors on each batch: one
  block product per batch for all ``k`` vectors, i.e. ``k`` products on the
  sample, plus one forward pass per batch (the operator is moved to each batch
  with ``set_data``, which evaluates the loss) and one over the sample to move
  it back.
* :class:`BatchProjections` costs no product: a Ritz vector of Lanczos is a
  combination ``v = Q y`` of its basis ``Q``, so ``v^T A_b v = y^T (Q^T A_b Q)
  y``, and the per-batch projected matrices ``Q^T A_b Q`` are collected during
  the solver's own products (each product's per-batch parts, handed over by
  :meth:`~tf_sharpest.operators.CurvatureOperator.observing_batches`, are
  projected on the basis). :func:`tf_sharpest.linalg.lanczos` with
  ``stderr=True`` and :class:`~tf_sharpest.linalg.LanczosSolver` use it.
"""

from __future__ import annotations

import contextlib

import numpy as np
import tensorflow as tf

from tf_sharpest.linalg._result import EigenResult
from tf_sharpest.operators._curvature import CurvatureOperator
from tf_sharpest.operators._preconditioned import PreconditionedOperator
from tf_sharpest.operators._sample import Sample

__all__ = ["BatchProjections", "batch_rayleigh_quotients", "sampling_stderr"]


def batch_rayleigh_quotients(operator, vectors) -> tuple[np.ndarray, np.ndarray]:
    """Each batch's Rayleigh quotients ``v_i^T H_b v_i`` of the columns of ``vectors``, with the batches' weights.

    Example:

    ```python
    hessian = tf_sharpest.operators.HessianOperator(model, (x, y), batch_size=32)
    result = tf_sharpest.linalg.lanczos(hessian, 2)
    quotients, weights = batch_rayleigh_quotients(hessian, result.eigenvectors)   # [num_batches, 2], [num_batches]
    weights @ quotients        # the Rayleigh quotients on the whole sample: result.eigenvalues
    ```

    Args:
      operator: a curvature operator over a sample (it has ``sample`` and
        ``set_data``, e.g. a :class:`~tf_sharpest.operators.HessianOperator`).
        It is moved to each batch in turn and back to its sample.
      vectors: ``[dim]`` or ``[dim, k]``, unit columns (eigenvectors).

    Returns:
      ``(quotients [num_batches, k], weights [num_batches])`` in float64; the
      weights are the batches' shares of the examples and sum to 1. The
      operator's ``num_matvecs`` grows by ``k`` (the cost in products on the
      whole sample), not by ``k`` per batch.

    Raises:
      ValueError: for an operator that is not a mean over batches of a sample.
    """
    if not has_batches(operator):
        raise ValueError(
            f"The sampling error needs a curvature operator over a sample (HessianOperator, GGNOperator, ...); got "
            f"{type(operator).__name__}, which has no per-batch products. Build the operator from the data.")
    vectors = np.asarray(vectors)
    vectors = vectors[:, None] if vectors.ndim == 1 else vectors
    if vectors.ndim != 2 or vectors.shape[0] != operator.dim:
        raise ValueError(f"vectors must be [dim={operator.dim}] or [dim, k]; got shape {vectors.shape}.")
    # A preconditioned operator P^-1/2 H P^-1/2 is moved through its curvature operator.
    moved = operator.operator if isinstance(operator, PreconditionedOperator) else operator
    sample = moved.sample
    block = tf.constant(vectors, operator.dtype)
    counted = operator.num_matvecs
    quotients = []
    try:
        for batch, size in zip(sample.batches, sample.sizes):
            moved.set_data(Sample((batch,), (size,), sample.batch_spec))
            products = operator.matmat(block)
            quotients.append(tf.reduce_sum(block * products, axis=0).numpy().astype(np.float64))
    finally:
        moved.set_data(sample)  # the same Sample object: products sum over the sample again
        # k products on the whole sample, whatever the number of batches.
        operator.num_matvecs = counted + vectors.shape[1]
    return np.array(quotients), np.asarray(sample.weights, dtype=np.float64)


def has_batches(operator) -> bool:
    """Whether ``operator`` is a mean over the batches of a sample, so that its sampling error can be measured."""
    moved = operator.operator if isinstance(operator, PreconditionedOperator) else operator
    return isinstance(getattr(moved, "sample", None), Sample) and callable(getattr(moved, "set_data", None))


def stderr_of_mean(quotients: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The standard error of ``weights @ quotients`` from the spread over rows (NaN for one row)."""
    count = quotients.shape[0]
    if count < 2:
        return np.full(quotients.shape[1], np.nan)
    mean = weights @ quotients
    variance = count / (count - 1) * (weights**2) @ (quotients - mean) ** 2
    return np.sqrt(variance)


def sampling_stderr(operator, result) -> np.ndarray:
    """The standard error due to the sample of each eigenvalue of ``result``, from per-batch Rayleigh quotients.

    The standard error (the standard deviation the estimate would have over
    samples of the same size) is what ``stderr`` means throughout tf_sharpest:
    here, the trace estimators' :class:`~tf_sharpest.linalg.TraceResult` and
    :class:`~tf_sharpest.analysis.BatchSharpness`.

    Example:

    ```python
    hessian = tf_sharpest.operators.HessianOperator(model, (x[:2250], y[:2250]), batch_size=125)
    result = tf_sharpest.linalg.lanczos(hessian, 5)
    stderr = sampling_stderr(hessian, result)      # [5]: lambda_i +- stderr_i
    ```

    Args:
      operator: the curvature operator the eigenpairs were computed on (over a
        sample of at least two batches; see :func:`batch_rayleigh_quotients`).
      result: an :class:`~tf_sharpest.linalg.EigenResult`, or its ``[dim, k]`` eigenvectors.

    Returns:
      ``[k]`` float64 standard errors (NaN for a sample of one batch).
    """
    vectors = result.eigenvectors if isinstance(result, EigenResult) else result
    quotients, weights = batch_rayleigh_quotients(operator, vectors)
    return stderr_of_mean(quotients, weights)


class BatchProjections:
    """Each batch's projected matrix ``S_b = Q^T (w_b A_b) Q`` of a Lanczos basis ``Q``, at no extra product.

    A Lanczos solver opens :meth:`step` around the product of each new basis
    vector ``q_j = basis[j]``: every batch's part ``w_b A_b q_j`` of that
    product (:meth:`~tf_sharpest.operators.CurvatureOperator.observing_batches`)
    is projected on ``basis[:j + 1]``, which fills column ``j`` of every
    ``S_b`` (row ``j`` by symmetry, since each ``A_b`` is symmetric). A thick
    restart that keeps ``Q C`` calls :meth:`restart` with ``C``. Then for any
    Ritz vector ``v = Q y`` the batch's Rayleigh quotient is
    ``v^T A_b v = y^T S_b y / w_b`` (:meth:`quotients`), and :meth:`stderr` is
    :func:`sampling_stderr` of those vectors, without multiplying them again.
    The matrices are kept in float64; each projection costs
    ``(j + 1) * dim`` flops per batch, no product.

    Example:

    ```python
    hessian = tf_sharpest.operators.HessianOperator(model, (x[:2250], y[:2250]), batch_size=125)
    result = tf_sharpest.linalg.lanczos(hessian, 5, stderr=True)   # BatchProjections inside
    result.stderr            # == sampling_stderr(hessian, result), without its 5 products
    ```

    Args:
      operator: a :class:`~tf_sharpest.operators.CurvatureOperator` on one
        device (see :meth:`supports`); its sample must not change while in use.
      max_size: the most basis vectors held at once.
    """

    def __init__(self, operator, max_size: int):
        if not self.supports(operator):
            raise ValueError(f"BatchProjections needs a curvature operator whose products are summed over its "
                             f"batches on one device; got {type(operator).__name__}. Use sampling_stderr instead.")
        self.operator = operator
        self.weights = np.asarray(operator.sample.weights, dtype=np.float64)
        self.matrices = np.zeros((len(self.weights), max_size, max_size))
        #: False once a product inside :meth:`step` handed out no per-batch part (an operator whose products
        #: bypass the accumulation): the matrices are then incomplete and :meth:`stderr` is NaN.
        self.complete = True
        self._basis = self._rows = self._parts = None
        self._column = 0

    @staticmethod
    def supports(operator) -> bool:
        """Whether ``operator`` hands out its per-batch parts: a curvature operator on one device."""
        return isinstance(operator, CurvatureOperator) and operator.num_replicas == 1

    @contextlib.contextmanager
    def step(self, basis, size: int):
        """Around the product of ``basis[size]``: fills column (and row) ``size`` of every ``S_b``."""
        # basis[size] is written inside the block (by the solver, before its product): read at the first part.
        self._basis, self._rows, self._column, self._parts = basis, None, size, []
        self.matrices[:, : size + 1, size] = 0.0
        with self.operator.observing_batches(self._observe):
            yield
        self.complete = self.complete and bool(self._parts)
        # One transfer to NumPy per step (not per batch): the projections stay on the device until now.
        for batch, projection in self._parts:
            self.matrices[batch, : size + 1, size] += projection.numpy().astype(np.float64)
        self.matrices[:, size, :size] = self.matrices[:, :size, size]
        self._basis = self._rows = self._parts = None

    def _observe(self, batch: int, part) -> None:
        if self._rows is None:
            self._rows = tf.convert_to_tensor(self._basis[: self._column + 1])
        self._parts.append((batch, tf.linalg.matvec(self._rows, tf.cast(part, self._rows.dtype))))

    def restart(self, combination: np.ndarray) -> None:
        """The basis ``Q[:size]`` became ``Q[:size] @ combination`` (``C``, ``[size, keep]``): ``S_b -> C^T S_b C``."""
        size, keep = combination.shape
        rotated = np.einsum("ik,bij,jl->bkl", combination, self.matrices[:, :size, :size], combination)
        self.matrices[:] = 0.0
        self.matrices[:, :keep, :keep] = (rotated + np.swapaxes(rotated, 1, 2)) / 2

    def quotients(self, coefficients: np.ndarray) -> np.ndarray:
        """``[num_batches, k]``: each batch's Rayleigh quotients of the Ritz vectors ``Q[:size] @ coefficients``."""
        size = coefficients.shape[0]
        weighted = np.einsum("ik,bij,jk->bk", coefficients, self.matrices[:, :size, :size], coefficients)
        return weighted / self.weights[:, None]

    def stderr(self, coefficients: np.ndarray) -> np.ndarray:
        """``[k]``: the sampling errors of the Ritz vectors ``Q[:size] @ coefficients`` (NaN for one batch, or
        when not :attr:`complete`)."""
        if not self.complete:
            return np.full(coefficients.shape[1], np.nan)
        return stderr_of_mean(self.quotients(coefficients), self.weights)
