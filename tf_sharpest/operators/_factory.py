"""Curvature operators by name, for APIs that take ``curvature="hessian"|"ggn"|"empirical_fisher"``."""

from __future__ import annotations

from tf_sharpest.operators._curvature import CurvatureOperator
from tf_sharpest.operators._fisher import EmpiricalFisherOperator
from tf_sharpest.operators._ggn import GGNOperator
from tf_sharpest.operators._hessian import HessianOperator

#: The curvature operators that ``curvature=`` names.
CURVATURES = {"hessian": HessianOperator, "ggn": GGNOperator, "empirical_fisher": EmpiricalFisherOperator}


def check_curvature(curvature: str) -> str:
    """Returns ``curvature`` if it names an operator, else raises a ``ValueError`` listing the names."""
    if not isinstance(curvature, str) or curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {sorted(CURVATURES)}, got {curvature!r}.")
    return curvature


def curvature_operator(curvature: str, model, data, **kwargs) -> CurvatureOperator:
    """``CURVATURES[curvature](model, data, **kwargs)``, with a clear error for an unknown name.

    Example:

    ```python
    ggn = curvature_operator("ggn", model, (x, y), batch_size=256, variables=model.layers[-1])
    ```
    """
    return CURVATURES[check_curvature(curvature)](model, data, **kwargs)
