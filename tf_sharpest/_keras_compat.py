"""Every access tf_sharpest makes to Keras or TensorFlow beyond their public API, in one place.

Each function here is covered by a contract test in ``tests/test_keras_contract.py``
that fails with a clear message on a Keras or TensorFlow version that changes
what it relies on. The supported versions are bounded in ``setup.cfg``.

What is relied on, and by whom:

* :class:`FinalGradientsHook`: ``Optimizer._all_reduce_sum_gradients`` of the
  TensorFlow backend (NSGD);
* :func:`variable_index`: ``Optimizer._get_variable_index`` (NSGD, ``optimizer_preconditioner``);
* :func:`load_optimizer_variables`: the keys of ``Optimizer.save_own_variables`` (NSGD reads files of
  earlier releases);
* :func:`optimizer_slots`: the second-moment slot lists of Adam, AdamW, Nadam,
  Adamax, RMSprop and Adagrad (``optimizer_preconditioner``);
* :func:`loss_divided_by_replicas` and :data:`ADDITIONAL_LOSSES_DIVIDED_BY_REPLICAS`:
  how Keras divides losses by the number of replicas under ``tf.distribute`` (``ModelLoss`` undoes it);
* :func:`unwrap_optimizer`: the ``LossScaleOptimizer`` that mixed precision wraps
  around the optimizer (``LanczosCallback``, ``optimizer_preconditioner``);
* :func:`compiled_metrics_copy`: ``Model._compile_metrics`` (the loss landscape).
"""

from __future__ import annotations

import keras

__all__ = ["FinalGradientsHook", "ADDITIONAL_LOSSES_DIVIDED_BY_REPLICAS", "compiled_metrics_copy",
           "load_optimizer_variables", "loss_divided_by_replicas", "optimizer_slots", "unwrap_optimizer",
           "variable_index"]


def unwrap_optimizer(optimizer):
    """The optimizer that really steps: the inner one of a ``LossScaleOptimizer`` (mixed precision), else itself.

    Under ``keras.mixed_precision.set_global_policy("mixed_float16")``,
    ``model.compile`` wraps the optimizer in ``keras.optimizers.LossScaleOptimizer``;
    its public ``inner_optimizer`` holds the one the user built (an NSGD, an
    Adam whose moments a preconditioner reads, ...).
    """
    while isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    return optimizer


def compiled_metrics_copy(model):
    """A fresh, unbuilt copy of the metrics ``model.compile(metrics=..., weighted_metrics=...)`` set; None if none.

    Keras keeps them in the private ``model._compile_metrics`` (a ``CompileMetrics``,
    itself a ``keras.metrics.Metric``). A copy built from the same user lists resolves
    names such as ``"accuracy"`` as Keras does, without building or resetting the
    model's own metrics (the loss landscape evaluates it statelessly).
    """
    compiled = getattr(model, "_compile_metrics", None)
    if compiled is None:
        return None
    return type(compiled)(compiled._user_metrics, compiled._user_weighted_metrics, output_names=compiled.output_names)


# -- optimizers ---------------------------------------------------------------------------------------


def variable_index(optimizer, variable) -> int:
    """The position of ``variable`` in the list the optimizer was built on (its slot lists follow that order).

    Keras's private ``Optimizer._get_variable_index`` accepts a ``keras.Variable``
    or its ``tf.Variable`` (also a replica's component under ``tf.distribute``).
    Raises ``KeyError`` for a variable the optimizer was not built on.
    """
    return optimizer._get_variable_index(variable)


def optimizer_slots(optimizer, attribute: str):
    """The optimizer's private slot list ``attribute`` (one variable per model variable), or None if it has none.

    The slots read are the second moments of Keras's adaptive optimizers:
    ``_velocities`` (Adam, AdamW, Nadam, RMSprop), ``_velocity_hats`` (Adam with
    ``amsgrad``), ``_u`` (Adamax), ``_average_gradients`` (centered RMSprop) and
    ``_accumulators`` (Adagrad).
    """
    return getattr(optimizer, attribute, None)


def load_optimizer_variables(store, variables) -> None:
    """Assigns a saved optimizer state to ``variables``, the first ``len(variables)`` of ``optimizer.variables``.

    ``Optimizer.save_own_variables`` stores the i-th of ``optimizer.variables``
    under the key ``str(i)``.
    """
    for i, variable in enumerate(variables):
        variable.assign(store[str(i)])


class FinalGradientsHook:
    """Mixin for a ``keras.optimizers.Optimizer`` subclass that must see every final gradient of a step at once.

    Keras's public extension points cannot: ``update_step`` sees one variable
    at a time, and ``apply`` sees the gradients before loss unscaling,
    gradient accumulation, clipping and the sum over replicas. Keras's
    TensorFlow backend sums them over replicas in the private
    ``_all_reduce_sum_gradients(grads_and_vars)``, which ``_backend_update_step``
    calls once per applied step, in replica context, with every final gradient,
    and whose result is what ``update_step`` then receives for each variable.
    This mixin (listed before the Keras class in the bases) passes that result
    through ``self._transform_final_gradients(gradients, variables)``, which
    returns the gradients the step is to use (``variables`` are the
    ``tf.Variable`` s; gradients that are None are left out).
    """

    def _all_reduce_sum_gradients(self, grads_and_vars):
        pairs = list(super()._all_reduce_sum_gradients(grads_and_vars))
        present = [i for i, (gradient, _) in enumerate(pairs) if gradient is not None]
        if present:
            new = self._transform_final_gradients([pairs[i][0] for i in present], [pairs[i][1] for i in present])
            for i, gradient in zip(present, new):
                pairs[i] = (gradient, pairs[i][1])
        return pairs

    @classmethod
    def _check_keras_calls_the_hook(cls) -> None:
        """Raises a clear ``RuntimeError`` if this Keras has no ``_all_reduce_sum_gradients`` to override."""
        bases = [base for base in cls.__mro__[1:] if base is not FinalGradientsHook]
        if not any("_all_reduce_sum_gradients" in vars(base) for base in bases):
            raise RuntimeError(
                f"Keras {keras.__version__} has no Optimizer._all_reduce_sum_gradients, through which "
                f"{cls.__name__} sees the final gradients of a step; install a Keras version that setup.cfg admits.")


# -- losses under tf.distribute --------------------------------------------------------------------------

#: Under a strategy with R replicas, Keras's TensorFlow trainer divides the model's additional losses
#: (regularizers, ``add_loss``) by R inside ``Model.compute_loss`` (its ``_aggregate_additional_loss``).
ADDITIONAL_LOSSES_DIVIDED_BY_REPLICAS = True

# Reductions whose result keras.losses.Loss divides by the number of replicas (scale_loss_for_distribution).
_REPLICA_SCALED_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight")


def loss_divided_by_replicas(loss) -> bool:
    """Whether Keras divides the value of ``loss`` by the number of replicas in a replica context.

    Under a strategy with R replicas, a ``keras.losses.Loss`` with a mean
    reduction returns its batch mean divided by R (so that gradients summed
    over replicas average); a ``"sum"`` or ``"none"`` reduction, or a plain
    callable, is not scaled. ``model.compile`` wraps a plain function (and each
    of several losses) in a mean-reduced ``Loss``: pass ``loss`` as compiled.
    """
    if not isinstance(loss, keras.losses.Loss):
        return False
    return loss.reduction in _REPLICA_SCALED_REDUCTIONS

