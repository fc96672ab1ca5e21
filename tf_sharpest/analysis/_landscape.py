"""The loss (and the compiled metrics) on a 1-D or 2-D slice of weight space, without touching the model.

A loss landscape evaluates the model at ``theta + a d1 (+ b d2)`` for every
point of a grid of coefficients. Each point is one stateless forward pass per
batch: the model's variables are read through a ``keras.StatelessScope`` whose
mapping adds the point's offset to every trainable variable (as
:class:`~tf_sharpest.operators.ModelLoss` reads the unmoved ones), so nothing
is ever assigned, BatchNorm's moving statistics included, and a failure half
way leaves nothing to restore.

The per-batch graph loops over the grid's points inside the graph (one
``tf.while_loop``): it is traced once for the whole grid, for any grid size,
any number of directions, and any later grid on the same data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_sharpest._keras_compat import compiled_metrics_copy
from tf_sharpest.operators._blocks import resolve_variables
from tf_sharpest.operators._model_loss import ModelLoss, unpack
from tf_sharpest.operators._sample import Sample
from tf_sharpest.operators._strategy import ReplicaPlan, resolve_strategy
from tf_sharpest.operators._traced import TracedFunctions
from tf_sharpest.utils._flat import FlatLayout

#: Most directions of one landscape: a line (1) or a plane (2).
MAX_DIRECTIONS = 2


@dataclasses.dataclass
class Landscape:
    """The loss on a grid along one or two directions (see :func:`loss_landscape`).

    Attributes:
      steps: ``[m]`` the coefficients along each direction.
      coordinates: one array of coefficients per axis of ``losses``: ``(steps,)``
        for a line, ``(steps, steps)`` for a plane (axis 0 along the first direction).
      losses: ``[m]`` or ``[m, m]``: the mean loss (with the model's
        regularization losses, as a training step computes it) at
        ``theta + coordinates[0][i] d1 (+ coordinates[1][j] d2)``.
      metrics: the compiled metrics (e.g. ``"accuracy"``) at the same points,
        each shaped like ``losses``; empty for a model compiled without metrics.
    """

    steps: np.ndarray
    coordinates: tuple
    losses: np.ndarray
    metrics: dict = dataclasses.field(default_factory=dict)

    @property
    def num_directions(self) -> int:
        return self.losses.ndim

    def at_origin(self) -> float | None:
        """The loss at ``theta`` itself, where the steps include 0 (None otherwise)."""
        zero = np.flatnonzero(self.steps == 0)
        if not zero.size:
            return None
        return float(self.losses[(int(zero[0]),) * self.losses.ndim])


def loss_landscape(model: keras.Model, data, directions, *, steps, loss=None, batch_size: int | None = None,
                   training: bool = False) -> Landscape:
    """The mean loss and compiled metrics of ``model`` at ``theta + a d1`` (or ``theta + a d1 + b d2``).

    ``a`` (and ``b``) run over ``steps``. The model is never changed: every
    point is evaluated statelessly, BatchNorm's moving statistics are left as
    they are also with ``training=True``, and the weights are never assigned.
    Under ``tf.distribute`` (the strategy the model was built under) each
    replica takes a shard of the data, as the curvature operators do, and the
    result equals the single-device one to round-off. The per-batch graph is
    traced once for the whole grid.

    Example:

    ```python
    pairs = tf_sharpest.hessian.top_eigenpairs(model, (x, y), k=2)
    line = loss_landscape(model, (x, y), pairs.eigenvectors[:, 0], steps=np.linspace(-1, 1, 21))
    line.losses                      # [21]
    plane = loss_landscape(model, (x, y), random_directions(model, 2), steps=np.linspace(-1, 1, 11))
    plane.losses.shape, plane.metrics["accuracy"].shape   # (11, 11) (11, 11)
    ```

    Args:
      model: a built Keras model.
      data: ``(x, y)`` (or ``(x, y, sample_weight)``) arrays or tensors, a
        finite batched ``tf.data.Dataset``, or a :class:`~tf_sharpest.operators.Sample`.
      directions: one flat direction (a vector of length ``dim``, the trainable
        variables concatenated as everywhere in tf_sharpest), or two: a list of
        two vectors, a ``[2, dim]`` array, or a ``[dim, 2]`` array of columns
        (as eigensolvers return eigenvectors).
      steps: the coefficients along each direction (finite numbers, at least one).
      loss: ``None`` for the model's compiled loss, or a Keras loss (name or
        object) or a callable ``loss(y_true, y_pred)``.
      batch_size: batch size for array ``data`` (default 128).
      training: the mode the model is called in (``True``: BatchNorm batch
        statistics, dropout's mask as at the current seed state; nothing is updated).

    Returns:
      A :class:`Landscape`.

    Raises:
      ValueError: for more than two directions, a direction of the wrong
        length, a zero or non-finite direction, empty or non-finite steps, or
        bad data (as :class:`~tf_sharpest.operators.Sample` reports it).
    """
    evaluator = LandscapeEvaluator(model, data, loss=loss, batch_size=batch_size, training=training)
    return evaluator.landscape(directions, steps)


class LandscapeEvaluator:
    """Evaluates the loss at many points of a slice of weight space; one per-batch graph for every grid.

    The engine of :func:`loss_landscape`, kept alive where several slices are
    measured on the same data (the step study, the landscape callback): every
    call reuses the traced graph.

    Args:
      model, data, loss, batch_size, training: as in :func:`loss_landscape`.
      variables: ``None`` for all trainable variables, or a block (see
        :func:`~tf_sharpest.operators.resolve_variables`); directions then live
        in the block's flat layout.
      metrics: also evaluate the compiled metrics.

    Attributes:
      traced_functions: the per-batch graph (``"landscape"``; ``"landscape_replicas"`` under a strategy with
        several replicas) as :class:`~tf_sharpest.operators.TracedFunctions`, the operators' cache: one trace
        per batch signature, for any grid.
    """

    def __init__(self, model: keras.Model, data, *, loss=None, batch_size: int | None = None,
                 training: bool = False, variables=None, metrics: bool = True):
        self.model = model
        self.training = bool(training)
        self.strategy = resolve_strategy(model)
        self.variables = resolve_variables(model, variables)
        dtypes = {tf.as_dtype(v.dtype) for v in self.variables}
        if len(dtypes) != 1:
            raise ValueError(f"All trainable variables must share one dtype, got {sorted(d.name for d in dtypes)}.")
        self.dtype = dtypes.pop()
        self.layout = FlatLayout.from_variables(self.variables)
        self.model_loss = ModelLoss(model, loss, training=training)
        self.sample = Sample.from_data(data, batch_size)
        self._moved = {id(v): i for i, v in enumerate(self.variables)}
        self._metrics = compiled_metrics_copy(model) if metrics else None
        self._metric_dtypes = []
        self.traced_functions = TracedFunctions()
        self._plan = ReplicaPlan(self.sample, self.strategy) if self.num_replicas > 1 else None

    @property
    def num_replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    # -- checks ------------------------------------------------------------------------------------------
    def check_directions(self, directions) -> np.ndarray:
        """``directions`` as a ``[n, dim]`` array (``n`` 1 or 2), or a ``ValueError`` that says what is wrong."""
        dim = self.layout.dim
        if isinstance(directions, (list, tuple)):
            if not directions:
                raise ValueError("directions is empty: pass one flat direction (a line) or two (a plane).")
            rows = [np.asarray(d, dtype=np.float64) for d in directions]
            if any(r.ndim != 1 for r in rows):
                raise ValueError("directions must be flat vectors (1-D arrays), one per direction; got shapes "
                                 f"{[r.shape for r in rows]}.")
            if len({r.shape for r in rows}) == 1:
                array = np.stack(rows)
            else:
                bad = next(r for r in rows if r.shape != (dim,))
                raise ValueError(_length_message(dim, bad.shape))
        else:
            array = np.asarray(directions, dtype=np.float64)
            if array.ndim == 1:
                array = array[None]
            elif array.ndim == 2 and array.shape[1] != dim and array.shape[0] == dim:
                array = array.T  # columns, as eigensolvers return eigenvectors
            elif array.ndim != 2:
                raise ValueError(f"directions must be one flat vector, a list of them, or a 2-D array; got shape "
                                 f"{array.shape}.")
        if array.shape[0] > MAX_DIRECTIONS:
            raise ValueError(f"A landscape takes one direction (a line) or two (a plane); got {array.shape[0]}. "
                             "Pass directions[:2], or plot several lines one by one.")
        if array.shape[1] != dim:
            raise ValueError(_length_message(dim, array.shape[1:]))
        for index, row in enumerate(array):
            if not np.all(np.isfinite(row)):
                raise ValueError(f"Direction {index} contains NaN or inf values.")
            if not np.any(row):
                raise ValueError(f"Direction {index} is zero, so it spans no slice: pass a non-zero direction "
                                 "(e.g. an eigenvector, or one of random_directions(model, 2)).")
        return array

    @staticmethod
    def check_steps(steps) -> np.ndarray:
        """``steps`` as a 1-D float array, or a ``ValueError`` for empty, non-1-D or non-finite steps."""
        try:
            array = np.asarray(steps, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"steps must be a list of numbers, got {steps!r}.") from error
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"steps must be a non-empty 1-D list of coefficients (e.g. np.linspace(-1, 1, 21)); "
                             f"got shape {array.shape}.")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"steps must be finite numbers; got {array[~np.isfinite(array)][:3].tolist()} among "
                             "them.")
        return array

    # -- evaluation ---------------------------------------------------------------------------------------
    def landscape(self, directions, steps) -> Landscape:
        """The :class:`Landscape` along ``directions`` (one or two) at ``steps`` on every axis."""
        rows = self.check_directions(directions)
        steps = self.check_steps(steps)
        if rows.shape[0] == 1:
            coefficients = steps[:, None]
        else:
            first, second = np.meshgrid(steps, steps, indexing="ij")  # axis 0 along the first direction
            coefficients = np.stack([first.ravel(), second.ravel()], axis=1)
        losses, metrics = self.evaluate(rows, coefficients)
        shape = (steps.size,) * rows.shape[0]
        return Landscape(steps=steps, coordinates=(steps,) * rows.shape[0], losses=losses.reshape(shape),
                         metrics={name: value.reshape(shape) for name, value in metrics.items()})

    def evaluate(self, directions, coefficients) -> tuple[np.ndarray, dict]:
        """``(losses [P], metrics {name: [P]})`` at ``theta + coefficients[p] @ directions`` for each point ``p``.

        Args:
          directions: ``[n, dim]`` (checked by :meth:`check_directions`).
          coefficients: ``[P, n]`` finite coefficients, one row per point.
        """
        directions = tf.constant(np.asarray(directions), self.dtype)
        coefficients = tf.constant(np.asarray(coefficients, dtype=np.float64).reshape(-1, directions.shape[0]),
                                   self.dtype)
        points = int(coefficients.shape[0])
        self._build_metrics()
        if self.num_replicas > 1:
            losses, states = self._distributed(directions, coefficients, points)
        else:
            step = self._concrete_step()
            losses, states = tf.zeros([points], self.dtype), self._initial_states(points)
            for batch, weight in self.sample.weighted_batches(self.dtype):
                losses, states = step(batch, weight, directions, coefficients, losses, states)
        return losses.numpy().astype(np.float64), self._results(states, points)

    def _offsets(self, directions, coefficients):
        """The per-variable offsets of one point, in the variables' dtypes."""
        flat = tf.linalg.matvec(directions, coefficients, transpose_a=True)
        return [tf.cast(part, tf.as_dtype(v.dtype)) for part, v in zip(self.layout.unflatten(flat), self.variables)]

    def _point(self, batch, offsets):
        """The batch loss (with the regularization at the moved weights) and ``y_pred`` at one point."""
        x, y, sample_weight = unpack(batch)
        mapping = []
        for variable in self.model.variables:
            index = self._moved.get(id(variable))
            value = variable.value if index is None else variable.value + offsets[index]
            mapping.append((variable, value))
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True):
            y_pred = self.model(x, training=self.training)
            regularization = list(self.model.losses)
        value = tf.cast(self.model_loss.output_loss(x, y, y_pred, sample_weight), self.dtype)
        if regularization:
            value = value + tf.add_n([tf.cast(term, self.dtype) for term in regularization])
        return value, y_pred

    def _accumulate(self, batch, weight, directions, coefficients, losses, states):
        """Adds one batch's weighted loss (and metric updates) at every point; the grid loops inside the graph."""
        points = tf.shape(coefficients)[0]
        x, y, sample_weight = unpack(batch)

        def body(index, loss_array, state_arrays):
            value, y_pred = self._point(batch, self._offsets(directions, coefficients[index]))
            loss_array = loss_array.write(index, losses[index] + weight * value)
            if self._metrics is not None:
                old = [state[index] for state in states]
                # A replica's padding step (weight 0) repeats a batch: it must not count in the metrics.
                new = tf.cond(weight > 0, lambda: self._update_metrics(old, y, y_pred, sample_weight),
                              lambda: old)
                state_arrays = [array.write(index, value) for array, value in zip(state_arrays, new)]
            return index + 1, loss_array, state_arrays

        loss_array = tf.TensorArray(self.dtype, size=points)
        state_arrays = [tf.TensorArray(state.dtype, size=points) for state in states]
        _, loss_array, state_arrays = tf.while_loop(
            lambda index, *_: index < points, body, (tf.constant(0), loss_array, state_arrays))
        return loss_array.stack(), [array.stack() for array in state_arrays]

    def _concrete_step(self):
        """The per-batch graph for this sample's batch signature: any number of points and directions."""
        return self.traced_functions.concrete(
            "landscape", self._accumulate, self.sample.trace_spec, tf.TensorSpec([], self.dtype),
            tf.TensorSpec([None, self.layout.dim], self.dtype), tf.TensorSpec([None, None], self.dtype),
            tf.TensorSpec([None], self.dtype),
            [tf.TensorSpec([None] + list(v.shape), dtype) for v, dtype in self._metric_specs()])

    def _distributed(self, directions, coefficients, points):
        """Each replica accumulates its shard; losses are summed, metric states reduced as Keras aggregates them."""
        plan = self._plan
        def run(batch, weight, directions, coefficients, losses, states):
            return self.strategy.run(self._accumulate, args=(batch, weight, directions, coefficients, losses, states))

        step = self.traced_functions.function("landscape_replicas", run, reduce_retracing=True)
        distribute = self.strategy.experimental_distribute_values_from_function
        losses = plan.zeros([points], self.dtype)
        initial = self._initial_states(points)
        states = [distribute(lambda _, value=value: tf.identity(value)) for value in initial]
        for index in range(plan.num_steps):
            batch, weight = plan.step(index, self.dtype)
            losses, states = step(batch, weight, directions, coefficients, losses, states)
        losses = self.strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)
        reduced = []
        for (variable, _), state in zip(self._metric_specs(), states):
            aggregation = str(getattr(variable, "aggregation", "sum"))
            if aggregation == "mean":
                reduced.append(self.strategy.reduce(tf.distribute.ReduceOp.MEAN, state, axis=None))
            elif aggregation in ("only_first_replica", "none"):
                reduced.append(self.strategy.experimental_local_results(state)[0])
            else:
                reduced.append(self.strategy.reduce(tf.distribute.ReduceOp.SUM, state, axis=None))
        return losses, reduced

    # -- metrics --------------------------------------------------------------------------------------------
    def _build_metrics(self):
        """Builds the copy of the compiled metrics once, from the first batch (stateless: nothing is written)."""
        if self._metrics is None or self._metrics.built:
            return
        x, y, _ = unpack(self.sample.batches[0])
        with keras.StatelessScope(state_mapping=[(v, v.value) for v in self.model.variables]):
            y_pred = self.model(x, training=False)
        self._metrics.build(y, y_pred)
        if not self._metrics.variables:
            self._metrics = None  # compiled with an empty list

    def _metric_specs(self) -> list:
        if self._metrics is None:
            return []
        return [(v, tf.as_dtype(v.dtype)) for v in self._metrics.variables]

    def _initial_states(self, points: int) -> list:
        """Every point starts from the metrics' initial (reset) state."""
        if self._metrics is None:
            return []
        metrics = self._metrics
        with keras.StatelessScope() as scope:
            metrics.reset_state()
            initial = [scope.get_current_value(v) if scope.get_current_value(v) is not None else v.value
                       for v in metrics.variables]
        return [tf.tile(tf.convert_to_tensor(value)[None], [points] + [1] * len(value.shape)) for value in initial]

    def _update_metrics(self, state, y, y_pred, sample_weight):
        return list(self._metrics.stateless_update_state(state, y, y_pred, sample_weight=sample_weight))

    def _results(self, states, points: int) -> dict:
        if self._metrics is None:
            return {}
        values = [state.numpy() for state in states]
        results = {}
        for index in range(points):
            point = self._metrics.stateless_result([value[index] for value in values])
            for name, result in point.items():
                results.setdefault(name, np.empty(points))[index] = float(result)
        return results


def _length_message(dim: int, shape: Sequence) -> str:
    return (f"Each direction must be a flat vector of length {dim} (the trainable variables concatenated, each "
            f"flattened row-major, as eigenvectors and random_directions give them); got shape {tuple(shape)}.")
