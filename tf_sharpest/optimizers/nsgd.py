"""NSGD: SGD whose step inside the top-K Hessian eigenspace is scaled by gamma."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_sharpest.utils.flat import FlatLayout

NUDGE_CHOICES = ("velocity", "gradient")


@keras.saving.register_keras_serializable(package="tf_sharpest")
class NSGD(keras.optimizers.Optimizer):
    """Nudged SGD: SGD (with momentum) whose step along the top-K eigenvectors is scaled by ``gamma``.

    Let ``E`` be the current directions (``[dim, K]``, orthonormal columns over
    all trainable variables flattened), ``lr`` the learning rate and ``mu`` the
    momentum.

    * ``nudge="velocity"`` (the paper's default, ``correct_v``): the velocity
      is updated as in SGD, ``v <- mu * v - lr * g``, and the applied step is
      ``s + (gamma - 1) E E^T s``, where ``s`` is SGD's own step (``v``, or
      ``mu * v - lr * g`` with Nesterov). The velocity buffer keeps the
      uncorrected ``v``.
    * ``nudge="gradient"`` (``correct_g``): the gradient is corrected first,
      ``g' = g + (gamma - 1) E E^T g``, and SGD (with its momentum) runs on
      ``g'``.

    Without momentum both give
    ``delta = -lr (I - E E^T) g - gamma * lr * E E^T g``: ``gamma`` scales the
    learning rate inside the top-K subspace only; ``gamma=0`` freezes that
    subspace. ``gamma=1``, or no directions set yet, is exactly
    ``keras.optimizers.SGD``.

    ``E^T g`` sums over every variable, so the nudge couples them: NSGD
    computes the projections once per step over the whole parameter vector
    (after the cross-replica gradient sum under ``tf.distribute``), then
    updates each variable with them.

    The directions, ``gamma`` and the step's projections are optimizer
    variables: they work inside compiled (also XLA) train steps, can change
    between steps without retracing, and are saved and restored with the
    optimizer (``model.save``/``keras.models.load_model``, checkpoints,
    ``BackupAndRestore``). ``tf_sharpest.callbacks.LanczosCallback`` sets the
    directions during ``fit``.

    Attributes readable after every step (one value per direction, shape
    ``[top_k]``; all zeros while no directions are set):

    * ``optimizer.alpha``: ``|E^T g|``, the gradient's projections on the
      directions;
    * ``optimizer.alpha_ratio``: ``|E^T g| / ||g||``.

    ``g`` is the gradient the step used (summed over replicas, after clipping).
    Read them with ``optimizer.alpha.numpy()``. Also: ``optimizer.gamma``
    (settable at any time), ``optimizer.has_directions`` and
    ``optimizer.get_directions()`` (``[dim, top_k]`` NumPy array).

    Example:

    ```python
    model.compile(optimizer=tf_sharpest.optimizers.NSGD(learning_rate=0.01, momentum=0.9, gamma=0.1, top_k=5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # Let a callback keep the directions up to date during fit ...
    model.fit(x, y, callbacks=[tf_sharpest.callbacks.LanczosCallback((x, y), top_k=5)])
    # ... or set them by hand, in the flat layout of model.trainable_variables:
    model.optimizer.set_directions(eigenvectors)  # [dim, K >= 5]
    model.optimizer.gamma = 0.5  # takes effect at the next step
    print(model.optimizer.alpha.numpy(), model.optimizer.alpha_ratio.numpy())
    ```

    Args:
      learning_rate: a float, a ``keras.optimizers.schedules.LearningRateSchedule``
        or a callable; ``ReduceLROnPlateau`` changes it as for any Keras optimizer.
      momentum: float in ``[0, 1]`` (a Python or NumPy number).
      nesterov: use Nesterov momentum (``True``/``False``).
      gamma: the nudge ("overshoot" in the paper's command lines), a finite
        (Python or NumPy) number: the factor on the step inside the top-K
        subspace. ``1`` is SGD, ``0`` freezes the subspace. Change it during
        training with ``optimizer.gamma = value``.
      top_k: number of directions used (a positive Python or NumPy integer);
        ``set_directions`` takes the first ``top_k`` columns of what it receives.
      nudge: ``"velocity"`` or ``"gradient"``, see above.
      name: the optimizer's name.
      **kwargs: the common ``keras.optimizers.Optimizer`` arguments
        (``weight_decay``, ``clipnorm``, ``global_clipnorm``, ``use_ema``,
        ``loss_scale_factor``, ``gradient_accumulation_steps``, ...).
    """

    def __init__(self, learning_rate=0.01, momentum: float = 0.0, nesterov: bool = False, gamma: float = 1.0,
                 top_k: int = 5, nudge: str = "velocity", name: str | None = None, **kwargs):
        if keras.backend.backend() != "tensorflow":
            raise ValueError(f"NSGD needs Keras's TensorFlow backend, not {keras.backend.backend()!r}.")
        super().__init__(learning_rate=learning_rate, name=name or "nsgd", **kwargs)
        if not _is_real(momentum) or not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be a float in [0, 1], got {momentum!r}.")
        if not _is_integer(top_k) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}.")
        if not (isinstance(nesterov, (bool, np.bool_)) or (_is_integer(nesterov) and nesterov in (0, 1))):
            # bool("False") is True: a string here would silently turn Nesterov on.
            raise ValueError(f"nesterov must be True or False, got {nesterov!r}.")
        if not isinstance(nudge, str) or nudge not in NUDGE_CHOICES:
            raise ValueError(f"Unknown nudge {nudge!r}; choose one of {NUDGE_CHOICES}.")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.top_k = int(top_k)
        self.nudge = nudge
        self._initial_gamma = _check_gamma(gamma)
        self._pending_directions = None

    # -- state ---------------------------------------------------------------------------
    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.layout = FlatLayout.from_variables(variables)
        self._gamma = self.add_variable((), initializer=keras.initializers.Constant(self._initial_gamma),
                                        dtype="float32", name="gamma")
        self._has_directions = self.add_variable((), initializer="zeros", dtype="float32", name="has_directions")
        # One at a time: Optimizer.add_optimizer_variables (the same, in one call) is new in Keras 3.10.
        self.momentums = [self.add_variable_from_reference(v, name="momentum") for v in variables] \
            if self.momentum else []
        # One [top_k, size] block of E^T per variable, stored next to it: E^T x is then top_k contiguous
        # dot products per variable, and E c a weighted sum of contiguous rows (both fast, also under XLA).
        self.directions = []
        for i, (variable, size) in enumerate(zip(variables, self.layout.sizes)):
            with self._distribution_strategy.extended.colocate_vars_with(_tf_variable(variable)):
                self.directions.append(self.add_variable((self.top_k, size), initializer="zeros",
                                                         dtype=variable.dtype, name=f"directions_{i}"))
        # Written inside the replicated step; every replica computes the same values (after the all-reduce).
        self.alpha = self.add_variable((self.top_k,), initializer="zeros", dtype="float32",
                                       aggregation="only_first_replica", name="alpha")
        self.alpha_ratio = self.add_variable((self.top_k,), initializer="zeros", dtype="float32",
                                             aggregation="only_first_replica", name="alpha_ratio")
        self._compute_dtype_for_nudge = tf.float64 if any(
            keras.backend.standardize_dtype(v.dtype) == "float64" for v in variables) else tf.float32
        if self._pending_directions is not None:
            pending, self._pending_directions = self._pending_directions, None
            with tf.init_scope():  # Keras may build inside a traced train step: assign eagerly, not in that graph
                self.set_directions(pending)

    @property
    def gamma(self) -> float:
        """The nudge factor; assigning it takes effect at the next step, also mid-training and under XLA."""
        return float(self._gamma.numpy()) if self.built else self._initial_gamma

    @gamma.setter
    def gamma(self, value: float) -> None:
        value = _check_gamma(value)
        if self.built:
            self._gamma.assign(value)
        else:
            self._initial_gamma = value

    @property
    def has_directions(self) -> bool:
        """Whether directions are set (before that NSGD steps exactly as SGD)."""
        if not self.built:
            return self._pending_directions is not None
        return bool(self._has_directions.numpy())

    def set_directions(self, vectors) -> None:
        """Sets the directions ``E`` the step is nudged along (call it eagerly, e.g. from a callback).

        Args:
          vectors: a ``[dim, K]`` NumPy array or tensor in the flat layout of
            the variables the optimizer is built on (``model.trainable_variables``
            concatenated, each flattened row-major, see
            ``tf_sharpest.utils.flat.FlatLayout``), with orthonormal columns and
            ``K >= top_k`` (the first ``top_k`` columns are used; a 1-D vector
            counts as ``K=1``); or a list with one ``[*variable.shape, K]``
            array per variable. Before the optimizer is built (it builds on
            its first step, or on ``optimizer.build(model.trainable_variables)``)
            they are kept and applied when it builds.

        Raises:
          ValueError: for a wrong shape, fewer than ``top_k`` columns, or
            non-finite values. The previous directions are then kept.
        """
        if not self.built:
            _check_finite(vectors)
            if not isinstance(vectors, (list, tuple)) and np.ndim(vectors) not in (1, 2):
                raise ValueError(f"directions must have shape [dim, K]; got {np.shape(vectors)}.")
            self._pending_directions = vectors
            return
        matrix = self._as_matrix(vectors)
        if matrix.shape[1] < self.top_k:
            raise ValueError(f"directions have {matrix.shape[1]} columns but top_k={self.top_k}; pass K >= top_k.")
        _check_finite(matrix)
        matrix = matrix[:, : self.top_k]
        gram = matrix.T.astype(np.float64) @ matrix.astype(np.float64)
        if np.abs(gram - np.eye(self.top_k)).max() > 1e-3:
            warnings.warn("NSGD directions are not orthonormal (max |E^T E - I| = "
                          f"{np.abs(gram - np.eye(self.top_k)).max():.2g}); E E^T is then not a projection.",
                          stacklevel=2)
        # Each variable's block of E^T, [top_k, size]: its rows of E, transposed.
        for variable, part in zip(self.directions, self.layout.unflatten_columns(matrix)):
            variable.assign(tf.cast(tf.transpose(tf.reshape(part, [-1, self.top_k])), variable.dtype))
        self._has_directions.assign(1.0)

    def _as_matrix(self, vectors) -> np.ndarray:
        """``vectors`` (flat or per-variable) as a flat ``[dim, K]`` NumPy array, shape-checked."""
        if isinstance(vectors, (list, tuple)):
            return self.layout.flatten_columns([np.asarray(part) for part in vectors]).numpy()
        matrix = np.asarray(vectors)
        if matrix.ndim == 1:
            matrix = matrix[:, None]
        if matrix.ndim != 2 or matrix.shape[0] != self.layout.dim:
            raise ValueError(f"directions must have shape [dim={self.layout.dim}, K] (the trainable variables "
                             f"concatenated, each flattened row-major); got {np.shape(vectors)}.")
        return matrix

    def clear_directions(self) -> None:
        """Forgets the directions: NSGD steps as plain SGD until new ones are set."""
        self._pending_directions = None
        if self.built:
            for variable in self.directions:
                variable.assign(tf.zeros(variable.shape, variable.dtype))
            self._has_directions.assign(0.0)

    def get_directions(self) -> np.ndarray:
        """The current directions as a flat ``[dim, top_k]`` NumPy array (zeros if none are set)."""
        if not self.built:
            raise ValueError("The optimizer is not built yet; it builds on its first step, or call "
                             "optimizer.build(model.trainable_variables).")
        return self.layout.flatten_columns([tf.reshape(tf.transpose(d), list(shape) + [self.top_k])
                                            for d, shape in zip(self.directions, self.layout.shapes)]).numpy()

    # -- the step ------------------------------------------------------------------------
    # Keras's private contract. The supported extension points cannot do this step: ``update_step`` sees one
    # variable at a time, and ``apply`` runs before loss unscaling, gradient accumulation, clipping and the
    # cross-replica sum, so E^T g there would not be the projection of the gradient the step uses. This
    # override of the TF backend's ``_backend_update_step`` (which receives every final gradient of the step at
    # once, in replica context) and the private helpers it calls are checked by tests/test_keras_contract.py
    # and bounded in setup.cfg to the Keras/TensorFlow versions tested.
    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        """Replica context: sum gradients over replicas, compute the nudge once, then update every variable."""
        variables = [_tf_variable(v) for v in trainable_variables]
        grads_and_vars = self._all_reduce_sum_gradients(list(zip(grads, variables)))
        # The nudge E E^T g is dense, so sparse (IndexedSlices) gradients are made dense too.
        grads = [tf.convert_to_tensor(g) for g, _ in grads_and_vars]
        grads, corrections = self._nudge(grads, variables, learning_rate)
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_update, self._distribution_strategy, grads, variables, corrections, learning_rate)

    def _nudge(self, grads: list, variables: list, learning_rate) -> tuple[list, list]:
        """Gradients to run SGD on and per-variable corrections to add to its step (``None``: none)."""
        dtype = self._compute_dtype_for_nudge
        indices = [self._get_variable_index(v) for v in variables]
        blocks = [tf.cast(self.directions[i], dtype) for i in indices]

        def project(parts):  # E^T x over the whole parameter vector: [top_k]
            return tf.add_n([tf.linalg.matvec(e, tf.reshape(tf.cast(p, dtype), [-1])) for e, p in zip(blocks, parts)])

        def expand(coefficients):  # E c, in variable-shaped parts
            return [tf.cast(tf.reshape(tf.linalg.matvec(e, coefficients, transpose_a=True), tf.shape(v)), v.dtype)
                    for e, v in zip(blocks, variables)]

        grad_projection = project(grads)
        grad_norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, dtype))) for g in grads]))
        self.alpha.assign(tf.cast(tf.abs(grad_projection), self.alpha.dtype))
        self.alpha_ratio.assign(tf.cast(tf.math.divide_no_nan(tf.abs(grad_projection), grad_norm),
                                        self.alpha_ratio.dtype))
        factor = tf.cast((self._gamma - 1.0) * self._has_directions, dtype)
        if self.nudge == "gradient":
            return [g + c for g, c in zip(grads, expand(factor * grad_projection))], [None] * len(grads)
        # "velocity": E^T of SGD's own step, which is linear in g and the old velocity.
        lr = tf.cast(learning_rate, dtype)
        step_projection = -lr * grad_projection
        if self.momentum:
            velocity_projection = self.momentum * project([self.momentums[i] for i in indices]) + step_projection
            step_projection = (self.momentum * velocity_projection + step_projection if self.nesterov
                               else velocity_projection)
        return grads, expand(factor * step_projection)

    def _distributed_update(self, distribution, grads, variables, corrections, learning_rate):
        for grad, variable, correction in zip(grads, variables, corrections):
            distribution.extended.update(variable, self._variable_update, args=(grad, correction, learning_rate),
                                         group=False)

    def _variable_update(self, variable, gradient, correction, learning_rate):
        """SGD's update of one variable (as ``keras.optimizers.SGD``), plus ``correction`` on the step."""
        learning_rate = tf.cast(learning_rate, variable.dtype)
        gradient = tf.cast(gradient, variable.dtype)
        if self.momentum:
            velocity = self.momentums[self._get_variable_index(variable)]
            momentum = tf.constant(self.momentum, variable.dtype)  # not via float32, as tf.cast(0.7) is
            self.assign(velocity, velocity * momentum - gradient * learning_rate)
            step = velocity * momentum - gradient * learning_rate if self.nesterov else velocity
        else:
            step = -gradient * learning_rate
        self.assign_add(variable, step if correction is None else step + correction)

    def update_step(self, gradient, variable, learning_rate):
        raise RuntimeError("NSGD couples all variables in one step (see _backend_update_step) and cannot "
                                  "update them one at a time.")

    # -- serialization -------------------------------------------------------------------
    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"momentum": self.momentum, "nesterov": self.nesterov, "gamma": self.gamma,
                       "top_k": self.top_k, "nudge": self.nudge})
        return config


def _tf_variable(variable) -> tf.Variable:
    """The ``tf.Variable`` behind a Keras variable (in Keras 3.5, ``keras.Variable`` is not their class)."""
    return variable if isinstance(variable, tf.Variable) else variable.value


def _is_integer(value) -> bool:
    """A Python or NumPy integer, not a bool (``True`` is an ``int`` but means no count)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    """A finite Python or NumPy real number (``np.float32(0.9)`` included), not a bool."""
    return (_is_integer(value) or isinstance(value, (float, np.floating))) and math.isfinite(value)


def _check_gamma(gamma) -> float:
    if not _is_real(gamma):
        raise ValueError(f"gamma must be a finite number, got {gamma!r}.")
    return float(gamma)


def _check_finite(vectors: np.ndarray | Sequence) -> None:
    arrays = vectors if isinstance(vectors, (list, tuple)) else [vectors]
    for array in arrays:
        if not np.all(np.isfinite(np.asarray(array))):
            raise ValueError("directions contain NaN or inf values; NSGD keeps its previous directions.")
