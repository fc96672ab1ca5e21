"""Issue 25: the forward-over-reverse Hessian product and the GGN's and Fisher's products against explicit
matrices (float64: one device, under a MirroredStrategy, in training mode), and micro-batches
(``micro_batch_size``) that leave every product unchanged."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_sharpest.operators import CURVATURES, Curvature, EmpiricalFisherOperator, GGNOperator, HessianOperator, Sample

from references import (
    batchnorm_dropout_model,
    classification_data,
    explicit_fisher,
    explicit_ggn,
    explicit_hessian,
    softmax_ce_output_hessian,
    sparse_ce,
    tiny_cnn,
)


def weighted_cnn_case():
    """The float64 CNN with L2 on its kernels and 13 weighted examples (batches of 5, 5 and 3)."""
    model = tiny_cnn(l2=0.02)
    x, y = classification_data((6, 6, 1), n=13, seed=6)
    w = np.random.default_rng(7).uniform(0.3, 1.7, size=13)
    return model, (x, y, w)


def weighted_explicit(name, model, data):
    """The explicitly formed matrix of ``name`` over all weighted examples at once (no batching involved)."""
    x, y, w = data
    if name == "ggn":
        return explicit_ggn(model, x, y, softmax_ce_output_hessian, sample_weight=w)
    if name == "empirical_fisher":
        return explicit_fisher(model, x, y, lambda label, z: sparse_ce()(label, z), sample_weight=w)
    variables = model.trainable_variables
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            losses = keras.losses.sparse_categorical_crossentropy(y, model(x), from_logits=True)
            loss = tf.reduce_sum(w * losses) / len(x) + tf.add_n(model.losses)
        flat = tf.concat([tf.reshape(g, [-1]) for g in inner.gradient(loss, variables)], axis=0)
    return np.concatenate([tf.reshape(j, [flat.shape[0], -1]).numpy() for j in outer.jacobian(flat, variables)],
                          axis=1)


def assert_close(actual, expected, rtol=1e-6):
    assert np.linalg.norm(actual - expected) <= rtol * np.linalg.norm(expected), np.abs(actual - expected).max()


def test_hessian_product_is_forward_over_reverse():
    """The product's graph runs the gradient's backward pass once, carrying tangents: no second backward pass.

    Double backprop differentiates the backward pass's own ops again: its graph holds three ``TanhGrad`` and
    three ``Conv2DBackpropInput`` ops for this network's one tanh convolution (checked when this was written)."""
    model, data = weighted_cnn_case()
    operator = HessianOperator(model, data, loss=sparse_ce(), batch_size=5)
    operator.matvec(np.ones(operator.dim))
    graph = operator.traced_functions["matvec"].get_concrete_function(
        operator.sample.trace_spec, *[tf.TensorSpec([operator.dim], tf.float64)] * 2, tf.TensorSpec([], tf.float64))
    ops = [op.type for op in graph.graph.get_operations()]
    assert ops.count("TanhGrad") == 1 and ops.count("Conv2DBackpropInput") == 1, sorted(ops)


def test_hvp_equals_the_explicit_hessian_under_a_mirrored_strategy(mirrored_strategy):
    single, data = weighted_cnn_case()
    with mirrored_strategy.scope():
        mirrored = tiny_cnn(l2=0.02)
    mirrored.set_weights(single.get_weights())
    operator = HessianOperator(mirrored, data, loss=sparse_ce(), batch_size=5)
    assert operator.num_replicas == 2 and operator.replica_plan.examples_per_replica == [7, 6]
    reference = weighted_explicit("hessian", single, data)
    for seed in range(2):
        v = np.random.default_rng(seed).standard_normal(operator.dim)
        assert_close(operator.matvec(v).numpy(), reference @ v, rtol=1e-8)


def batchnorm_models_and_data(strategy):
    """The BatchNorm model on one device and a copy under ``strategy`` (same weights, dropout off so the
    reference is deterministic), with 12 examples: one batch of 6 per replica."""
    single = batchnorm_dropout_model()
    single.layers[3].rate = 0.0
    with strategy.scope():
        mirrored = batchnorm_dropout_model()
        mirrored.layers[3].rate = 0.0
    mirrored.set_weights(single.get_weights())
    x, y = classification_data((5,), n=12, seed=1)
    return single, mirrored, x, y


def test_training_mode_hvp_equals_the_batch_statistics_hessians_under_a_mirrored_strategy(mirrored_strategy):
    """BatchNorm in training mode: each batch of 6 normalized by its own statistics, one batch per replica."""
    single, mirrored, x, y = batchnorm_models_and_data(mirrored_strategy)
    operator = HessianOperator(mirrored, (x, y), loss=sparse_ce(), batch_size=6, training=True)
    reference = (explicit_hessian(single, x[:6], y[:6], sparse_ce(), training=True)
                 + explicit_hessian(single, x[6:], y[6:], sparse_ce(), training=True)) / 2
    whole_batch = explicit_hessian(single, x, y, sparse_ce(), training=True)
    v = np.random.default_rng(3).standard_normal(operator.dim)
    assert_close(operator.matvec(v).numpy(), reference @ v, rtol=1e-8)
    assert not np.allclose(reference @ v, whole_batch @ v, rtol=1e-3)  # the statistics matter here


def training_mode_batch_matrix(name, model, x, y):
    """One batch's GGN or empirical Fisher with BatchNorm on the batch's statistics, from explicit Jacobians.

    The outputs (and per-example losses) of the whole batch are differentiated at once: each example's Jacobian
    includes its effect through the batch statistics, which ``explicit_ggn`` (inference mode) leaves out."""
    variables = model.trainable_variables
    n = len(x)
    with tf.GradientTape(persistent=True) as tape:
        logits = model(x, training=True)
        losses = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
    if name == "empirical_fisher":
        gradients = np.concatenate([tf.reshape(j, [n, -1]).numpy() for j in tape.jacobian(losses, variables)], axis=1)
        return gradients.T @ gradients / n
    classes = int(logits.shape[-1])
    jacobian = np.concatenate([tf.reshape(j, [n * classes, -1]).numpy() for j in tape.jacobian(logits, variables)],
                              axis=1)
    return sum(jacobian[i * classes:(i + 1) * classes].T @ softmax_ce_output_hessian(logits[i].numpy(), y[i])
               @ jacobian[i * classes:(i + 1) * classes] for i in range(n)) / n


@pytest.mark.parametrize("name", ["ggn", "empirical_fisher"])
def test_output_curvature_products_equal_explicit_matrices_in_training_mode_under_a_mirrored_strategy(
        mirrored_strategy, name):
    """The GGN's and Fisher's product (J v through the recorded backward pass) in float64, BatchNorm on batch
    statistics, one batch of 6 per replica: matvec and matmat against the explicit per-batch matrices."""
    single, mirrored, x, y = batchnorm_models_and_data(mirrored_strategy)
    operator = CURVATURES[name](mirrored, (x, y), loss=sparse_ce(), batch_size=6, training=True)
    assert operator.num_replicas == 2
    reference = (training_mode_batch_matrix(name, single, x[:6], y[:6])
                 + training_mode_batch_matrix(name, single, x[6:], y[6:])) / 2
    rng = np.random.default_rng(5)
    v = rng.standard_normal(operator.dim)
    assert_close(operator.matvec(v).numpy(), reference @ v, rtol=1e-8)
    block = rng.standard_normal((operator.dim, 3))
    assert_close(operator.matmat(block).numpy(), reference @ block, rtol=1e-8)
    inference = explicit_ggn(single, x, y, softmax_ce_output_hessian)
    assert not np.allclose(reference @ v, inference @ v, rtol=1e-3)  # the batch statistics matter here


@pytest.mark.parametrize("name", sorted(CURVATURES))
def test_micro_batches_leave_products_and_block_products_unchanged(name):
    model, data = weighted_cnn_case()
    whole = CURVATURES[name](model, data, loss=sparse_ce(), batch_size=5)
    micro = CURVATURES[name](model, data, loss=sparse_ce(), batch_size=5, micro_batch_size=2)
    assert micro.product_sample.sizes == (2, 2, 1, 2, 2, 1, 2, 1) and micro.sample.sizes == (5, 5, 3)
    assert micro.loss == pytest.approx(whole.loss, rel=1e-12)
    reference = weighted_explicit(name, model, data)
    rng = np.random.default_rng(4)
    v = rng.standard_normal(whole.dim)
    assert_close(micro.matvec(v).numpy(), whole.matvec(v).numpy())
    assert_close(micro.matvec(v).numpy(), reference @ v)
    block = rng.standard_normal((whole.dim, 3))
    assert_close(micro.matmat(block).numpy(), whole.matmat(block).numpy())
    assert_close(micro.matmat(block).numpy(), reference @ block)


def test_micro_batches_under_a_mirrored_strategy_and_after_set_data(mirrored_strategy):
    single, data = weighted_cnn_case()
    with mirrored_strategy.scope():
        mirrored = tiny_cnn(l2=0.02)
    mirrored.set_weights(single.get_weights())
    operator = GGNOperator(mirrored, data, loss=sparse_ce(), batch_size=5, micro_batch_size=3)
    v = np.random.default_rng(8).standard_normal(operator.dim)
    assert_close(operator.matvec(v).numpy(), weighted_explicit("ggn", single, data) @ v)
    x, y, w = data
    operator.set_data((x[:7], y[:7], w[:7]), batch_size=7)  # one batch of 7: micro-batches 3, 3, 1
    assert operator.product_sample.sizes == (3, 3, 1)
    part = tuple(a[:7] for a in data)
    assert_close(operator.matvec(v).numpy(), weighted_explicit("ggn", single, part) @ v)


def test_micro_batches_are_refused_for_batch_dependent_layers_in_training_mode():
    model = batchnorm_dropout_model()
    x, y = classification_data((5,), n=12)
    refusal = r"cannot split batches in training mode: layer .*\((Dropout|BatchNormalization)\) depends on the whole"
    with pytest.raises(ValueError, match=refusal):
        HessianOperator(model, (x, y), loss=sparse_ce(), batch_size=6, training=True, micro_batch_size=3)
    with pytest.raises(ValueError, match="training mode"):
        Curvature(training=True, micro_batch_size=3).check(model)
    # In inference mode BatchNorm uses its moving statistics: every example on its own, so splitting is exact.
    whole = EmpiricalFisherOperator(model, (x, y), loss=sparse_ce(), batch_size=12)
    micro = EmpiricalFisherOperator(model, (x, y), loss=sparse_ce(), batch_size=12, micro_batch_size=5)
    v = np.random.default_rng(2).standard_normal(whole.dim)
    assert_close(micro.matvec(v).numpy(), whole.matvec(v).numpy())
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="micro_batch_size must be a positive integer"):
            HessianOperator(model, (x, y), loss=sparse_ce(), micro_batch_size=bad)


def test_curvature_carries_the_micro_batch_size_to_its_operators():
    model, data = weighted_cnn_case()
    spec = Curvature("ggn", loss=sparse_ce(), micro_batch_size=2)
    assert Curvature.from_config(spec.get_config()).micro_batch_size == 2
    assert "micro_batch_size=2" in repr(spec)
    operator = spec(model, data, batch_size=5)
    assert isinstance(operator, GGNOperator) and operator.micro_batch_size == 2
    assert max(operator.product_sample.sizes) == 2


def test_running_out_of_memory_says_what_to_pass(monkeypatch):
    model, data = weighted_cnn_case()
    operator = HessianOperator(model, data, loss=sparse_ce(), batch_size=5)

    def exhausted(self, *args):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[5,4,4,4]")

    monkeypatch.setattr(Sample, "weighted_batches", exhausted)
    with pytest.raises(tf.errors.ResourceExhaustedError,
                       match=r"batch of 5 examples ran out of device memory.*micro_batch_size=1.*OOM when"):
        operator.matvec(np.ones(operator.dim))


def test_batch_matvec_is_one_batchs_curvature():
    """The public per-batch product (benchmarks/hvp_cost.py traces it with an open batch dimension)."""
    model, data = weighted_cnn_case()
    operator = HessianOperator(model, data, loss=sparse_ce(), batch_size=5)
    v = np.random.default_rng(9).standard_normal(operator.dim)
    last = tuple(a[10:] for a in data)  # the sample's third batch, 3 examples
    open_batch = tf.function(operator.batch_matvec, input_signature=[operator.sample.batch_spec,
                                                                     tf.TensorSpec([operator.dim], tf.float64)])
    assert_close(open_batch(operator.sample.batches[2], v).numpy(), weighted_explicit("hessian", model, last) @ v,
                 rtol=1e-8)
