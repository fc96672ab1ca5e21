"""Where a callback's measurements draw their examples from, one fixed-size sample at a time."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_sharpest.operators._strategy import is_multi_worker
from tf_sharpest.utils._batches import count_examples, materialize

# A dataset is sampled through a shuffle buffer of this many examples at most
# (and at least one sample's worth): large enough to mix a stream that is not
# shuffled, small enough to keep in memory.
MAX_SHUFFLE_BUFFER = 20_000
#: A dataset that yields this many empty batches in a row is refused (it would otherwise be read forever).
MAX_EMPTY_BATCHES = 1_000
_EMPTY_MESSAGE = "empty batches in a row"


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

    def check(self) -> None:
        """Refuses data with no examples, or a dataset that yields only empty batches, saying what to pass.

        Cheap: arrays are counted; a dataset of known length is trusted unless
        it has none; one whose length TensorFlow cannot tell (a generator, a
        filter) is read up to its first non-empty batch.
        """
        if not isinstance(self.data, tf.data.Dataset):
            if len(tf.nest.flatten(self.data[1])[0]) == 0:
                raise ValueError(_no_examples("the arrays have 0 examples"))
            return
        cardinality = int(self.data.cardinality())
        if cardinality == 0:
            raise ValueError(_no_examples("the dataset is empty (cardinality 0)"))
        if cardinality != int(tf.data.UNKNOWN_CARDINALITY):
            return
        try:
            for batch in _guarded(self.data):
                if int(count_examples(batch)) > 0:
                    return
        except tf.errors.InvalidArgumentError as error:
            raise ValueError(_endless_empty(error)) from None
        raise ValueError(_no_examples("the dataset ended without yielding an example"))

    def draw(self) -> tuple:
        """The next sample as NumPy arrays ``(x, y[, w])``."""
        if self._fixed is not None:
            return self._fixed
        try:
            if isinstance(self.data, tf.data.Dataset) and self.resample:
                sample = self._next_from_stream()
            else:
                data = _guarded(self.data) if isinstance(self.data, tf.data.Dataset) else self.data
                sample = materialize(data, self.num_samples, seed=int(self._rng.integers(2**31)))
        except StopIteration:
            raise ValueError(_no_examples("the dataset yielded no examples")) from None
        except tf.errors.InvalidArgumentError as error:
            if _EMPTY_MESSAGE not in str(error):
                raise
            raise ValueError(_endless_empty(error)) from None
        if not self.resample:
            self._fixed = sample
        return sample

    def _next_from_stream(self) -> tuple:
        if self._stream is None:
            buffer = max(self.num_samples, min(10 * self.num_samples, MAX_SHUFFLE_BUFFER))
            seed = int(self._rng.integers(2**31))
            stream = _guarded(self.data).unbatch().shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
            self._stream = iter(stream.repeat().batch(self.num_samples))
        return tuple(tf.nest.map_structure(np.asarray, next(self._stream)))

    def __deepcopy__(self, memo):
        # keras-tuner deep-copies callbacks: share the (read-only) data, start the copy afresh.
        clone = SampleSource(self.data, self.num_samples, resample=self.resample, seed=self.seed)
        memo[id(self)] = clone
        return clone


def _guarded(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``dataset``, failing once it has yielded ``MAX_EMPTY_BATCHES`` empty batches in a row.

    Every batch read is counted, in the input pipeline itself: a stream of
    empty batches never reaches the sample (``unbatch`` drops them), so a
    guard on the examples kept would wait forever.
    """
    def count(empties, batch):
        empties = tf.where(count_examples(batch) > 0, tf.constant(0, tf.int64), empties + 1)
        check = tf.debugging.assert_less(empties, tf.constant(MAX_EMPTY_BATCHES, tf.int64),
                                         message=f"{MAX_EMPTY_BATCHES} {_EMPTY_MESSAGE}")
        with tf.control_dependencies([check]):
            return empties, tf.nest.map_structure(tf.identity, batch)

    return dataset.scan(tf.constant(0, tf.int64), count)


def _no_examples(what: str) -> str:
    return (f"The callback's data has no examples to measure on: {what}. Pass data=(x, y) arrays with at least "
            "one example, or a batched tf.data.Dataset that yields some (e.g. the training dataset).")


def _endless_empty(error) -> str:
    return (f"The callback's data yielded {MAX_EMPTY_BATCHES} empty batches in a row, so a sample can never be "
            "drawn from it; pass a dataset whose batches hold examples (check its filter or generator).")
