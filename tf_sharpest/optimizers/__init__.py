"""Optimizers that act on the sharpest directions, and the protocol a measurement steers them by."""

from tf_sharpest.optimizers._nsgd import NSGD, NUDGE_CHOICES, nudge
from tf_sharpest.optimizers._steering import DirectionConsumer

__all__ = ["DirectionConsumer", "NSGD", "NUDGE_CHOICES", "nudge"]
