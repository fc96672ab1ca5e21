"""Model zoo of the paper: SimpleCNN and pre-activation ResNet, with exact presets.

Every factory returns a functional ``keras.Model`` whose output is **logits**
(a linear last layer named ``"logits"``, no softmax). The matching loss, used
throughout tf_sharpest (Hessian operators, callbacks, examples), is
``keras.losses.SparseCategoricalCrossentropy(from_logits=True)`` on integer
labels; :func:`default_loss` returns it:

```python
from tf_sharpest import models

model = models.simple_cnn("root")
model.compile(optimizer="sgd", loss=models.default_loss(), metrics=["accuracy"])
```

For probabilities apply ``keras.activations.softmax`` to the outputs.
"""

from __future__ import annotations

import keras

from tf_sharpest.models._resnet import RESNET_PRESETS, resnet, resnet_conv_initializer
from tf_sharpest.models._simple_cnn import SIMPLE_CNN_PRESETS, simple_cnn

__all__ = [
    "RESNET_PRESETS",
    "SIMPLE_CNN_PRESETS",
    "default_loss",
    "resnet",
    "resnet_conv_initializer",
    "simple_cnn",
]


def default_loss(**kwargs) -> keras.losses.Loss:
    """The project's loss for the model zoo: sparse categorical cross-entropy on logits.

    Returns ``keras.losses.SparseCategoricalCrossentropy(from_logits=True,
    **kwargs)``: the models output logits and the data loaders give integer
    labels. ``kwargs`` (e.g. ``reduction``, ``name``) pass through;
    ``from_logits`` cannot be changed here.
    """
    if "from_logits" in kwargs and not kwargs.pop("from_logits"):
        raise ValueError("tf_sharpest models output logits: default_loss() is always from_logits=True.")
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, **kwargs)
