"""A fixed, finite sample of data cut into batches: what every curvature product sums over.

A curvature operator is a mean over examples, computed batch by batch. The
:class:`Sample` holds everything about that sum that does not depend on the
model: the batches themselves, how many examples each holds, the total, and
the signature the per-batch graph is traced with. It is immutable: an
operator moved to new data (``set_data``) swaps in a new ``Sample`` whole,
so no attribute is ever half-updated, and nothing about the sample is
learned as a side effect of evaluating a product.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tf_sharpest.utils._batches import as_batched_dataset, count_examples

#: Most batches read from a dataset of unknown cardinality (e.g. built with
#: ``from_generator``) before it is refused as possibly endless. Pass
#: ``max_batches=`` to :meth:`Sample.from_data` to change it.
MAX_BATCHES = 10_000


@dataclasses.dataclass(frozen=True, eq=False)
class Sample:
    """Batches of ``(x, y)`` or ``(x, y, sample_weight)`` tensors with their example counts.

    Build one with :meth:`from_data`; operators do so from the ``data`` they
    are given. Each batch is a tuple of (nested) tensors, held in memory, so a
    product reads no input pipeline and every pass sees the same examples.

    Example:

    ```python
    sample = Sample.from_data((x, y), batch_size=128)
    sample.num_examples, sample.num_batches, sample.weights  # weights sum to 1
    ```

    Attributes:
      batches: the batches, in order.
      sizes: examples in each batch.
      batch_spec: the batches' ``TensorSpec`` structure with an open batch dimension.
    """

    batches: tuple
    sizes: tuple
    batch_spec: Any

    @classmethod
    def from_data(cls, data, batch_size: int | None = None, *, max_batches: int | None = None) -> Sample:
        """Reads ``data`` once into a ``Sample``.

        Args:
          data: ``(x, y)`` or ``(x, y, sample_weight)`` arrays or tensors (``x``
            may be a dict or list for multi-input models), a finite batched
            ``tf.data.Dataset`` of such tuples, or a ``Sample`` (returned as is).
          batch_size: batch size for array ``data`` (default 128); must be
            None for a dataset, which is already batched.
          max_batches: a dataset whose cardinality TensorFlow cannot tell is
            refused if it has not ended after this many batches (default:
            the module's ``MAX_BATCHES``, 10,000).

        Raises:
          ValueError: for empty, infinite or malformed data, data holding NaN
            or Inf (naming the input, the batch and the example), or a
            dataset of unknown cardinality longer than ``max_batches`` batches
            read (empty ones included).
        """
        if isinstance(data, Sample):
            if batch_size is not None:
                raise ValueError("batch_size does not apply to a Sample, which is already cut into batches.")
            return data
        max_batches = MAX_BATCHES if max_batches is None else max_batches
        if isinstance(max_batches, bool) or not isinstance(max_batches, (int, np.integer)) or max_batches < 1:
            raise ValueError(f"max_batches must be a positive integer, got {max_batches!r}.")
        dataset = as_batched_dataset(data, batch_size)
        unknown_length = int(dataset.cardinality()) == int(tf.data.UNKNOWN_CARDINALITY)
        batches, sizes = [], []
        for read, batch in enumerate(dataset):
            # Every batch read counts, kept or not: an endless stream of empty batches must end here too.
            if unknown_length and read >= max_batches:
                raise ValueError(
                    f"The dataset has not ended after {max_batches} batches and TensorFlow cannot tell its "
                    "length (e.g. from_generator): a curvature sample must be finite. Use "
                    "dataset.take(num_batches), or pass a Sample built with a larger max_batches."
                )
            batch = tuple(batch)
            size = int(count_examples(batch))
            if size == 0:
                continue  # an empty batch adds nothing to the mean
            _check_finite(batch, len(batches))
            batches.append(batch)
            sizes.append(size)
        if not batches:
            raise ValueError("The data is empty: need at least one example.")
        spec = tuple(_relax_batch_dim(s) for s in dataset.element_spec)
        return cls(tuple(batches), tuple(sizes), spec)

    @property
    def num_examples(self) -> int:
        """Total number of examples."""
        return int(sum(self.sizes))

    @property
    def num_batches(self) -> int:
        return len(self.batches)

    @property
    def weights(self) -> tuple:
        """Each batch's share of the examples (``size / num_examples``); they sum to 1."""
        total = float(self.num_examples)
        return tuple(size / total for size in self.sizes)

    @property
    def equal_batches(self) -> bool:
        """Whether every batch holds the same number of examples."""
        return len(set(self.sizes)) == 1

    @property
    def trace_spec(self):
        """The signature per-batch graphs are traced with.

        When every batch has one size, that size is written into the spec:
        TensorFlow then plans the convolutions' second-order kernels for a
        known shape, which made a SimpleCNN HVP 10-15% faster on CPU than an
        open batch dimension. Otherwise the dimension stays open, so one trace
        also serves the last, smaller batch.
        """
        if not self.equal_batches:
            return self.batch_spec
        size = self.sizes[0]
        return tf.nest.map_structure(lambda s: tf.TensorSpec([size] + list(s.shape[1:]), s.dtype), self.batch_spec)

    def weighted_batches(self, dtype=tf.float32) -> Iterator[tuple]:
        """Yields ``(batch, weight)`` with ``weight`` a scalar tensor of ``dtype``; the weights sum to 1."""
        for batch, weight in zip(self.batches, self.weights):
            yield batch, tf.constant(weight, dtype)

    def split(self, num_shards: int) -> tuple:
        """The examples cut into ``num_shards`` contiguous shards, each a ``Sample`` in batches of at most the largest
        batch size here: each replica of a distributed product takes one shard.

        Shard sizes differ by at most one example, so every example is in
        exactly one shard, however unevenly the sample divides.

        Raises:
          ValueError: if the sample has fewer examples than ``num_shards``.
        """
        if self.num_examples < num_shards:
            raise ValueError(
                f"The sample has {self.num_examples} examples, fewer than the {num_shards} replicas that share "
                "each product: every replica needs at least one. Measure on more examples.")
        if num_shards == 1:
            return (self,)
        examples = tf.nest.map_structure(lambda *parts: tf.concat(parts, axis=0), *self.batches)
        batch_size = max(self.sizes)
        base, extra = divmod(self.num_examples, num_shards)
        shards, start = [], 0
        for index in range(num_shards):
            size = base + (1 if index < extra else 0)
            cuts = list(range(start, start + size, batch_size)) + [start + size]
            batches = tuple(tuple(tf.nest.map_structure(lambda t, a=a, b=b: t[a:b], examples))
                            for a, b in zip(cuts[:-1], cuts[1:]))
            shards.append(Sample(batches, tuple(b - a for a, b in zip(cuts[:-1], cuts[1:])), self.batch_spec))
            start += size
        return tuple(shards)

    def micro_batches(self, size: int) -> Sample:
        """The same examples with every batch cut, in order, into pieces of at most ``size`` examples.

        A curvature product weights each piece by its examples, so its sum over
        the pieces is the product over the batches (for layers whose output on
        an example does not depend on the rest of its batch: not BatchNorm in
        training mode). Returns ``self`` when no batch is larger than ``size``.
        """
        if max(self.sizes) <= size:
            return self
        batches, sizes = [], []
        for batch, total in zip(self.batches, self.sizes):
            for start in range(0, total, size):
                stop = min(start + size, total)
                batches.append(tuple(tf.nest.map_structure(lambda t, a=start, b=stop: t[a:b], batch)))
                sizes.append(stop - start)
        return Sample(tuple(batches), tuple(sizes), self.batch_spec)

    def check_compatible(self, other: Sample) -> None:
        """Raises a ``ValueError`` unless ``other`` has batches of the same structure (any batch size)."""
        if other.batch_spec != self.batch_spec:
            raise ValueError(f"The new data's batches {other.batch_spec} do not match the operator's "
                             f"{self.batch_spec}; build a new operator for data of another structure.")


def _check_finite(batch, index: int) -> None:
    """Refuses a batch with NaN or Inf in any floating input, label or weight, saying which and where.

    A NaN input makes the loss NaN, but an Inf one can leave it finite (``tanh(inf) = 1``)
    while every product comes out NaN: both are refused here, before any product.
    """
    for part, structure in zip(("x", "y", "sample_weight"), batch):
        for path, tensor in keras.tree.flatten_with_path(structure):
            if not tensor.dtype.is_floating:
                continue
            bad = tf.logical_not(tf.math.is_finite(tensor))
            if not bool(tf.reduce_any(bad)):
                continue
            name = part + "".join(f"[{key!r}]" for key in path)
            rows = tf.reduce_any(tf.reshape(bad, [tf.shape(bad)[0], -1]), axis=1) if bad.shape.rank else bad
            example = int(tf.where(rows)[0][0]) if bad.shape.rank else 0
            kind = "NaN" if bool(tf.reduce_any(tf.math.is_nan(tensor))) else "Inf"
            raise ValueError(
                f"The data is not finite: {name} in batch {index} (0-based) holds {kind} (first at example "
                f"{example} of the batch). Curvature products need finite data: clean or drop those examples.")


def _relax_batch_dim(spec):
    """The same ``TensorSpec`` structure with an unknown leading (batch) dimension."""
    return tf.nest.map_structure(lambda s: tf.TensorSpec([None] + list(s.shape[1:]), s.dtype), spec)
