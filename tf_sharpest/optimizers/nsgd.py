"""NSGD: SGD whose step inside the top-K Hessian eigenspace is scaled by gamma."""

from __future__ import annotations

import math

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
    momentum. With ``nudge="velocity"`` (the paper's default) the velocity is
    updated as in SGD, ``v <- mu * v - lr * g``, and the applied step is
    ``s + (gamma - 1) E E^T s`` where ``s`` is SGD's step (``v``, or
    ``mu * v - lr * g`` with Nesterov); the velocity buffer keeps the
    uncorrected ``v``. With ``nudge="gradient"`` the gradient is corrected
    first, ``g' = g + (gamma - 1) E E^T g``, and SGD runs on ``g'``. Without
    momentum both give
    ``delta = -lr (I - E E^T) g - gamma * lr * E E^T g``: ``gamma`` scales the
    learning rate inside the top-K subspace only. ``gamma=1``, or no
    directions set yet, is exactly ``keras.optimizers.SGD``.

    ``E^T g`` sums over every variable, so the correction couples them; it is
    computed once per step across the whole parameter vector (after the
    cross-replica gradient sum under ``tf.distribute``).

    The directions, ``gamma`` and the step's projections live in optimizer
    variables: they work inside compiled (and XLA) train steps, change without
    retracing, and are saved and restored with the optimizer
    (``model.save``/``keras.models.load_model``, ``BackupAndRestore``).
    ``tf_sharpest.callbacks.LanczosCallback`` sets the directions during ``fit``.

    After every step, ``optimizer.alpha`` holds ``|E^T g|`` (``[top_k]``) and
    ``optimizer.alpha_ratio`` holds ``|E^T g| / ||g||``, the projections the
    paper logged.

    Example:

    ```python
    optimizer = tf_sharpest.optimizers.NSGD(learning_rate=0.01, gamma=0.1, top_k=5)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, callbacks=[tf_sharpest.callbacks.LanczosCallback((x, y), top_k=5)])
    # or by hand, with eigenvectors in the flat layout of model.trainable_variables:
    optimizer.set_directions(tf_sharpest.hessian.top_eigenpairs(model, (x, y), k=5).eigenvectors)
    optimizer.gamma = 0.5  # takes effect at the next step
    ```

    Args:
      learning_rate: a float, a ``keras.optimizers.schedules.LearningRateSchedule``,
        or a callable; changed by ``ReduceLROnPlateau`` like any Keras optimizer's.
      momentum: float in ``[0, 1]``.
      nesterov: use Nesterov momentum.
      gamma: the nudge ("overshoot" in the paper's command lines); ``1`` is SGD,
        ``0`` freezes the top subspace.
      top_k: number of directions used (the first ``top_k`` columns of what
        ``set_directions`` receives).
      nudge: ``"velocity"`` or ``"gradient"``, see above.
      **kwargs: the common ``keras.optimizers.Optimizer`` arguments (``name``,
        ``weight_decay``, ``clipnorm``, ``global_clipnorm``, ``use_ema``, ...).
    """

    def __init__(self, learning_rate=0.01, momentum: float = 0.0, nesterov: bool = False, gamma: float = 1.0,
                 top_k: int = 5, nudge: str = "velocity", name: str | None = None, **kwargs):
        if keras.backend.backend() != "tensorflow":
            raise ValueError(f"NSGD needs the TensorFlow backend of Keras, not {keras.backend.backend()!r}.")
        super().__init__(learning_rate=learning_rate, name=name or "nsgd", **kwargs)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be a float in [0, 1], got {momentum!r}.")
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}.")
        if nudge not in NUDGE_CHOICES:
            raise ValueError(f"Unknown nudge {nudge!r}; choose one of {NUDGE_CHOICES}.")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.top_k = int(top_k)
        self.nudge = nudge
        self._initial_gamma = _check_gamma(gamma)
        self._pending_directions = None

    # -- state -------------------------------------------------------------------------
    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.layout = FlatLayout.from_variables(variables)
        self._gamma = self.add_variable((), initializer=keras.initializers.Constant(self._initial_gamma),
                                        dtype="float32", name="gamma")
        self._has_directions = self.add_variable((), initializer="zeros", dtype="float32", name="has_directions")
        self.momentums = self.add_optimizer_variables(variables, "momentum") if self.momentum else []
        self.directions = [
            self.add_variable((size, self.top_k), initializer="zeros", dtype=variable.dtype, name=f"directions_{i}")
            for i, (size, variable) in enumerate(zip(self.layout.sizes, variables))
        ]
        # Written inside the replicated step: keep the first replica's value (all are equal after the all-reduce).
        self.alpha = self.add_variable((self.top_k,), initializer="zeros", dtype="float32",
                                       aggregation="only_first_replica", name="alpha")
        self.alpha_ratio = self.add_variable((self.top_k,), initializer="zeros", dtype="float32",
                                             aggregation="only_first_replica", name="alpha_ratio")
        if self._pending_directions is not None:
            pending, self._pending_directions = self._pending_directions, None
            # Keras may build inside a traced train step: assign eagerly, not into that graph.
            with tf.init_scope():
                self.set_directions(pending)

    @property
    def gamma(self) -> float:
        """The nudge factor; assigning it takes effect at the next step, also mid-training."""
        return float(self._gamma.numpy()) if self.built else self._initial_gamma

    @gamma.setter
    def gamma(self, value):
        value = _check_gamma(value)
        if self.built:
            self._gamma.assign(value)
        else:
            self._initial_gamma = value

    @property
    def has_directions(self) -> bool:
        """Whether directions have been set (before that, NSGD is plain SGD)."""
        return self.built and bool(self._has_directions.numpy())

    def set_directions(self, vectors) -> None:
        """Sets the directions ``E`` the step is nudged along.

        Args:
          vectors: a ``[dim, K]`` NumPy array or tensor in the flat layout of the
            variables the optimizer is built on (``model.trainable_variables``
            concatenated, each flattened row-major), with ``K >= top_k`` (the
            first ``top_k`` columns are used); or a list with one
            ``[*variable.shape, K]`` array per variable. Before the optimizer is
            built they are kept and applied when it is.

        Raises:
          ValueError: for a wrong shape, too few columns, or non-finite values.
        """
        if not self.built:
            self._pending_directions = _check_finite(vectors)
            return
        if isinstance(vectors, (list, tuple)):
            if len(vectors) != len(self.layout):
                raise ValueError(f"Expected {len(self.layout)} per-variable arrays, got {len(vectors)}.")
            parts = []
            for part, shape in zip(vectors, self.layout.shapes):
                part = np.asarray(part)
                if part.shape[:-1] != shape or part.ndim != len(shape) + 1:
                    raise ValueError(f"A per-variable direction array has shape {part.shape}; expected "
                                     f"{shape + ('K',)}.")
                parts.append(part.reshape(-1, part.shape[-1]))
            matrix = np.concatenate(parts, axis=0)
        else:
            matrix = np.asarray(vectors)
            if matrix.ndim == 1:
                matrix = matrix[:, None]
        if matrix.ndim != 2 or matrix.shape[0] != self.layout.dim:
            raise ValueError(
                f"directions must have shape [dim={self.layout.dim}, K] (the trainable variables concatenated, "
                f"each flattened row-major); got {matrix.shape}.")
        if matrix.shape[1] < self.top_k:
            raise ValueError(f"directions have {matrix.shape[1]} columns but top_k={self.top_k}; pass K >= top_k.")
        _check_finite(matrix)
        matrix = matrix[:, : self.top_k]
        for variable, start, size in zip(self.directions, self.layout.offsets, self.layout.sizes):
            variable.assign(matrix[start:start + size].astype(variable.dtype))
        self._has_directions.assign(1.0)

    def clear_directions(self) -> None:
        """Forgets the directions: NSGD steps as plain SGD until new ones are set."""
        if self.built:
            self._has_directions.assign(0.0)
        self._pending_directions = None

    def get_directions(self) -> np.ndarray:
        """The current directions as a flat ``[dim, top_k]`` NumPy array."""
        if not self.built:
            raise ValueError("The optimizer is not built yet; it builds on its first step or optimizer.build(vars).")
        return np.concatenate([d.numpy() for d in self.directions], axis=0)

    # -- the step ------------------------------------------------------------------------
    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        trainable_variables = [v.value if isinstance(v, keras.Variable) else v for v in trainable_variables]
        grads_and_vars = self._all_reduce_sum_gradients(list(zip(grads, trainable_variables)))
        grads = [g for g, _ in grads_and_vars]
        grads, extras = self._nudge(grads, trainable_variables, learning_rate)
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_update, self._distribution_strategy,
            list(zip(grads, trainable_variables)), extras, learning_rate)

    def _nudge(self, grads, variables, learning_rate):
        """Corrections of the step along ``E``: corrected gradients and per-variable step terms."""
        indices = [self._get_variable_index(v) for v in variables]
        directions = [self.directions[i] for i in indices]

        def project(parts):  # E^T x over the whole parameter vector
            return tf.add_n([tf.linalg.matvec(tf.cast(d, tf.float32), tf.reshape(tf.cast(p, tf.float32), [-1]),
                                              transpose_a=True) for d, p in zip(directions, parts)])

        def expand(coefficients, like):  # E c, cut into variable-shaped parts
            return [tf.cast(tf.reshape(tf.linalg.matvec(tf.cast(d, tf.float32), coefficients), tf.shape(v)), v.dtype)
                    for d, v in zip(directions, like)]

        grad_projection = project(grads)
        grad_norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, tf.float32))) for g in grads]))
        self.alpha.assign(tf.abs(grad_projection))
        self.alpha_ratio.assign(tf.math.divide_no_nan(tf.abs(grad_projection), grad_norm))
        factor = (self._gamma - 1.0) * self._has_directions
        lr = tf.cast(learning_rate, tf.float32)
        if self.nudge == "gradient":
            corrected = [g + c for g, c in zip(grads, expand(factor * grad_projection, grads))]
            return corrected, [tf.zeros_like(g) for g in grads]
        # nudge="velocity": project SGD's own step s (linear in g and the old velocity).
        step_projection = -lr * grad_projection
        if self.momentum:
            velocity = self.momentum * project([self.momentums[i] for i in indices]) - lr * grad_projection
            step_projection = self.momentum * velocity - lr * grad_projection if self.nesterov else velocity
        return grads, expand(factor * step_projection, grads)

    def _distributed_update(self, distribution, grads_and_vars, extras, learning_rate):
        for (grad, variable), extra in zip(grads_and_vars, extras):
            distribution.extended.update(variable, self._nudged_update_step, args=(grad, extra, learning_rate),
                                         group=False)

    def _nudged_update_step(self, variable, gradient, extra, learning_rate):
        learning_rate = tf.cast(learning_rate, variable.dtype)
        gradient = tf.cast(gradient, variable.dtype)
        if self.momentum:
            velocity = self.momentums[self._get_variable_index(variable)]
            self.assign(velocity, self.momentum * velocity - learning_rate * gradient)
            step = self.momentum * velocity - learning_rate * gradient if self.nesterov else velocity
        else:
            step = -learning_rate * gradient
        self.assign_add(variable, step + extra)

    def update_step(self, gradient, variable, learning_rate):  # used only by stateless paths
        raise ValueError("NSGD couples all variables in one step and cannot update them one at a time.")

    # -- serialization ---------------------------------------------------------------------
    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"momentum": self.momentum, "nesterov": self.nesterov, "gamma": self.gamma,
                       "top_k": self.top_k, "nudge": self.nudge})
        return config


def _check_gamma(gamma) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.floating, np.integer)) \
            or not math.isfinite(gamma):
        raise ValueError(f"gamma must be a finite number, got {gamma!r}.")
    return float(gamma)


def _check_finite(vectors):
    arrays = vectors if isinstance(vectors, (list, tuple)) else [vectors]
    for array in arrays:
        if not np.all(np.isfinite(np.asarray(array))):
            raise ValueError("directions contain NaN or inf values; NSGD keeps its previous directions.")
    return vectors
