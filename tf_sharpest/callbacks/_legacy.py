"""The keywords of the previous release, folded into ``curvature=`` and ``solver=`` with a ``DeprecationWarning``.

They keep working until tf_sharpest 0.3 (``REMOVED_IN``); each warning says what to write instead.
"""

from __future__ import annotations

import dataclasses
import warnings

from tf_sharpest.linalg._solvers import LanczosSolver, LOBPCGSolver
from tf_sharpest.operators._spec import Curvature
from tf_sharpest.utils._checks import positive_int
from tf_sharpest.utils._deprecation import REMOVED_IN

_OWNER = "LanczosCallback"
SOLVER_KEYWORDS = ("tol", "max_iterations", "warm_start", "method")
CURVATURE_KEYWORDS = ("variables", "loss", "training", "preconditioned")
OTHER_KEYWORDS = ("blocks", "batch_sharpness", "batch_sharpness_batch_size", "batch_sharpness_num_batches")
METHODS = ("auto", "lanczos", "lobpcg")


def deprecated(owner: str, old: str, instead: str, stacklevel: int = 4) -> None:
    """Warns that keyword ``old`` of ``owner`` is deprecated, saying what to write ``instead``."""
    warnings.warn(f"{owner}(): {old}= is deprecated and will be removed in tf_sharpest {REMOVED_IN}; write "
                  f"{instead} instead.", DeprecationWarning, stacklevel=stacklevel)


def as_curvature(owner: str, curvature, legacy: dict) -> Curvature:
    """``curvature`` as a :class:`Curvature` or callable, with the deprecated ``loss``/``training``/
    ``variables``/``preconditioned`` keywords (in ``legacy``, popped) folded into it."""
    old = {name: legacy.pop(name) for name in ("variables", "loss", "training", "preconditioned") if name in legacy}
    if isinstance(curvature, str):
        spec = Curvature(curvature, **old)
        for name, value in old.items():
            simple = value is None or isinstance(value, (bool, int, float, str))
            shown = f"Curvature({curvature!r}, {name}={repr(value) if simple else '...'})"
            deprecated(owner, name, f"curvature={shown} (tf_sharpest.operators.Curvature)")
        return spec
    if old:
        raise TypeError(f"{owner}() got {', '.join(n + '=' for n in old)} beside curvature={curvature!r}: pass "
                        "them to tf_sharpest.operators.Curvature(...) as curvature= instead.")
    if isinstance(curvature, Curvature) or callable(curvature):
        return curvature
    raise ValueError(f"curvature must be 'hessian', 'ggn', 'empirical_fisher', a tf_sharpest.operators.Curvature "
                     f"or a callable (model, sample) -> operator, got {curvature!r}.")


def legacy_solver(solver, legacy: dict):
    """``solver``, or the one the deprecated ``tol``/``max_iterations``/``warm_start``/``method`` describe."""
    old = {name: legacy.pop(name) for name in SOLVER_KEYWORDS if name in legacy}
    if not old:
        # The default stops once the solver's error is within 0.66 of the sampling error: solver and
        # sample together are then within 1.2 times the sampling error alone.
        return LanczosSolver(eigenvalue_tol="sampling") if solver is None else solver
    if solver is not None:
        raise TypeError(f"{_OWNER}() got {', '.join(n + '=' for n in old)} beside solver=: give them to the "
                        f"solver, e.g. solver={type(solver).__name__}(tol=..., max_matvecs=...).")
    method = old.get("method", "auto")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}; write solver=LanczosSolver(...) or "
                         "solver=LOBPCGSolver(...) (tf_sharpest.linalg).")
    cls = LOBPCGSolver if method == "lobpcg" else LanczosSolver
    options = {"tol": old.get("tol", 1e-3), "max_matvecs": old.get("max_iterations"),
               "warm_start": old.get("warm_start", True)}
    shown = ", ".join(f"{name}={options[name]!r}" for name, given in
                      (("tol", "tol"), ("max_matvecs", "max_iterations"), ("warm_start", "warm_start"))
                      if given in old)
    for name in old:
        deprecated(_OWNER, name, f"solver=tf_sharpest.linalg.{cls.__name__}({shown})")
    return cls(**options)


def legacy_blocks(blocks, curvature) -> dict:
    """The deprecated ``blocks={name: layer}`` as ``{name: Curvature(variables=layer)}``."""
    if blocks is None:
        return {}
    if not isinstance(blocks, dict) or not all(isinstance(k, str) and k for k in blocks):
        raise ValueError("blocks must be a dict {name: layer or variables}, with non-empty string names; better, "
                         "add one LanczosCallback per block (see the DeprecationWarning).")
    if not isinstance(curvature, Curvature):
        raise TypeError("blocks= (deprecated) cannot be combined with a callable curvature=; add one "
                        "LanczosCallback per block instead.")
    deprecated(_OWNER, "blocks", "one more LanczosCallback per block: for name, layer in blocks.items(): "
               "LanczosCallback(data, ..., curvature=tf_sharpest.operators.Curvature(variables=layer), "
               "log_prefix=f\"{name}_\")")
    return {name: dataclasses.replace(curvature, variables=block)
            for name, block in blocks.items()}


def legacy_sharpness(legacy: dict) -> dict | None:
    """The deprecated ``batch_sharpness*`` keywords, or None when batch sharpness is not measured here."""
    given = [name for name in OTHER_KEYWORDS[1:] if name in legacy]
    enabled = bool(legacy.pop("batch_sharpness", False))
    batch_size = positive_int("batch_sharpness_batch_size", legacy.pop("batch_sharpness_batch_size", None),
                              allow_none=True)
    num_batches = positive_int("batch_sharpness_num_batches", legacy.pop("batch_sharpness_num_batches", 8))
    for name in given:
        deprecated(_OWNER, name, "a callback of its own: tf_sharpest.callbacks.BatchSharpnessCallback(data, "
                   f"batch_size={batch_size or 'the training batch size'}, num_batches={num_batches})")
    return {"batch_size": batch_size, "num_batches": num_batches} if enabled else None
