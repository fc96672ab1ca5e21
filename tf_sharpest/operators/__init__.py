"""Curvature operators: symmetric linear maps over a model's flattened trainable variables."""

from tf_sharpest.operators.base import FunctionOperator, LinearOperator, MatrixOperator, as_operator
from tf_sharpest.operators.empirical_loss import EmpiricalLoss
from tf_sharpest.operators.hessian import HessianOperator

__all__ = ["LinearOperator", "MatrixOperator", "FunctionOperator", "as_operator", "EmpiricalLoss",
           "HessianOperator"]
