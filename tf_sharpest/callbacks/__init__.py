"""Keras callbacks that measure and act on the sharpest directions during training."""

from tf_sharpest.callbacks._batch_sharpness_callback import BatchSharpnessCallback
from tf_sharpest.callbacks._budget import OverheadBudget
from tf_sharpest.callbacks._lanczos_callback import LanczosCallback
from tf_sharpest.callbacks._landscape_callback import LandscapeCallback
from tf_sharpest.callbacks._measurement_log import Measurement, MeasurementLog
from tf_sharpest.callbacks._sampling import SampleSource
from tf_sharpest.callbacks._spectrum_callback import SpectrumCallback, load_density

__all__ = ["BatchSharpnessCallback", "LanczosCallback", "Measurement", "MeasurementLog", "SampleSource",
           "SpectrumCallback", "LandscapeCallback", "load_density", "OverheadBudget"]
