"""Small helpers shared by every layer of tf_sharpest (no dependencies on it)."""

from tf_sharpest.utils.flat import FlatLayout

__all__ = ["FlatLayout"]
