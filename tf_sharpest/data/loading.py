"""``load``: CIFAR-10 and Fashion-MNIST as the paper used them, from whichever source is present."""

from __future__ import annotations

import contextlib
import logging
import os

import numpy as np

from tf_sharpest.data import cifar, idx, tfds_source
from tf_sharpest.data.errors import CorruptDataError, DataNotFoundError
from tf_sharpest.data.splits import Splits, preprocess, split_train_valid

__all__ = ["DATASETS", "SOURCES", "canonical_name", "load"]

logger = logging.getLogger(__name__)

#: Canonical dataset name -> image shape, full training-set size, validation size.
DATASETS = {
    "cifar10": {"shape": (32, 32, 3), "n_train": 50000, "n_valid": 5000, "title": "CIFAR-10"},
    "fashion_mnist": {"shape": (28, 28, 1), "n_train": 60000, "n_valid": 10000,
                      "title": "Fashion-MNIST"},
}

_NAME_ALIASES = {
    "cifar10": "cifar10", "cifar": "cifar10", "cifar-10": "cifar10", "cifar_10": "cifar10",
    "fashion_mnist": "fashion_mnist", "fmnist": "fashion_mnist",
    "fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist",
}

#: Accepted ``source`` values. ``"idx"`` (Fashion-MNIST) and ``"cifar_python"``
#: (CIFAR-10) are dataset-specific spellings of ``"files"``.
SOURCES = ("auto", "tfds", "files", "idx", "cifar_python")

_HOW_TO = {
    "cifar10": (
        "How to get CIFAR-10: on a machine with internet run "
        "`python -c \"import tensorflow_datasets as tfds; tfds.load('cifar10', data_dir='DIR')\"` "
        "and pass data_dir='DIR' (copy DIR over if needed); or download "
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and put the tarball, or the "
        "cifar-10-batches-py folder it contains, in data_dir."
    ),
    "fashion_mnist": (
        "How to get Fashion-MNIST: on Debian/Ubuntu `apt-get install dataset-fashion-mnist` "
        "(installs the IDX files under /usr/share/datasets/fashion-mnist); or put the four files "
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
        "t10k-labels-idx1-ubyte.gz (from https://github.com/zalandoresearch/fashion-mnist, "
        "data/fashion) in data_dir; or, with internet, "
        "`tfds.load('fashion_mnist', data_dir='DIR')` and pass data_dir='DIR'."
    ),
}


def canonical_name(name: str) -> str:
    """``"cifar10"`` or ``"fashion_mnist"`` for any accepted spelling of a dataset name."""
    key = str(name).strip().lower()
    if key not in _NAME_ALIASES:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {sorted(_NAME_ALIASES)}.")
    return _NAME_ALIASES[key]


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


def _tfds_where(data_dir) -> str:
    if data_dir is not None:
        return os.fspath(data_dir)
    return os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets (TFDS default)")


def _find_files(name, data_dir):
    if name == "cifar10":
        place, tried = cifar.find_cifar10(data_dir)
        what = "CIFAR-10 python batches or tarball"
    else:
        place, tried = idx.find_fashion_mnist(data_dir)
        what = "Fashion-MNIST IDX files"
    return place, [f"{what} in {t}: not found" for t in tried]


def _read_files(name, place):
    if name == "cifar10":
        return cifar.read_cifar10(place)
    return idx.read_fashion_mnist(place)


@contextlib.contextmanager
def _quiet_absl():
    """Mutes absl's log below ERROR, which TFDS logs through, while ``auto`` asks for a prepared copy.

    Looking for a copy that is absent makes TFDS warn ("Variant folder ... has
    no dataset_info.json") and log "Constructing tf.data.Dataset ..."; the
    outcome is reported by ``load`` (its source, or every place tried).
    A download is never muted: its progress is the user's to see.
    """
    try:
        from absl import logging as absl_logging
    except ImportError:  # absl comes with TensorFlow; without it there is nothing to mute
        yield
        return
    previous = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(previous)


def _raw(name: str, data_dir, source: str, download: bool):
    """``(x_train, y_train, x_test, y_test, description)`` from the chosen source(s)."""
    title = DATASETS[name]["title"]
    tried = []
    if source == "tfds":
        try:
            return (*tfds_source.load_tfds(name, data_dir=data_dir, download=download),
                    f"tfds:{tfds_source.TFDS_NAMES[name]} ({_tfds_where(data_dir)})")
        except Exception as e:  # TFDS raises many types for an absent dataset
            tried.append(f"tensorflow_datasets {tfds_source.TFDS_NAMES[name]!r} in "
                         f"{_tfds_where(data_dir)} (download={download}): {_reason(e)}")
    elif source == "files":
        place, lines = _find_files(name, data_dir)
        if place is not None:
            return (*_read_files(name, place), f"files:{place}")
        tried += lines
    else:  # auto
        # Local files first: reading them needs neither tensorflow_datasets nor the network, and asking TFDS
        # first made every load print TFDS' warnings about a copy that is not there.
        place, lines = _find_files(name, data_dir)
        if place is not None:
            # A found but corrupt local copy raises here: never fall back silently.
            return (*_read_files(name, place), f"files:{place}")
        tried += lines
        try:
            with _quiet_absl():
                return (*tfds_source.load_tfds(name, data_dir=data_dir, download=False),
                        f"tfds:{tfds_source.TFDS_NAMES[name]} ({_tfds_where(data_dir)})")
        except Exception as e:  # TFDS raises many types for an absent dataset
            tried.append(f"prepared tensorflow_datasets copy {tfds_source.TFDS_NAMES[name]!r} in "
                         f"{_tfds_where(data_dir)}: {_reason(e)}")
        if download:
            try:
                return (*tfds_source.load_tfds(name, data_dir=data_dir, download=True),
                        f"tfds:{tfds_source.TFDS_NAMES[name]} ({_tfds_where(data_dir)})")
            except Exception as e:
                tried.append(f"download through tensorflow_datasets into {_tfds_where(data_dir)}: "
                             f"{_reason(e)}")
        else:
            tried.append("download through tensorflow_datasets: skipped (download=False)")
    raise DataNotFoundError(
        f"Could not load {title} (source={source!r}). Tried:\n"
        + "".join(f"  - {t}\n" for t in tried) + _HOW_TO[name]
    )


def _validate(name, x, y, part, where):
    shape = DATASETS[name]["shape"]
    if x.dtype != np.uint8 or x.shape[1:] != shape:
        raise CorruptDataError(
            f"{where}: {part} images must be uint8 of shape (N, {', '.join(map(str, shape))}), "
            f"found {x.dtype} {x.shape}.")
    if y.shape != (len(x),):
        raise CorruptDataError(f"{where}: {part} labels have shape {y.shape} for {len(x)} images.")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise CorruptDataError(f"{where}: {part} labels outside 0..9.")


def load(name: str, *, data_dir=None, data_seed: int = 777, source: str = "auto",
         preprocessing: str = "center", n_valid: int | None = None,
         download: bool = True) -> Splits:
    """Load CIFAR-10 or Fashion-MNIST with the paper's split and preprocessing.

    The training set is split by a seeded permutation
    (``np.random.RandomState(data_seed).permutation``) into training and
    validation parts: 45,000 / 5,000 for CIFAR-10, 50,000 / 10,000 for
    Fashion-MNIST. The test set is kept whole and in order. ``"center"``
    preprocessing subtracts the per-pixel mean of the training part and
    divides by one global std of the training part; validation and test
    images get the same transform.

    Sources (``source``):

    * ``"auto"`` (default) tries, in order: local raw files (Fashion-MNIST
      IDX files in ``data_dir``, ``data_dir/fashion_mnist``,
      ``data_dir/fashion-mnist``, Keras' cache ``~/.keras/datasets/fashion-mnist``
      and ``/usr/share/datasets/fashion-mnist`` from Debian's
      ``dataset-fashion-mnist``; CIFAR-10 ``cifar-10-batches-py`` folder,
      batches or ``cifar-10-python.tar.gz`` in ``data_dir`` or
      ``~/.keras/datasets``); a prepared ``tensorflow_datasets`` copy in
      ``data_dir`` (TFDS' default directory when ``None``), looked for with
      TFDS' log muted below errors; then, if ``download``, ``tfds.load`` with
      download into ``data_dir`` (needs internet). Local files that are found
      but corrupt raise :class:`CorruptDataError` rather than being skipped.
      The returned ``source`` says which one was used. TFDS stores the
      examples in its own order, so the seeded split of a TFDS copy need not
      match that of the raw files: pass ``source`` to pin one.
    * ``"tfds"``: only ``tfds.load(..., data_dir=data_dir, download=download)``.
    * ``"files"`` (alias ``"idx"`` for Fashion-MNIST, ``"cifar_python"`` for
      CIFAR-10): only the local raw files above.

    Args:
      name: ``"cifar10"`` (or ``"cifar"``) or ``"fashion_mnist"`` (or ``"fmnist"``).
      data_dir: directory of a TFDS copy and/or of raw files.
      data_seed: seed of the train/valid permutation.
      source: see above.
      preprocessing: ``"center"`` (default), ``"01"`` (divide by 255) or
        ``"none"`` (float32 raw values).
      n_valid: validation size; ``None`` for 5,000 (CIFAR-10) or 10,000
        (Fashion-MNIST) on the full training set (the same fraction of a
        smaller one).
      download: allow TFDS to download (``"auto"``: as the last resort).

    Returns:
      :class:`~tf_sharpest.data.splits.Splits` with ``x_train, y_train,
      x_valid, y_valid, x_test, y_test`` (float32 NHWC images, int64 labels),
      also unpackable as that 6-tuple, plus ``source``, ``mean`` and ``std``.

    Raises:
      ValueError: unknown name, source or preprocessing.
      DataNotFoundError: no source holds the data; the message lists every
        place tried and how to get the data.
      CorruptDataError: a truncated or corrupt file (named in the message).
    """
    name = canonical_name(name)
    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; choose one of {list(SOURCES)}.")
    if source == "idx" and name != "fashion_mnist":
        raise ValueError("source='idx' is for Fashion-MNIST; use 'files' or 'cifar_python' for CIFAR-10.")
    if source == "cifar_python" and name != "cifar10":
        raise ValueError("source='cifar_python' is for CIFAR-10; use 'files' or 'idx' for Fashion-MNIST.")
    if source in ("idx", "cifar_python"):
        source = "files"
    if preprocessing is None:
        preprocessing = "none"

    x_train, y_train, x_test, y_test, where = _raw(name, data_dir, source, download)
    _validate(name, x_train, y_train, "training", where)
    _validate(name, x_test, y_test, "test", where)
    logger.info("Loaded %s from %s: %d training and %d test images.",
                name, where, len(x_train), len(x_test))

    n = len(x_train)
    spec = DATASETS[name]
    if n_valid is None:
        n_valid = int(round(n * spec["n_valid"] / spec["n_train"]))
    train_idx, valid_idx = split_train_valid(n, int(n_valid), data_seed)
    xt, (xv, xs), mean, std = preprocess(x_train[train_idx], [x_train[valid_idx], x_test],
                                         preprocessing)
    return Splits(
        x_train=xt, y_train=y_train[train_idx].astype(np.int64),
        x_valid=xv, y_valid=y_train[valid_idx].astype(np.int64),
        x_test=xs, y_test=y_test.astype(np.int64),
        name=name, source=where, preprocessing=preprocessing, mean=mean, std=std,
        num_classes=10, data_seed=data_seed, train_indices=train_idx, valid_indices=valid_idx,
    )
