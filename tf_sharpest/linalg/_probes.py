"""Random probes and block products shared by the trace, diagonal and density estimators.

Probe vectors are drawn with NumPy from the caller's seed, so an estimate is
the same on every device and in every run. Products go through
``operator.matmat`` in blocks of at most :data:`PROBE_BLOCK` vectors, so an
estimator holds a bounded number of length-``dim`` vectors at a time however
many probes it spends, and the estimators accumulate in float64 whatever the
operator's dtype.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from tf_sharpest.operators._base import LinearOperator, as_operator

# Probes per ``matmat`` call: bounds the extra memory to this many vectors of
# length dim per product, while still letting operators batch the products.
PROBE_BLOCK = 16


def as_symmetric_operator(operator, name: str) -> LinearOperator:
    """``operator`` as a :class:`LinearOperator`; an explicit matrix must be symmetric.

    Args:
      operator: a :class:`LinearOperator` or a square NumPy/TensorFlow matrix.
      name: the calling function, for the error messages.

    Raises:
      ValueError: for a plain callable (it has no ``dim``) or a non-symmetric matrix.
    """
    if isinstance(operator, LinearOperator):
        return operator
    if callable(operator):
        raise ValueError(
            f"{name} takes a LinearOperator or a square matrix; wrap a plain callable as "
            "tf_sharpest.operators.FunctionOperator(fn, dim, dtype)."
        )
    result = as_operator(operator)
    matrix = np.asarray(operator, dtype=np.float64)
    asymmetry = float(np.max(np.abs(matrix - matrix.T)))
    if asymmetry > symmetry_tolerance(result.dtype) * float(np.max(np.abs(matrix))):
        raise ValueError(
            f"{name} needs a symmetric matrix; this one has max |A - A^T| = {asymmetry:.3g}. "
            "Pass (A + A^T) / 2 if only the symmetric part matters."
        )
    return result


def symmetry_tolerance(dtype) -> float:
    """Relative asymmetry above which an operator is not symmetric up to rounding in ``dtype``."""
    eps = float(np.finfo(tf.as_dtype(dtype).as_numpy_dtype).eps)
    return max(1e-6, 1e5 * eps)  # 1e-6 in float64, about 1e-2 in float32


def check_symmetric(probes: tf.Tensor, products: tf.Tensor, dtype) -> None:
    """Refuses an operator whose products show ``u . A v != v . A u`` beyond rounding.

    Costs no matvec: it compares consecutive columns of independent random
    ``probes`` ``[dim, k]`` with their ``products`` (``A @ probes``). For
    independent random ``u``, ``v`` the bilinear form ``u . B v`` has the size
    ``||B v|| ||u|| / sqrt(dim)``, which scales the comparison, so a generic
    non-symmetric operator shows an asymmetry of order 1 and a symmetric one
    only rounding. Fewer than two probes check nothing.

    Raises:
      ValueError: naming the measured relative asymmetry and likely causes.
    """
    if probes.shape[1] < 2:
        return
    u, v = probes[:, :-1], probes[:, 1:]
    au, av = products[:, :-1], products[:, 1:]
    asymmetry = tf.reduce_sum(u * av, axis=0) - tf.reduce_sum(v * au, axis=0)
    scale = (tf.norm(au, axis=0) * tf.norm(v, axis=0) + tf.norm(av, axis=0) * tf.norm(u, axis=0)) / (
        2.0 * np.sqrt(probes.shape[0]))
    relative = float(tf.norm(asymmetry)) / max(float(tf.norm(scale)), np.finfo(float).tiny)
    if relative > symmetry_tolerance(dtype):
        raise ValueError(
            f"The operator is not symmetric: u . A v and v . A u differ by {relative:.3g} relative to their size "
            "for random u, v. These estimators need a symmetric operator (a Hessian, GGN or Fisher); check "
            "that the matvec is deterministic (no dropout or BatchNorm in training mode) and symmetric."
        )


def rademacher(rng: np.random.Generator, dim: int, count: int) -> tf.Tensor:
    """``count`` Rademacher (random +-1) probe vectors as a ``[dim, count]`` float64 tensor.

    Rademacher probes give the smallest variance among Hutchinson's isotropic
    probes (the diagonal of ``A`` contributes none).
    """
    signs = rng.integers(0, 2, size=(dim, count), dtype=np.int8)
    return tf.constant(2.0 * signs - 1.0, tf.float64)


def block_sizes(count: int, block: int = PROBE_BLOCK) -> Iterator[int]:
    """Splits ``count`` probes into blocks of at most ``block``."""
    for start in range(0, count, block):
        yield min(block, count - start)


def representable(operator: LinearOperator, vectors: tf.Tensor) -> tf.Tensor:
    """``vectors`` rounded to the operator's dtype, as float64.

    Estimators use the rounded vectors in their own algebra, so it matches the
    vectors the operator actually multiplied.
    """
    return tf.cast(tf.cast(vectors, operator.dtype), tf.float64)


def refuse_non_finite(product: tf.Tensor, matvec: int | None = None) -> tf.Tensor:
    """``product`` if it is finite, else a ``ValueError`` (naming the ``matvec``-th product of a solve, if given).

    Every algorithm checks each product it receives, so a diverged loss or weights
    fail at once with this message, not later as NaN eigenvalues or estimates.
    """
    if not bool(tf.reduce_all(tf.math.is_finite(product))):
        where = "" if matvec is None else f" at matvec {matvec}"
        raise ValueError(f"The operator returned non-finite values{where}; the loss or the weights have diverged.")
    return product


def apply(operator: LinearOperator, vectors: tf.Tensor) -> tf.Tensor:
    """``A @ vectors`` in float64, one ``matmat`` per block of :data:`PROBE_BLOCK` columns.

    Raises:
      ValueError: when the operator returns NaN or inf.
    """
    products, start = [], 0
    for count in block_sizes(int(vectors.shape[1])):
        block = refuse_non_finite(operator.matmat(tf.cast(vectors[:, start: start + count], operator.dtype)))
        products.append(tf.cast(block, tf.float64))
        start += count
    if not products:
        return tf.zeros([operator.dim, 0], tf.float64)
    return tf.concat(products, axis=1)
