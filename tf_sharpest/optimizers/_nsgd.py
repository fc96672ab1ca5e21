"""NSGD: Keras's SGD whose step inside the top-K Hessian eigenspace is scaled by gamma."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_sharpest import _keras_compat
from tf_sharpest.optimizers._steering import DirectionConsumer
from tf_sharpest.utils._deprecation import REMOVED_IN, renamed_argument
from tf_sharpest.utils._flat import FlatLayout

NUDGE_CHOICES = ("velocity", "gradient")


def nudge(gradients, directions, gamma):
    """``g + (gamma - 1) E E^T g``: the gradient with its part in the span of ``E`` scaled by ``gamma``.

    A pure function (NSGD's ``nudge="gradient"`` rule, and its whole rule
    without momentum). ``E^T g`` is one sum over every variable.

    Example:

    ```python
    g = nudge(v, eigenvectors, 0.1)  # [dim] and [dim, K] -> [dim]: the part along the columns times 0.1
    e = tf.ones((3, 2, 1)) / tf.sqrt(6.0)  # per variable: one unit direction spanning the first variable only
    parts = nudge([tf.ones((3, 2)), tf.ones(4)], [e, tf.zeros((4, 1))], 0.0)
    print(parts[0].numpy())  # zeros: gamma = 0 removes the part along e
    ```

    Args:
      gradients: a flat ``[dim]`` tensor, or a list of variable-shaped tensors.
      directions: ``[dim, K]`` with orthonormal columns for a flat gradient; for
        a list, one ``[*variable.shape, K]`` tensor per variable (the columns
        split as ``FlatLayout.unflatten_columns`` splits them).
      gamma: the factor on the component in the span of the directions.

    Returns:
      The nudged gradient, in the form and dtype of ``gradients``.
    """
    if isinstance(gradients, (list, tuple)):
        if not isinstance(directions, (list, tuple)) or len(directions) != len(gradients):
            raise ValueError("For a list of gradients, directions must be a list with one [*shape, K] tensor per "
                             "gradient.")
        blocks = [tf.transpose(tf.reshape(e, [-1, tf.shape(e)[-1]])) for e in directions]
        return _nudge_parts(list(gradients), blocks, gamma)
    return _nudge_parts([gradients], [tf.transpose(directions)], gamma)[0]


def _compute_dtype(tensors) -> tf.DType:
    return tf.float64 if any(tf.as_dtype(t.dtype) == tf.float64 for t in tensors) else tf.float32


def _project(blocks: list, parts: list, dtype) -> tf.Tensor:
    """``E^T x`` over the whole vector, ``[K]``; ``blocks[i]`` is the ``[K, size_i]`` block of ``E^T``."""
    return tf.add_n([tf.linalg.matvec(tf.cast(e, dtype), tf.reshape(tf.cast(p, dtype), [-1]))
                     for e, p in zip(blocks, parts)])


def _expand(blocks: list, coefficients, like: list) -> list:
    """``E c`` split into parts shaped (and typed) like ``like``."""
    return [tf.cast(tf.reshape(tf.linalg.matvec(tf.cast(e, coefficients.dtype), coefficients, transpose_a=True),
                               tf.shape(p)), p.dtype) for e, p in zip(blocks, like)]


def _nudge_parts(parts: list, blocks: list, gamma, projection=None) -> list:
    parts = [tf.convert_to_tensor(p) for p in parts]  # an IndexedSlices gradient: the nudge is dense
    dtype = _compute_dtype(parts)
    if projection is None:
        projection = _project(blocks, parts, dtype)
    coefficients = (tf.cast(gamma, dtype) - 1.0) * tf.cast(projection, dtype)
    return [p + c for p, c in zip(parts, _expand(blocks, coefficients, parts))]


@keras.saving.register_keras_serializable(package="tf_sharpest")
class NSGD(_keras_compat.FinalGradientsHook, keras.optimizers.SGD, DirectionConsumer):
    """Nudged SGD: Keras's SGD (with momentum) whose step along the top-K eigenvectors is scaled by ``gamma``.

    Let ``E`` be the current directions (``[dim, K]``, orthonormal columns over
    all trainable variables flattened), ``lr`` the learning rate and ``mu`` the
    momentum.

    * ``nudge="velocity"`` (the paper's default, ``correct_v``): the velocity
      is updated as in SGD, ``v <- mu * v - lr * g``, and the applied step is
      ``s + (gamma - 1) E E^T s``, where ``s`` is SGD's own step (``v``, or
      ``mu * v - lr * g`` with Nesterov). The velocity buffer keeps the
      uncorrected ``v``.
    * ``nudge="gradient"`` (``correct_g``): SGD (with its momentum) runs on the
      nudged gradient ``g + (gamma - 1) E E^T g`` (the pure function
      :func:`nudge`).

    Without momentum both give
    ``delta = -lr (I - E E^T) g - gamma * lr * E E^T g``: ``gamma`` scales the
    learning rate inside the top-K subspace only; ``gamma=0`` freezes that
    subspace. ``gamma=1``, or no directions set yet, is exactly
    ``keras.optimizers.SGD``, whose update NSGD runs for every variable.

    ``g`` is the gradient the step uses: after loss unscaling (also inside
    the ``LossScaleOptimizer`` of mixed precision), gradient accumulation,
    clipping and the sum over replicas under ``tf.distribute``. ``E^T g`` sums
    over every variable, so NSGD computes it once per step over the whole
    parameter vector.

    NSGD is a :class:`~tf_sharpest.optimizers.DirectionConsumer`:
    ``tf_sharpest.callbacks.LanczosCallback`` hands it the measured top
    eigenvectors during ``fit`` and logs its :meth:`direction_logs`. The
    directions, ``gamma`` and the step's projections are optimizer variables:
    they work inside compiled (also XLA) train steps, can change between steps
    without retracing, and are saved and restored with the optimizer.

    After every step (one value per direction, zeros while no directions are
    set): ``optimizer.alpha`` holds ``|E^T g|`` and ``optimizer.alpha_ratio``
    ``|E^T g| / ||g||`` (read them with ``.numpy()``). Also: ``optimizer.gamma``
    (settable at any time), ``optimizer.has_directions`` and
    ``optimizer.get_directions()`` (``[dim, top_k]`` NumPy array).

    Example:

    ```python
    model.compile(optimizer=tf_sharpest.optimizers.NSGD(learning_rate=0.01, momentum=0.9, gamma=0.1, top_k=5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # Let a callback keep the directions up to date during fit ...
    model.fit(x, y, callbacks=[tf_sharpest.callbacks.LanczosCallback((x, y), top_k=5)])
    # ... or set them by hand, in the flat layout of model.trainable_variables:
    model.optimizer.set_directions(None, eigenvectors)  # eigenvalues [K] (or None), eigenvectors [dim, K >= 5]
    model.optimizer.gamma = 0.5  # takes effect at the next step
    print(model.optimizer.direction_logs())  # {"nsgd_alpha_1": ..., "nsgd_alpha_ratio_1": ..., ...}
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
        self._check_keras_calls_the_hook()
        if not _is_real(momentum) or not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be a float in [0, 1], got {momentum!r}.")
        if not _is_integer(top_k) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}.")
        if not (isinstance(nesterov, (bool, np.bool_)) or (_is_integer(nesterov) and nesterov in (0, 1))):
            # bool("False") is True: a string here would silently turn Nesterov on.
            raise ValueError(f"nesterov must be True or False, got {nesterov!r}.")
        if not isinstance(nudge, str) or nudge not in NUDGE_CHOICES:
            raise ValueError(f"Unknown nudge {nudge!r}; choose one of {NUDGE_CHOICES}.")
        super().__init__(learning_rate=learning_rate, momentum=float(momentum), nesterov=bool(nesterov),
                         name=name or "nsgd", **kwargs)
        self.top_k = int(top_k)
        self.nudge = nudge
        self._initial_gamma = _check_gamma(gamma)
        self._pending_directions = None

    # -- state ---------------------------------------------------------------------------
    def build(self, variables):
        if self.built:
            return
        # gamma and has_directions come first, as in the files of earlier releases (see load_own_variables).
        self._gamma = self.add_variable((), initializer=keras.initializers.Constant(self._initial_gamma),
                                        dtype="float32", name="gamma")
        self._has_directions = self.add_variable((), initializer="zeros", dtype="float32", name="has_directions")
        super().build(variables)  # Keras's SGD: its momentum slots
        self.layout = FlatLayout.from_variables(variables)
        self._nudge_dtype = _compute_dtype(variables)
        # One [top_k, size] block of E^T per variable: E^T x is then top_k contiguous dot products per
        # variable, and E c a weighted sum of contiguous rows (both fast, also under XLA).
        self.directions = [self.add_variable((self.top_k, size), initializer="zeros", dtype=variable.dtype,
                                             name=f"directions_{i}")
                           for i, (variable, size) in enumerate(zip(variables, self.layout.sizes))]
        # Written inside the replicated step; every replica computes the same values (after the all-reduce).
        replicated = dict(initializer="zeros", aggregation="only_first_replica")
        self.alpha = self.add_variable((self.top_k,), dtype="float32", name="alpha", **replicated)
        self.alpha_ratio = self.add_variable((self.top_k,), dtype="float32", name="alpha_ratio", **replicated)
        if self.nudge == "velocity":
            # E^T g and E^T v of the current step, for the per-variable correction in update_step.
            self._projections = self.add_variable((2, self.top_k), dtype=self._nudge_dtype.name,
                                                  name="step_projections", **replicated)
        if self._pending_directions is not None:
            (eigenvalues, eigenvectors), self._pending_directions = self._pending_directions, None
            with tf.init_scope():  # Keras may build inside a traced train step: assign eagerly, not in that graph
                self._assign_directions(eigenvalues, eigenvectors)

    @property
    def num_directions(self) -> int:
        """How many directions NSGD nudges along: ``top_k`` (the steering protocol's name for it)."""
        return self.top_k

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

    def set_directions(self, eigenvalues=None, eigenvectors=None, *, vectors=None) -> None:
        """Sets the directions ``E`` the step is nudged along (call it eagerly, e.g. from a callback).

        Args:
          eigenvalues: ``[K]`` values that go with the columns (descending), or
            None: NSGD checks them but does not use them.
          eigenvectors: a ``[dim, K]`` NumPy array or tensor in the flat layout
            of the variables the optimizer is built on (``model.trainable_variables``
            concatenated, each flattened row-major, see
            ``tf_sharpest.utils.FlatLayout``), with orthonormal columns and
            ``K >= top_k`` (the first ``top_k`` columns are used; a 1-D vector
            counts as ``K=1``); or a list with one ``[*variable.shape, K]``
            array per variable. Before the optimizer is built (it builds on
            its first step, or on ``optimizer.build(model.trainable_variables)``)
            they are kept and applied when it builds.
          vectors: deprecated name of ``eigenvectors``. The one-argument call
            ``set_directions(vectors)`` also still works, with a ``DeprecationWarning``.

        Raises:
          ValueError: for a wrong shape, fewer than ``top_k`` columns,
            eigenvalues that do not match the columns, or non-finite values.
            The previous directions are then kept.
        """
        eigenvectors = renamed_argument("NSGD.set_directions", "vectors", "eigenvectors", vectors, eigenvectors)
        if eigenvectors is None:
            if eigenvalues is None:
                raise TypeError("NSGD.set_directions() needs the eigenvectors: set_directions(eigenvalues, "
                                "eigenvectors), with eigenvalues=None if there are none.")
            warnings.warn("NSGD.set_directions(vectors) with one argument is deprecated and will be removed in "
                          f"tf_sharpest {REMOVED_IN}; write set_directions(eigenvalues, vectors), or "
                          "set_directions(None, vectors).", DeprecationWarning, stacklevel=2)
            eigenvalues, eigenvectors = None, eigenvalues
        if not self.built:
            _check_finite(eigenvectors)
            if not isinstance(eigenvectors, (list, tuple)) and np.ndim(eigenvectors) not in (1, 2):
                raise ValueError(f"directions must have shape [dim, K]; got {np.shape(eigenvectors)}.")
            _check_eigenvalues(eigenvalues, None)
            self._pending_directions = (eigenvalues, eigenvectors)
            return
        self._assign_directions(eigenvalues, eigenvectors)

    def _assign_directions(self, eigenvalues, eigenvectors) -> None:
        matrix = self._as_matrix(eigenvectors)
        if matrix.shape[1] < self.top_k:
            raise ValueError(f"directions have {matrix.shape[1]} columns but top_k={self.top_k}; pass K >= top_k.")
        _check_eigenvalues(eigenvalues, matrix.shape[1])
        _check_finite(matrix)
        matrix = matrix[:, : self.top_k]
        error = np.abs(matrix.T.astype(np.float64) @ matrix.astype(np.float64) - np.eye(self.top_k)).max()
        if error > 1e-3:
            warnings.warn(f"NSGD directions are not orthonormal (max |E^T E - I| = {error:.2g}); E E^T is then "
                          "not a projection.", stacklevel=3)
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

    def direction_logs(self) -> dict[str, float]:
        """``nsgd_alpha_i`` (``|e_i . g|``) and ``nsgd_alpha_ratio_i`` (``|e_i . g| / ||g||``) of the last step."""
        if not self.built:
            return {}
        logs = {}
        for name, values in (("nsgd_alpha", self.alpha), ("nsgd_alpha_ratio", self.alpha_ratio)):
            for i, value in enumerate(values.numpy()):
                logs[f"{name}_{i + 1}"] = float(value)
        return logs

    # -- the step ------------------------------------------------------------------------
    def _transform_final_gradients(self, gradients: list, variables: list) -> list:
        """Replica context, once per step, with the gradients the step uses (see ``FinalGradientsHook``)."""
        indices = [_keras_compat.variable_index(self, v) for v in variables]
        blocks = [self.directions[i] for i in indices]
        dense = [tf.convert_to_tensor(g) for g in gradients]
        dtype = self._nudge_dtype
        projection = _project(blocks, dense, dtype)
        norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, dtype))) for g in dense]))
        self.alpha.assign(tf.cast(tf.abs(projection), "float32"))
        self.alpha_ratio.assign(tf.cast(tf.math.divide_no_nan(tf.abs(projection), norm), "float32"))
        if self.nudge == "gradient":
            return _nudge_parts(dense, blocks, self._effective_gamma(dtype), projection)
        # "velocity": update_step corrects SGD's step with E^T of it, which is linear in E^T g and E^T v
        # (read here, before any variable's velocity is updated).
        velocity = (_project(blocks, [self.momentums[i] for i in indices], dtype) if self.momentum
                    else tf.zeros_like(projection))
        self._projections.assign(tf.stack([projection, velocity]))
        return gradients

    def _effective_gamma(self, dtype):
        """``gamma`` while directions are set, else 1 (plain SGD)."""
        return tf.cast(1.0 + (self._gamma - 1.0) * self._has_directions, dtype)

    def update_step(self, gradient, variable, learning_rate):
        """Keras's SGD update of one variable; with ``nudge="velocity"``, plus ``(gamma - 1) E E^T s`` on its step."""
        super().update_step(gradient, variable, learning_rate)
        if self.nudge != "velocity":
            return
        dtype = self._nudge_dtype
        grad_projection, velocity_projection = tf.unstack(tf.convert_to_tensor(self._projections))
        # As Keras's SGD casts them (a Python float goes through float32).
        learning_rate, momentum = tf.cast(learning_rate, dtype), tf.cast(self.momentum, dtype)
        step = -learning_rate * grad_projection  # E^T s, SGD's step projected
        if self.momentum:
            step = momentum * velocity_projection + step  # the new velocity
            if self.nesterov:
                step = momentum * step - learning_rate * grad_projection
        coefficients = (self._effective_gamma(dtype) - 1.0) * step
        block = self.directions[_keras_compat.variable_index(self, variable)]
        self.assign_add(variable, _expand([block], coefficients, [variable])[0])

    # -- serialization -------------------------------------------------------------------
    def load_own_variables(self, store) -> None:
        """Restores a saved state; also one saved before NSGD kept the step's projections (velocity mode).

        Those files hold every variable but the last, the projections, which
        each step writes before it reads them.
        """
        if self.built and self.nudge == "velocity" and len(store.keys()) == len(self.variables) - 1:
            _keras_compat.load_optimizer_variables(store, self.variables[:-1])
            return
        super().load_own_variables(store)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"gamma": self.gamma, "top_k": self.top_k, "nudge": self.nudge})
        return config


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


def _check_eigenvalues(eigenvalues, num_columns: int | None) -> None:
    if eigenvalues is None:
        return
    values = np.asarray(eigenvalues)
    if values.ndim != 1 or (num_columns is not None and values.shape[0] != num_columns):
        raise ValueError(f"eigenvalues must have shape [K] with one value per eigenvector column"
                         f"{'' if num_columns is None else f' ({num_columns})'}; got {values.shape}.")
    if not np.all(np.isfinite(values.astype(np.float64))):
        raise ValueError("eigenvalues contain NaN or inf values; NSGD keeps its previous directions.")


def _check_finite(vectors: np.ndarray | Sequence) -> None:
    arrays = vectors if isinstance(vectors, (list, tuple)) else [vectors]
    for array in arrays:
        if not np.all(np.isfinite(np.asarray(array))):
            raise ValueError("directions contain NaN or inf values; NSGD keeps its previous directions.")
