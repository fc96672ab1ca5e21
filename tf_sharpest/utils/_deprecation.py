"""Renamed arguments keep working for one release, with a ``DeprecationWarning`` that says what to write."""

from __future__ import annotations

import warnings

__all__ = ["renamed_argument"]

#: The release after which deprecated names stop working.
REMOVED_IN = "0.3"


def renamed_argument(owner: str, old: str, new: str, old_value, new_value, *, default=None, stacklevel: int = 3):
    """The value of an argument renamed from ``old`` to ``new``.

    ``old_value`` is what the caller passed under the old name (``None`` if
    nothing), ``new_value`` under the new one. Passing the old name warns with
    a ``DeprecationWarning`` naming the replacement; passing both is a
    ``TypeError``.

    Example: ``max_matvecs = renamed_argument("lanczos", "max_iterations", "max_matvecs", max_iterations,
    max_matvecs)``.
    """
    if old_value is None:
        return default if new_value is None else new_value
    if new_value is not None:
        raise TypeError(f"{owner}() got both {old}= and {new}=; {old} is the deprecated name of {new}: pass "
                        f"only {new}=.")
    warnings.warn(f"{owner}(): {old}= is deprecated and will be removed in tf_sharpest {REMOVED_IN}; write "
                  f"{new}={old_value!r} instead.", DeprecationWarning, stacklevel=stacklevel)
    return old_value
