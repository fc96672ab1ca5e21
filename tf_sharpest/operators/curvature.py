"""The one base of every curvature operator: a per-batch product summed over a fixed sample.

A curvature operator of a Keras model (Hessian, Gauss-Newton, empirical
Fisher, each on all parameters or a block) is a mean over examples of a
per-batch product. Everything but that product lives here, once:

* the sample, its batches and their example weights (:class:`Sample`);
* the loss split into its parts (:class:`ModelLoss`) and the parameters
  chosen (``variables=``);
* the per-batch graph, traced once per operator for the sample's signature
  (a fixed batch shape when all batches are equal), taking and returning flat
  vectors;
* the example-weighted accumulation, exact for uneven last batches;
* moving to a new sample without tracing again (``set_data``);
* the block product ``matmat`` of a subclass that shares work across the
  columns of a block (``_batch_block_product``), through the same
  accumulation, traced once for every block width.

A subclass implements only ``_batch_product(batch, vectors)``, and may
implement ``_batch_block_product(batch, rows)``.
"""

from __future__ import annotations

import abc

import keras
import tensorflow as tf

from tf_sharpest.operators.base import LinearOperator
from tf_sharpest.operators.empirical_loss import EmpiricalLoss
from tf_sharpest.operators.strategy import ReplicaPlan, resolve_strategy


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

    Attributes:
      objective: the :class:`EmpiricalLoss` on the same sample and variables.
      layout: the :class:`~tf_sharpest.utils.FlatLayout` of the flat vectors.
      num_traces: how often the per-batch graph has been traced (tests use it).
    """

    def __init__(self, model: keras.Model, data, *, loss=None, batch_size: int | None = None,
                 training: bool = False, variables=None, strategy: tf.distribute.Strategy | None = None):
        self.strategy = resolve_strategy(model, strategy)
        self.objective = EmpiricalLoss(model, data, loss=loss, batch_size=batch_size, training=training,
                                       variables=variables)
        super().__init__(self.objective.layout.dim, self.objective.dtype)
        self.model = model
        self.layout = self.objective.layout
        self.variables = self.objective.variables
        self.model_loss = self.objective.model_loss
        self.num_traces = 0
        self._graph = None  # (trace_spec, traced function)
        self._block_graph = None  # the same for block products
        self._distributed_steps = {}  # the traced strategy.run of each accumulation (vector, block)
        self._plan = None  # (sample, ReplicaPlan) of the latest distributed product
        if self.num_replicas > 1:
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
    def traced_spec(self):
        """The batch signature of the per-batch graph in use (None before the first product)."""
        return None if self._graph is None else self._graph[1].input_signature[0]

    # -- the product -----------------------------------------------------------------------------
    @abc.abstractmethod
    def _batch_product(self, batch, vectors: list) -> list:
        """The per-batch curvature applied to ``vectors`` (one tensor per variable); runs in a graph.

        Returns one tensor per variable (``None`` entries count as zero).
        """

    def _accumulate_batch(self, batch, vector, accumulated, weight):
        self.num_traces += 1  # runs only while tracing: tests use it to catch retracing
        products = self._batch_product(batch, self.layout.unflatten(vector))
        products = [tf.zeros(shape, self.dtype) if p is None else p
                    for p, shape in zip(products, self.layout.shapes)]
        return accumulated + weight * tf.cast(self.layout.flatten(products), self.dtype)

    def _accumulate_function(self):
        """The traced per-batch product; traced again only if new data changed the batch signature."""
        spec = self.sample.trace_spec
        if self._graph is None or self._graph[0] != spec:
            # One graph per batch, called from a Python loop: a loop over the dataset
            # inside the graph ran the double backprop about 2.5x slower on CPU. The
            # graph takes and returns flat vectors: splitting and concatenating them
            # eagerly, and passing one tensor per variable, cost ~10% of a small HVP.
            flat_spec = tf.TensorSpec([self.dim], self.dtype)
            function = tf.function(self._accumulate_batch,
                                   input_signature=[spec, flat_spec, flat_spec, tf.TensorSpec([], self.dtype)])
            self._graph = (spec, function)
        return self._graph[1]

    @property
    def num_replicas(self) -> int:
        """Replicas that share each product (1 without a multi-replica strategy)."""
        return int(self.strategy.num_replicas_in_sync)

    @property
    def replica_plan(self) -> ReplicaPlan:
        """How the current sample is shared among the replicas (computed once per sample)."""
        if self._plan is None or self._plan[0] is not self.sample:
            self._plan = (self.sample, ReplicaPlan(self.sample, self.strategy))
        return self._plan[1]

    def _matvec(self, vector):
        if self.num_replicas > 1:
            return self._distributed(self._accumulate_batch, vector)
        accumulate = self._accumulate_function()
        accumulated = tf.zeros([self.dim], self.dtype)
        for batch, weight in self.objective.batch_weights():
            accumulated = accumulate(batch, vector, accumulated, weight)
        return accumulated

    def _distributed(self, accumulate, operand):
        """``accumulate`` over every replica's shard of the sample, then the one all-reduce of the product."""
        plan = self.replica_plan
        step = self._distributed_steps.get(accumulate.__name__)
        if step is None:
            # strategy.run inside one tf.function, as Keras runs its train step; traced again
            # only for a new batch shape (the smaller batches at a shard's end).
            def run(batch, operand, accumulated, weight):
                return self.strategy.run(accumulate, args=(batch, operand, accumulated, weight))

            step = self._distributed_steps[accumulate.__name__] = tf.function(run, reduce_retracing=True)
        accumulated = plan.zeros(operand.shape, self.dtype)
        for index in range(plan.num_steps):
            batch, weight = plan.step(index, self.dtype)
            accumulated = step(batch, operand, accumulated, weight)
        # The replicas' partial sums, added.
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, accumulated, axis=None)

    # -- the block product ------------------------------------------------------------------------
    # A subclass that shares work across a block's columns defines
    #   _batch_block_product(self, batch, rows) -> [k, dim]
    # the per-batch curvature applied to each row of a flat [k, dim] block, in a graph where k is
    # unknown while tracing (one graph serves every block width). Without it, matmat is k matvecs.

    #: Whether the class defines ``_batch_block_product`` (set for each subclass as it is defined).
    has_block_product = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.has_block_product = callable(getattr(cls, "_batch_block_product", None))

    def _accumulate_block(self, batch, rows, accumulated, weight):
        self.num_traces += 1  # runs only while tracing, as in _accumulate_batch
        return accumulated + weight * tf.cast(self._batch_block_product(batch, rows), self.dtype)

    def _block_function(self):
        """The traced per-batch block product: one trace for every ``k``, again only for a new batch signature."""
        spec = self.sample.trace_spec
        if self._block_graph is None or self._block_graph[0] != spec:
            rows_spec = tf.TensorSpec([None, self.dim], self.dtype)
            function = tf.function(self._accumulate_block,
                                   input_signature=[spec, rows_spec, rows_spec, tf.TensorSpec([], self.dtype)])
            self._block_graph = (spec, function)
        return self._block_graph[1]

    def _matmat(self, vectors):
        if not self.has_block_product or vectors.shape[1] == 1:
            return super()._matmat(vectors)  # one column: the matvec graph, without the block's loop
        # The block's columns as rows: the per-batch graph maps over the leading axis.
        rows = tf.transpose(vectors)
        if self.num_replicas > 1:
            return tf.transpose(self._distributed(self._accumulate_block, rows))
        accumulate = self._block_function()
        accumulated = tf.zeros_like(rows)
        for batch, weight in self.objective.batch_weights():
            accumulated = accumulate(batch, rows, accumulated, weight)
        return tf.transpose(accumulated)

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


def gradients(tape: tf.GradientTape, target, variables: list, output_gradients=None) -> list:
    """``tape.gradient`` with zeros (of each variable's shape and dtype) where ``target`` does not depend on it.

    ``unconnected_gradients=ZERO`` cannot be used with Keras variables: TensorFlow
    builds the zeros from ``variable.dtype``, which Keras 3 gives as a string.
    """
    grads = tape.gradient(target, variables, output_gradients=output_gradients)
    return [tf.zeros(v.shape, tf.as_dtype(v.dtype)) if g is None else g for g, v in zip(grads, variables)]


def dot(parts_a, parts_b) -> tf.Tensor:
    """``sum_i <a_i, b_i>`` over two lists of same-shaped tensors (``None`` in ``a`` counts as zero)."""
    terms = [tf.reduce_sum(a * tf.cast(b, a.dtype)) for a, b in zip(parts_a, parts_b) if a is not None]
    return tf.add_n(terms) if terms else tf.constant(0.0)
