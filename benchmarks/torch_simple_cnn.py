"""A PyTorch twin of ``tf_sharpest.models.simple_cnn`` that takes its weights from the Keras model.

Only what the peer benchmarks need: the plain network (ReLU, biases, no
BatchNorm, no dropout, no L2), in NCHW layout, with every weight copied from a
built Keras SimpleCNN so that both compute the same function.

Layout differences handled by :func:`copy_keras_weights`:

* images: Keras is NHWC, PyTorch NCHW (:func:`to_nchw` transposes inputs);
* convolution kernels: Keras ``[kh, kw, in, out]`` (HWIO), PyTorch ``[out, in, kh, kw]`` (OIHW);
* dense kernels: Keras ``[in, out]``, PyTorch ``[out, in]``;
* flattening: Keras flattens a ``[h, w, c]`` feature map in ``(h, w, c)`` order,
  PyTorch a ``[c, h, w]`` one in ``(c, h, w)`` order, so the rows of the first
  dense kernel are permuted to PyTorch's order.

``keras_to_torch_vector`` / ``torch_to_keras_vector`` map flat parameter vectors
between the two orderings (``model.trainable_variables`` vs ``model.parameters()``),
so an eigenvector found on one side can be checked or reused on the other.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["TorchSimpleCNN", "copy_keras_weights", "from_keras", "keras_to_torch_vector",
           "torch_to_keras_vector", "to_nchw"]


class TorchSimpleCNN(nn.Module):
    """conv-relu-conv-relu-pool-conv-relu-conv-relu-pool-flatten-dense-relu-dense (logits)."""

    def __init__(self, in_channels: int, height: int, width: int, n_filters: int = 32,
                 kernel_size: int = 3, n_dense: int = 128, num_classes: int = 10):
        super().__init__()
        f, k = n_filters, kernel_size
        pad = k // 2  # Keras "same" with stride 1 and an odd kernel pads k // 2 on each side
        self.conv1 = nn.Conv2d(in_channels, f, k, padding=pad)
        self.conv2 = nn.Conv2d(f, f, k)
        self.conv3 = nn.Conv2d(f, 2 * f, k, padding=pad)
        self.conv4 = nn.Conv2d(2 * f, 2 * f, k)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        h = ((height - k + 1) // 2 - k + 1) // 2
        w = ((width - k + 1) // 2 - k + 1) // 2
        self.feature_shape = (2 * f, h, w)  # (c, h, w) before flattening
        self.dense = nn.Linear(2 * f * h * w, n_dense)
        self.logits = nn.Linear(n_dense, num_classes)

    def forward(self, x):
        x = self.relu(self.conv1(x))
        x = self.pool(self.relu(self.conv2(x)))
        x = self.relu(self.conv3(x))
        x = self.pool(self.relu(self.conv4(x)))
        x = torch.flatten(x, 1)
        return self.logits(self.relu(self.dense(x)))


# Keras layer name -> attribute of TorchSimpleCNN, in the order of model.trainable_variables.
_LAYERS = ("conv1", "conv2", "conv3", "conv4", "dense", "logits")


def _keras_layers(keras_model):
    names = [layer.name for layer in keras_model.layers if layer.trainable_weights]
    if tuple(names) != _LAYERS:
        raise ValueError(f"Expected a plain SimpleCNN with weighted layers {_LAYERS}, got {tuple(names)} "
                         "(BatchNorm, use_bias=False and other variants are not ported).")
    return [keras_model.get_layer(name) for name in _LAYERS]


def from_keras(keras_model) -> TorchSimpleCNN:
    """A :class:`TorchSimpleCNN` with the architecture and the weights of a Keras SimpleCNN."""
    conv1, _, _, _, dense, logits = _keras_layers(keras_model)
    height, width, channels = (int(d) for d in keras_model.input_shape[1:])
    kernel = conv1.get_weights()[0]
    model = TorchSimpleCNN(channels, height, width, n_filters=int(kernel.shape[3]),
                           kernel_size=int(kernel.shape[0]), n_dense=int(dense.units),
                           num_classes=int(logits.units))
    copy_keras_weights(keras_model, model)
    return model.eval()


def _dense_rows_to_torch(kernel: np.ndarray, feature_shape) -> np.ndarray:
    """Keras dense kernel ``[h*w*c, out]`` (rows in (h, w, c) order) -> PyTorch weight ``[out, c*h*w]``."""
    c, h, w = feature_shape
    return kernel.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], c * h * w)


def copy_keras_weights(keras_model, model: TorchSimpleCNN) -> None:
    """Overwrites ``model``'s parameters with the Keras model's current weights."""
    layers = _keras_layers(keras_model)
    with torch.no_grad():
        for name, layer in zip(_LAYERS, layers):
            kernel, bias = (np.asarray(w, dtype=np.float32) for w in layer.get_weights())
            if name.startswith("conv"):
                weight = kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW
            elif name == "dense":
                weight = _dense_rows_to_torch(kernel, model.feature_shape)
            else:
                weight = kernel.T
            target = getattr(model, name)
            if tuple(target.weight.shape) != weight.shape:
                raise ValueError(f"{name}: PyTorch weight {tuple(target.weight.shape)} vs Keras {weight.shape}")
            target.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
            target.bias.copy_(torch.from_numpy(bias))


def to_nchw(x: np.ndarray) -> torch.Tensor:
    """NHWC images (NumPy) -> a contiguous NCHW float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float32).transpose(0, 3, 1, 2)))


def _parts(vector, shapes):
    sizes = [int(np.prod(s)) for s in shapes]
    return [p.reshape(s) for p, s in zip(np.split(np.asarray(vector), np.cumsum(sizes)[:-1]), shapes)]


def keras_to_torch_vector(vector, keras_model, model: TorchSimpleCNN) -> np.ndarray:
    """A flat vector in ``keras_model.trainable_variables`` order -> ``model.parameters()`` order."""
    shapes = [tuple(v.shape) for v in keras_model.trainable_variables]
    out = []
    for i, (name, part) in enumerate(zip(np.repeat(_LAYERS, 2), _parts(vector, shapes))):
        if i % 2:  # bias
            out.append(part)
        elif name.startswith("conv"):
            out.append(part.transpose(3, 2, 0, 1))
        elif name == "dense":
            out.append(_dense_rows_to_torch(part, model.feature_shape))
        else:
            out.append(part.T)
    return np.concatenate([p.reshape(-1) for p in out])


def torch_to_keras_vector(vector, keras_model, model: TorchSimpleCNN) -> np.ndarray:
    """Inverse of :func:`keras_to_torch_vector`."""
    shapes = [tuple(p.shape) for p in model.parameters()]
    c, h, w = model.feature_shape
    out = []
    for i, (name, part) in enumerate(zip(np.repeat(_LAYERS, 2), _parts(vector, shapes))):
        if i % 2:
            out.append(part)
        elif name.startswith("conv"):
            out.append(part.transpose(2, 3, 1, 0))  # OIHW -> HWIO
        elif name == "dense":
            out.append(part.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1))
        else:
            out.append(part.T)
    return np.concatenate([p.reshape(-1) for p in out])
