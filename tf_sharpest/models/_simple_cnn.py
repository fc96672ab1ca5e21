"""SimpleCNN: the small convolutional network of the paper's CIFAR-10 / Fashion-MNIST runs."""

from __future__ import annotations

import copy

import keras
from keras import layers

__all__ = ["SIMPLE_CNN_PRESETS", "simple_cnn"]

# Architecture options a preset fixes and a caller may override.
_DEFAULTS = {
    "n_filters": 32,
    "kernel_size": 3,
    "n_dense": 128,
    "dropout": 0.0,
    "l2": 0.0,
    "bn": False,
    "use_bias": True,
    "activation": "relu",
    "kernel_initializer": "glorot_uniform",
}

#: Presets of :func:`simple_cnn`: ``name -> (default input shape, options)``.
SIMPLE_CNN_PRESETS = {
    # 361,898 parameters on 32x32x3.
    "root": ((32, 32, 3), {}),
    # 2,399,518 parameters on 32x32x3.
    "medium": ((32, 32, 3), {"n_filters": 100, "kernel_size": 5}),
    # The medium network on Fashion-MNIST: 2,164,118 parameters on 28x28x1.
    "medium_fmnist": ((28, 28, 1), {"n_filters": 100, "kernel_size": 5}),
}


def _resolve(preset: str, overrides: dict) -> tuple[tuple, dict]:
    if preset not in SIMPLE_CNN_PRESETS:
        raise ValueError(
            f"Unknown simple_cnn preset {preset!r}; choose one of {sorted(SIMPLE_CNN_PRESETS)}."
        )
    unknown = sorted(set(overrides) - set(_DEFAULTS))
    if unknown:
        raise ValueError(
            f"Unknown simple_cnn option(s) {unknown}; the options are {sorted(_DEFAULTS)}."
        )
    shape, preset_options = SIMPLE_CNN_PRESETS[preset]
    options = dict(_DEFAULTS)
    options.update(copy.deepcopy(preset_options))
    options.update(overrides)
    return shape, options


def simple_cnn(preset: str = "root", *, input_shape=None, num_classes: int = 10,
               name: str | None = None, **overrides) -> keras.Model:
    """Build the paper's SimpleCNN as a functional Keras model that outputs **logits**.

    Layout (``F = n_filters``, ``k = kernel_size``)::

        conv(F, k, same) - act - conv(F, k, valid) - act - maxpool 2
        - conv(2F, k, same) - act - conv(2F, k, valid) - act - maxpool 2
        - flatten - dense(n_dense) - act [- dropout] - dense(num_classes)

    With ``bn=True`` a BatchNormalization layer follows every convolution and
    the hidden dense layer, before its activation.

    The last layer (named ``"logits"``) is linear: there is no softmax. Train
    and measure it with integer labels and
    ``keras.losses.SparseCategoricalCrossentropy(from_logits=True)``, which
    :func:`tf_sharpest.models.default_loss` returns; the Hessian code and the
    examples use that loss.

    Presets (parameter counts are exact and tested):

    * ``"root"``: ``F=32``, 3x3 kernels; 361,898 parameters on 32x32x3.
    * ``"medium"``: ``F=100``, 5x5 kernels; 2,399,518 parameters on 32x32x3.
    * ``"medium_fmnist"``: ``medium`` on 28x28x1 (Fashion-MNIST); 2,164,118.

    Args:
      preset: one of :data:`SIMPLE_CNN_PRESETS`.
      input_shape: ``(height, width, channels)``; ``None`` takes the preset's
        (32x32x3, or 28x28x1 for ``medium_fmnist``).
      num_classes: width of the logits layer.
      name: the model's name (default ``"simple_cnn_<preset>"``).
      **overrides: any of ``n_filters`` (int), ``kernel_size`` (int),
        ``n_dense`` (units of the hidden dense layer), ``dropout`` (rate after
        the hidden dense layer; 0 adds no layer), ``l2`` (L2 factor on the
        kernels of the convolutions and the hidden dense layer; the classifier
        is left unregularised, as in the paper's code), ``bn`` (bool),
        ``use_bias`` (bool), ``activation`` (Keras activation name or
        callable), ``kernel_initializer`` (Keras initializer; default
        ``"glorot_uniform"``; biases start at zero). For reproducible weights
        call ``keras.utils.set_random_seed`` first.

    Returns:
      An uncompiled ``keras.Model`` with an ``Input`` of ``input_shape``.

    Raises:
      ValueError: for an unknown preset or option (the message lists the
        choices), or an input too small for the two valid convolutions and
        poolings.
    """
    default_shape, o = _resolve(preset, overrides)
    shape = tuple(int(d) for d in (default_shape if input_shape is None else input_shape))
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {shape}.")
    k = int(o["kernel_size"])
    side = min(shape[0], shape[1])
    if ((side - k + 1) // 2 - k + 1) // 2 < 1:
        raise ValueError(
            f"input_shape {shape} is too small for simple_cnn with kernel_size={k}."
        )

    f = int(o["n_filters"])
    reg = keras.regularizers.L2(o["l2"]) if o["l2"] else None
    act = o["activation"]
    common = dict(use_bias=bool(o["use_bias"]), kernel_initializer=o["kernel_initializer"],
                  bias_initializer="zeros", kernel_regularizer=reg)

    inputs = keras.Input(shape=shape, name="input")
    x = inputs
    convs = [(f, "same"), (f, "valid"), None, (2 * f, "same"), (2 * f, "valid"), None]
    i = 0
    n_pool = 0
    for spec in convs:
        if spec is None:
            n_pool += 1
            x = layers.MaxPooling2D(pool_size=2, name=f"pool{n_pool}")(x)
            continue
        i += 1
        filters, padding = spec
        x = layers.Conv2D(filters, k, padding=padding, name=f"conv{i}", **common)(x)
        if o["bn"]:
            x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.Activation(act, name=f"act{i}")(x)

    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(int(o["n_dense"]), name="dense", **common)(x)
    if o["bn"]:
        x = layers.BatchNormalization(name="bn5")(x)
    x = layers.Activation(act, name="act5")(x)
    if o["dropout"]:
        x = layers.Dropout(float(o["dropout"]), name="dropout")(x)
    outputs = layers.Dense(
        int(num_classes), name="logits", use_bias=bool(o["use_bias"]),
        kernel_initializer=o["kernel_initializer"], bias_initializer="zeros",
    )(x)
    return keras.Model(inputs, outputs, name=name or f"simple_cnn_{preset}")
