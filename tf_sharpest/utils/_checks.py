"""Argument checks with messages that say what to pass instead.

Every check returns the value normalized (``int`` / ``float`` / the chosen
string), so a caller writes ``k = integer("k", k, low=1, high=dim)`` and never
repeats the test. NumPy scalars are accepted, ``bool`` is not a number here.
"""

from __future__ import annotations

import numbers

import numpy as np


def is_integer(value) -> bool:
    """Whether ``value`` is an integer (Python or NumPy), ``bool`` excluded."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral)


def positive_int(name: str, value, *, allow_none: bool = False):
    """``int(value)`` if it is a positive integer (NumPy integers too), else a ``ValueError`` naming ``name``."""
    if value is None and allow_none:
        return None
    if not is_integer(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def integer(name: str, value, *, low: int | None = None, high: int | None = None, bounds: str | None = None,
            hint: str = "") -> int:
    """``int(value)`` if it is an integer with ``low <= value <= high`` (either bound may be None).

    Args:
      name: the argument's name, for the message.
      value: what the caller passed.
      low, high: inclusive bounds.
      bounds: how the message states the bounds when they have names, e.g.
        ``"with 1 <= k <= dim=10"``; default from ``low`` and ``high``
        (``">= 1"``, ``"with 1 <= k <= 10"``).
      hint: a sentence appended to the message, e.g. what to pass instead.

    Raises:
      ValueError: ``"{name} must be an integer {bounds}, got {value!r}."`` and the hint.
    """
    if not is_integer(value) or (low is not None and value < low) or (high is not None and value > high):
        if bounds is None:
            if low is not None and high is not None:
                bounds = f"with {low} <= {name} <= {high}"
            else:
                bounds = "" if low is None and high is None else f">= {low}" if high is None else f"<= {high}"
        message = f"{name} must be an integer {bounds}".rstrip() + f", got {value!r}."
        raise ValueError(f"{message} {hint}" if hint else message)
    return int(value)


def positive_float(name: str, value, *, allow_none: bool = False):
    """``float(value)`` if it is a finite number > 0 (NumPy scalars too), else a ``ValueError`` naming ``name``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
    return float(value)


def choice(name: str, value, choices: tuple):
    """``value`` if it is one of ``choices``, else a ``ValueError`` listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
    return value
