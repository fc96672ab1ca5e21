"""How an SGD step acts along the sharpest directions: loss along a direction, alignment, step decomposition.

These are the measurements behind the paper's analysis of the SGD step: the
loss after moving along a top Hessian eigenvector by (a multiple of) the
component of the SGD step along it, compared with a random direction, and
how much the gradient is aligned with the top eigenvectors. The losses along
a direction are lines of :func:`~tf_sharpest.analysis.loss_landscape`,
evaluated statelessly: the weights are never assigned.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import keras
import numpy as np

from tf_sharpest.analysis._landscape import LandscapeEvaluator
from tf_sharpest.operators._empirical_loss import EmpiricalLoss


def loss_along(objective: EmpiricalLoss, direction, scales: Sequence[float]) -> np.ndarray:
    """Mean loss at ``theta + s * direction`` for each ``s`` in ``scales``; the model is never changed.

    A line of :func:`~tf_sharpest.analysis.loss_landscape` on the objective's
    sample, loss, mode and variables (a block's objective takes a direction in
    the block's layout). A non-finite scale gives NaN; a point where the loss
    diverges gives its non-finite value.

    Args:
      objective: the loss on a fixed sample.
      direction: flat vector in the layout of ``objective.variables``.
      scales: step lengths along ``direction``.
    """
    return _losses_along(_evaluator(objective), direction, scales)


def _evaluator(objective: EmpiricalLoss) -> LandscapeEvaluator:
    """A landscape evaluator on the objective's sample, loss, mode and variables (one traced graph for all lines)."""
    return LandscapeEvaluator(objective.model, objective.sample, loss=objective.model_loss.loss,
                              training=objective.training, variables=objective.variables, metrics=False)


def _losses_along(evaluator: LandscapeEvaluator, direction, scales) -> np.ndarray:
    direction = np.asarray(direction, dtype=np.float64)
    evaluator.layout.check_flat(direction, "direction")
    if not np.all(np.isfinite(direction)):
        raise ValueError("direction contains NaN or inf values.")
    scales = np.asarray(scales, dtype=np.float64).reshape(-1)
    finite = np.isfinite(scales)
    losses = np.full(scales.shape, np.nan)
    if finite.any():
        losses[finite], _ = evaluator.evaluate(direction[None], scales[finite][:, None])
    return losses


def alignment(gradient, directions) -> np.ndarray:
    """``|cos(gradient, d_i)|`` for each column ``d_i`` of ``directions`` (``[dim, k]``)."""
    gradient = np.asarray(gradient, dtype=np.float64)
    directions = np.asarray(directions, dtype=np.float64).reshape(gradient.shape[0], -1)
    norms = np.linalg.norm(directions, axis=0) * np.linalg.norm(gradient)
    return np.abs(gradient @ directions) / np.where(norms > 0, norms, np.inf)


def random_alignment(dim: int) -> float:
    """Expected ``|cos(g, r)|`` of a fixed vector with a uniformly random direction in ``dim`` dimensions.

    Equal to ``Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2))``, about ``sqrt(2 / (pi d))``.
    """
    return float(math.exp(math.lgamma(dim / 2) - math.lgamma((dim + 1) / 2)) / math.sqrt(math.pi))


@dataclasses.dataclass
class StepAnalysis:
    """The loss after partial SGD steps along chosen directions (see :func:`analyze_sgd_step`).

    Attributes:
      loss: the loss at the current weights.
      multipliers: the ``gamma'`` values; a step along ``d`` is ``-gamma' * lr * (g . d) d``.
      eigenvalues: the eigenvalues of the directions (as given).
      along_eigenvectors: ``[k, m]`` loss after the step along each eigenvector.
      along_random: ``[r, m]`` loss after the step along each random unit direction.
      full_step: ``[m]`` loss after ``-gamma' * lr * g``.
      alignment: ``[k]`` ``|cos(g, e_i)|``.
      random_alignment: ``[r]`` ``|cos(g, r_j)|`` of the random directions drawn.
      expected_random_alignment: ``E|cos(g, r)|`` for a random direction in this dimension.
      gradient_norm: ``||g||``.
    """

    loss: float
    multipliers: np.ndarray
    eigenvalues: np.ndarray
    along_eigenvectors: np.ndarray
    along_random: np.ndarray
    full_step: np.ndarray
    alignment: np.ndarray
    random_alignment: np.ndarray
    expected_random_alignment: float
    gradient_norm: float


def analyze_sgd_step(model: keras.Model, data, eigenvectors, learning_rate: float, *, eigenvalues=None,
                     multipliers: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0), num_random: int = 1,
                     seed: int = 0, loss=None, batch_size: int | None = None,
                     training: bool = False) -> StepAnalysis:
    """Decomposes the full-batch SGD step on ``data`` along ``eigenvectors`` and measures its effect.

    For each direction ``d`` (each eigenvector, then ``num_random`` random unit
    vectors) and each multiplier ``gamma'``, the loss after the step
    ``-gamma' * learning_rate * (g . d) d`` is measured, and so is the loss after
    the full step ``-gamma' * learning_rate * g``. The paper's finding is that
    along the top eigenvector the step with ``gamma' = 1`` does not lower the
    loss while ``gamma' = 0.5`` does. The model's weights are left unchanged.

    Example:

    ```python
    pairs = tf_sharpest.hessian.top_eigenpairs(model, sample, k=5)
    report = analyze_sgd_step(model, sample, pairs.eigenvectors, learning_rate=0.01,
                              eigenvalues=pairs.eigenvalues)
    report.along_eigenvectors[0]   # loss after 0.25, 0.5, 1, 2, 4 times the step along e_1
    ```
    """
    objective = EmpiricalLoss(model, data, loss=loss, batch_size=batch_size, training=training)
    directions = np.asarray(eigenvectors, dtype=np.float64)
    if directions.ndim == 1:
        directions = directions[:, None]
    objective.layout.check_flat(directions[:, 0], "each eigenvector")
    if not np.all(np.isfinite(directions)):
        raise ValueError("eigenvectors contain NaN or inf values.")
    multipliers = np.asarray(multipliers, dtype=np.float64)
    gradient = objective.gradient().numpy().astype(np.float64)
    rng = np.random.default_rng(seed)
    random = rng.standard_normal((objective.layout.dim, int(num_random)))
    random /= np.linalg.norm(random, axis=0, keepdims=True)

    evaluator = _evaluator(objective)  # one traced graph for every line below

    def losses_for(direction):
        unit = direction / np.linalg.norm(direction)
        return _losses_along(evaluator, unit, -multipliers * learning_rate * float(gradient @ unit))

    return StepAnalysis(
        loss=objective.value,
        multipliers=multipliers,
        eigenvalues=np.asarray(eigenvalues if eigenvalues is not None else np.full(directions.shape[1], np.nan)),
        along_eigenvectors=np.stack([losses_for(d) for d in directions.T]),
        along_random=np.stack([losses_for(r) for r in random.T]) if num_random else np.zeros((0, multipliers.size)),
        full_step=_losses_along(evaluator, gradient, -multipliers * learning_rate),
        alignment=alignment(gradient, directions),
        random_alignment=alignment(gradient, random),
        expected_random_alignment=random_alignment(objective.layout.dim),
        gradient_norm=float(np.linalg.norm(gradient)),
    )
