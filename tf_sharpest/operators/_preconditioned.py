"""Preconditioned curvature ``D^-1/2 A D^-1/2``: the sharpness an adaptive optimizer sees.

An optimizer that divides its step by a diagonal ``D`` (Adam's
``sqrt(v_hat) + eps``) is stable along the eigenvectors of ``P^-1 H`` with
``P = D``; Cohen et al. (2022, "Adaptive Gradient Methods at the Edge of
Stability") find its top eigenvalue settling at ``(2 + 2 beta1) / (eta (1 - beta1))``.
``D^-1/2 H D^-1/2`` has the same eigenvalues and is symmetric, so every
algorithm for symmetric operators applies; an eigenvector ``u`` of it gives
the eigenvector ``D^-1/2 u`` of ``P^-1 H``.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tf_sharpest._keras_compat import optimizer_slots, unwrap_optimizer, variable_index
from tf_sharpest.operators._base import LinearOperator


class PreconditionedOperator(LinearOperator):
    """The symmetric ``D^-1/2 A D^-1/2`` for an operator ``A`` and a positive flat diagonal ``D``.

    Example:

    ```python
    hessian = HessianOperator(model, (x, y))
    diagonal = optimizer_preconditioner(model.optimizer, hessian.variables)
    sharpness = lanczos(PreconditionedOperator(hessian, diagonal), k=1).eigenvalues[0]
    ```

    Args:
      operator: any :class:`LinearOperator` (e.g. a Hessian or GGN).
      diagonal: ``[dim]`` positive, finite entries in the operator's flat layout.

    Raises:
      ValueError: if ``diagonal`` has the wrong shape, or an entry that is not
        positive and finite, or so small that ``1 / entry`` overflows the
        operator's dtype (the message names the first one).
    """

    def __init__(self, operator: LinearOperator, diagonal):
        if not isinstance(operator, LinearOperator):
            raise ValueError(f"operator must be a tf_sharpest LinearOperator, got {type(operator).__name__}.")
        diagonal = np.asarray(diagonal, dtype=np.float64)
        if diagonal.shape != (operator.dim,):
            raise ValueError(f"diagonal must be a flat vector of length {operator.dim} (the operator's dim); "
                             f"got shape {diagonal.shape}.")
        bad = np.flatnonzero(~(np.isfinite(diagonal) & (diagonal > 0)))
        if bad.size:
            raise ValueError(
                f"The preconditioner diagonal must be positive and finite; entry {int(bad[0])} is "
                f"{diagonal[bad[0]]} ({bad.size} such entries). An optimizer before its first step has no "
                "second moments yet: train at least one step, or add an epsilon.")
        largest = float(np.finfo(operator.dtype.as_numpy_dtype).max)
        tiny = np.flatnonzero(diagonal < 1.0 / largest)
        if tiny.size:
            # D^-1/2 A D^-1/2 scales A's entries by 1/D: it would be inf (and its products NaN) in this dtype.
            raise ValueError(
                f"The preconditioner diagonal's entry {int(tiny[0])} is {diagonal[tiny[0]]:.3g} ({tiny.size} such "
                f"entries): its inverse overflows {operator.dtype.name} (largest {largest:.3g}), so the "
                "preconditioned operator would be inf. Add an epsilon to the diagonal (the optimizer's own), or "
                "build the operator in float64.")
        super().__init__(operator.dim, operator.dtype)
        self.operator = operator
        self.diagonal = diagonal
        self._inverse_sqrt = tf.constant(1.0 / np.sqrt(diagonal), operator.dtype)

    def __getattr__(self, name):
        # The layout, variables, model, loss ... of the wrapped operator.
        if name == "operator":
            raise AttributeError(name)
        return getattr(self.operator, name)

    def _matvec(self, vector):
        return self._inverse_sqrt * self.operator.matvec(self._inverse_sqrt * vector)

    def _matmat(self, vectors):
        return self._inverse_sqrt[:, None] * self.operator.matmat(self._inverse_sqrt[:, None] * vectors)


# Keras optimizers (and their subclasses) whose step is divided by a diagonal read from their slots.
_SUPPORTED = ("Adam", "AdamW", "Nadam", "Adamax", "RMSprop", "Adagrad")


def optimizer_preconditioner(optimizer: keras.optimizers.Optimizer, variables) -> np.ndarray:
    """The flat diagonal ``D`` by which an adaptive Keras optimizer divides its step, in its current state.

    The next step of the optimizer is ``-lr * m_hat / D`` (elementwise), with
    ``D`` read from its second-moment slots after the steps taken so far
    (``t = optimizer.iterations``):

    * Adam, AdamW: ``sqrt(v_hat) + eps / sqrt(1 - beta2^t)`` with
      ``v_hat = v / (1 - beta2^t)`` (``v_hat``'s running maximum with
      ``amsgrad``): Keras adds ``eps`` to ``sqrt(v)`` before the bias
      correction, so ``eps`` enters scaled;
    * Nadam: ``sqrt(v / (1 - beta2^t)) + eps``;
    * Adamax: ``u + eps``;
    * RMSprop: ``sqrt(v + eps)`` (centered: ``sqrt(v - mean_g^2 + eps)``);
    * Adagrad: ``sqrt(accumulator + eps)``.

    With ``PreconditionedOperator(hessian, D)`` this makes the preconditioned
    sharpness ``lambda_1(D^-1 H)`` one line.

    Args:
      optimizer: a built Keras optimizer of one of the classes above (or a subclass), or a
        ``LossScaleOptimizer`` (mixed precision) wrapping one.
      variables: the model variables, in the order of the operator's layout
        (e.g. ``operator.variables``).

    Returns:
      ``[sum of variable sizes]`` float64 NumPy array.

    Raises:
      ValueError: for an optimizer without second-moment slots (SGD, NSGD,
        Lion, ...), one not built yet or that has taken no step, or a
        variable it does not update.
    """
    optimizer = unwrap_optimizer(optimizer)  # the Adam inside a LossScaleOptimizer (mixed precision)
    kind = optimizer_preconditioner_supports(optimizer)
    if not optimizer.built:
        raise ValueError(f"The {kind} optimizer is not built yet: train at least one step (model.fit) first.")
    step = float(optimizer.iterations.numpy())
    if step == 0:
        # Every rule's slots then hold their initial values only (zeros, or Adagrad's start value):
        # D would be epsilon alone, not what any step divides by.
        raise ValueError(f"{kind} has taken no step yet (iterations = 0): its second moments are empty. Train at "
                         "least one step (model.fit) first.")
    variables = list(variables)
    parts = []
    for variable in variables:
        index = _slot_index(optimizer, variable)
        parts.append(np.reshape(_denominator(optimizer, kind, index, step), [-1]))
    return np.concatenate(parts).astype(np.float64)


def optimizer_preconditioner_supports(optimizer) -> str:
    """The supported Keras class ``optimizer`` is (or derives from); a ``ValueError`` if none."""
    optimizer = unwrap_optimizer(optimizer)
    kind = next((name for name in _SUPPORTED if any(c.__name__ == name for c in type(optimizer).__mro__)), None)
    if kind is None:
        raise ValueError(
            f"{type(optimizer).__name__} has no second-moment slots to precondition with; "
            f"optimizer_preconditioner supports {', '.join(_SUPPORTED)}. For SGD the plain Hessian is the "
            "sharpness that matters.")
    return kind


def _slot(optimizer, attribute: str, index: int) -> np.ndarray:
    slots = optimizer_slots(optimizer, attribute)
    if slots is None:
        raise ValueError(
            f"This Keras version's {type(optimizer).__name__} has no '{attribute}' slots; tf_sharpest reads "
            "Keras 3's optimizer state (tested with Keras 3.x). Please report the Keras version.")
    return np.asarray(slots[index].numpy(), dtype=np.float64)


def _slot_index(optimizer, variable) -> int:
    try:
        return variable_index(optimizer, variable)  # Keras 3: the slot lists follow the variable order
    except (KeyError, AttributeError) as error:
        name = getattr(variable, "path", None) or getattr(variable, "name", repr(variable))
        raise ValueError(f"The optimizer does not update {name!r}: pass the variables it was built with "
                         "(the model's trainable variables or a block of them).") from error


def _keras_constant(value) -> float:
    """A hyperparameter as Keras's TF backend uses it: ``ops.cast`` of a Python float goes through float32."""
    return float(tf.cast(value, tf.float64).numpy())


def _denominator(optimizer, kind: str, index: int, step: float) -> np.ndarray:
    epsilon = float(optimizer.epsilon)
    if kind in ("Adam", "AdamW"):
        second = _slot(optimizer, "_velocity_hats" if optimizer.amsgrad else "_velocities", index)
        correction = 1.0 - _keras_constant(optimizer.beta_2) ** step
        return np.sqrt(second / correction) + epsilon / np.sqrt(correction)
    if kind == "Nadam":
        correction = 1.0 - _keras_constant(optimizer.beta_2) ** step
        return np.sqrt(_slot(optimizer, "_velocities", index) / correction) + epsilon
    if kind == "Adamax":
        return _slot(optimizer, "_u", index) + epsilon
    if kind == "RMSprop":
        velocity = _slot(optimizer, "_velocities", index)
        if optimizer.centered:
            velocity = velocity - _slot(optimizer, "_average_gradients", index) ** 2
        return np.sqrt(velocity + epsilon)
    return np.sqrt(_slot(optimizer, "_accumulators", index) + epsilon)  # Adagrad
