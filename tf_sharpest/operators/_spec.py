"""What a measurement measures, as one serializable value: :class:`Curvature`."""

from __future__ import annotations

import dataclasses

import keras

from tf_sharpest._keras_compat import unwrap_optimizer
from tf_sharpest.operators._base import LinearOperator
from tf_sharpest.operators._blocks import resolve_variables
from tf_sharpest.operators._curvature import _refuse_batch_dependent_layers
from tf_sharpest.operators._factory import check_curvature, curvature_operator
from tf_sharpest.operators._preconditioned import (
    PreconditionedOperator,
    optimizer_preconditioner,
    optimizer_preconditioner_supports,
)
from tf_sharpest.utils._checks import positive_int

__all__ = ["Curvature"]


@dataclasses.dataclass(frozen=True, eq=False)
class Curvature:
    """Which curvature operator to form from a model and a sample: a callable ``(model, sample) -> operator``.

    The variants of a measurement compose in this one value instead of
    separate flags: the kind (``"hessian"``, ``"ggn"``, ``"empirical_fisher"``),
    a block of the parameters, the loss, the mode the model is called in, and
    preconditioning by the model's adaptive optimizer (``D^-1/2 A D^-1/2`` with
    ``D`` read from Adam's, RMSprop's, ... second moments at each call).

    Example:

    ```python
    ggn_of_head = Curvature("ggn", variables=model.layers[-1])
    operator = ggn_of_head(model, (x, y))          # a GGNOperator on the last layer's parameters
    LanczosCallback((x, y), curvature=ggn_of_head, log_prefix="head_")
    LanczosCallback((x, y), curvature=Curvature(preconditioned=True), log_prefix="adam_")
    ```

    Args:
      kind: ``"hessian"`` (default), ``"ggn"`` or ``"empirical_fisher"``.
      variables: ``None`` for all trainable variables, or a block: a layer, a
        variable, a layer name or variable path, or a list of them
        (eigenvectors are then in the block's layout).
      loss: the loss to differentiate; ``None`` uses the model's compiled loss.
      training: call the model in training mode (BatchNorm batch statistics,
        one fixed dropout mask); the model is left unchanged.
      preconditioned: measure ``D^-1/2 A D^-1/2`` with ``D`` read from the
        model's adaptive optimizer at each call: the preconditioned
        sharpness that sets Adam's stability.
      micro_batch_size: cut the sample's batches into micro-batches of at
        most this many examples for the products (same result, less memory;
        see :class:`~tf_sharpest.operators.CurvatureOperator`).
    """

    kind: str = "hessian"
    variables: object = None
    loss: object = None
    training: bool = False
    preconditioned: bool = False
    micro_batch_size: int | None = None

    def __post_init__(self):
        check_curvature(self.kind)
        object.__setattr__(self, "training", bool(self.training))
        object.__setattr__(self, "preconditioned", bool(self.preconditioned))
        object.__setattr__(self, "micro_batch_size",
                           positive_int("micro_batch_size", self.micro_batch_size, allow_none=True))

    @property
    def whole_model(self) -> bool:
        """Whether the operator acts on every trainable variable, unpreconditioned (what an optimizer can steer by)."""
        return self.variables is None and not self.preconditioned

    def resolve(self, model: keras.Model) -> list:
        """The variables measured in ``model`` (names resolved); a ``ValueError`` if they are not the model's."""
        return resolve_variables(model, self._variables_of(model))

    def check(self, model: keras.Model) -> None:
        """Refuses, before training, a choice that can never work on ``model``: a block that is not the model's,
        or preconditioning with an optimizer that has no second moments."""
        self.resolve(model)
        if self.micro_batch_size is not None and self.training:
            _refuse_batch_dependent_layers(model)
        if self.preconditioned:
            optimizer_preconditioner_supports(unwrap_optimizer(getattr(model, "optimizer", None)))

    def __call__(self, model: keras.Model, sample, *, batch_size: int | None = None,
                 previous: LinearOperator | None = None) -> LinearOperator:
        """The operator on ``sample`` (arrays, a dataset or a :class:`~tf_sharpest.operators.Sample`).

        ``previous``, an operator this spec built for the same model and
        variables, is moved to ``sample`` (its traced graphs are kept) instead
        of a new one being built; the preconditioner is read afresh either way.
        """
        if previous is not None:
            inner = previous.operator if isinstance(previous, PreconditionedOperator) else previous
            inner.set_data(sample, batch_size)
        else:
            inner = curvature_operator(self.kind, model, sample, loss=self.loss, batch_size=batch_size,
                                       training=self.training, variables=self._variables_of(model),
                                       micro_batch_size=self.micro_batch_size)
        if not self.preconditioned:
            return inner
        diagonal = optimizer_preconditioner(unwrap_optimizer(model.optimizer), inner.variables)
        return PreconditionedOperator(inner, diagonal)

    def _variables_of(self, model):
        if self.variables is None:
            return None
        items = list(self.variables) if isinstance(self.variables, (list, tuple)) else [self.variables]
        return [_by_name(model, item) if isinstance(item, str) else item for item in items]

    def get_config(self) -> dict:
        """JSON-friendly arguments: a block as layer names / variable paths, the loss serialized by Keras."""
        variables = self.variables
        if variables is not None:
            items = list(variables) if isinstance(variables, (list, tuple)) else [variables]
            variables = [item if isinstance(item, str) else item.name if isinstance(item, keras.layers.Layer)
                         else item.path for item in items]
        loss = None if self.loss is None else keras.saving.serialize_keras_object(self.loss)
        return {"kind": self.kind, "variables": variables, "loss": loss, "training": self.training,
                "preconditioned": self.preconditioned, "micro_batch_size": self.micro_batch_size}

    @classmethod
    def from_config(cls, config: dict) -> Curvature:
        config = dict(config)
        if config.get("loss") is not None:
            config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return cls(**config)

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.get_config().items() if v not in (None, False)}
        return "Curvature(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


def _by_name(model: keras.Model, name: str):
    """The layer called ``name``, else the trainable variable whose path is ``name``."""
    try:
        return model.get_layer(name)
    except ValueError:
        pass
    for variable in model.trainable_variables:
        if getattr(variable, "path", variable.name) == name:
            return variable
    raise ValueError(f"{name!r} names neither a layer nor a trainable variable (by path) of the model; "
                     f"layers: {[layer.name for layer in model.layers]}.")
