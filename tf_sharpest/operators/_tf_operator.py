"""The way out to TensorFlow's linear algebra: an operator as a ``tf.linalg.LinearOperator``."""

from __future__ import annotations

import tensorflow as tf


class TFLinearOperator(tf.linalg.LinearOperator):
    """A tf_sharpest operator as a self-adjoint ``tf.linalg.LinearOperator`` (see ``LinearOperator.to_tf``).

    Example:

    ```python
    tf_operator = hessian.to_tf()
    block = np.random.default_rng(0).standard_normal((hessian.dim, 3)).astype("float32")
    tf_operator.matmul(block)       # [dim, 3], the operator's block product
    tf_operator.to_dense()          # [dim, dim], dim products: small operators only
    ```

    Args:
      operator: a tf_sharpest :class:`~tf_sharpest.operators.LinearOperator`.
      is_positive_definite: the hint TensorFlow's solvers check (``None``: unknown).
      name: the name TensorFlow gives the operator's ops.
    """

    def __init__(self, operator, *, is_positive_definite: bool | None = None, name: str = "TFSharpestOperator"):
        self.operator = operator
        super().__init__(dtype=operator.dtype, is_self_adjoint=True, is_square=True,
                         is_non_singular=True if is_positive_definite else None,
                         is_positive_definite=is_positive_definite,
                         parameters={"operator": operator, "is_positive_definite": is_positive_definite, "name": name},
                         name=name)

    def _shape(self):
        return tf.TensorShape([self.operator.dim, self.operator.dim])

    def _shape_tensor(self):
        return tf.constant([self.operator.dim, self.operator.dim], tf.int32)

    def _matmul(self, x, adjoint=False, adjoint_arg=False):
        # Self-adjoint: A^H = A, so ``adjoint`` changes nothing; ``adjoint_arg`` transposes x.
        x = tf.convert_to_tensor(x, self.dtype)
        if adjoint_arg:
            x = tf.linalg.adjoint(x)
        if x.shape.rank != 2:
            raise ValueError(f"A tf_sharpest operator multiplies a [dim, k] matrix (no batch dimensions); got shape "
                             f"{tuple(x.shape)}.")
        return self.operator.matmat(x)

    def _matvec(self, x, adjoint=False):
        x = tf.convert_to_tensor(x, self.dtype)
        if x.shape.rank != 1:
            return super()._matvec(x, adjoint=adjoint)
        return self.operator.matvec(x)
