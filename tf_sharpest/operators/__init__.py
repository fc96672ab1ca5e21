"""Curvature operators: symmetric linear maps over a model's flattened parameters.

Every operator here shares one base (:class:`CurvatureOperator`): a
per-batch product summed over an immutable :class:`Sample`, on all trainable
variables or a block of them, with a block product ``matmat``. Every
algorithm in :mod:`tf_sharpest.linalg` takes any of them; operators combine
lazily (``a + b``, ``a - b``, ``c * a``) and convert to SciPy's and
TensorFlow's linear operators (``to_scipy()``, ``to_tf()``).
"""

from tf_sharpest.operators._combination import LinearCombination
from tf_sharpest.operators._spec import Curvature
from tf_sharpest.operators._tf_operator import TFLinearOperator
from tf_sharpest.operators._traced import TracedFunctions
from tf_sharpest.operators.base import FunctionOperator, LinearOperator, MatrixOperator, as_operator
from tf_sharpest.operators.blocks import resolve_variables
from tf_sharpest.operators.curvature import CurvatureOperator
from tf_sharpest.operators.empirical_loss import EmpiricalLoss
from tf_sharpest.operators.factory import CURVATURES, curvature_operator
from tf_sharpest.operators.fisher import EmpiricalFisherOperator
from tf_sharpest.operators.ggn import GGNOperator
from tf_sharpest.operators.hessian import HessianOperator
from tf_sharpest.operators.model_loss import ModelLoss
from tf_sharpest.operators.output_curvature import OutputCurvatureOperator
from tf_sharpest.operators.preconditioned import PreconditionedOperator, optimizer_preconditioner
from tf_sharpest.operators.sample import Sample

__all__ = ["LinearOperator", "MatrixOperator", "FunctionOperator", "as_operator", "CurvatureOperator",
           "EmpiricalLoss", "ModelLoss", "Sample", "HessianOperator", "GGNOperator", "EmpiricalFisherOperator",
           "OutputCurvatureOperator", "PreconditionedOperator", "optimizer_preconditioner", "resolve_variables",
           "CURVATURES", "curvature_operator"]
__all__ += ["Curvature"]
__all__ += ["LinearCombination", "TFLinearOperator", "TracedFunctions"]
