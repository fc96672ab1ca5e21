"""tf_sharpest: see and steer the sharpest directions of a Keras model's loss while it trains."""

__version__ = "0.1.0"
