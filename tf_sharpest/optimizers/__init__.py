"""Optimizers that act on the sharpest directions."""

from tf_sharpest.optimizers.nsgd import NUDGE_CHOICES, NSGD

__all__ = ["NSGD", "NUDGE_CHOICES"]
