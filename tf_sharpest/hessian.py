"""Hessian eigenpairs of a Keras model's training loss.

The public entry points: :class:`HessianOperator` (Hessian-vector products)
and :func:`top_eigenpairs` (the operator solved by Lanczos in one call).
"""

from __future__ import annotations

import keras

from tf_sharpest.linalg.lanczos import lanczos
from tf_sharpest.linalg.result import EigenResult
from tf_sharpest.operators.hessian import HessianOperator

__all__ = ["HessianOperator", "top_eigenpairs", "EigenResult"]


def top_eigenpairs(model: keras.Model, data, k: int = 5, *, loss=None, batch_size: int | None = None,
                   training: bool = False, which: str = "largest", tol: float = 1e-4,
                   max_iterations: int | None = None, seed: int | None = 0, initial_vectors=None,
                   verbose: int = 0) -> EigenResult:
    """The ``k`` extreme eigenpairs of the Hessian of ``model``'s mean loss over ``data``.

    Example:

    ```python
    result = tf_sharpest.hessian.top_eigenpairs(model, (x[:2250], y[:2250]), k=5)
    print(result.eigenvalues)        # descending, NumPy float64
    result.eigenvectors.shape        # (num_trainable_parameters, 5)
    ```

    ``model``, ``data``, ``loss``, ``batch_size`` and ``training`` are as in
    :class:`HessianOperator`; ``which``, ``tol``, ``max_iterations``, ``seed``,
    ``initial_vectors`` and ``verbose`` as in :func:`tf_sharpest.linalg.lanczos`.
    Eigenvectors use the flat layout of ``model.trainable_variables``.
    """
    operator = HessianOperator(model, data, loss=loss, batch_size=batch_size, training=training)
    return lanczos(operator, k=k, which=which, tol=tol, max_iterations=max_iterations, seed=seed,
                   initial_vectors=initial_vectors, verbose=verbose)
