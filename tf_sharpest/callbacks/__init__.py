"""Keras callbacks that measure and act on the sharpest directions during training."""

from tf_sharpest.callbacks.lanczos_callback import LanczosCallback, Measurement

__all__ = ["LanczosCallback", "Measurement"]
