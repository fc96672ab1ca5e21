"""The generalized Gauss-Newton matrix of a Keras model's training loss, matrix-free."""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_sharpest.operators._autodiff import dot
from tf_sharpest.operators._output_curvature import OutputCurvatureOperator


class GGNOperator(OutputCurvatureOperator):
    """The generalized Gauss-Newton matrix ``G = (1/N) sum_i J_i^T H_L,i J_i`` (+ the regularizer's Hessian).

    ``J_i`` is the Jacobian of the model's output for example ``i`` with
    respect to the (chosen) parameters and ``H_L,i`` the Hessian of the loss
    with respect to that output. ``G`` is the Hessian with the model
    linearized around its current weights: positive semi-definite for convex
    losses (cross-entropy on logits, squared error), and equal to the Hessian
    for a linear model. Its top eigenvalues follow the Hessian's outliers
    for cross-entropy.

    Each product is one forward pass, ``J v`` through the recorded backward
    pass, the output-space product, and one backward pass ``J^T u``: no
    Jacobian is formed, and one set of activations is kept (peak memory
    2.0x-2.3x a gradient's on SimpleCNN-medium at batch 256, 1.3x-1.45x at
    batch 64; ``benchmarks/RESULTS.md``). ``matmat`` shares each batch's forward pass
    and recorded backward pass among a block's columns.
    ``H_L`` is taken by double backprop of the loss in ``y_pred``,
    which works for any Keras loss that autodiff can differentiate twice;
    softmax cross-entropy on logits (Keras's ``SparseCategoricalCrossentropy``
    or ``CategoricalCrossentropy`` with ``from_logits=True``) uses its closed
    form ``diag(p) - p p^T`` instead.

    The model's regularization losses (``model.losses``, e.g. L2 on kernels)
    are added with their exact Hessian, so ``G`` is the Gauss-Newton matrix
    of the whole training loss. Outputs are the model's outputs: a model that
    ends in a softmax gives the GGN with respect to probabilities.

    Example:

    ```python
    ggn = GGNOperator(model, (x_sample, y_sample), batch_size=256)
    result = tf_sharpest.linalg.lanczos(ggn, k=5)
    ```

    Args are those of :class:`~tf_sharpest.operators.CurvatureOperator`:
    ``model``, ``data``, and keyword-only ``loss``, ``batch_size``,
    ``training`` and ``variables``.
    """

    def __init__(self, model: keras.Model, data, *, loss=None, batch_size: int | None = None,
                 training: bool = False, variables=None, strategy=None, micro_batch_size: int | None = None):
        super().__init__(model, data, loss=loss, batch_size=batch_size, training=training, variables=variables,
                         strategy=strategy, micro_batch_size=micro_batch_size)
        self._softmax_scale = self.model_loss.softmax_cross_entropy_scale()

    @property
    def closed_form(self) -> bool:
        """Whether the softmax cross-entropy closed form ``diag(p) - p p^T`` is used."""
        return self._softmax_scale is not None

    def _output_product(self, x, y, sample_weight, y_pred, tangent):
        if self._softmax_scale is not None and isinstance(y_pred, tf.Tensor) and y_pred.shape.rank == 2:
            return self._softmax_cross_entropy_product(sample_weight, y_pred, tangent)
        return self._autodiff_output_product(x, y, sample_weight, y_pred, tangent)

    def _softmax_cross_entropy_product(self, sample_weight, logits, tangent):
        probabilities = tf.nn.softmax(logits, axis=-1)
        scale = self._softmax_scale(sample_weight, tf.shape(logits)[0], logits.dtype)
        projected = tf.reduce_sum(probabilities * tangent, axis=-1, keepdims=True)
        return scale[:, None] * (probabilities * tangent - probabilities * projected)

    def _autodiff_output_product(self, x, y, sample_weight, y_pred, tangent):
        outputs = tf.nest.flatten(y_pred)
        with tf.GradientTape() as outer:
            outer.watch(outputs)
            with tf.GradientTape() as inner:
                inner.watch(outputs)
                loss = self.model_loss.output_loss(x, y, tf.nest.pack_sequence_as(y_pred, outputs), sample_weight)
            gradient = inner.gradient(loss, outputs, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            gradient_dot_tangent = dot(gradient, tf.nest.flatten(tangent))
        product = outer.gradient(gradient_dot_tangent, outputs, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return tf.nest.pack_sequence_as(y_pred, product)
