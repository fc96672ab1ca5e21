"""Turning the ways users hold data into one finite, batched ``tf.data.Dataset``.

``model.fit`` accepts ``(x, y)`` arrays or a batched dataset; curvature
operators accept the same and need two more guarantees: the data is finite
(one pass is one matvec) and every element is ``(x, y)`` or
``(x, y, sample_weight)``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

DEFAULT_BATCH_SIZE = 128


def _num_rows(arrays) -> int:
    """Examples in one part of the data (``x`` may be a dict or list of arrays, all of one length)."""
    rows = set()
    for array in tf.nest.flatten(arrays):
        shape = getattr(array, "shape", None)
        if shape is None or len(shape) == 0:
            raise ValueError("x and y must be arrays or tensors with a leading example dimension.")
        rows.add(int(shape[0]))
    if len(rows) != 1:
        raise ValueError(f"The inputs of x must have the same number of examples, got {sorted(rows)}.")
    return rows.pop()


def as_batched_dataset(data, batch_size: int | None = None) -> tf.data.Dataset:
    """Returns ``data`` as a finite dataset of ``(x, y)`` or ``(x, y, sample_weight)`` batches.

    Args:
      data: ``(x, y)`` or ``(x, y, sample_weight)`` NumPy arrays or tensors, split
        into batches of ``batch_size``; or an already batched ``tf.data.Dataset``
        (then ``batch_size`` must be None, as in ``model.fit``).
      batch_size: batch size for array inputs; defaults to 128.

    Raises:
      ValueError: for empty or infinite data, mismatched lengths, or a dataset
        that is not batched.
    """
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if isinstance(data, tf.data.Dataset):
        if batch_size is not None:
            raise ValueError(
                "batch_size applies to array inputs only; a tf.data.Dataset must already be batched "
                "(call dataset.batch(n) and pass batch_size=None)."
            )
        return _check_dataset(data)
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        arrays = tuple(data)
        lengths = [_num_rows(a) for a in arrays]
        if len(set(lengths)) != 1:
            names = ["x", "y", "sample_weight"][: len(arrays)]
            described = ", ".join(f"{name} has {length}" for name, length in zip(names, lengths))
            raise ValueError(f"x and y must have the same number of examples: {described}.")
        if lengths[0] == 0:
            raise ValueError("The data is empty: need at least one example.")
        dataset = tf.data.Dataset.from_tensor_slices(arrays)
        return dataset.batch(int(batch_size or DEFAULT_BATCH_SIZE))
    raise ValueError(
        "data must be a tuple (x, y) (or (x, y, sample_weight)) of arrays, or a batched "
        f"tf.data.Dataset of (x, y); got {type(data).__name__}."
    )


def _check_dataset(dataset: tf.data.Dataset) -> tf.data.Dataset:
    cardinality = int(dataset.cardinality())
    if cardinality == int(tf.data.INFINITE_CARDINALITY):
        raise ValueError(
            "The dataset is infinite (e.g. it ends in .repeat()): a Hessian needs a finite sample. "
            "Use dataset.take(num_batches)."
        )
    if cardinality == 0:
        raise ValueError("The dataset is empty: need at least one batch.")
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise ValueError(
            "Each dataset element must be a tuple (x, y) or (x, y, sample_weight), as model.fit "
            f"takes it; got element_spec {spec}."
        )
    labels = tf.nest.flatten(spec[1])
    if labels and labels[0].shape.rank == 0:
        raise ValueError(
            "The dataset's labels are scalars, so it looks unbatched; call dataset.batch(batch_size) first."
        )
    return dataset


def even_batch_size(num_examples: int, batch_size: int) -> int:
    """The largest batch size ``<= batch_size`` that cuts ``num_examples`` into equal batches.

    Equal batches let the curvature operators trace their graphs for one known
    batch shape, which runs faster (see ``EmpiricalLoss.trace_spec``). Sizes
    below half of ``batch_size`` are not considered (more, smaller batches
    would cost more than they save); ``batch_size`` is returned when none fits.
    For example 2,250 examples at ``batch_size=128`` give 18 batches of 125.
    """
    num_examples, batch_size = int(num_examples), int(batch_size)
    if num_examples <= batch_size:
        return max(num_examples, 1)
    for size in range(batch_size, (batch_size + 1) // 2 - 1, -1):
        if num_examples % size == 0:
            return size
    return batch_size


def count_examples(batch) -> tf.Tensor:
    """Number of examples in one ``(x, y[, w])`` batch, as a scalar tensor."""
    return tf.shape(tf.nest.flatten(batch[1])[0], out_type=tf.int64)[0]


def materialize(data, num_samples: int | None = None, *, seed: int | None = None) -> tuple:
    """Draws up to ``num_samples`` examples from ``data`` into NumPy arrays ``(x, y[, w])``.

    ``x`` may be a dict or list of arrays (multi-input models). Arrays are
    sampled without replacement with ``seed`` (all of them when
    ``num_samples`` is None or not smaller). A dataset, which may be infinite
    or augmented, is read batch by batch until ``num_samples`` examples are
    collected (its first ones); it must then be given a ``num_samples``.
    """
    if isinstance(data, tf.data.Dataset):
        if num_samples is None and int(data.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
            raise ValueError("Drawing from an infinite dataset needs num_samples.")
        chunks, collected = [], 0
        for batch in data:
            if not isinstance(batch, tuple) or len(batch) not in (2, 3):
                raise ValueError("Each dataset element must be a tuple (x, y) or (x, y, sample_weight).")
            batch = tf.nest.map_structure(np.asarray, batch)
            labels = tf.nest.flatten(batch[1])[0]
            if labels.ndim == 0:
                raise ValueError("The dataset looks unbatched (scalar labels); call dataset.batch(n) first.")
            chunks.append(batch)
            collected += len(labels)
            if num_samples is not None and collected >= num_samples:
                break
        if not chunks:
            raise ValueError("The dataset is empty: need at least one example.")
        arrays = tf.nest.map_structure(lambda *parts: np.concatenate(parts, axis=0), *chunks)
        if num_samples is not None:
            arrays = tf.nest.map_structure(lambda a: a[:num_samples], arrays)
        return tuple(arrays)
    arrays = tf.nest.map_structure(np.asarray, tuple(data))
    total = len(tf.nest.flatten(arrays[1])[0])
    if num_samples is None or num_samples >= total:
        return arrays
    index = np.sort(np.random.default_rng(seed).choice(total, size=int(num_samples), replace=False))
    return tuple(tf.nest.map_structure(lambda a: a[index], arrays))


def num_examples_of(arrays) -> int:
    """Number of examples in ``(x, y[, w])`` arrays (``x`` may be nested)."""
    return len(tf.nest.flatten(arrays[1])[0])
