"""tf_sharpest: see and steer the sharpest directions of a Keras model's loss while it trains.

Layers, each depending only on those before it: ``utils`` → ``operators``
(curvature operators) → ``linalg`` (eigen-algorithms) → ``hessian``,
``analysis`` → ``optimizers``, ``callbacks`` (Keras integrations) →
``models``, ``data`` (the paper's zoo).
"""

__version__ = "0.1.0"

from tf_sharpest import _moved  # noqa: E402

_moved.install()  # the module paths of 0.1 (tf_sharpest.linalg.lanczos, ...) import until 0.3, with a warning

from tf_sharpest import analysis, callbacks, data, hessian, linalg, models, operators, optimizers, utils  # noqa: E402

__all__ = ["analysis", "callbacks", "data", "hessian", "linalg", "models", "operators", "optimizers", "utils",
           "__version__"]
