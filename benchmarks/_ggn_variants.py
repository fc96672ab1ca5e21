"""Candidate per-batch GGN products measured beside ``GGNOperator``'s in memory_cost.py (issue 25).

Each is ``GGNOperator`` with its per-batch product (the documented extension point) replaced; all compute the same
``J^T H J v`` (softmax cross-entropy closed form), only the order of the work and what is kept alive differ.
"""

from __future__ import annotations

import tensorflow as tf

from tf_sharpest.operators import GGNOperator

ZERO = tf.UnconnectedGradients.ZERO


def _unpack(batch):
    return batch[0], batch[1], (batch[2] if len(batch) == 3 else None)


def _zeros_for_none(grads, variables):
    return [tf.zeros(v.shape, tf.as_dtype(v.dtype)) if g is None else g for g, v in zip(grads, variables)]


def _forward_jvp(operator, x, vectors):
    """``(y_pred, J v)`` from one forward pass under a ``ForwardAccumulator`` (no tape)."""
    primals = [getattr(v, "value", v) for v in operator.variables]
    with tf.autodiff.ForwardAccumulator(primals, vectors) as forward:
        y_pred, _ = operator.model_loss.forward(x)
    return y_pred, forward.jvp(y_pred, unconnected_gradients=ZERO)


class TwoPassGGN(GGNOperator):
    """``J v`` in a forward pass with a ``ForwardAccumulator`` and no tape; then a second forward pass, recorded
    and started only once ``H J v`` is known (a control dependency), and its backward pass ``J^T u``."""

    def _batch_product(self, batch, vectors):
        x, y, sample_weight = _unpack(batch)
        y_pred, tangent = _forward_jvp(self, x, vectors)
        fixed = tf.stop_gradient(y_pred)
        u = tf.stop_gradient(self._output_product(x, y, sample_weight, fixed, tangent))
        with tf.control_dependencies([u]):
            x_again = tf.identity(x)
        with tf.GradientTape() as tape:
            y_pred_again, _ = self.model_loss.forward(x_again)
        return _zeros_for_none(tape.gradient(y_pred_again, self.variables, output_gradients=u), self.variables)


class JVPOnly(GGNOperator):
    """Diagnostic: only the forward pass with ``J v`` (no tape), returned folded into a parameter-shaped zero."""

    def _batch_product(self, batch, vectors):
        x, y, sample_weight = _unpack(batch)
        y_pred, tangent = _forward_jvp(self, x, vectors)
        total = tf.reduce_sum(tangent) + tf.reduce_sum(y_pred)
        return [tf.zeros(v.shape, tf.as_dtype(v.dtype)) + 0 * total for v in self.variables]


class ForwardModeGGN(GGNOperator):
    """What ``GGNOperator`` ran before: ``J v`` by a ``ForwardAccumulator`` inside the backward pass's tape (one
    forward pass carrying ``y_pred`` and ``J v`` together), then ``J^T u`` (models without regularizers)."""

    def _batch_product(self, batch, vectors):
        x, y, sample_weight = _unpack(batch)
        primals = [getattr(v, "value", v) for v in self.variables]
        with tf.GradientTape() as backward:
            with tf.autodiff.ForwardAccumulator(primals, vectors) as forward:
                y_pred, _ = self.model_loss.forward(x)
            tangent = forward.jvp(y_pred, unconnected_gradients=ZERO)
        fixed = tf.stop_gradient(y_pred)
        u = tf.stop_gradient(self._output_product(x, y, sample_weight, fixed, tangent))
        return _zeros_for_none(backward.gradient(y_pred, self.variables, output_gradients=u), self.variables)


class ValueSeedGGN(GGNOperator):
    """``GGNOperator``'s product with the symbolic seed ``s`` of ``J^T s`` set to the outputs' values instead of
    zeros (``J^T s`` is linear in ``s``, so its derivative in ``s`` is ``J`` whatever ``s`` is): zeros let the
    graph optimizer fold the unused ``J^T s`` into constants (models without regularizers)."""

    def _batch_product(self, batch, vectors):
        x, y, sample_weight = _unpack(batch)
        with tf.GradientTape(persistent=True) as backward:
            y_pred, _ = self.model_loss.forward(x)
        seed = tf.stop_gradient(y_pred)
        with tf.GradientTape() as transpose:
            transpose.watch(seed)
            pulled_back = backward.gradient(y_pred, self.variables, output_gradients=seed)
        tangent = transpose.gradient(pulled_back, seed, output_gradients=list(vectors), unconnected_gradients=ZERO)
        u = tf.stop_gradient(self._output_product(x, y, sample_weight, tf.stop_gradient(y_pred), tangent))
        return _zeros_for_none(backward.gradient(y_pred, self.variables, output_gradients=u), self.variables)
