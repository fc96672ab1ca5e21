"""Errors raised by :mod:`tf_sharpest.data`."""

from __future__ import annotations

__all__ = ["CorruptDataError", "DataNotFoundError"]


class DataNotFoundError(FileNotFoundError):
    """No source of a dataset could be found; the message names each place tried
    and how to get the data."""


class CorruptDataError(ValueError):
    """A data file exists but is truncated, corrupt or not what it should be; the
    message names the file."""
