"""Pre-activation ResNet for CIFAR (ResNet-20/32/56/110), as in the paper's runs."""

from __future__ import annotations

import copy

import keras
from keras import layers

__all__ = ["RESNET_PRESETS", "resnet", "resnet_conv_initializer"]

_DEFAULTS = {
    "depth": 32,
    "bn": True,
    "dropout": 0.0,
    "init_scale": 1.0,
    "l2": 1e-4,
    "activation": "relu",
    "width": 1,
    "use_bias": True,
    "pool_size": None,
}

#: Presets of :func:`resnet`: ``name -> options``. All use 16/32/64 filters in
#: three stages, ``l2=1e-4`` and no dropout, as the paper's configurations did.
RESNET_PRESETS = {
    # With BatchNorm: 470,218 parameters, 467,946 of them trainable.
    "cifar10_resnet32": {},
    # No BatchNorm, no dropout, small init: 465,674 parameters.
    "cifar10_resnet32_nobn_nodrop": {"bn": False, "dropout": 0.0, "init_scale": 1.0 / 32.0},
    # As above with init_scale 1/15 (one over the number of residual blocks).
    "cifar10_resnet32_nobn_nodrop_3": {"bn": False, "dropout": 0.0, "init_scale": 1.0 / 15.0},
}


def resnet_conv_initializer(init_scale: float = 1.0) -> keras.initializers.Initializer:
    """He-style initializer of the ResNet convolutions, scaled by ``init_scale``.

    Variance scaling with ``scale = 2 * init_scale``, fan-in mode and a
    truncated normal distribution (``init_scale=1`` is He-normal).
    """
    return keras.initializers.VarianceScaling(
        scale=2.0 * float(init_scale), mode="fan_in", distribution="truncated_normal"
    )


def _resolve(preset: str, overrides: dict) -> dict:
    if preset not in RESNET_PRESETS:
        raise ValueError(
            f"Unknown resnet preset {preset!r}; choose one of {sorted(RESNET_PRESETS)}."
        )
    unknown = sorted(set(overrides) - set(_DEFAULTS))
    if unknown:
        raise ValueError(
            f"Unknown resnet option(s) {unknown}; the options are {sorted(_DEFAULTS)}."
        )
    options = dict(_DEFAULTS)
    options.update(copy.deepcopy(RESNET_PRESETS[preset]))
    options.update(overrides)
    depth = options["depth"]
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"resnet depth must be 6n+2 for a whole n >= 1 (20, 32, 44, 56, 110, ...), got {depth!r}."
        )
    return options


def resnet(preset: str = "cifar10_resnet32", *, input_shape=(32, 32, 3), num_classes: int = 10,
           name: str | None = None, **overrides) -> keras.Model:
    """Build the paper's pre-activation ResNet as a functional Keras model that outputs **logits**.

    Layout (``n = (depth - 2) / 6`` blocks per stage, filters ``16w/32w/64w``
    for ``width=w``)::

        conv3x3(16w)
        3 stages x n blocks:
            y = [BN] - act - conv3x3(stride) - [BN] - act - [dropout] - conv3x3
            out = y + shortcut(x)     # identity, or a 1x1 stride-2 conv on x
                                      # in the first block of stages 2 and 3
        [BN] - act - average pool - flatten - dense(num_classes)

    BatchNorm layers (``[BN]``) are present when ``bn=True``. Every
    convolution has a bias (as in the paper's code, so that the parameter
    counts match) and is initialised by :func:`resnet_conv_initializer`
    (variance scaling, ``scale = 2 * init_scale``, fan-in, truncated normal);
    the dense layer is glorot-uniform. L2 (``l2``) applies to the kernels of
    all convolutions and of the dense layer.

    The last layer (named ``"logits"``) is linear: there is no softmax. Use
    integer labels and ``keras.losses.SparseCategoricalCrossentropy(
    from_logits=True)`` (:func:`tf_sharpest.models.default_loss`).

    Presets (counts exact and tested, on 32x32x3 with 10 classes):

    * ``"cifar10_resnet32"``: BN; 470,218 parameters, 467,946 trainable.
    * ``"cifar10_resnet32_nobn_nodrop"``: no BN, no dropout,
      ``init_scale=1/32``; 465,674 parameters.
    * ``"cifar10_resnet32_nobn_nodrop_3"``: the same with ``init_scale=1/15``.

    Every preset has ``l2=1e-4`` and ``dropout=0``: the paper's configuration
    of ``cifar10_resnet32`` sets no dropout either; pass ``dropout=`` to add it.

    Args:
      preset: one of :data:`RESNET_PRESETS`.
      input_shape: ``(height, width, channels)``.
      num_classes: width of the logits layer.
      name: the model's name (default ``"resnet<depth>"``).
      **overrides: ``depth`` (6n+2: 20, 32, 44, 56, 110, ...), ``bn`` (bool),
        ``dropout`` (rate inside each block; 0 adds no layer), ``init_scale``
        (float), ``l2`` (float; 0 for none), ``activation`` (Keras activation),
        ``width`` (filter multiplier, default 1), ``use_bias`` (conv biases,
        default True), ``pool_size`` (final average pool; ``None`` pools the
        whole final feature map, which is 8x8 on 32x32 inputs).

    Raises:
      ValueError: for an unknown preset or option (listing the choices) or a
        depth that is not 6n+2.
    """
    o = _resolve(preset, overrides)
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {shape}.")
    n = (o["depth"] - 2) // 6
    reg = (lambda: keras.regularizers.L2(o["l2"])) if o["l2"] else (lambda: None)
    init = resnet_conv_initializer(o["init_scale"])
    act = o["activation"]
    use_bias = bool(o["use_bias"])

    def conv(filters, size, strides, lname):
        return layers.Conv2D(filters, size, strides=strides, padding="same", use_bias=use_bias,
                             kernel_initializer=init, bias_initializer="zeros",
                             kernel_regularizer=reg(), name=lname)

    inputs = keras.Input(shape=shape, name="input")
    x = conv(16 * o["width"], 3, 1, "first_conv")(inputs)
    for stage in range(3):
        filters = 16 * o["width"] * 2 ** stage
        for block in range(n):
            stride = 2 if (stage > 0 and block == 0) else 1
            p = f"stage{stage + 1}_block{block + 1}_"
            y = x
            if o["bn"]:
                y = layers.BatchNormalization(name=p + "bn1")(y)
            y = layers.Activation(act, name=p + "act1")(y)
            y = conv(filters, 3, stride, p + "conv1")(y)
            if o["bn"]:
                y = layers.BatchNormalization(name=p + "bn2")(y)
            y = layers.Activation(act, name=p + "act2")(y)
            if o["dropout"]:
                y = layers.Dropout(float(o["dropout"]), name=p + "dropout")(y)
            y = conv(filters, 3, 1, p + "conv2")(y)
            shortcut = x
            if stride != 1 or x.shape[-1] != filters:
                shortcut = conv(filters, 1, stride, p + "shortcut")(x)
            x = layers.Add(name=p + "add")([y, shortcut])

    if o["bn"]:
        x = layers.BatchNormalization(name="post_bn")(x)
    x = layers.Activation(act, name="post_act")(x)
    pool = o["pool_size"]
    if pool is None:
        pool = (int(x.shape[1]), int(x.shape[2]))
    x = layers.AveragePooling2D(pool_size=pool, name="post_avg")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(int(num_classes), kernel_regularizer=reg(), name="logits")(x)
    return keras.Model(inputs, outputs, name=name or f"resnet{o['depth']}")
