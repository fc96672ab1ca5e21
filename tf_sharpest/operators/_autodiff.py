"""The two autodiff helpers every per-batch graph uses: gradients with zeros for unconnected variables, and dot."""

from __future__ import annotations

import tensorflow as tf


def gradients(tape: tf.GradientTape, target, variables: list, output_gradients=None) -> list:
    """``tape.gradient`` with zeros (of each variable's shape and dtype) where ``target`` does not depend on it.

    ``unconnected_gradients=ZERO`` cannot be used with Keras variables: TensorFlow
    builds the zeros from ``variable.dtype``, which Keras 3 gives as a string.
    """
    grads = tape.gradient(target, variables, output_gradients=output_gradients)
    return [tf.zeros(v.shape, tf.as_dtype(v.dtype)) if g is None else g for g, v in zip(grads, variables)]


def dot(parts_a, parts_b) -> tf.Tensor:
    """``sum_i <a_i, b_i>`` over two lists of same-shaped tensors (``None`` in ``a`` counts as zero)."""
    terms = [tf.reduce_sum(a * tf.cast(b, a.dtype)) for a, b in zip(parts_a, parts_b) if a is not None]
    return tf.add_n(terms) if terms else tf.constant(0.0)
