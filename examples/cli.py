"""What the programs (examples, experiments, benchmarks) share: argparse value types and markdown tables.

A bad size or rate is a usage error before anything loads: only the standard
library is imported here, so that ``--help`` and usage errors come back at
once, without the seconds TensorFlow takes to import.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the docstring's layout and adds each option's default to its help."""


def positive_int(text: str) -> int:
    """An integer > 0 (sizes, counts, epochs)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def finite_float(text: str) -> float:
    """A finite number (not nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def number_list(text: str, kind: type = float) -> list:
    """Comma-separated numbers, at least one: finite for ``float``, positive for ``int``.

    An argparse ``type`` (``type=number_list``, or ``type=lambda t: number_list(t, int)``); a bad list
    is a usage error naming what was expected.
    """
    kind_name = "positive integers" if kind is int else "finite numbers"
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {kind_name}, got {text!r}") from None
    if not values or any(v < 1 if kind is int else not math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated {kind_name}, got {text!r}")
    return values


def positive_int_list(text: str) -> list[int]:
    """Comma-separated positive integers (sizes, counts), at least one."""
    return number_list(text, int)


def nonnegative_int_list(text: str) -> list[int]:
    """Comma-separated integers >= 0 (seeds, epochs counted from 0), at least one."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {text!r}")
    return values


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub-flavoured markdown table: one header row, then one row per entry of ``rows``."""
    lines = ["| " + " | ".join(str(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
