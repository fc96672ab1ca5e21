"""Hessian eigenpairs of a Keras model's training loss.

The public entry points: :func:`top_eigenpairs` (a curvature operator solved
by Lanczos in one call), whose home is this module, and
:class:`~tf_sharpest.operators.HessianOperator` (Hessian-vector products).
Each public name has one home: ``HessianOperator`` lives in
:mod:`tf_sharpest.operators` and ``EigenResult`` in :mod:`tf_sharpest.linalg`.
``tf_sharpest.hessian.HessianOperator``, the entry point it had before, still
gives the same class until 0.3, with a ``DeprecationWarning`` naming its home.
"""

from __future__ import annotations

import warnings

import keras

from tf_sharpest.linalg import _options
from tf_sharpest.linalg._lanczos import lanczos
from tf_sharpest.linalg._result import EigenResult
from tf_sharpest.operators._factory import curvature_operator
from tf_sharpest.utils._deprecation import REMOVED_IN, renamed_argument

__all__ = ["top_eigenpairs"]


def top_eigenpairs(model: keras.Model, data, k: int = 5, *, curvature: str = "hessian", variables=None,
                   loss=None, batch_size: int | None = None, training: bool = False, which: str = "largest",
                   tol: float = 1e-4, max_matvecs: int | None = None, seed: int | None = 0,
                   initial_vectors=None, verbose: int = 0, max_iterations: int | None = None,
                   stderr: bool = False) -> EigenResult:
    """The ``k`` extreme eigenpairs of the Hessian (or another curvature) of ``model``'s mean loss over ``data``.

    Example:

    ```python
    result = tf_sharpest.hessian.top_eigenpairs(model, (x[:2250], y[:2250]), k=5)
    print(result.eigenvalues)        # descending, NumPy float64
    result.eigenvectors.shape        # (num_trainable_parameters, 5)
    # The Gauss-Newton matrix of the last layer only:
    top_eigenpairs(model, (x[:2250], y[:2250]), k=5, curvature="ggn", variables=model.layers[-1])
    ```

    Args:
      curvature: ``"hessian"`` (default), ``"ggn"`` (generalized
        Gauss-Newton) or ``"empirical_fisher"``; see
        :mod:`tf_sharpest.operators`.
      variables: ``None`` for all trainable variables, or a block of them (a
        variable, a layer, or a list of variables and layers).

    ``model``, ``data``, ``loss``, ``batch_size`` and ``training`` are as in
    :class:`~tf_sharpest.operators.HessianOperator`; ``which``, ``tol``, ``max_matvecs``, ``seed``,
    ``initial_vectors`` and ``verbose`` as in :func:`tf_sharpest.linalg.lanczos`.
    ``max_iterations`` is the deprecated name of ``max_matvecs`` (a ``DeprecationWarning``; removed in 0.3).
    ``stderr=True`` also measures each eigenvalue's standard error due to the
    sample (the result's ``stderr``; :func:`tf_sharpest.linalg.sampling_stderr`,
    from the solve's own products on one device, ``k`` more products under a
    multi-replica strategy; NaN when ``data`` is a single batch).
    Eigenvectors use the flat layout of the chosen variables
    (``model.trainable_variables`` by default).
    """
    max_matvecs = renamed_argument("top_eigenpairs", "max_iterations", "max_matvecs", max_iterations, max_matvecs)
    # Checked before the operator is built (which reads the data), the rest by lanczos once dim is known.
    _options.tolerance(tol)
    _options.which(which)
    _options.matvec_budget(max_matvecs)
    operator = curvature_operator(curvature, model, data, loss=loss, batch_size=batch_size, training=training,
                                  variables=variables)
    result = lanczos(operator, k=k, which=which, tol=tol, max_matvecs=max_matvecs, seed=seed,
                     initial_vectors=initial_vectors, verbose=verbose, stderr=stderr)
    return result


def __getattr__(name: str):
    # PEP 562: the old import path of HessianOperator works for one more release, and says where it lives now.
    if name == "HessianOperator":
        from tf_sharpest.operators import HessianOperator

        warnings.warn(f"tf_sharpest.hessian.HessianOperator is deprecated and will be removed in tf_sharpest "
                      f"{REMOVED_IN}; write `from tf_sharpest.operators import HessianOperator` instead.",
                      DeprecationWarning, stacklevel=2)
        return HessianOperator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
