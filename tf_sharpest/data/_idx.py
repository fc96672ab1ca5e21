"""IDX files (the MNIST / Fashion-MNIST format), read and validated.

An IDX file is a 4-byte magic number ``0x00 0x00 <type> <ndim>``, ``ndim``
big-endian uint32 dimension sizes, then the values in C order. Files may be
gzip-compressed (detected from their first bytes, whatever their name).
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from tf_sharpest.data._errors import CorruptDataError, DataNotFoundError

__all__ = [
    "FASHION_MNIST_COUNTS",
    "FASHION_MNIST_DIRS",
    "FASHION_MNIST_FILES",
    "fashion_mnist_dirs",
    "find_fashion_mnist",
    "read_fashion_mnist",
    "read_idx",
]

# IDX type byte -> big-endian NumPy dtype.
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

#: Stems of the four Fashion-MNIST files, as distributed (each may end in ``.gz``).
FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

#: Number of (training, test) examples a Fashion-MNIST copy must hold.
FASHION_MNIST_COUNTS = (60000, 10000)

#: Places searched after ``data_dir``: Keras' download cache and the directory
#: of Debian's package ``dataset-fashion-mnist``.
FASHION_MNIST_DIRS = [
    os.path.join(os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras")),
                 "datasets", "fashion-mnist"),
    "/usr/share/datasets/fashion-mnist",
]


def _read_bytes(path: str) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic number."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            return gzip.decompress(raw)
        return raw
    except (EOFError, OSError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise CorruptDataError(f"{path}: cannot be read as a (gzip-compressed) IDX file: {e}") from e


def read_idx(path: str | os.PathLike, *, ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a NumPy array.

    The magic number, the number of dimensions (``ndim`` when given) and the
    data length are checked: a truncated file, trailing bytes or a wrong magic
    number raise :class:`CorruptDataError` naming the file.

    Returns:
      An array of the file's shape in native byte order (uint8 for ``ubyte``).
    """
    path = os.fspath(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise CorruptDataError(f"{path}: truncated IDX file ({len(data)} bytes, no complete header).")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise CorruptDataError(
            f"{path}: not an IDX file (magic number 0x{data[:4].hex()}; expected 0x0000TTNN with "
            f"type TT in {{{', '.join(f'{t:02x}' for t in _IDX_TYPES)}}})."
        )
    dtype = _IDX_TYPES[data[2]]
    nd = data[3]
    if ndim is not None and nd != ndim:
        raise CorruptDataError(
            f"{path}: IDX file has {nd} dimension(s) (magic 0x{data[:4].hex()}), expected {ndim}."
        )
    header = 4 + 4 * nd
    if len(data) < header:
        raise CorruptDataError(f"{path}: truncated IDX header ({len(data)} of {header} bytes).")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=nd, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header
    if found < expected:
        raise CorruptDataError(
            f"{path}: truncated IDX file: header announces shape {shape} ({expected} data bytes) "
            f"but only {found} bytes follow."
        )
    if found > expected:
        raise CorruptDataError(
            f"{path}: IDX file has {found - expected} unexpected trailing bytes after the "
            f"{expected} data bytes of shape {shape}."
        )
    arr = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return arr.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def _file_in(directory: str, stem: str) -> str | None:
    for candidate in (stem + ".gz", stem):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def fashion_mnist_dirs(data_dir: str | os.PathLike | None = None) -> list[str]:
    """Directories searched for the Fashion-MNIST IDX files, in order.

    ``data_dir``, ``data_dir/fashion_mnist`` and ``data_dir/fashion-mnist``
    (when ``data_dir`` is given), then :data:`FASHION_MNIST_DIRS`.
    """
    dirs = []
    if data_dir is not None:
        d = os.fspath(data_dir)
        dirs += [d, os.path.join(d, "fashion_mnist"), os.path.join(d, "fashion-mnist")]
    dirs += list(FASHION_MNIST_DIRS)
    return dirs


def find_fashion_mnist(data_dir=None) -> tuple[str | None, list[str]]:
    """The first directory holding any Fashion-MNIST IDX file, and every directory tried."""
    tried = []
    for d in fashion_mnist_dirs(data_dir):
        tried.append(d)
        if os.path.isdir(d) and any(_file_in(d, stem) for stem in FASHION_MNIST_FILES.values()):
            return d, tried
    return None, tried


def read_fashion_mnist(directory: str | os.PathLike, *, counts: tuple[int, int] | None = None):
    """Read and validate the four Fashion-MNIST IDX files of ``directory``.

    Args:
      directory: holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each
        optionally gzip-compressed with a ``.gz`` suffix.
      counts: the (training, test) example counts required; ``None`` takes
        :data:`FASHION_MNIST_COUNTS` (60,000, 10,000).

    Returns:
      ``(x_train, y_train, x_test, y_test)``: uint8 images ``(N, 28, 28, 1)``
      and int64 labels ``(N,)`` in 0..9.

    Raises:
      DataNotFoundError: a file is missing (the dataset would be partial).
      CorruptDataError: a file is truncated or corrupt, has the wrong shape or
        count, or labels and images disagree; the message names the file.
    """
    directory = os.fspath(directory)
    if counts is None:
        counts = FASHION_MNIST_COUNTS
    paths = {}
    for key, stem in FASHION_MNIST_FILES.items():
        path = _file_in(directory, stem)
        if path is None:
            raise DataNotFoundError(
                f"Fashion-MNIST in {directory} is incomplete: {stem}(.gz) is missing."
            )
        paths[key] = path

    out = []
    for part, count in (("train", counts[0]), ("test", counts[1])):
        xp, yp = paths["x_" + part], paths["y_" + part]
        x = read_idx(xp, ndim=3)
        y = read_idx(yp, ndim=1)
        if x.dtype != np.uint8 or x.shape[1:] != (28, 28):
            raise CorruptDataError(f"{xp}: expected uint8 images of 28x28, found {x.dtype} {x.shape}.")
        if y.dtype != np.uint8:
            raise CorruptDataError(f"{yp}: expected uint8 labels, found {y.dtype}.")
        if count is not None and len(x) != count:
            raise CorruptDataError(f"{xp}: expected {count} images, found {len(x)}.")
        if len(y) != len(x):
            raise CorruptDataError(f"{yp}: {len(y)} labels for the {len(x)} images of {xp}.")
        if len(y) and y.max() > 9:
            raise CorruptDataError(f"{yp}: label {int(y.max())} is outside 0..9.")
        out += [x[..., None], y.astype(np.int64)]
    return tuple(out)
