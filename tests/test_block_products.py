"""Block products ``matmat`` of every curvature operator, column by column against explicit matrices (float64).

Each operator shares one forward pass and one backward pass per batch among a
block's columns; here every column of a block product is checked against the
explicitly formed matrix times that column, on one device, under a
MirroredStrategy over two logical CPUs, and in training mode.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_sharpest.linalg import lobpcg
from tf_sharpest.operators import CurvatureOperator, EmpiricalFisherOperator, GGNOperator, HessianOperator

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

OPERATORS = {"hessian": HessianOperator, "ggn": GGNOperator, "empirical_fisher": EmpiricalFisherOperator}
RTOL = 1e-8


def l2_mlp(seed=0):
    keras.utils.set_random_seed(seed)
    l2 = keras.regularizers.L2(0.02)
    return keras.Sequential([
        keras.Input((4,), dtype="float64"),
        keras.layers.Dense(6, activation="tanh", kernel_regularizer=l2, dtype="float64"),
        keras.layers.Dense(3, kernel_regularizer=l2, dtype="float64"),
    ])


def weighted_case(kind):
    """A float64 model with L2 on its kernels, 13 weighted examples in batches of 5, 5 and 3."""
    model, shape = (l2_mlp(), (4,)) if kind == "mlp" else (tiny_cnn(l2=0.02), (6, 6, 1))
    x, y = classification_data(shape, n=13, seed=6)
    w = np.random.default_rng(7).uniform(0.3, 1.7, size=13)
    return model, (x, y, w)


def weighted_hessian(model, x, y, w):
    """``(1/N) sum_i w_i d^2 l_i + d^2 R`` by a nested-tape Jacobian over all examples at once."""
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            losses = keras.losses.sparse_categorical_crossentropy(y, model(x), from_logits=True)
            loss = tf.reduce_sum(w * losses) / len(x) + tf.add_n(model.losses)
        flat = tf.concat([tf.reshape(g, [-1]) for g in inner.gradient(loss, model.trainable_variables)], axis=0)
    return np.concatenate([tf.reshape(j, [flat.shape[0], -1]).numpy()
                           for j in outer.jacobian(flat, model.trainable_variables)], axis=1)


def explicit_matrix(name, model, data):
    x, y, w = data
    if name == "hessian":
        return weighted_hessian(model, x, y, w)
    if name == "ggn":
        return explicit_ggn(model, x, y, softmax_ce_output_hessian, sample_weight=w)
    return explicit_fisher(model, x, y, sparse_ce(), sample_weight=w)


def columns_by_matvec(operator, block):
    return np.stack([operator.matvec(block[:, j]).numpy() for j in range(block.shape[1])], axis=1)


def assert_columns_close(actual, expected, rtol=RTOL):
    """Each column's relative error (not only the block's): a wrong column cannot hide behind the others."""
    assert actual.shape == expected.shape
    errors = np.linalg.norm(actual - expected, axis=0) / np.linalg.norm(expected, axis=0)
    assert np.all(errors <= rtol), f"column errors {errors}"


def traces(operator, name):
    return operator.traced_functions[name].experimental_get_tracing_count()


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_every_block_product_equals_the_explicit_matrix_column_by_column(name, kind):
    model, data = weighted_case(kind)
    operator = OPERATORS[name](model, data, loss=sparse_ce(), batch_size=5)
    assert operator.has_block_product and operator.sample.sizes == (5, 5, 3)
    assert model.losses  # the L2 terms are part of the loss, and of every operator
    block = np.random.default_rng(0).standard_normal((operator.dim, 4))
    products = operator.matmat(block).numpy()
    assert_columns_close(products, explicit_matrix(name, model, data) @ block)
    assert_columns_close(products, columns_by_matvec(operator, block))
    assert traces(operator, "matmat") == 1 and operator.num_matvecs == 8


def per_example_sparse_ce(y_true, y_pred):
    """A plain function: the GGN's block product takes the autodiff output-space path for it."""
    return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)


def test_ggn_block_product_on_the_autodiff_path():
    model, data = weighted_case("mlp")
    operator = GGNOperator(model, data, loss=per_example_sparse_ce, batch_size=5)
    assert not operator.closed_form
    block = np.random.default_rng(8).standard_normal((operator.dim, 3))
    assert_columns_close(operator.matmat(block).numpy(), explicit_matrix("ggn", model, data) @ block)


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_a_block_of_variables_has_the_block_product_too(name):
    model, data = weighted_case("cnn")
    operator = OPERATORS[name](model, data, loss=sparse_ce(), batch_size=5, variables=model.layers[0])
    block = np.random.default_rng(1).standard_normal((operator.dim, 3))
    full = explicit_matrix(name, model, data)[:operator.dim, :operator.dim]  # the conv layer's variables come first
    assert_columns_close(operator.matmat(block).numpy(), full @ block)


def test_an_operator_without_a_block_product_keeps_the_column_loop():
    class ColumnsOnly(CurvatureOperator):  # a user's operator that defines only the per-batch product
        _batch_product = HessianOperator._batch_product

    model, data = weighted_case("mlp")
    operator = ColumnsOnly(model, data, loss=sparse_ce(), batch_size=5)
    assert not operator.has_block_product
    block = np.random.default_rng(2).standard_normal((operator.dim, 3))
    assert_columns_close(operator.matmat(block).numpy(), explicit_matrix("hessian", model, data) @ block)
    assert "matmat" not in operator.traced_functions and traces(operator, "matvec") == 1


def test_one_trace_serves_every_block_width_and_counts_k_products():
    model, data = weighted_case("cnn")
    operator = HessianOperator(model, data, loss=sparse_ce(), batch_size=5)
    rng = np.random.default_rng(3)
    for k in (2, 5, 10, 5, 2):
        operator.matmat(rng.standard_normal((operator.dim, k)))
    assert traces(operator, "matmat") == 1 and operator.num_matvecs == 24
    x, y, w = data
    operator.set_data((x[2:], y[2:], w[2:]))  # batches of 5, 5, 1: the same signature, no new trace
    operator.matmat(rng.standard_normal((operator.dim, 3)))
    assert traces(operator, "matmat") == 1 and operator.num_matvecs == 27
    single = rng.standard_normal((operator.dim, 1))  # one column is a matvec (its own graph, traced once)
    for _ in range(2):
        np.testing.assert_array_equal(operator.matmat(single).numpy()[:, 0], operator.matvec(single[:, 0]).numpy())
    assert traces(operator, "matmat") == 1 and traces(operator, "matvec") == 1 and operator.num_matvecs == 31


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_training_mode_block_products_leave_the_model_as_it_was_and_use_one_dropout_mask(name):
    model = batchnorm_dropout_model()
    x, y = classification_data((5,), n=12, seed=1)
    before = [v.numpy().copy() for v in model.variables]  # moving statistics and the dropout seed too
    operator = OPERATORS[name](model, (x, y), loss=sparse_ce(), batch_size=7, training=True)  # batches 7, 5
    block = np.random.default_rng(4).standard_normal((operator.dim, 3))
    products = operator.matmat(block).numpy()
    np.testing.assert_array_equal(products, operator.matmat(block).numpy())
    assert_columns_close(products, columns_by_matvec(operator, block))
    for old, variable in zip(before, model.variables):
        np.testing.assert_array_equal(variable.numpy(), old, err_msg=variable.path)


def test_training_mode_hessian_block_product_against_the_explicit_batch_statistics_hessian():
    model = batchnorm_dropout_model()
    model.layers[3].rate = 0.0  # no dropout: the reference is deterministic
    x, y = classification_data((5,), n=12, seed=1)
    operator = HessianOperator(model, (x, y), loss=sparse_ce(), batch_size=12, training=True)
    block = np.random.default_rng(5).standard_normal((operator.dim, 3))
    reference = explicit_hessian(model, x, y, sparse_ce(), training=True)  # one batch: the same statistics
    assert_columns_close(operator.matmat(block).numpy(), reference @ block)


def test_lobpcg_on_the_block_product_matches_the_column_loop():
    model, data = weighted_case("cnn")
    operator = HessianOperator(model, data, loss=sparse_ce(), batch_size=5)
    blocked = lobpcg(operator, 3, tol=1e-8, seed=0)
    operator.has_block_product = False  # this instance only: the base class's column loop
    looped = lobpcg(operator, 3, tol=1e-8, seed=0)
    np.testing.assert_allclose(blocked.eigenvalues, looped.eigenvalues, rtol=1e-8)
    assert blocked.num_matvecs == looped.num_matvecs


def float64_twins(strategy):
    """The float64 L2 CNN with the same weights, once on one device and once under ``strategy``."""
    single = tiny_cnn(l2=0.02)
    with strategy.scope():
        mirrored = tiny_cnn(l2=0.02)
    mirrored.set_weights(single.get_weights())
    return single, mirrored


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_block_products_under_a_mirrored_strategy_equal_the_explicit_matrix(mirrored_strategy, name):
    single, mirrored = float64_twins(mirrored_strategy)
    _, data = weighted_case("cnn")  # 13 weighted examples in batches of 5: replicas take 7 and 6
    distributed = OPERATORS[name](mirrored, data, loss=sparse_ce(), batch_size=5)
    assert distributed.num_replicas == 2 and distributed.replica_plan.examples_per_replica == [7, 6]
    reference = explicit_matrix(name, single, data)
    rng = np.random.default_rng(6)
    for k in (3, 5):
        block = rng.standard_normal((distributed.dim, k))
        assert_columns_close(distributed.matmat(block).numpy(), reference @ block)
    assert distributed.num_matvecs == 8
