"""Where a callback's measurements draw their examples from, one fixed-size sample at a time."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_sharpest.operators.strategy import is_multi_worker
from tf_sharpest.utils.batches import materialize

# A dataset is sampled through a shuffle buffer of this many examples at most
# (and at least one sample's worth): large enough to mix a stream that is not
# shuffled, small enough to keep in memory.
MAX_SHUFFLE_BUFFER = 20_000


def shared_seed(seed: int | None, strategy) -> int | None:
    """``seed``, or 0 when it is None and the strategy spans several workers.

    Every worker must draw the same sample and start vectors, or their shares
    of a product would belong to different samples; a None seed would give
    each process its own.
    """
    return 0 if seed is None and is_multi_worker(strategy) else seed


class SampleSource:
    """Draws ``num_samples`` examples for each measurement, reproducibly from ``seed``.

    * Arrays: a fresh sample without replacement each draw (``resample=True``)
      or the first draw kept.
    * A ``tf.data.Dataset``: with ``resample=True`` its examples pass through
      a seeded shuffle buffer (``min(10 * num_samples, MAX_SHUFFLE_BUFFER)``)
      and successive draws continue the stream, so a dataset that does not
      shuffle still gives a different sample each time; with
      ``resample=False`` the first ``num_samples`` examples are kept.

    Example:

    ```python
    source = SampleSource((x, y), 2250, resample=True, seed=0)
    x_sample, y_sample = source.draw()
    ```
    """

    def __init__(self, data, num_samples: int, *, resample: bool = True, seed: int | None = None):
        self.data = data
        self.num_samples = int(num_samples)
        self.resample = bool(resample)
        self.seed = seed
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Back to the first draw (a new training run), from ``seed`` if given, else the constructor's."""
        self._rng = np.random.default_rng(self.seed if seed is None else seed)
        self._fixed = None
        self._stream = None

    def draw(self) -> tuple:
        """The next sample as NumPy arrays ``(x, y[, w])``."""
        if self._fixed is not None:
            return self._fixed
        if isinstance(self.data, tf.data.Dataset) and self.resample:
            sample = self._next_from_stream()
        else:
            sample = materialize(self.data, self.num_samples, seed=int(self._rng.integers(2**31)))
        if not self.resample:
            self._fixed = sample
        return sample

    def _next_from_stream(self) -> tuple:
        if self._stream is None:
            buffer = max(self.num_samples, min(10 * self.num_samples, MAX_SHUFFLE_BUFFER))
            seed = int(self._rng.integers(2**31))
            stream = self.data.unbatch().shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()
            self._stream = iter(stream.batch(self.num_samples))
        return tuple(tf.nest.map_structure(np.asarray, next(self._stream)))

    def __deepcopy__(self, memo):
        # keras-tuner deep-copies callbacks: share the (read-only) data, start the copy afresh.
        clone = SampleSource(self.data, self.num_samples, resample=self.resample, seed=self.seed)
        memo[id(self)] = clone
        return clone
