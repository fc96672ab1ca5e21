"""Optimizers that act on the sharpest directions, and the protocol a measurement steers them by."""

from tf_sharpest.optimizers._steering import DirectionConsumer
from tf_sharpest.optimizers.nsgd import NSGD, NUDGE_CHOICES, nudge

__all__ = ["DirectionConsumer", "NSGD", "NUDGE_CHOICES", "nudge"]
