"""The mean training loss of a Keras model over a fixed, finite sample of data.

Every curvature operator and every analysis of the loss (gradients, the loss
along a direction, batch sharpness) needs the same three things: the loss a
training step would compute (:class:`ModelLoss`), the data cut into batches
(:class:`Sample`), and the parameters differentiated (all trainable
variables, or a block). This class holds them once; curvature operators
extend it with their per-batch product.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tf_sharpest.operators._autodiff import gradients
from tf_sharpest.operators._blocks import resolve_variables
from tf_sharpest.operators._labels import check_labels
from tf_sharpest.operators._model_loss import ModelLoss
from tf_sharpest.operators._sample import Sample
from tf_sharpest.operators._traced import TracedFunctions
from tf_sharpest.utils._flat import FlatLayout


class EmpiricalLoss:
    """The loss of ``model`` averaged over ``data``, with its gradient, batch by batch.

    The loss is the compiled loss (or ``loss``) plus the model's regularization
    losses, as in a training step; the mean is weighted by each batch's number
    of examples, so it is exact however the last batch is cut. Construction
    evaluates the loss once (``value``), which validates the data. Evaluating
    never changes the model, also with ``training=True`` (BatchNorm's moving
    statistics are left as they are).

    Example:

    ```python
    objective = EmpiricalLoss(model, (x, y), batch_size=256)
    objective.value            # mean loss at the weights it was built (or last moved) at
    objective.evaluate()       # mean loss at the current weights
    g = objective.gradient()   # flat tf.Tensor in the layout of objective.variables
    ```

    Args:
      model: a built Keras model.
      data: ``(x, y)`` (or ``(x, y, sample_weight)``) arrays or tensors, a
        finite batched ``tf.data.Dataset`` that yields the same examples on
        every pass, or a :class:`Sample`. It is read once, into memory.
      loss: ``None`` for the model's compiled loss (``model.compute_loss``), or a
        Keras loss (name or object) or a callable ``loss(y_true, y_pred)``.
      batch_size: batch size for array ``data`` (default 128).
      training: the mode the model is called in (``False``: BatchNorm in
        inference mode, dropout off; ``True``: batch statistics, a fixed
        dropout mask).
      variables: ``None`` for all trainable variables, or a block of them: a
        variable, a layer, or a list of variables and layers.

    Raises:
      ValueError: for empty, infinite or malformed data, data holding NaN or
        Inf, labels the loss cannot take (out of range, one-hot where it
        takes class ids or the reverse), a model without a loss or trainable
        variables, a variable not in the model, or a non-finite loss (naming
        the batch).

    Attributes:
      traced_functions: the ``tf.function`` of each kind of graph (``"loss"``,
        ``"gradient"``, and an operator's products), by name; see
        :class:`~tf_sharpest.operators._traced.TracedFunctions`.
    """

    def __init__(self, model: keras.Model, data, *, loss=None, batch_size: int | None = None,
                 training: bool = False, variables=None):
        self.model = model
        self.training = bool(training)
        self.variables = resolve_variables(model, variables)
        dtypes = {tf.as_dtype(v.dtype) for v in self.variables}
        if len(dtypes) != 1:
            raise ValueError(f"All chosen variables must share one dtype, got {sorted(d.name for d in dtypes)}.")
        self.dtype = dtypes.pop()
        self.layout = FlatLayout.from_variables(self.variables)
        self.model_loss = ModelLoss(model, loss, training=training)
        self.batch_size = batch_size
        self.sample = Sample.from_data(data, batch_size)
        self.traced_functions = TracedFunctions()
        self.value = self.evaluate()

    # -- the sample ----------------------------------------------------------------------
    def set_data(self, data, batch_size: int | None = None) -> None:
        """Moves the loss to a new sample with the same structure, keeping the traced graphs.

        Arrays are cut into batches of ``batch_size`` (default: the one given
        at construction). A measurement repeated along training (a new sample each time) then
        costs no new trace: tracing the double backprop of a network takes
        seconds, and TensorFlow warns when functions are re-created in a loop.
        The loss is evaluated on the new data (``value``), which validates it;
        on any error the object keeps its previous sample.

        Raises:
          ValueError: if the new batches differ from the old ones in anything
            but the batch size (shapes, dtypes, with or without sample weights),
            or the data is empty or gives a non-finite loss.
        """
        if batch_size is None and not isinstance(data, (tf.data.Dataset, Sample)):
            batch_size = self.batch_size  # arrays are cut as the first sample was
        sample = Sample.from_data(data, batch_size)
        self.sample.check_compatible(sample)
        value = self._evaluate_on(sample)
        self.sample, self.value = sample, value

    @property
    def num_examples(self) -> int:
        return self.sample.num_examples

    @property
    def num_batches(self) -> int:
        return self.sample.num_batches

    @property
    def trace_spec(self):
        """The batch signature per-batch graphs are traced with (see :attr:`Sample.trace_spec`)."""
        return self.sample.trace_spec

    def batches(self):
        """The batches of one pass over the data."""
        return self.sample.batches

    def batch_weights(self):
        """Yields ``(batch, weight)`` with ``weight = examples in batch / examples in all``."""
        return self.sample.weighted_batches(self.dtype)

    # -- values ----------------------------------------------------------------------------
    def batch_loss(self, batch) -> tf.Tensor:
        """The loss on one ``(x, y[, w])`` batch, as a training step computes it (usable in graphs)."""
        return tf.cast(self.model_loss.batch_loss(batch), self.dtype)

    def evaluate(self) -> float:
        """Mean loss over the data at the current weights.

        Raises:
          ValueError: if the loss of any batch is not finite.
        """
        return self._evaluate_on(self.sample)

    def _evaluate_on(self, sample: Sample) -> float:
        check_labels(self.model_loss, sample)  # before a graph would fail on them deep inside
        loss = self.traced_functions.concrete("loss", self.batch_loss, sample.batch_spec)
        losses = np.array([float(loss(batch)) for batch in sample.batches])
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            raise ValueError(
                f"The loss is not finite (value {losses[bad[0]]}) on batch {int(bad[0])} "
                f"(0-based; {bad.size} of {sample.num_batches} batches affected). Check the data for "
                "NaN/inf values and the model for diverged weights."
            )
        return float(np.dot(losses, sample.weights))

    def gradient(self) -> tf.Tensor:
        """The gradient of the mean loss at the current weights, as a flat vector."""
        flat_spec = tf.TensorSpec([self.layout.dim], self.dtype)
        accumulate = self.traced_functions.concrete("gradient", self._accumulate_gradient, self.sample.trace_spec,
                                                    flat_spec, tf.TensorSpec([], self.dtype))
        accumulated = tf.zeros([self.layout.dim], self.dtype)
        for batch, weight in self.batch_weights():
            accumulated = accumulate(batch, accumulated, weight)
        return accumulated

    def _accumulate_gradient(self, batch, accumulated, weight):
        with tf.GradientTape() as tape:
            loss = self.batch_loss(batch)
        grads = gradients(tape, loss, self.variables)
        return accumulated + weight * tf.cast(self.layout.flatten(grads), self.dtype)
