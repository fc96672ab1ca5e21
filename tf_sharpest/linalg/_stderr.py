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

The cost is one block product per batch for all ``k`` vectors, i.e. ``k``
products on the sample, plus one forward pass per batch (the operator is moved
to each batch with ``set_data``, which evaluates the loss) and one over the
sample to move it back.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_sharpest.linalg._result import EigenResult
from tf_sharpest.operators._preconditioned import PreconditionedOperator
from tf_sharpest.operators._sample import Sample

__all__ = ["batch_rayleigh_quotients", "sampling_stderr"]


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
