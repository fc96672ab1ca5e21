"""The one interface every curvature operator offers and every algorithm takes.

An operator is a symmetric linear map on flat vectors (see
:class:`tf_sharpest.utils.FlatLayout`). Algorithms (eigensolvers, trace, diagonal and
spectral density estimators) only ever call ``matvec``/``matmat`` and read
``dim`` and ``dtype``, so every curvature operator (Hessian, GGN, empirical
Fisher, blocks, preconditioned) plugs into all of them alike. Operators add,
subtract and scale lazily (``a + b``, ``a - b``, ``c * a``), and convert to
SciPy's and TensorFlow's own linear operators (``to_scipy``, ``to_tf``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import numpy as np
import tensorflow as tf


class LinearOperator(abc.ABC):
    """A symmetric linear operator ``v -> A v`` on flat vectors of length ``dim``.

    Subclasses implement ``_matvec`` on a flat ``tf.Tensor`` of ``dtype``.
    ``matvec`` converts its input, checks its shape and counts the products, so
    callers can report the cost of an algorithm in matvecs.

    Example:

    ```python
    import scipy.sparse.linalg

    hessian = HessianOperator(model, (x, y))
    ggn = GGNOperator(model, (x, y))
    residual = hessian - ggn                 # lazy: each product is both operators' products, subtracted
    damped = ggn + 1e-3 * MatrixOperator(np.eye(ggn.dim, dtype="float32"))
    top = scipy.sparse.linalg.eigsh(hessian.to_scipy(), k=3, which="LA", return_eigenvectors=False)
    rhs = tf.ones([ggn.dim])
    solution = tf.linalg.experimental.conjugate_gradient(damped.to_tf(is_positive_definite=True), rhs, max_iter=20).x
    ```
    """

    def __init__(self, dim: int, dtype=tf.float32):
        if int(dim) < 1:
            raise ValueError(f"An operator needs dim >= 1, got {dim}.")
        self._dim = int(dim)
        self._dtype = tf.as_dtype(dtype)
        self.num_matvecs = 0

    @property
    def dim(self) -> int:
        """Length of the vectors the operator acts on."""
        return self._dim

    @property
    def dtype(self) -> tf.DType:
        """Floating dtype of the vectors the operator takes and returns."""
        return self._dtype

    @abc.abstractmethod
    def _matvec(self, vector: tf.Tensor) -> tf.Tensor:
        """Returns ``A @ vector`` for a flat tensor of shape ``[dim]`` and ``self.dtype``."""

    def matvec(self, vector) -> tf.Tensor:
        """Returns ``A @ vector`` as a flat ``tf.Tensor``; ``vector`` may be NumPy or a tensor."""
        vector = tf.convert_to_tensor(vector, dtype=self._dtype)
        if vector.shape.rank != 1 or vector.shape[0] != self._dim:
            raise ValueError(
                f"matvec takes a flat vector of length {self._dim}; got shape {tuple(vector.shape)}."
            )
        result = self._matvec(vector)
        self.num_matvecs += 1
        return result

    __call__ = matvec

    def matmat(self, vectors) -> tf.Tensor:
        """Returns ``A @ V`` for a block ``V`` of shape ``[dim, k]``, as a ``[dim, k]`` tensor.

        The base implementation applies ``matvec`` column by column (``k``
        products, counted in ``num_matvecs``); operators with a cheaper block
        product override ``_matmat``. Probe-based algorithms (trace, diagonal,
        block eigensolvers) call this.
        """
        vectors = tf.convert_to_tensor(vectors, dtype=self._dtype)
        if vectors.shape.rank != 2 or vectors.shape[0] != self._dim:
            raise ValueError(
                f"matmat takes a [dim={self._dim}, k] block of vectors; got shape {tuple(vectors.shape)}."
            )
        if vectors.shape[1] == 0:
            return tf.zeros([self._dim, 0], self._dtype)
        result = self._matmat(vectors)
        self.num_matvecs += int(vectors.shape[1])
        return result

    def _matmat(self, vectors: tf.Tensor) -> tf.Tensor:
        """``A @ V`` for a ``[dim, k]`` tensor; override where a block product is cheaper than ``k`` matvecs."""
        return tf.stack([self._matvec(vectors[:, i]) for i in range(vectors.shape[1])], axis=1)

    # -- algebra: lazy linear combinations ------------------------------------------------------------
    __array_ufunc__ = None  # NumPy scalars defer to __rmul__ (np.float64(2) * op is an operator, not an array)

    def __add__(self, other):
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return _combination([(1.0, self), (1.0, other)])

    def __sub__(self, other):
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return _combination([(1.0, self), (-1.0, other)])

    def __mul__(self, coefficient):
        return _combination([(coefficient, self)])  # refuses anything but a real number, saying why

    __rmul__ = __mul__

    def __neg__(self):
        return _combination([(-1.0, self)])

    # -- ways out: SciPy and TensorFlow's own linear operators ---------------------------------------------
    def to_scipy(self):
        """This operator as a ``scipy.sparse.linalg.LinearOperator`` (symmetric, of this ``dim`` and ``dtype``).

        SciPy's iterative solvers then take it as they are: ``eigsh``,
        ``lobpcg``, ``cg``, ``minres``. Products go through ``matvec`` and
        ``matmat`` (the block product where there is one) and are counted in
        ``num_matvecs``; vectors come back as NumPy arrays.

        Example:

        ```python
        import scipy.sparse.linalg

        values, vectors = scipy.sparse.linalg.eigsh(hessian.to_scipy(), k=3, which="LA")
        damped = GGNOperator(model, (x, y)) + 0.1 * MatrixOperator(np.eye(hessian.dim, dtype="float32"))
        solution, info = scipy.sparse.linalg.cg(damped.to_scipy(), np.ones(hessian.dim, "float32"), maxiter=20)
        ```
        """
        from tf_sharpest.operators._scipy import as_scipy_operator

        return as_scipy_operator(self)

    def to_tf(self, *, is_positive_definite: bool | None = None) -> tf.linalg.LinearOperator:
        """This operator as a self-adjoint ``tf.linalg.LinearOperator`` of shape ``[dim, dim]`` and its ``dtype``.

        TensorFlow's linear algebra then takes it: ``matmul``, ``matvec``,
        ``to_dense``, ``tf.linalg.experimental.conjugate_gradient``, and
        compositions with other ``tf.linalg`` operators. Products are this
        operator's own (counted in ``num_matvecs``); run them eagerly.

        Args:
          is_positive_definite: a hint TensorFlow's solvers check (conjugate
            gradients needs ``True``): pass it for an operator you know is
            positive definite, e.g. a damped Gauss-Newton matrix.

        Example:

        ```python
        ggn = GGNOperator(model, (x, y))
        damped = ggn + 0.1 * MatrixOperator(np.eye(ggn.dim, dtype="float32"))
        tf_operator = damped.to_tf(is_positive_definite=True)
        solution = tf.linalg.experimental.conjugate_gradient(tf_operator, tf.ones([ggn.dim]), max_iter=20).x
        ```
        """
        from tf_sharpest.operators._tf_operator import TFLinearOperator

        return TFLinearOperator(self, is_positive_definite=is_positive_definite)


class MatrixOperator(LinearOperator):
    """An explicit symmetric matrix as an operator (references, tests, small problems)."""

    def __init__(self, matrix):
        matrix = tf.convert_to_tensor(matrix)
        if not matrix.dtype.is_floating:
            matrix = tf.cast(matrix, tf.float64)
        if matrix.shape.rank != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"MatrixOperator needs a square matrix, got shape {tuple(matrix.shape)}.")
        super().__init__(matrix.shape[0], matrix.dtype)
        self._matrix = matrix

    def _matvec(self, vector):
        return tf.linalg.matvec(self._matrix, vector)

    def _matmat(self, vectors):
        return tf.matmul(self._matrix, vectors)


class FunctionOperator(LinearOperator):
    """Wraps a plain ``matvec(v)`` callable (NumPy or TensorFlow) as an operator."""

    def __init__(self, matvec: Callable, dim: int, dtype=tf.float32):
        super().__init__(dim, dtype)
        self._function = matvec

    def _matvec(self, vector):
        return tf.reshape(tf.convert_to_tensor(self._function(vector), dtype=self.dtype), [self.dim])


def _combination(terms) -> LinearOperator:
    # Imported here: the combination is itself a LinearOperator, defined after this module.
    from tf_sharpest.operators._combination import LinearCombination

    return LinearCombination(terms)


def as_operator(matvec, dim: int | None = None, dtype=None) -> LinearOperator:
    """Returns ``matvec`` as a :class:`LinearOperator`.

    Accepts an operator (returned as is), a square matrix, or a callable with
    an explicit ``dim``.
    """
    if isinstance(matvec, LinearOperator):
        if dim is not None and int(dim) != matvec.dim:
            raise ValueError(f"dim={dim} does not match the operator's dim={matvec.dim}.")
        return matvec
    if callable(matvec):
        if dim is None:
            raise ValueError("A callable matvec needs dim=, the length of the vectors it acts on.")
        return FunctionOperator(matvec, dim, dtype or tf.float32)
    if isinstance(matvec, (np.ndarray, tf.Tensor)):
        operator = MatrixOperator(matvec if dtype is None else tf.cast(matvec, dtype))
        if dim is not None and int(dim) != operator.dim:
            raise ValueError(f"dim={dim} does not match the matrix of size {operator.dim}.")
        return operator
    raise TypeError(
        f"Expected a LinearOperator, a callable matvec or a square matrix, got {type(matvec).__name__}."
    )
