"""Measurements of how training steps act along the sharpest directions."""

from tf_sharpest.analysis.sharpness import BatchSharpness, BatchSharpnessMeter, batch_indices, batch_sharpness
from tf_sharpest.analysis.steps import StepAnalysis, alignment, analyze_sgd_step, loss_along, random_alignment

__all__ = ["BatchSharpness", "BatchSharpnessMeter", "StepAnalysis", "alignment", "analyze_sgd_step",
           "batch_indices", "batch_sharpness", "loss_along", "random_alignment"]
