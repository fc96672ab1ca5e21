"""Labels checked against the loss before any graph runs: class ids in range, one-hot where one-hot is taken.

Keras's cross-entropies fail on bad labels deep inside a traced graph (or, on
some devices, silently): a label 12 for 10 classes, one-hot labels given to
``SparseCategoricalCrossentropy`` or class ids to ``CategoricalCrossentropy``.
The labels of a sample are in memory, so they are checked here once, with a
message that names the labels, the loss and what to pass instead.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tf_sharpest.operators._model_loss import ModelLoss, _single_compiled_loss
from tf_sharpest.operators._sample import Sample

_SPARSE = "sparse_categorical_crossentropy"
_CATEGORICAL = "categorical_crossentropy"


def check_labels(model_loss: ModelLoss, sample: Sample) -> None:
    """Raises a ``ValueError`` if the sample's labels do not fit a (sparse) categorical cross-entropy.

    Other losses, and models with several outputs, are not checked.
    """
    kind, name = _cross_entropy_kind(model_loss)
    if kind is None or len(tf.nest.flatten(sample.batch_spec[1])) != 1:
        return
    classes = _num_classes(model_loss, sample)
    if classes is None:
        return
    labels = [np.asarray(batch[1]) for batch in sample.batches]
    if kind == _SPARSE:
        _check_class_ids(labels, classes, name, _ignore_class(model_loss))
    else:
        _check_one_hot(labels, classes, name)


def _check_class_ids(labels, classes: int, name: str, ignore_class) -> None:
    shape = labels[0].shape
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise ValueError(
            f"{name} takes integer class ids of shape [batch] or [batch, 1], but y has shape {shape}"
            f"{' (one-hot, it looks like)' if shape[-1] == classes else ''}: pass y.argmax(axis=-1), or use "
            "keras.losses.CategoricalCrossentropy for one-hot labels.")
    values = np.concatenate([np.reshape(y, [-1]) for y in labels])
    if values.dtype.kind == "f" and np.any(values != np.round(values)):
        raise ValueError(f"{name} takes integer class ids, but y holds fractions (e.g. "
                         f"{values[values != np.round(values)][0]}): pass whole class ids 0..{classes - 1}.")
    valid = (values >= 0) & (values < classes)
    if ignore_class is not None:
        valid |= values == ignore_class
    if not np.all(valid):
        bad = values[~valid]
        batch = next(i for i, y in enumerate(labels) if np.any(~_valid(np.reshape(y, [-1]), classes, ignore_class)))
        shown = ", ".join(str(v) for v in np.unique(bad)[:5])
        raise ValueError(
            f"Labels out of range for {name}: the model has {classes} outputs (class ids 0..{classes - 1}), "
            f"but y holds {shown} ({bad.size} example{'s' if bad.size > 1 else ''}, the first in batch {batch}). "
            f"Pass labels in 0..{classes - 1}, or a model with more outputs.")


def _valid(values, classes, ignore_class):
    valid = (values >= 0) & (values < classes)
    return valid | (values == ignore_class) if ignore_class is not None else valid


def _check_one_hot(labels, classes: int, name: str) -> None:
    shape = labels[0].shape
    if len(shape) == 2 and shape[1] == classes:
        return
    looks_sparse = len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)
    raise ValueError(
        f"{name} takes one-hot labels of shape [batch, {classes}], but y has shape {shape}"
        f"{' (class ids, it looks like)' if looks_sparse else ''}: pass keras.utils.to_categorical(y, {classes}), "
        "or use keras.losses.SparseCategoricalCrossentropy for class ids.")


def _cross_entropy_kind(model_loss: ModelLoss):
    """``(kind, description)`` of a (sparse) categorical cross-entropy loss, else ``(None, None)``."""
    loss, where = model_loss._loss_object, "loss="
    if loss is None:
        try:
            loss = _single_compiled_loss(model_loss.model)
        except ValueError:
            return None, None
        where = "the compiled loss"
    if isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
        return _SPARSE, f"{where} {type(loss).__name__}"
    if isinstance(loss, keras.losses.CategoricalCrossentropy):
        return _CATEGORICAL, f"{where} {type(loss).__name__}"
    function_name = getattr(loss, "__name__", None)
    if function_name in (_SPARSE, _CATEGORICAL):
        return function_name, f"{where} {function_name}"
    return None, None


def _ignore_class(model_loss: ModelLoss):
    loss = model_loss._loss_object
    if loss is None:
        loss = _single_compiled_loss(model_loss.model)
    return loss.get_config().get("ignore_class") if isinstance(loss, keras.losses.Loss) else None


def _num_classes(model_loss: ModelLoss, sample: Sample):
    """The size of the model's last output axis (one eager forward pass of one example), or None."""
    x = tf.nest.map_structure(lambda t: t[:1], sample.batches[0][0])
    try:
        y_pred, _ = model_loss.forward(x)
    except Exception:  # noqa: BLE001 - the loss evaluation that follows reports a model that cannot run
        return None
    outputs = tf.nest.flatten(y_pred)
    if len(outputs) != 1 or outputs[0].shape.rank != 2:
        return None
    return int(outputs[0].shape[-1])
