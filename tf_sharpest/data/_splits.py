"""Train / valid / test splits, the seeded permutation split and the "center" preprocessing."""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["PREPROCESSINGS", "Splits", "center_stats", "preprocess", "split_train_valid"]

#: Preprocessings :func:`preprocess` knows.
PREPROCESSINGS = ("center", "01", "none")


@dataclasses.dataclass(eq=False)
class Splits:
    """A dataset's train / valid / test splits as NumPy arrays.

    ``x_*`` are float32 NHWC images, ``y_*`` int64 labels of shape ``(N,)``.
    Unpacks as a 6-tuple:

    ```python
    x_train, y_train, x_valid, y_valid, x_test, y_test = splits
    ```

    Attributes beyond the arrays: ``name`` (canonical dataset name),
    ``source`` (where the data came from), ``preprocessing``, ``mean`` (the
    per-pixel training mean, ``(1, H, W, C)`` float32, or ``None``), ``std``
    (the global training std, or ``None``), ``num_classes``, ``data_seed`` and
    ``train_indices`` / ``valid_indices`` (positions in the original training
    set).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str = ""
    source: str = ""
    preprocessing: str = "center"
    mean: np.ndarray | None = None
    std: float | None = None
    num_classes: int = 10
    data_seed: int | None = None
    train_indices: np.ndarray | None = None
    valid_indices: np.ndarray | None = None

    def __iter__(self):
        return iter((self.x_train, self.y_train, self.x_valid, self.y_valid, self.x_test, self.y_test))

    def __len__(self):
        return 6

    def __getitem__(self, i):
        return tuple(self)[i]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(height, width, channels)`` of the images."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self):
        return (f"Splits(name={self.name!r}, source={self.source!r}, train={self.x_train.shape}, "
                f"valid={self.x_valid.shape}, test={self.x_test.shape}, "
                f"preprocessing={self.preprocessing!r})")


def split_train_valid(n: int, n_valid: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded permutation split of ``range(n)``: ``(train, valid)``.

    The permutation is ``np.random.RandomState(seed).permutation(n)`` (the
    legacy generator, so the split matches the paper's code for the same data
    order); its first ``n - n_valid`` entries are training examples and the
    last ``n_valid`` validation examples.
    """
    if not 0 <= n_valid < n:
        raise ValueError(f"n_valid must be in [0, {n}), got {n_valid}.")
    perm = np.random.RandomState(seed).permutation(n)
    return perm[: n - n_valid], perm[n - n_valid:]


def center_stats(x: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, float]:
    """Per-pixel mean ``(1, H, W, C)`` and one global std of ``x``, in float64, chunk-wise."""
    n = len(x)
    if n == 0:
        raise ValueError("cannot compute preprocessing statistics of an empty training split.")
    total = np.zeros(x.shape[1:], np.float64)
    sq = 0.0
    for i in range(0, n, chunk):
        c = np.asarray(x[i:i + chunk], dtype=np.float64)
        total += c.sum(axis=0)
        sq += float(np.vdot(c, c))
    mean = total / n
    global_mean = float(mean.mean())
    var = max(sq / (n * mean.size) - global_mean ** 2, 0.0)
    return mean[None], float(np.sqrt(var))


def preprocess(x_train, others, method: str = "center"):
    """Preprocess images with statistics of ``x_train`` only.

    * ``"center"``: subtract the per-pixel training mean and divide by one
      global training std (the std of all training pixel values).
    * ``"01"``: divide by 255.
    * ``"none"``: float32 copies of the raw values.

    Returns:
      ``(x_train, others, mean, std)`` with float32 arrays (``mean``/``std``
      are ``None`` unless ``"center"``).
    """
    if method is None:
        method = "none"
    if method not in PREPROCESSINGS:
        raise ValueError(f"Unknown preprocessing {method!r}; choose one of {list(PREPROCESSINGS)}.")
    if method == "center":
        mean, std = center_stats(x_train)
        if std == 0.0:
            raise ValueError("the training images are constant: their std is 0, cannot center.")
        mean32, std32 = mean.astype(np.float32), np.float32(std)

        def f(a):
            out = np.asarray(a, dtype=np.float32) - mean32
            out /= std32
            return out

        return f(x_train), [f(a) for a in others], mean32, float(std32)
    scale = np.float32(1.0 / 255.0) if method == "01" else None

    def g(a):
        out = np.array(a, dtype=np.float32)
        if scale is not None:
            out *= scale
        return out

    return g(x_train), [g(a) for a in others], None, None
