"""Which of a model's parameters an operator acts on: all of them, or a block (per-layer spectra)."""

from __future__ import annotations

import keras


def resolve_variables(model: keras.Model, variables=None) -> list:
    """The trainable variables an operator acts on, in ``model.trainable_variables`` order.

    Args:
      model: a built Keras model.
      variables: ``None`` for all of ``model.trainable_variables``; or a
        variable, a layer, or a list of variables and layers (a layer stands
        for its trainable variables). Duplicates are dropped.

    Raises:
      ValueError: if the model has no trainable variables, a given variable
        is not one of them (named in the message), a layer has none, or the
        selection is empty.
    """
    trainable = list(model.trainable_variables)
    if not trainable:
        raise ValueError("The model has no trainable variables; build it (call it once) first.")
    if variables is None:
        return trainable
    items = list(variables) if isinstance(variables, (list, tuple)) else [variables]
    if not items:
        raise ValueError("variables= is an empty list; pass None for all trainable variables, or some of them.")
    position = {id(v): i for i, v in enumerate(trainable)}
    chosen = set()
    for item in items:
        if isinstance(item, keras.layers.Layer):
            layer_variables = item.trainable_variables
            if not layer_variables:
                raise ValueError(f"Layer {item.name!r} has no trainable variables to restrict the operator to.")
            candidates = layer_variables
        else:
            candidates = [item]
        for variable in candidates:
            if id(variable) not in position:
                name = getattr(variable, "path", None) or getattr(variable, "name", repr(variable))
                raise ValueError(
                    f"{name!r} is not one of the model's trainable variables; pass variables (or layers) of "
                    f"this model, e.g. model.get_layer(name) or a subset of model.trainable_variables.")
            chosen.add(position[id(variable)])
    return [trainable[i] for i in sorted(chosen)]
