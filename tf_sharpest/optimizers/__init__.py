"""Optimizers that act on the sharpest directions."""

from tf_sharpest.optimizers.nsgd import NSGD, NUDGE_CHOICES

__all__ = ["NSGD", "NUDGE_CHOICES"]
