"""Block products ``matmat``: the Hessian's shared-forward block product against its own matvecs."""

import keras
import numpy as np
import pytest

from tf_sharpest.linalg import lobpcg
from tf_sharpest.operators import GGNOperator, HessianOperator

from references import batchnorm_dropout_model, classification_data, sparse_ce, tiny_cnn, twin_models

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


def columns_by_matvec(operator, block):
    return np.stack([operator.matvec(block[:, j]).numpy() for j in range(block.shape[1])], axis=1)


def relative_error(actual, expected):
    return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_hessian_block_product_equals_its_matvecs_column_by_column(kind):
    model, data = weighted_case(kind)
    operator = HessianOperator(model, data, loss=sparse_ce(), batch_size=5)
    assert operator.has_block_product and operator.sample.sizes == (5, 5, 3)
    assert model.losses  # the L2 terms are part of the loss
    block = np.random.default_rng(0).standard_normal((operator.dim, 4))
    products = operator.matmat(block).numpy()
    assert products.shape == (operator.dim, 4)
    assert relative_error(products, columns_by_matvec(operator, block)) <= RTOL


def test_a_block_of_variables_has_the_block_product_too():
    model, data = weighted_case("cnn")
    operator = HessianOperator(model, data, loss=sparse_ce(), batch_size=5, variables=model.layers[0])
    block = np.random.default_rng(1).standard_normal((operator.dim, 3))
    assert relative_error(operator.matmat(block).numpy(), columns_by_matvec(operator, block)) <= RTOL


def test_operators_without_a_block_product_keep_the_column_loop():
    model, data = weighted_case("mlp")
    operator = GGNOperator(model, data, loss=sparse_ce(), batch_size=5)
    assert not operator.has_block_product
    block = np.random.default_rng(2).standard_normal((operator.dim, 3))
    assert relative_error(operator.matmat(block).numpy(), columns_by_matvec(operator, block)) <= RTOL


def test_one_trace_serves_every_block_width_and_counts_k_products():
    model, data = weighted_case("cnn")
    operator = HessianOperator(model, data, loss=sparse_ce(), batch_size=5)
    rng = np.random.default_rng(3)
    for k in (2, 5, 10, 5, 2):
        operator.matmat(rng.standard_normal((operator.dim, k)))
    assert operator.num_traces == 1 and operator.num_matvecs == 24
    x, y, w = data
    operator.set_data((x[2:], y[2:], w[2:]))  # batches of 5, 5, 1: the same signature, no new trace
    operator.matmat(rng.standard_normal((operator.dim, 3)))
    assert operator.num_traces == 1 and operator.num_matvecs == 27
    single = rng.standard_normal((operator.dim, 1))  # one column is a matvec (its own graph, traced once)
    for _ in range(2):
        np.testing.assert_array_equal(operator.matmat(single).numpy()[:, 0], operator.matvec(single[:, 0]).numpy())
    assert operator.num_traces == 2 and operator.num_matvecs == 31


def test_training_mode_block_product_leaves_the_model_as_it_was_and_uses_one_dropout_mask():
    model = batchnorm_dropout_model()
    x, y = classification_data((5,), n=12, seed=1)
    before = [v.numpy().copy() for v in model.variables]  # moving statistics and the dropout seed too
    operator = HessianOperator(model, (x, y), loss=sparse_ce(), batch_size=12, training=True)
    block = np.random.default_rng(4).standard_normal((operator.dim, 3))
    products = operator.matmat(block).numpy()
    np.testing.assert_array_equal(products, operator.matmat(block).numpy())
    assert relative_error(products, columns_by_matvec(operator, block)) <= RTOL
    for old, variable in zip(before, model.variables):
        np.testing.assert_array_equal(variable.numpy(), old, err_msg=variable.path)


def test_lobpcg_on_the_block_product_matches_the_column_loop():
    model, data = weighted_case("cnn")
    operator = HessianOperator(model, data, loss=sparse_ce(), batch_size=5)
    blocked = lobpcg(operator, 3, tol=1e-8, seed=0)
    operator.has_block_product = False  # this instance only: the base class's column loop
    looped = lobpcg(operator, 3, tol=1e-8, seed=0)
    np.testing.assert_allclose(blocked.eigenvalues, looped.eigenvalues, rtol=1e-8)
    assert blocked.num_matvecs == looped.num_matvecs


def test_block_product_under_a_mirrored_strategy_equals_one_device(mirrored_strategy):
    single, mirrored = twin_models(mirrored_strategy)
    x, y = classification_data((6, 6, 1), n=23, dtype="float32", seed=2)  # 12 + 11 examples, batches of 5
    w = np.random.default_rng(5).uniform(0.3, 1.7, size=23).astype("float32")
    reference = HessianOperator(single, (x, y, w), batch_size=5)
    distributed = HessianOperator(mirrored, (x, y, w), batch_size=5)
    assert distributed.num_replicas == 2
    rng = np.random.default_rng(6)
    for k in (3, 5, 3):
        block = rng.standard_normal((reference.dim, k)).astype("float32")
        expected = reference.matmat(block).numpy()
        assert relative_error(distributed.matmat(block).numpy(), expected) <= 1e-5
    assert distributed.num_matvecs == 11
