"""The ``tensorflow_datasets`` source: a prepared TFDS copy, or a download through TFDS."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["TFDS_NAMES", "load_tfds"]

#: tf_sharpest dataset name -> TFDS builder name.
TFDS_NAMES = {"cifar10": "cifar10", "fashion_mnist": "fashion_mnist"}


def load_tfds(name: str, *, data_dir=None, download: bool = True, batch_size: int = 10000):
    """Load the ``train`` and ``test`` splits of a TFDS dataset as NumPy arrays.

    Calls ``tfds.load(..., data_dir=data_dir, download=download,
    as_supervised=True)``: with ``download=True`` TFDS downloads and prepares
    the data under ``data_dir`` (default ``~/tensorflow_datasets`` or
    ``$TFDS_DATA_DIR``) when it is not there yet, which needs internet access;
    with ``download=False`` only a prepared copy is used.

    Returns:
      ``(x_train, y_train, x_test, y_test)``: uint8 NHWC images and int64 labels.

    Raises:
      ImportError: ``tensorflow_datasets`` is not installed.
      Exception: whatever TFDS raises when the data is absent or cannot be
        downloaded (the caller reports it).
    """
    import tensorflow_datasets as tfds  # slow import: only when this source is used

    train, test = tfds.load(
        TFDS_NAMES[name], split=["train", "test"], as_supervised=True, download=download,
        data_dir=None if data_dir is None else os.fspath(data_dir), shuffle_files=False,
    )
    out = []
    for ds in (train, test):
        xs, ys = [], []
        for x, y in tfds.as_numpy(ds.batch(batch_size)):
            xs.append(x)
            ys.append(y)
        if not xs:
            raise ValueError(f"TFDS dataset {TFDS_NAMES[name]!r} has an empty split.")
        out += [np.concatenate(xs), np.concatenate(ys).astype(np.int64)]
    return tuple(out)
