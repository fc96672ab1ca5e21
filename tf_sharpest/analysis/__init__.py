"""Measurements of how training steps act along the sharpest directions, and pictures of the loss around them."""

from tf_sharpest.analysis._directions import random_directions
from tf_sharpest.analysis._landscape import Landscape, LandscapeEvaluator, loss_landscape
from tf_sharpest.analysis._plots import plot_loss_lines, plot_loss_surface, plot_spectrogram, read_densities
from tf_sharpest.analysis._sharpness import BatchSharpness, BatchSharpnessMeter, batch_indices, batch_sharpness
from tf_sharpest.analysis._steps import StepAnalysis, alignment, analyze_sgd_step, loss_along, random_alignment

__all__ = ["BatchSharpness", "BatchSharpnessMeter", "Landscape", "LandscapeEvaluator", "StepAnalysis", "alignment",
           "analyze_sgd_step", "batch_indices", "batch_sharpness", "loss_along", "loss_landscape", "plot_loss_lines",
           "plot_loss_surface", "plot_spectrogram", "random_alignment", "random_directions", "read_densities"]
