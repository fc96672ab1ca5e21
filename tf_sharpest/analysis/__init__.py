"""Measurements of how training steps act along the sharpest directions."""

from tf_sharpest.analysis.steps import (StepAnalysis, alignment, analyze_sgd_step, loss_along,
                                        random_alignment)

__all__ = ["StepAnalysis", "alignment", "analyze_sgd_step", "loss_along", "random_alignment"]
