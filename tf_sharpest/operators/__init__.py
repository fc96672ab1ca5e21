"""Curvature operators: symmetric linear maps over a model's flattened parameters.

Every operator here shares one base (:class:`CurvatureOperator`): a
per-batch product summed over an immutable :class:`Sample`, on all trainable
variables or a block of them, with a block product ``matmat``. Every
algorithm in :mod:`tf_sharpest.linalg` takes any of them; operators combine
lazily (``a + b``, ``a - b``, ``c * a``) and convert to SciPy's and
TensorFlow's linear operators (``to_scipy()``, ``to_tf()``).
"""

from tf_sharpest.operators._base import FunctionOperator, LinearOperator, MatrixOperator, as_operator
from tf_sharpest.operators._blocks import resolve_variables
from tf_sharpest.operators._combination import LinearCombination
from tf_sharpest.operators._curvature import CurvatureOperator
from tf_sharpest.operators._empirical_loss import EmpiricalLoss
from tf_sharpest.operators._factory import CURVATURES, curvature_operator
from tf_sharpest.operators._fisher import EmpiricalFisherOperator
from tf_sharpest.operators._ggn import GGNOperator
from tf_sharpest.operators._hessian import HessianOperator
from tf_sharpest.operators._model_loss import ModelLoss
from tf_sharpest.operators._output_curvature import OutputCurvatureOperator
from tf_sharpest.operators._preconditioned import PreconditionedOperator, optimizer_preconditioner
from tf_sharpest.operators._sample import Sample
from tf_sharpest.operators._spec import Curvature
from tf_sharpest.operators._tf_operator import TFLinearOperator
from tf_sharpest.operators._traced import TracedFunctions

__all__ = ["LinearOperator", "MatrixOperator", "FunctionOperator", "as_operator", "CurvatureOperator",
           "EmpiricalLoss", "ModelLoss", "Sample", "HessianOperator", "GGNOperator", "EmpiricalFisherOperator",
           "OutputCurvatureOperator", "PreconditionedOperator", "optimizer_preconditioner", "resolve_variables",
           "CURVATURES", "curvature_operator"]
__all__ += ["Curvature"]
__all__ += ["LinearCombination", "TFLinearOperator", "TracedFunctions"]
