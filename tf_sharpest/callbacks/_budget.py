"""OverheadBudget: a measurement schedule that keeps the measurements' time within a share of training time."""

from __future__ import annotations

import dataclasses

import numpy as np

from tf_sharpest.utils._checks import positive_float


@dataclasses.dataclass(frozen=True)
class OverheadBudget:
    """Measure on ``frequency``, but skip scheduled measurements that would exceed ``max_overhead`` of training time.

    Give it as a measuring callback's ``frequency=``. The callback times the
    training batches of ``fit`` (its own measurements excluded) and its
    measurements; a scheduled measurement is taken only while the time spent
    measuring, with the latest measurement's cost added, stays within
    ``max_overhead`` times the training time so far. The first measurement and
    the one after training are always taken. The callback warns once when it
    has to thin its schedule and logs, with every epoch, the overhead so far
    (``lanczos_overhead`` for :class:`~tf_sharpest.callbacks.LanczosCallback`)
    and how many scheduled measurements it skipped (``lanczos_skipped``);
    the epochs whose measurement was skipped log NaN eigenvalues.

    Example:

    ```python
    budget = OverheadBudget(max_overhead=0.1, frequency=100)   # every 100 steps, within 10% of training time
    LanczosCallback((x_train, y_train), top_k=5, frequency=budget)
    ```

    Args:
      max_overhead: the most measuring time as a fraction of training time (0.1: 10%).
      frequency: the schedule it thins: ``"epoch"`` or a number of training batches.
    """

    max_overhead: float
    frequency: str | int = "epoch"

    def __post_init__(self):
        object.__setattr__(self, "max_overhead", positive_float("max_overhead", self.max_overhead))
        by_batches = not isinstance(self.frequency, bool) and isinstance(self.frequency, (int, np.integer)) \
            and self.frequency >= 1
        if not (self.frequency == "epoch" or by_batches):
            raise ValueError(f"OverheadBudget's frequency must be 'epoch' or a positive number of batches, got "
                             f"{self.frequency!r}.")

    def allows(self, measuring_seconds: float, next_cost: float, training_seconds: float) -> bool:
        """Whether a measurement costing ``next_cost`` seconds keeps the overhead within ``max_overhead``."""
        return measuring_seconds + next_cost <= self.max_overhead * training_seconds

    def get_config(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: dict) -> OverheadBudget:
        return cls(**config)
