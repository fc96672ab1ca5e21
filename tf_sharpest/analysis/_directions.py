"""Random directions in weight space, filter-normalized as in Li et al. (2018) for loss-landscape plots."""

from __future__ import annotations

import keras
import numpy as np

from tf_sharpest.utils._checks import positive_int

#: The normalizations :func:`random_directions` knows.
NORMALIZATIONS = ("filter", None)


def random_directions(model: keras.Model, num: int, *, normalization: str | None = "filter",
                      seed: int = 0) -> np.ndarray:
    """``num`` random flat directions in the layout of ``model.trainable_variables``, as a ``[num, dim]`` array.

    With ``normalization="filter"`` (Li et al. 2018, "Visualizing the Loss
    Landscape of Neural Nets"), a Gaussian direction is rescaled filter by
    filter: each output filter of every kernel (a variable of rank 2 or more,
    whose last axis indexes the filters: a Conv kernel's last axis, a Dense
    kernel's columns) gets the norm of the same filter of the weights, so a
    step of 1 moves every filter by its own size and the picture does not
    depend on the scale invariance of ReLU networks. Biases and normalization
    parameters (variables of rank 0 or 1) get zero. A filter whose weights are
    zero gets zero. ``normalization=None`` gives plain standard-normal
    directions on every variable.

    Example:

    ```python
    d1, d2 = random_directions(model, 2, seed=0)
    plane = loss_landscape(model, (x, y), [d1, d2], steps=np.linspace(-1, 1, 21))
    ```

    Args:
      model: a built Keras model (its current weights set the filter norms).
      num: how many directions, ``>= 1``.
      normalization: ``"filter"`` (default) or ``None``.
      seed: seed of the Gaussian draws (the same seed gives the same directions).

    Raises:
      ValueError: for an unknown ``normalization``, ``num < 1``, or a model
        without trainable variables.
    """
    num = positive_int("num", num)
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be 'filter' (Li et al. 2018) or None (plain Gaussian), got "
                         f"{normalization!r}.")
    variables = list(model.trainable_variables)
    if not variables:
        raise ValueError("The model has no trainable variables; build it (call it once) first.")
    rng = np.random.default_rng(seed)
    dtype = np.dtype(keras.backend.standardize_dtype(variables[0].dtype))
    dtype = dtype if dtype.kind == "f" else np.dtype(np.float32)
    rows = []
    for _ in range(num):
        parts = []
        for variable in variables:
            weights = np.asarray(variable.numpy(), dtype=np.float64)
            draw = rng.standard_normal(weights.shape)
            if normalization == "filter":
                draw = _filter_normalized(draw, weights)
            parts.append(draw.ravel())
        rows.append(np.concatenate(parts))
    return np.stack(rows).astype(dtype)


def _filter_normalized(draw: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``draw`` with each filter (last axis) rescaled to that filter's norm in ``weights``; zero for rank < 2."""
    if weights.ndim < 2:
        return np.zeros_like(draw)
    axes = tuple(range(weights.ndim - 1))
    weight_norms = np.sqrt(np.sum(weights**2, axis=axes, keepdims=True))
    draw_norms = np.sqrt(np.sum(draw**2, axis=axes, keepdims=True))
    return draw * weight_norms / np.where(draw_norms > 0, draw_norms, 1.0)
