"""How talkative a measuring callback is: its own ``verbose``, or ``fit``'s."""

from __future__ import annotations


def fit_verbosity(params: dict | None) -> int:
    """The verbosity ``model.fit`` runs with, from a callback's ``params``: 0, 1 or 2.

    Keras hands callbacks ``fit``'s ``verbose`` as given, so it may still be
    ``"auto"``, which ``fit`` itself resolves to 1 (a progress bar).
    """
    value = (params or {}).get("verbose", 0)
    if value == "auto":
        return 1
    try:
        return max(0, min(2, int(value or 0)))
    except (TypeError, ValueError):
        return 1
