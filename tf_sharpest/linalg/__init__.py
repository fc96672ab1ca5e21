"""Eigen-algorithms that act on any :class:`tf_sharpest.operators.LinearOperator`."""

from tf_sharpest.linalg.lanczos import lanczos
from tf_sharpest.linalg.result import EigenResult

__all__ = ["lanczos", "EigenResult"]
