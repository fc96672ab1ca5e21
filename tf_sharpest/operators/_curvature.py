"""The one base of every curvature operator: a per-batch product summed over a fixed sample.

A curvature operator of a Keras model (Hessian, Gauss-Newton, empirical
Fisher, each on all parameters or a block) is a mean over examples of a
per-batch product. Everything but that product lives here, once:

* the sample, its batches and their example weights (:class:`Sample`);
* the loss split into its parts (:class:`ModelLoss`) and the parameters
  chosen (``variables=``);
* the per-batch graphs, one ``tf.function`` per kind of product in one cache
  (:attr:`traced_functions`), traced once per batch signature (a fixed batch
  shape when all batches are equal), taking and returning flat vectors;
* the example-weighted accumulation, exact for uneven last batches, on one
  device or over a ``tf.distribute`` strategy's replicas;
* moving to a new sample without tracing again (``set_data``);
* the block product ``matmat`` through the same accumulation, traced once
  for every block width.

A subclass implements ``_batch_product(batch, vectors)`` and
``_batch_block_product(batch, rows)`` (without the latter, ``matmat`` is a
loop of matvecs).
"""

from __future__ import annotations

import abc
import contextlib

import keras
import tensorflow as tf

from tf_sharpest.operators._base import LinearOperator
from tf_sharpest.operators._empirical_loss import EmpiricalLoss
from tf_sharpest.operators._sample import Sample
from tf_sharpest.operators._strategy import ReplicaPlan, resolve_strategy
from tf_sharpest.operators._traced import TracedFunctions
from tf_sharpest.utils._checks import positive_int

__all__ = ["CurvatureOperator"]


class CurvatureOperator(LinearOperator):
    """Base of the symmetric curvature operators of a model's mean training loss over ``data``.

    ``A v = sum_b (n_b / N) A_b v`` over the sample's batches ``b`` of
    ``n_b`` examples, where ``A_b`` is the subclass's per-batch curvature of
    the batch's mean loss. Every operator includes the exact Hessian of the
    model's regularization losses (``model.losses``), counted once.

    Args:
      model: a built Keras model.
      data: ``(x, y)`` (or ``(x, y, sample_weight)``) arrays or tensors, a
        finite batched ``tf.data.Dataset`` of them that yields the same
        examples on every pass, or a :class:`~tf_sharpest.operators.Sample`.
      loss: ``None`` to use the model's compiled loss (``model.compute_loss``),
        or a Keras loss (name or object) or a callable ``loss(y_true, y_pred)``.
      batch_size: batch size for array ``data`` (default 128).
      training: the mode the model is called in. ``False`` (default) puts
        BatchNorm in inference mode and turns dropout off, as in the paper;
        ``True`` uses batch statistics (and one fixed dropout mask) without
        touching the moving statistics.
      variables: ``None`` for all trainable variables, or a block: a
        variable, a layer, or a list of variables and layers. ``dim`` and the
        flat layout are then those of the block, in model order.
      strategy: the ``tf.distribute`` strategy the products run under;
        default: the one the model was built under
        (``model.distribute_strategy``). With several replicas, each takes one
        shard of the sample and one all-reduce per product sums their parts;
        under ``MultiWorkerMirroredStrategy`` every worker must hold the same
        sample, and every worker gets the same products.
      micro_batch_size: ``None`` (default) runs each batch in one piece; an
        integer cuts every larger batch into micro-batches of at most that
        many examples for the products, each weighted by its examples, so the
        result is the same while the peak memory of a product falls with the
        micro-batch (the memory budget: on SimpleCNN-medium at 32x32x3 a
        Hessian product peaked at 768 MB above the model for a batch of 256
        and 265 MB in micro-batches of 64, on CPU; ``benchmarks/RESULTS.md``).
        The loss value and ``batch_size`` keep their batches. Refused in
        training mode for models with BatchNorm or random layers (dropout),
        whose output depends on the batch they are called on.

    Attributes:
      objective: the :class:`EmpiricalLoss` on the same sample and variables.
      layout: the :class:`~tf_sharpest.utils.FlatLayout` of the flat vectors.

    Example:

    ```python
    hessian = HessianOperator(model, (x, y), batch_size=32)   # a CurvatureOperator
    hv = hessian.matvec(v)                                     # one product, summed over the sample's batches
    block = hessian.matmat(tf.stack([v, 2 * v], axis=1))      # [dim, 2]: one forward pass per batch for both
    hessian.set_data((x[:32], y[:32]))                         # a new sample, the same graphs
    hessian.traced_functions["matvec"].experimental_get_tracing_count()  # 1
    ```
    """

    def __init__(self, model: keras.Model, data, *, loss=None, batch_size: int | None = None,
                 training: bool = False, variables=None, strategy: tf.distribute.Strategy | None = None,
                 micro_batch_size: int | None = None):
        self.strategy = resolve_strategy(model, strategy)
        self.micro_batch_size = positive_int("micro_batch_size", micro_batch_size, allow_none=True)
        if self.micro_batch_size is not None and training:
            _refuse_batch_dependent_layers(model)
        self.objective = EmpiricalLoss(model, data, loss=loss, batch_size=batch_size, training=training,
                                       variables=variables)
        super().__init__(self.objective.layout.dim, self.objective.dtype)
        self.model = model
        self.layout = self.objective.layout
        self.variables = self.objective.variables
        self.model_loss = self.objective.model_loss
        self._plan = None  # (sample, ReplicaPlan) of the latest distributed product
        self._micro = None  # (sample, its micro-batches)
        if self.num_replicas > 1:
            if self.training:
                _refuse_synchronized_batch_norm(model, self.num_replicas)
            _ = self.replica_plan  # refuse now a sample smaller than the number of replicas

    # -- the sample ------------------------------------------------------------------------------
    def set_data(self, data, batch_size: int | None = None) -> None:
        """The operator over a new sample of the same structure, without tracing again.

        See :meth:`EmpiricalLoss.set_data`; ``num_matvecs`` keeps counting.
        New data cut into batches of other sizes than before costs one new trace.
        """
        self.objective.set_data(data, batch_size)

    @property
    def sample(self):
        """The :class:`~tf_sharpest.operators.Sample` the products sum over."""
        return self.objective.sample

    @property
    def product_sample(self) -> Sample:
        """The batches the products run on: the sample's, or their micro-batches (``micro_batch_size``)."""
        sample = self.sample
        if self.micro_batch_size is None:
            return sample
        if self._micro is None or self._micro[0] is not sample:
            self._micro = (sample, sample.micro_batches(self.micro_batch_size))
        return self._micro[1]

    @property
    def loss(self) -> float:
        """Mean loss over the data at the weights the operator was built at (or last moved to new data)."""
        return self.objective.value

    @property
    def num_examples(self) -> int:
        return self.objective.num_examples

    @property
    def num_batches(self) -> int:
        return self.objective.num_batches

    @property
    def training(self) -> bool:
        return self.objective.training

    @property
    def traced_functions(self) -> TracedFunctions:
        """The ``tf.function`` of each kind of graph (``"loss"``, ``"gradient"``, ``"matvec"``, ``"matmat"``).

        ``operator.traced_functions["matvec"].experimental_get_tracing_count()``
        tells how often the per-batch product was traced (once per batch signature).
        """
        return self.objective.traced_functions

    # -- the product -----------------------------------------------------------------------------
    @abc.abstractmethod
    def _batch_product(self, batch, vectors: list) -> list:
        """The per-batch curvature applied to ``vectors`` (one tensor per variable); runs in a graph.

        Returns one tensor per variable (``None`` entries count as zero).
        """

    def _accumulate_batch(self, batch, vector, accumulated, weight):
        products = self._batch_product(batch, self.layout.unflatten(vector))
        products = [tf.zeros(shape, self.dtype) if p is None else p
                    for p, shape in zip(products, self.layout.shapes)]
        return accumulated + weight * tf.cast(self.layout.flatten(products), self.dtype)

    def batch_matvec(self, batch, vector) -> tf.Tensor:
        """``A_b v``: the curvature of one ``(x, y[, w])`` batch's mean loss (regularization included) times ``v``.

        The per-batch product every ``matvec`` sums, untraced: call it eagerly or
        inside your own ``tf.function`` (e.g. traced with an open batch dimension).
        """
        vector = tf.convert_to_tensor(vector, self.dtype)
        return self._accumulate_batch(tuple(batch), vector, tf.zeros_like(vector), tf.constant(1, self.dtype))

    @property
    def num_replicas(self) -> int:
        """Replicas that share each product (1 without a multi-replica strategy)."""
        return int(self.strategy.num_replicas_in_sync)

    @property
    def replica_plan(self) -> ReplicaPlan:
        """How the current sample is shared among the replicas (computed once per sample)."""
        sample = self.product_sample
        if self._plan is None or self._plan[0] is not sample:
            self._plan = (sample, ReplicaPlan(sample, self.strategy, whole_batches=self.training))
        return self._plan[1]

    def _matvec(self, vector):
        return self._accumulate("matvec", self._accumulate_batch, vector)

    def _accumulate(self, name: str, accumulate, operand):
        """``sum_b w_b (per-batch product of operand)`` over the sample, on one device or over the replicas.

        One graph per batch, called from a Python loop: a loop over the dataset
        inside the graph ran the double backprop about 2.5x slower on CPU. The
        graph takes and returns flat vectors (or a ``[k, dim]`` block): splitting
        and concatenating them eagerly cost ~10% of a small HVP.
        """
        with self._explain_out_of_memory():
            if self.num_replicas > 1:
                return self._distributed(name, accumulate, operand)
            sample = self.product_sample
            operand_spec = tf.TensorSpec([None] * (operand.shape.rank - 1) + [self.dim], self.dtype)
            graph = self.traced_functions.concrete(name, accumulate, sample.trace_spec, operand_spec, operand_spec,
                                                   tf.TensorSpec([], self.dtype))
            accumulated = tf.zeros_like(operand)
            if self._batch_observer is None:
                for batch, weight in sample.weighted_batches(self.dtype):
                    accumulated = graph(batch, operand, accumulated, weight)
                return accumulated
            observer, owners = self._batch_observer
            for owner, (batch, weight) in zip(owners, sample.weighted_batches(self.dtype)):
                part = graph(batch, operand, tf.zeros_like(operand), weight)  # w_b A_b v, the same sum in order
                observer(owner, part)
                accumulated = accumulated + part
            return accumulated

    _batch_observer = None  # (observer, the sample's batch index of each product batch) within observing_batches

    @contextlib.contextmanager
    def observing_batches(self, observer):
        """Within the block, every product also hands each batch's part ``w_b A_b v`` to ``observer(b, part)``.

        ``b`` is the index of the sample's batch (``w_b`` its share of the
        examples); with ``micro_batch_size`` each micro-batch's part comes
        separately, with the index of the batch it was cut from. The products
        are unchanged and cost nothing more: an algorithm reads per-batch
        quantities this way, e.g. the sampling error of eigenvalues during the
        eigensolver's own products (:func:`tf_sharpest.linalg.lanczos` with ``stderr=True``).
        One device only (a multi-replica strategy sums its batches on the replicas).
        """
        if self.num_replicas > 1:
            raise ValueError("observing_batches needs the products on one device; under a strategy with "
                             f"{self.num_replicas} replicas the batches are summed on the replicas.")
        sample, pieces = self.sample, self.product_sample
        if pieces is sample:
            owners = tuple(range(sample.num_batches))
        else:  # Sample.micro_batches cuts each batch, in order, into pieces of at most micro_batch_size
            owners = tuple(b for b, size in enumerate(sample.sizes) for _ in range(-(-size // self.micro_batch_size)))
        self._batch_observer = (observer, owners)
        try:
            yield
        finally:
            del self._batch_observer

    @contextlib.contextmanager
    def _explain_out_of_memory(self):
        """Turns the allocator's out-of-memory error into one that says what the product needed and what to pass."""
        try:
            yield
        except tf.errors.ResourceExhaustedError as error:
            largest = max(self.product_sample.sizes)
            smaller = max(1, largest // 4)
            raise tf.errors.ResourceExhaustedError(
                error.node_def, error.op,
                f"{type(self).__name__}: a product on a batch of {largest} examples ran out of device memory "
                f"(micro_batch_size={self.micro_batch_size}). Pass micro_batch_size={smaller} (or smaller) to the "
                "operator, or Curvature(..., micro_batch_size=...) to a callback: the products are the same, "
                "computed on micro-batches that fit. The allocator said: " + str(error.message)[:500]) from error

    def _distributed(self, name: str, accumulate, operand):
        """``accumulate`` over every replica's batches of the sample, then the one all-reduce of the product."""
        plan = self.replica_plan

        # strategy.run inside one tf.function, as Keras runs its train step; traced again
        # only for a new batch shape (the smaller batches at a shard's end).
        def run(batch, operand, accumulated, weight):
            return self.strategy.run(accumulate, args=(batch, operand, accumulated, weight))

        step = self.traced_functions.function(f"distributed_{name}", run, reduce_retracing=True)
        accumulated = plan.zeros(operand.shape, self.dtype)
        for index in range(plan.num_steps):
            batch, weight = plan.step(index, self.dtype)
            accumulated = step(batch, operand, accumulated, weight)
        # The replicas' partial sums, added.
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, accumulated, axis=None)

    # -- the block product ------------------------------------------------------------------------
    # A subclass shares work across a block's columns by defining
    #   _batch_block_product(self, batch, rows) -> [k, dim]
    # the per-batch curvature applied to each row of a flat [k, dim] block, in a graph where k is
    # unknown while tracing (one graph serves every block width). Without it, matmat is k matvecs.

    #: Whether the class defines ``_batch_block_product`` (set for each subclass as it is defined).
    has_block_product = False

    #: Columns of a block product in flight at once, where the block product maps one column at a time
    #: over a batch's recorded passes (``tf.map_fn``'s ``parallel_iterations``). One column at a time took
    #: the same time as ten on CPU and held 25% less memory for the Hessian's (3.2x a gradient against
    #: 4.2x on SimpleCNN-root, batch 256; ``benchmarks/RESULTS.md``, issue 25): each column's second
    #: backward pass already fills the cores. A subclass (or an instance, before its first block
    #: product: the per-batch graph is traced once) may set more for a device with memory to spare.
    block_parallel_iterations = 1

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.has_block_product = callable(getattr(cls, "_batch_block_product", None))

    def _accumulate_block(self, batch, rows, accumulated, weight):
        return accumulated + weight * tf.cast(self._batch_block_product(batch, rows), self.dtype)

    def _matmat(self, vectors):
        if not self.has_block_product or vectors.shape[1] == 1:
            return super()._matmat(vectors)  # one column: the matvec graph, without the block's loop
        # The block's columns as rows: the per-batch graph maps over the leading axis.
        return tf.transpose(self._accumulate("matmat", self._accumulate_block, tf.transpose(vectors)))

    def matvec_structured(self, vectors) -> list[tf.Tensor]:
        """Returns ``A @ v`` for ``v`` given as variable-shaped tensors (one per chosen variable)."""
        vectors = list(vectors)
        if len(vectors) != len(self.layout):
            raise ValueError(f"Expected {len(self.layout)} tensors (one per trainable variable the operator acts "
                             f"on), got {len(vectors)}.")
        converted = []
        for v, shape in zip(vectors, self.layout.shapes):
            v = tf.convert_to_tensor(v, dtype=self.dtype)
            if tuple(v.shape) != shape:
                raise ValueError(f"A vector part has shape {tuple(v.shape)} where its variable has {shape}.")
            converted.append(v)
        return self.layout.unflatten(self.matvec(self.layout.flatten(converted)))



def _refuse_batch_dependent_layers(model: keras.Model) -> None:
    """In training mode BatchNorm normalizes by its batch's statistics and dropout draws a mask for the batch's
    shape: cutting a batch into micro-batches would change the operator, so it is refused for such models."""
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        stack.extend(getattr(layer, "layers", []))
        if isinstance(layer, keras.layers.BatchNormalization) or getattr(layer, "seed_generator", None) is not None:
            raise ValueError(
                f"micro_batch_size cannot split batches in training mode: layer {layer.name!r} "
                f"({type(layer).__name__}) depends on the whole batch it is called on (batch statistics or a "
                "dropout mask), so micro-batches would change the operator. Use training=False, or a smaller "
                "batch_size (the sample's batches are then the training batches measured).")


def _refuse_synchronized_batch_norm(model: keras.Model, num_replicas: int) -> None:
    """A synchronized BatchNormalization mixes the replicas' batches into one statistic: no replica then
    sees the batch statistics one device would, so training-mode products under several replicas are refused."""
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        stack.extend(getattr(layer, "layers", []))
        if isinstance(layer, keras.layers.BatchNormalization) and getattr(layer, "synchronized", False):
            raise ValueError(
                f"BatchNormalization layer {layer.name!r} is synchronized: under {num_replicas} replicas its "
                "training-mode statistics would mix the batches of all replicas, so no product would equal the "
                "one-device operator. Measure with training=False, or on a copy of the model built outside the "
                "strategy (or with synchronized=False).")
