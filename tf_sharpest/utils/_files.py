"""Atomic file writes, so an interrupted run never leaves a half-written result file."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

# Attempts at a fresh temporary name before giving up (a clash needs 64 random bits to repeat).
_NAME_ATTEMPTS = 100


def _create_temporary(folder: str, suffix: str) -> str:
    """Creates an empty, new file in ``folder``; returns its path.

    ``tempfile.mkstemp`` would create it with mode 0600, and ``os.replace``
    keeps that mode, so results would be unreadable to the user's group
    (``lanczos.npz``, ``history.csv``, ...). Opened here with 0666 instead, the
    file gets what an ordinary ``open(path, "w")`` gives: 0666 less the umask.
    """
    for _ in range(_NAME_ATTEMPTS):
        temporary = os.path.join(folder, f".tmp-{secrets.token_hex(8)}{suffix}")
        try:
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(handle)
        return temporary
    raise FileExistsError(f"Could not create a new temporary file in {folder} after {_NAME_ATTEMPTS} attempts.")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path in ``path``'s folder; on success it replaces ``path`` in one step.

    The temporary file exists (empty) when yielded; write it by name. It gets
    the permissions of an ordinary new file (0666 less the umask), as does
    ``path`` once replaced. On an exception the temporary file is removed and
    ``path`` is left as it was.

    Args:
      path: the file to write.
      suffix: the temporary file's ending (default: ``path``'s extension,
        which writers such as ``np.savez`` need to keep the name as given).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = _create_temporary(folder, suffix or os.path.splitext(path)[1])
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
