"""Curvature products under ``tf.distribute``: which strategy, and which replica takes which examples.

Under a strategy with several replicas (``MirroredStrategy`` over GPUs,
``MultiWorkerMirroredStrategy`` over hosts), the sample is cut into one
contiguous shard per replica (in training mode: its batches are dealt to the
replicas whole, so batch statistics are one device's), every example in
exactly one shard, on every worker alike (each worker holds the same sample
and computes the same plan).
Each replica accumulates its example-weighted partial product; one
all-reduce sums the partials. The result equals the single-device product to
float32 round-off, so every algorithm runs unchanged, and identically, on
every worker.
"""

from __future__ import annotations

import tensorflow as tf

from tf_sharpest.operators._sample import Sample


def resolve_strategy(model, strategy=None) -> tf.distribute.Strategy:
    """The strategy a model's measurements run under: ``strategy``, else the model's, else the current one.

    Raises:
      ValueError: for a ``ParameterServerStrategy``, or a strategy other than the
        one the model's variables were created under.
    """
    own = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    strategy = own if strategy is None else strategy
    if not isinstance(strategy, tf.distribute.Strategy):
        raise ValueError(f"strategy must be a tf.distribute.Strategy, got {type(strategy).__name__}.")
    if "ParameterServer" in type(strategy).__name__:
        raise ValueError(
            "ParameterServerStrategy is not supported: its workers train asynchronously, so no two of them see "
            "the same weights to measure. Measure on the coordinator with a copy of the model, or train with "
            "MirroredStrategy / MultiWorkerMirroredStrategy.")
    if strategy is not own:
        raise ValueError(
            f"The model was built under {type(own).__name__}, not the {type(strategy).__name__} passed: build "
            "and compile the model inside strategy.scope(), or pass strategy=None to use the model's own.")
    if strategy.num_replicas_in_sync > 1:
        local = [v for v in model.trainable_variables
                 if not isinstance(getattr(v, "value", v), tf.distribute.DistributedValues)]
        if local:
            name = getattr(local[0], "path", None) or local[0].name
            raise ValueError(
                f"Variable {name!r} was not created under the {type(strategy).__name__}: build and compile the "
                "model inside strategy.scope().")
    return strategy


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """Whether the strategy's replicas span several worker processes (hosts)."""
    if strategy.num_replicas_in_sync == 1:
        return False  # also the default strategy, which has no worker_devices
    return strategy.num_replicas_in_sync > len(strategy.extended.worker_devices)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this worker is the one that writes files (Keras's multi-worker convention)."""
    return bool(strategy.extended.should_checkpoint)


class ReplicaPlan:
    """Which batches each replica takes at each step of a distributed product, with their weights.

    Inference-mode products (``whole_batches=False``) cut the examples into one
    contiguous shard per replica (:meth:`Sample.split`): the replicas' loads
    differ by at most one example. With ``whole_batches=True`` (training mode)
    the sample's own batches are dealt to the replicas in turn, batch ``b``
    to replica ``b mod R``: every batch's statistics (BatchNorm) are then
    exactly those of one device, and each batch is weighted by its examples.
    A replica with fewer batches than the others gets a copy of a batch with
    weight 0 at the extra steps, so all replicas run each step.
    """

    def __init__(self, sample: Sample, strategy: tf.distribute.Strategy, *, whole_batches: bool = False):
        self.strategy = strategy
        self.whole_batches = bool(whole_batches)
        replicas = strategy.num_replicas_in_sync
        if self.whole_batches:
            self.parts = [list(zip(sample.batches[r::replicas], sample.sizes[r::replicas])) for r in range(replicas)]
        else:
            self.parts = [list(zip(shard.batches, shard.sizes)) for shard in sample.split(replicas)]
        self._filler = sample.batches[0]
        self.total = float(sample.num_examples)
        self.num_steps = max(len(part) for part in self.parts)

    @property
    def examples_per_replica(self) -> list:
        """How many examples each replica (by global replica id) processes in one product."""
        return [sum(size for _, size in part) for part in self.parts]

    @property
    def batch_sizes_per_replica(self) -> list:
        """The sizes of the batches each replica (by global replica id) processes, in order."""
        return [[size for _, size in part] for part in self.parts]

    def step(self, index: int, dtype):
        """Per-replica ``(batch, weight)`` for step ``index``."""
        def batch_of(context):
            part = self.parts[context.replica_id_in_sync_group]
            return part[index][0] if index < len(part) else (part[0][0] if part else self._filler)

        def weight_of(context):
            part = self.parts[context.replica_id_in_sync_group]
            size = part[index][1] if index < len(part) else 0
            return tf.constant(size / self.total, dtype)

        distribute = self.strategy.experimental_distribute_values_from_function
        return distribute(batch_of), distribute(weight_of)

    def zeros(self, shape, dtype):
        """A per-replica zero accumulator of ``shape`` (a vector's ``[dim]`` or a block's ``[k, dim]``)."""
        return self.strategy.experimental_distribute_values_from_function(lambda _: tf.zeros(shape, dtype))
