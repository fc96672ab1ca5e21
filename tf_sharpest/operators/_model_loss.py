"""A model's training loss split into its parts: forward pass, loss of the output, regularization.

The Hessian needs only the total; the Gauss-Newton and Fisher operators need
the parts apart: the Jacobian of the model's output ``y_pred``, the curvature
of the loss with respect to ``y_pred``, and the regularizer's own Hessian.

Every forward pass runs in a ``keras.StatelessScope`` that maps each model
variable to its current value: layers that update state in training mode
(BatchNorm's moving statistics, dropout's seed) record their updates in the
scope instead of in the model, so a measurement never changes the model, and
every product sees the same dropout mask.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from tf_sharpest._keras_compat import ADDITIONAL_LOSSES_DIVIDED_BY_REPLICAS, loss_divided_by_replicas

# Keras losses whose Hessian with respect to the logits has the closed form
# ``diag(p) - p p^T`` per example (``p = softmax(logits)``), whatever the targets.
_SOFTMAX_CROSS_ENTROPY = (keras.losses.SparseCategoricalCrossentropy, keras.losses.CategoricalCrossentropy)


class ModelLoss:
    """The loss a training step computes for ``model``, in parts.

    Example:

    ```python
    parts = ModelLoss(model, loss=None, training=False)
    with tf.GradientTape() as tape:
        y_pred, regularization = parts.forward(x)   # None for a model without regularizers
        total = parts.output_loss(x, y, y_pred)     # sample_weight=None
        if regularization is not None:
            total += regularization
    gradients = tape.gradient(total, model.trainable_variables)
    ```

    Args:
      model: a built Keras model.
      loss: ``None`` for the model's compiled loss (``model.compute_loss``),
        or a Keras loss (name or object), or a callable ``loss(y_true, y_pred)``
        returning the batch loss or per-example losses (averaged).
      training: the mode the model is called in.
    """

    def __init__(self, model: keras.Model, loss=None, *, training: bool = False):
        self.model = model
        self.training = bool(training)
        self.loss = loss
        if loss is None:
            if getattr(model, "loss", None) is None:  # model.compile(loss=...) sets it
                raise ValueError(
                    "The model has no loss: compile it with model.compile(loss=...) or pass loss= "
                    "(e.g. keras.losses.SparseCategoricalCrossentropy(from_logits=True))."
                )
            self._loss_object = None
        else:
            self._loss_object = keras.losses.get(loss) if isinstance(loss, (str, dict)) else loss
            if not callable(self._loss_object):
                raise ValueError(
                    f"loss must be a Keras loss, its name, or a callable loss(y_true, y_pred); got {loss!r}.")

    # -- parts -----------------------------------------------------------------------------
    def forward(self, x):
        """``(y_pred, regularization)``: the model's output and its regularization loss (or None).

        Call it inside the ``GradientTape``/``ForwardAccumulator`` that should
        see the model's variables: the scope reads them there.
        """
        mapping = [(v, v.value) for v in self.model.variables]
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True):
            y_pred = self.model(x, training=self.training)
            losses = list(self.model.losses)
        regularization = tf.add_n([tf.cast(term, _dtype_of(y_pred)) for term in losses]) if losses else None
        return y_pred, regularization

    def output_loss(self, x, y, y_pred, sample_weight=None) -> tf.Tensor:
        """The data term of the batch loss as a function of ``y_pred`` (no regularization).

        Under a strategy with ``R`` replicas, Keras's TF backend divides
        mean-reduced losses, and the model's additional losses inside
        ``compute_loss``, by ``R`` (so that summed replica gradients average).
        A curvature operator weights its batches itself, so this undoes that
        scaling and returns the batch's own data term.
        """
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        data_scale = 1.0 / replicas if replicas > 1 and self._keras_scales_for_replicas() else 1.0
        if self._loss_object is None:
            # compute_loss adds the model's regularization losses: read in a fresh
            # stateless scope, they are the weight regularizers only, constant in
            # y_pred; taking them out leaves the data term and its derivatives.
            with keras.StatelessScope(state_mapping=[(v, v.value) for v in self.model.variables]):
                total = self.model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                                training=self.training)
                losses = list(self.model.losses)
            if losses:
                additional_scale = 1.0 / replicas if ADDITIONAL_LOSSES_DIVIDED_BY_REPLICAS else 1.0
                total = total - additional_scale * tf.add_n([tf.cast(term, total.dtype) for term in losses])
            return total / data_scale
        return self._explicit_output_loss(y, y_pred, sample_weight) / data_scale

    def _keras_scales_for_replicas(self) -> bool:
        loss = self._loss_object
        if loss is None:
            try:
                loss = _single_compiled_loss(self.model)
            except ValueError:
                return True  # several compiled losses: Keras wraps each in a mean-reduced Loss
            if not isinstance(loss, keras.losses.Loss):
                return True  # a function passed to compile() is wrapped in a mean-reduced Loss
        return loss_divided_by_replicas(loss)

    def _explicit_output_loss(self, y, y_pred, sample_weight):
        loss = self._loss_object
        if sample_weight is not None and isinstance(loss, keras.losses.Loss):
            value = loss(y, y_pred, sample_weight=sample_weight)
        else:
            value = loss(y, y_pred)
            if sample_weight is not None:
                value = value * tf.cast(sample_weight, value.dtype)
        return tf.reduce_mean(value)  # a per-example callable becomes the batch mean

    def batch_loss(self, batch) -> tf.Tensor:
        """The total loss on one ``(x, y[, w])`` batch, as a training step computes it."""
        x, y, sample_weight = unpack(batch)
        y_pred, regularization = self.forward(x)
        value = self.output_loss(x, y, y_pred, sample_weight)
        if regularization is not None:
            value = value + tf.cast(regularization, value.dtype)
        return value

    # -- per-example losses (empirical Fisher) -------------------------------------------------
    def per_example_losses(self, y, y_pred) -> tf.Tensor:
        """``[batch]`` unweighted per-example losses ``l_i(y_pred_i)``, for per-example gradients.

        Raises:
          ValueError: when the loss cannot be evaluated per example (a
            multi-output compiled loss, or a callable that returns a scalar).
        """
        function = self._per_example_function()
        values = function(y, y_pred)
        if values.shape.rank == 0:
            raise ValueError(
                "The loss returns one value per batch, so per-example gradients cannot be formed; pass loss= "
                "a Keras loss object or a function returning one loss per example.")
        if values.shape.rank > 1:  # e.g. per time step: the example's loss is their mean, as Keras reduces
            values = tf.reduce_mean(tf.reshape(values, [tf.shape(values)[0], -1]), axis=1)
        return values

    def _per_example_function(self) -> Callable:
        loss = self._loss_object
        if loss is None:
            loss = _single_compiled_loss(self.model)
        if isinstance(loss, keras.losses.Loss):
            # Keras leaves the dtype out of a loss's config: carry it over, or a float64
            # loss would come back computing in float32.
            config = dict(loss.get_config(), reduction="none", dtype=getattr(loss, "dtype", None))
            try:
                unreduced = type(loss).from_config(config)
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f"Cannot evaluate {type(loss).__name__} per example ({error}); pass loss= a function "
                    "returning one loss per example.") from error
            return unreduced
        return loss

    # -- closed forms ----------------------------------------------------------------------------
    def softmax_cross_entropy_scale(self):
        """For a softmax cross-entropy on logits with Keras's mean reduction, the per-batch rule.

        Returns ``None`` when the closed form does not apply; otherwise a
        function ``scale(sample_weight, batch_size)`` giving each example's
        coefficient ``c_i`` in ``loss = sum_i c_i l_i`` (``w_i / B``, or
        ``1 / B`` without weights).
        """
        loss = self._loss_object
        if loss is None:
            try:
                loss = _single_compiled_loss(self.model)
            except ValueError:
                return None
        if not isinstance(loss, _SOFTMAX_CROSS_ENTROPY):
            return None
        config = loss.get_config()
        if not config.get("from_logits") or config.get("reduction") != "sum_over_batch_size" \
                or config.get("ignore_class") is not None or config.get("axis", -1) != -1:
            return None

        def scale(sample_weight, batch_size, dtype):
            size = tf.cast(batch_size, dtype)
            if sample_weight is None:
                return tf.fill([batch_size], 1.0 / size)
            return tf.reshape(tf.cast(sample_weight, dtype), [-1]) / size

        return scale


def unpack(batch):
    """``(x, y, sample_weight)`` of one batch (``sample_weight`` None when absent)."""
    return batch[0], batch[1], (batch[2] if len(batch) == 3 else None)


def _dtype_of(structure):
    return tf.nest.flatten(structure)[0].dtype


def _single_compiled_loss(model: keras.Model):
    """The one Keras loss object the model was compiled with (per-example forms need it)."""
    compiled = getattr(model, "loss", None)
    if isinstance(compiled, (list, tuple, dict)) or compiled is None:
        raise ValueError(
            "The model was compiled with several losses (or none), which cannot be split per example; pass "
            "loss= a single Keras loss.")
    loss = keras.losses.get(compiled) if isinstance(compiled, str) else compiled
    if isinstance(loss, type):
        loss = loss()
    return loss
