"""The empirical Fisher matrix of a Keras model's training loss, matrix-free."""

from __future__ import annotations

import tensorflow as tf

from tf_sharpest.operators._output_curvature import OutputCurvatureOperator


class EmpiricalFisherOperator(OutputCurvatureOperator):
    """The empirical Fisher ``F = (1/N) sum_i w_i g_i g_i^T`` (+ the regularizer's Hessian).

    ``g_i`` is the gradient of example ``i``'s own loss ``l_i`` (unweighted)
    with respect to the (chosen) parameters and ``w_i`` its sample weight (1
    without weights): ``F`` is the gradients' second moment, weighted as the
    loss weights the examples, so it sits next to the Hessian
    ``(1/N) sum_i w_i d^2 l_i``.

    Per-example gradients are never stored: by the chain rule
    ``g_i = J_i^T r_i`` with ``r_i = dl_i/dy_pred_i``, so
    ``F v = (1/N) sum_i w_i J_i^T r_i (r_i . J_i v)``: one forward pass,
    ``J v``, a per-example scalar product over the whole batch at once, and
    one backward pass. Its cost is that of a GGN product, whatever the
    batch size, with the same result as vectorized per-example gradients;
    ``matmat`` shares each batch's forward pass among a block's columns, as
    the GGN's does.

    The per-example losses come from the loss with its reduction turned off
    (a Keras loss object, or the model's single compiled loss) or from a
    callable that returns one loss per example. The model's regularization
    losses are added with their exact Hessian, as in :class:`GGNOperator`.

    Example:

    ```python
    fisher = EmpiricalFisherOperator(model, (x_sample, y_sample), batch_size=256)
    result = tf_sharpest.linalg.lanczos(fisher, k=5)
    ```

    Args are those of :class:`~tf_sharpest.operators.CurvatureOperator`.

    Raises:
      ValueError: also when the loss cannot be evaluated per example (a
        model compiled with several losses: pass ``loss=``).
    """

    def __init__(self, model, data, *, loss=None, batch_size: int | None = None, training: bool = False,
                 variables=None, strategy=None, micro_batch_size: int | None = None):
        super().__init__(model, data, loss=loss, batch_size=batch_size, training=training, variables=variables,
                         strategy=strategy, micro_batch_size=micro_batch_size)
        self.model_loss._per_example_function()  # fail now, with a clear message, rather than in a graph

    def _output_product(self, x, y, sample_weight, y_pred, tangent):
        outputs = tf.nest.flatten(y_pred)
        with tf.GradientTape() as tape:
            tape.watch(outputs)
            losses = self.model_loss.per_example_losses(y, tf.nest.pack_sequence_as(y_pred, outputs))
            total = tf.reduce_sum(losses)
        # Examples do not interact in the loss, so the gradient of the sum has r_i in row i.
        residuals = tape.gradient(total, outputs, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        tangents = tf.nest.flatten(tangent)
        per_example = tf.add_n([tf.reduce_sum(tf.reshape(r * t, [tf.shape(r)[0], -1]), axis=1)
                                for r, t in zip(residuals, tangents)])
        size = tf.shape(per_example)[0]
        coefficient = per_example / tf.cast(size, per_example.dtype)
        if sample_weight is not None:
            coefficient = coefficient * tf.reshape(tf.cast(sample_weight, coefficient.dtype), [size])
        products = [tf.reshape(coefficient, [-1] + [1] * (r.shape.rank - 1)) * r for r in residuals]
        return tf.nest.pack_sequence_as(y_pred, products)
