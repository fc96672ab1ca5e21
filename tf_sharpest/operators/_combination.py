"""Lazy linear combinations of operators: what ``a + b``, ``a - b``, ``c * a`` and ``-a`` return."""

from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

from tf_sharpest.operators._base import LinearOperator


class LinearCombination(LinearOperator):
    """``sum_i c_i A_i`` for symmetric operators ``A_i`` of one ``dim`` and ``dtype`` and real scalars ``c_i``.

    Nothing is formed: a product is the sum of the terms' products (each term
    counts its own ``num_matvecs`` too), and ``matmat`` uses each term's block
    product. Sums of combinations are flattened, so ``a + b + c`` holds three
    terms.

    Example:

    ```python
    ggn = GGNOperator(model, (x, y))
    damped = ggn + 0.1 * MatrixOperator(np.eye(ggn.dim, dtype="float32"))   # G + 0.1 I
    difference = hessian - ggn                              # the Hessian's non-Gauss-Newton part
    difference.matvec(v)
    ```

    Args:
      terms: ``(coefficient, operator)`` pairs.

    Raises:
      ValueError: if the operators differ in ``dim`` or ``dtype`` (both named).
      TypeError: for a coefficient that is not a real number.
    """

    def __init__(self, terms):
        flat = []
        for coefficient, operator in terms:
            coefficient = check_coefficient(coefficient)
            if isinstance(operator, LinearCombination):
                flat.extend((coefficient * c, o) for c, o in operator.terms)
            else:
                flat.append((coefficient, operator))
        first = flat[0][1]
        for _, operator in flat[1:]:
            if operator.dim != first.dim:
                raise ValueError(
                    f"Cannot combine operators of different sizes: {type(first).__name__} has dim={first.dim}, "
                    f"{type(operator).__name__} has dim={operator.dim}. Combine operators on the same parameters.")
            if operator.dtype != first.dtype:
                raise ValueError(
                    f"Cannot combine operators of different dtypes: {type(first).__name__} is {first.dtype.name}, "
                    f"{type(operator).__name__} is {operator.dtype.name}. Build both in one dtype.")
        super().__init__(first.dim, first.dtype)
        self.terms = tuple(flat)

    def _matvec(self, vector):
        return tf.add_n([tf.constant(c, self.dtype) * operator.matvec(vector) for c, operator in self.terms])

    def _matmat(self, vectors):
        return tf.add_n([tf.constant(c, self.dtype) * operator.matmat(vectors) for c, operator in self.terms])

    def __repr__(self) -> str:
        return " + ".join(f"{c:g} * {type(o).__name__}" for c, o in self.terms)


def check_coefficient(value) -> float:
    """``float(value)`` for a real, finite scalar; a ``TypeError``/``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(
            f"An operator can be multiplied by a real number only, got {type(value).__name__}. (A product of two "
            "operators is not symmetric in general; apply them one after the other instead.)")
    if not np.isfinite(value):
        raise ValueError(f"An operator's coefficient must be finite, got {value}.")
    return float(value)
