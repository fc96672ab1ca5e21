"""``load``: CIFAR-10 and Fashion-MNIST as the paper used them, from local files or ``tensorflow_datasets``."""

from __future__ import annotations

import contextlib
import logging
import os

import numpy as np

from tf_sharpest.data import _cifar as cifar
from tf_sharpest.data import _idx as idx
from tf_sharpest.data._errors import CorruptDataError, DataNotFoundError
from tf_sharpest.data._splits import Splits, preprocess, split_train_valid

__all__ = ["DATASETS", "SOURCES", "load"]

logger = logging.getLogger(__name__)

#: Dataset name -> image shape, full training-set size, validation size and title.
DATASETS = {
    "cifar10": {"shape": (32, 32, 3), "n_train": 50000, "n_valid": 5000, "title": "CIFAR-10"},
    "fashion_mnist": {"shape": (28, 28, 1), "n_train": 60000, "n_valid": 10000,
                      "title": "Fashion-MNIST"},
}

#: Accepted ``source`` values: ``"files"`` reads local IDX / CIFAR-10 python files.
SOURCES = ("auto", "files", "tfds")

_ZOO = 'pip install "tf_sharpest[zoo]"'

_BY_TFDS = (f"or, with tensorflow_datasets ({_ZOO}) and internet, load(..., data_dir='DIR') downloads it "
            "into DIR (for an offline machine, do that elsewhere and copy DIR over).")

_HOW_TO = {
    "cifar10": (
        "How to get CIFAR-10: download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and put "
        "the tarball, or the cifar-10-batches-py folder it contains, in data_dir; or run "
        "`python -c \"import keras; keras.datasets.cifar10.load_data()\"` (it fills Keras' cache, which "
        "load reads); " + _BY_TFDS
    ),
    "fashion_mnist": (
        "How to get Fashion-MNIST: on Debian/Ubuntu `apt-get install dataset-fashion-mnist` (installs the "
        "IDX files under /usr/share/datasets/fashion-mnist); or put the four files train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (from "
        "https://github.com/zalandoresearch/fashion-mnist, data/fashion) in data_dir; or run "
        "`python -c \"import keras; keras.datasets.fashion_mnist.load_data()\"` (it fills Keras' cache, "
        "which load reads); " + _BY_TFDS
    ),
}


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


def _files(name, data_dir, tried):
    """``(x_train, y_train, x_test, y_test, source)`` from local raw files, or ``None`` (places added to ``tried``)."""
    if name == "cifar10":
        place, places = cifar.find_cifar10(data_dir)
        what, read = "CIFAR-10 python batches or tarball", cifar.read_cifar10
    else:
        place, places = idx.find_fashion_mnist(data_dir)
        what, read = "Fashion-MNIST IDX files", idx.read_fashion_mnist
    if place is None:
        tried += [f"{what} in {p}: not found" for p in places]
        return None
    return (*read(place), f"files:{place}")  # a found but corrupt copy raises: never a silent fallback


@contextlib.contextmanager
def _absl_below_error_muted():
    """Mutes absl's log, which TFDS logs through, below ERROR.

    Looking for a prepared copy that is absent makes TFDS warn ("Variant folder
    ... has no dataset_info.json") and log "Constructing tf.data.Dataset ...";
    the outcome is reported by ``load`` (its source, or every place tried).
    """
    from absl import logging as absl_logging

    previous = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(previous)


def _tfds(tfds, name, data_dir, download, tried):
    """``tfds.load``'s train and test splits as NumPy arrays plus the source, or ``None`` (reason added to ``tried``).

    Without ``download`` only a prepared copy is looked for, with TFDS' log
    muted; a download is never muted: its progress is the user's to see.
    """
    where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets (TFDS default)")
    try:
        with contextlib.nullcontext() if download else _absl_below_error_muted():
            splits = tfds.load(name, split=["train", "test"], as_supervised=True, download=download,
                               data_dir=data_dir, shuffle_files=False)
            arrays = []
            for ds in splits:
                batches = list(tfds.as_numpy(ds.batch(10000)))
                if not batches:
                    raise ValueError("empty split")
                arrays += [np.concatenate([x for x, _ in batches]),
                           np.concatenate([y for _, y in batches]).astype(np.int64)]
    except Exception as e:  # TFDS raises many types for an absent dataset or a failed download
        tried.append(f"tensorflow_datasets {name!r} in {where} (download={download}): {_reason(e)}")
        return None
    return (*arrays, f"tfds:{name} ({where})")


def _raw(name: str, data_dir, source: str, download: bool):
    """``(x_train, y_train, x_test, y_test, source)`` from the first ``source`` that holds the data."""
    tried = []
    # Local files first: reading them needs neither tensorflow_datasets nor the network.
    found = _files(name, data_dir, tried) if source != "tfds" else None
    if found is None and source != "files":
        try:
            import tensorflow_datasets as tfds  # the optional "zoo" extra, slow to import: only when needed
        except ImportError:
            if source == "tfds":
                raise ImportError(f"source='tfds' needs tensorflow_datasets: {_ZOO}") from None
            tried.append(f"tensorflow_datasets: not installed ({_ZOO} lets load download the data)")
        else:
            if source == "tfds":
                attempts = [download]
            else:  # "auto": a prepared copy, looked for quietly, before a download
                attempts = [False, True] if download else [False]
            for attempt in attempts:
                found = _tfds(tfds, name, data_dir, attempt, tried)
                if found is not None:
                    break
            if source == "auto" and not download:
                tried.append("download through tensorflow_datasets: skipped (download=False)")
    if found is None:
        raise DataNotFoundError(
            f"Could not load {DATASETS[name]['title']} (source={source!r}). Tried:\n"
            + "".join(f"  - {t}\n" for t in tried) + _HOW_TO[name])
    return found


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
      batches or ``cifar-10-python.tar.gz`` in ``data_dir`` or Keras' cache
      ``~/.keras/datasets``, as ``keras.datasets.cifar10.load_data()`` leaves
      it); a prepared ``tensorflow_datasets`` copy in
      ``data_dir`` (TFDS' default directory when ``None``), looked for with
      TFDS' log muted below errors; then, if ``download``, ``tfds.load`` with
      download into ``data_dir`` (needs internet). The two TFDS steps need
      ``tensorflow_datasets``, the ``zoo`` extra (``pip install
      "tf_sharpest[zoo]"``); without it they are skipped. Local files that
      are found but corrupt raise :class:`CorruptDataError` rather than being
      skipped. The returned ``source`` says which one was used. TFDS stores
      the examples in its own order, so the seeded split of a TFDS copy need
      not match that of the raw files: pass ``source`` to pin one.
    * ``"files"``: only the local raw files above.
    * ``"tfds"``: only ``tfds.load(..., data_dir=data_dir, download=download)``.

    Args:
      name: ``"cifar10"`` or ``"fashion_mnist"``.
      data_dir: directory of a TFDS copy and/or of raw files (``~`` is expanded).
      data_seed: seed of the train/valid permutation.
      source: see above.
      preprocessing: ``"center"`` (default), ``"01"`` (divide by 255) or
        ``"none"`` (float32 raw values).
      n_valid: validation size; ``None`` for 5,000 (CIFAR-10) or 10,000
        (Fashion-MNIST) on the full training set (the same fraction of a
        smaller one).
      download: allow TFDS to download (``"auto"``: as the last resort).

    Returns:
      :class:`~tf_sharpest.data.Splits` with ``x_train, y_train,
      x_valid, y_valid, x_test, y_test`` (float32 NHWC images, int64 labels),
      also unpackable as that 6-tuple, plus ``source``, ``mean`` and ``std``.

    Raises:
      ValueError: unknown name, source or preprocessing.
      ImportError: ``source="tfds"`` without ``tensorflow_datasets``.
      DataNotFoundError: no source holds the data; the message lists every
        place tried and how to get the data.
      CorruptDataError: a truncated or corrupt file (named in the message).
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; the datasets are "
                         + " and ".join(f"{n!r} ({d['title']})" for n, d in DATASETS.items()) + ".")
    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; choose one of {list(SOURCES)} "
                         "('files' reads local IDX or CIFAR-10 python files).")
    if preprocessing is None:
        preprocessing = "none"
    if data_dir is not None:
        data_dir = os.path.expanduser(os.fspath(data_dir))

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
