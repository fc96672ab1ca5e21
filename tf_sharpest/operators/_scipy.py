"""The way out to SciPy: an operator as a ``scipy.sparse.linalg.LinearOperator``."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def as_scipy_operator(operator):
    """``operator`` as a symmetric ``scipy.sparse.linalg.LinearOperator`` (see ``LinearOperator.to_scipy``)."""
    try:
        from scipy.sparse.linalg import LinearOperator as ScipyLinearOperator
    except ImportError as error:
        raise ImportError("to_scipy() needs SciPy: pip install scipy.") from error

    def matvec(vector):
        vector = np.asarray(vector)
        column = vector.ndim == 2  # SciPy may pass a [dim, 1] column
        flat = tf.convert_to_tensor(np.reshape(vector, [-1]), operator.dtype)
        result = operator.matvec(flat).numpy()
        return result[:, None] if column else result

    def matmat(block):
        return operator.matmat(tf.convert_to_tensor(np.asarray(block), operator.dtype)).numpy()

    dtype = np.dtype(operator.dtype.as_numpy_dtype)
    # Symmetric: the adjoint products are the products.
    return ScipyLinearOperator(shape=(operator.dim, operator.dim), matvec=matvec, rmatvec=matvec, matmat=matmat,
                               rmatmat=matmat, dtype=dtype)
