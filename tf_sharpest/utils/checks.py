"""Argument checks with messages that say what to pass instead."""

from __future__ import annotations

import numbers

import numpy as np


def positive_int(name: str, value, *, allow_none: bool = False):
    """``int(value)`` if it is a positive integer (NumPy integers too), else a ``ValueError`` naming ``name``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def positive_float(name: str, value, *, allow_none: bool = False):
    """``float(value)`` if it is a finite number > 0 (NumPy scalars too), else a ``ValueError`` naming ``name``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
    return float(value)
