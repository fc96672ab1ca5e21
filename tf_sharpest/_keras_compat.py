"""Every access tf_sharpest makes to Keras or TensorFlow beyond their public API, in one place.

Each function here is covered by a contract test in ``tests/test_keras_contract.py``
that fails with a clear message on a Keras or TensorFlow version that changes
what it relies on. The supported versions are bounded in ``setup.cfg``.
"""

from __future__ import annotations

import keras

__all__ = ["unwrap_optimizer"]


def unwrap_optimizer(optimizer):
    """The optimizer that really steps: the inner one of a ``LossScaleOptimizer`` (mixed precision), else itself.

    Under ``keras.mixed_precision.set_global_policy("mixed_float16")``,
    ``model.compile`` wraps the optimizer in ``keras.optimizers.LossScaleOptimizer``;
    its public ``inner_optimizer`` holds the one the user built (an NSGD, an
    Adam whose moments a preconditioner reads, ...).
    """
    while isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    return optimizer
