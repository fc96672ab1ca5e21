"""The protocol between a measurement and whatever it steers: :class:`DirectionConsumer`.

``LanczosCallback`` hands its measured eigenvectors to the model's optimizer
only if the optimizer (unwrapped from Keras's ``LossScaleOptimizer`` under
mixed precision) is an instance of :class:`DirectionConsumer`. Nothing is
found by attribute names: an optimizer opts in by subclassing.
"""

from __future__ import annotations

import abc

import numpy as np

__all__ = ["DirectionConsumer"]


class DirectionConsumer(abc.ABC):
    """Something that acts on the top eigenvectors a callback measures, e.g. :class:`~tf_sharpest.optimizers.NSGD`.

    A consumer says how many directions it needs (:attr:`num_directions`), is
    handed them after each measurement of the whole parameter vector
    (:meth:`set_directions`), and may report what it did with them as metrics
    (:meth:`direction_logs`), which the callback adds to that epoch's ``logs``.

    Example: a consumer that only records the sharpest direction.

    ```python
    class Recorder(DirectionConsumer):
        num_directions = 1

        def set_directions(self, eigenvalues, eigenvectors):
            self.last = eigenvectors[:, 0]
    ```
    """

    @property
    @abc.abstractmethod
    def num_directions(self) -> int:
        """How many top eigenvectors it needs; a callback measuring fewer is refused when ``fit`` starts."""

    @abc.abstractmethod
    def set_directions(self, eigenvalues: np.ndarray, eigenvectors: np.ndarray) -> None:
        """Receives a measurement: ``eigenvalues`` ``[K]`` (descending) and ``eigenvectors`` ``[dim, K]``.

        The eigenvectors have orthonormal columns in the flat layout of
        ``model.trainable_variables`` (see :class:`tf_sharpest.utils.FlatLayout`),
        with ``K >= num_directions``. Raise ``ValueError`` to refuse them: the
        callback then warns once and training goes on with the previous ones.
        """

    def direction_logs(self) -> dict[str, float]:
        """Metrics about the directions to log after each hand-off (e.g. ``nsgd_alpha_1``); none by default."""
        return {}
