"""CIFAR-10 "python version" files (pickled batches, or the tarball), read and validated.

The distribution ``cifar-10-python.tar.gz`` holds ``cifar-10-batches-py/``
with ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``: each a pickled
dict with ``data`` (uint8, ``(10000, 3072)``, channel-major rows of 32x32
images) and ``labels`` (10,000 ints in 0..9).

Batches are unpickled with a restricted unpickler that only accepts the NumPy
array machinery, so a hostile file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib

import numpy as np

from tf_sharpest.data._errors import CorruptDataError, DataNotFoundError

__all__ = [
    "CIFAR10_BATCH_EXAMPLES",
    "CIFAR10_DIRS",
    "CIFAR10_TARBALL",
    "CIFAR10_TEST_BATCH",
    "CIFAR10_TRAIN_BATCHES",
    "cifar10_places",
    "find_cifar10",
    "read_cifar10",
    "read_cifar10_batch",
]

CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"

#: Examples in each batch file; ``None`` accepts any (consistent) size.
CIFAR10_BATCH_EXAMPLES = 10000

_KERAS_DATASETS = os.path.join(os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras")),
                               "datasets")

#: Places searched after ``data_dir``: Keras' download cache, where
#: ``keras.datasets.cifar10.load_data()`` (Keras 3) leaves
#: ``cifar-10-batches-py-target/cifar-10-batches-py``.
CIFAR10_DIRS = [_KERAS_DATASETS, os.path.join(_KERAS_DATASETS, "cifar-10-batches-py-target")]

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module.startswith("numpy.core."):  # NumPy 1 pickles; NumPy 2 moved it
            try:
                return super().find_class("numpy._core." + module[len("numpy.core."):], name)
            except (ImportError, AttributeError):
                pass
        return super().find_class(module, name)


def _get(d: dict, key: str):
    if key in d:
        return d[key]
    return d.get(key.encode())


def read_cifar10_batch(source, *, name: str | None = None, examples: int | None = -1):
    """Read and validate one CIFAR-10 python batch.

    Args:
      source: a path, or a binary file object (then ``name`` names it in errors).
      name: how errors name the file (default: the path).
      examples: the number of examples required; ``-1`` (default) takes
        :data:`CIFAR10_BATCH_EXAMPLES`, ``None`` accepts any.

    Returns:
      ``(x, y)``: uint8 images ``(N, 32, 32, 3)`` (NHWC) and int64 labels ``(N,)``.

    Raises:
      CorruptDataError: unreadable, truncated or foreign pickle, missing keys,
        wrong sizes or labels; the message names the file.
    """
    if examples == -1:
        examples = CIFAR10_BATCH_EXAMPLES
    label = name or os.fspath(source)
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                raw = f.read()
        else:
            raw = source.read()
        obj = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, ImportError, zlib.error, tarfile.TarError) as e:
        raise CorruptDataError(
            f"{label}: not a readable CIFAR-10 python batch (truncated or corrupt): "
            f"{type(e).__name__}: {e}"
        ) from e
    if not isinstance(obj, dict):
        raise CorruptDataError(f"{label}: expected a pickled dict, found {type(obj).__name__}.")
    data, labels = _get(obj, "data"), _get(obj, "labels")
    missing = [k for k, v in (("data", data), ("labels", labels)) if v is None]
    if missing:
        keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in obj)
        raise CorruptDataError(f"{label}: CIFAR-10 batch lacks key(s) {missing}; it has {keys}.")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise CorruptDataError(
            f"{label}: 'data' must be uint8 of shape (N, 3072), found {data.dtype} {data.shape}."
        )
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise CorruptDataError(f"{label}: 'labels' are not integers: {e}") from e
    if examples is not None and len(data) != examples:
        raise CorruptDataError(f"{label}: expected {examples} examples, found {len(data)}.")
    if len(labels) != len(data):
        raise CorruptDataError(f"{label}: {len(labels)} labels for {len(data)} images.")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise CorruptDataError(f"{label}: labels outside 0..9 (min {labels.min()}, max {labels.max()}).")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    return x, labels


def cifar10_places(data_dir=None) -> list[str]:
    """Places searched for CIFAR-10 python files, in order.

    For each base directory (``data_dir`` when given, then
    :data:`CIFAR10_DIRS`): ``base/cifar-10-batches-py/``, ``base`` itself
    holding the batches, and ``base/cifar-10-python.tar.gz``.
    """
    bases = ([os.fspath(data_dir)] if data_dir is not None else []) + list(CIFAR10_DIRS)
    places = []
    for base in bases:
        places += [os.path.join(base, CIFAR10_FOLDER), base, os.path.join(base, CIFAR10_TARBALL)]
    return places


def _has_batches(directory: str) -> bool:
    names = CIFAR10_TRAIN_BATCHES + (CIFAR10_TEST_BATCH,)
    return os.path.isdir(directory) and any(os.path.isfile(os.path.join(directory, n)) for n in names)


def find_cifar10(data_dir=None) -> tuple[str | None, list[str]]:
    """The first place holding CIFAR-10 python files (a folder or tarball), and every place tried."""
    tried = []
    for place in cifar10_places(data_dir):
        tried.append(place)
        if place.endswith(".tar.gz"):
            if os.path.isfile(place):
                return place, tried
        elif _has_batches(place):
            return place, tried
    return None, tried


def _read_from_tarball(path: str):
    wanted = CIFAR10_TRAIN_BATCHES + (CIFAR10_TEST_BATCH,)
    found = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = os.path.basename(member.name)
                if member.isfile() and base in wanted and base not in found:
                    f = tar.extractfile(member)
                    found[base] = read_cifar10_batch(io.BytesIO(f.read()),
                                                     name=f"{path} (member {member.name})")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise CorruptDataError(f"{path}: truncated or corrupt CIFAR-10 tarball: {type(e).__name__}: {e}") from e
    missing = [n for n in wanted if n not in found]
    if missing:
        raise CorruptDataError(f"{path}: CIFAR-10 tarball lacks {missing}.")
    return found


def read_cifar10(place: str | os.PathLike):
    """Read and validate CIFAR-10 from a batches folder or the ``.tar.gz`` tarball.

    Returns:
      ``(x_train, y_train, x_test, y_test)``: uint8 NHWC images and int64
      labels, training batches concatenated in order 1..5.

    Raises:
      DataNotFoundError: a batch file is missing from the folder.
      CorruptDataError: a truncated or corrupt tarball or batch (named).
    """
    place = os.fspath(place)
    if os.path.isfile(place):
        batches = _read_from_tarball(place)
    else:
        batches = {}
        for n in CIFAR10_TRAIN_BATCHES + (CIFAR10_TEST_BATCH,):
            path = os.path.join(place, n)
            if not os.path.isfile(path):
                raise DataNotFoundError(f"CIFAR-10 in {place} is incomplete: {n} is missing.")
            batches[n] = read_cifar10_batch(path)
    x_train = np.concatenate([batches[n][0] for n in CIFAR10_TRAIN_BATCHES])
    y_train = np.concatenate([batches[n][1] for n in CIFAR10_TRAIN_BATCHES])
    x_test, y_test = batches[CIFAR10_TEST_BATCH]
    return x_train, y_train, x_test, y_test
