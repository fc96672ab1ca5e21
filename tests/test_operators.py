"""Every curvature operator against independently formed matrices, in float64.

References: closed forms that use no autodiff (linear least squares, linear
softmax regression), and matrices built from explicit Jacobians, explicit
per-example gradients and nested-tape Hessians (tests/references.py).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_sharpest.operators import (
    EmpiricalFisherOperator,
    GGNOperator,
    HessianOperator,
    PreconditionedOperator,
    optimizer_preconditioner,
)

from references import (
    batchnorm_dropout_model,
    classification_data,
    explicit_fisher,
    explicit_ggn,
    explicit_hessian,
    linear_least_squares_hessian,
    linear_softmax_regression,
    regularization_hessian,
    softmax_ce_output_hessian,
    sparse_ce,
    tiny_cnn,
    tiny_mlp,
)

OPERATORS = {"hessian": HessianOperator, "ggn": GGNOperator, "empirical_fisher": EmpiricalFisherOperator}
RTOL = 1e-8


def dense(operator):
    return operator.matmat(np.eye(operator.dim)).numpy()


def assert_matrix_close(actual, expected, rtol=RTOL):
    error = np.linalg.norm(actual - expected) / np.linalg.norm(expected)
    assert error <= rtol, f"relative error {error:.3g} > {rtol}"


def linear_softmax_model(d=4, classes=3, l2=0.0, seed=0):
    keras.utils.set_random_seed(seed)
    regularizer = keras.regularizers.L2(l2) if l2 else None
    return keras.Sequential([keras.Input((d,), dtype="float64"),
                             keras.layers.Dense(classes, kernel_regularizer=regularizer, dtype="float64")])


def per_example_sparse_ce(y_true, y_pred):
    """A plain function: GGN takes the autodiff path for it, the Fisher reads per-example values."""
    return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)


# -- closed forms without autodiff -----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(OPERATORS))
@pytest.mark.parametrize("weighted", [False, True])
def test_linear_softmax_regression_against_its_closed_form(name, weighted):
    model = linear_softmax_model(l2=0.05)
    x, y = classification_data((4,), n=11, seed=3)
    w = np.random.default_rng(5).uniform(0.2, 2.0, size=11) if weighted else None
    data = (x, y, w) if weighted else (x, y)
    kernel, bias = (v.numpy() for v in model.trainable_variables)
    hessian, fisher = linear_softmax_regression(x, y, kernel, bias, sample_weight=w, l2=0.05)
    operator = OPERATORS[name](model, data, loss=sparse_ce(), batch_size=4)  # batches 4, 4, 3
    assert operator.num_batches == 3
    assert_matrix_close(dense(operator), fisher if name == "empirical_fisher" else hessian)


@pytest.mark.parametrize("name", ["hessian", "ggn"])
def test_linear_least_squares_against_its_closed_form(name):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((5,), dtype="float64"), keras.layers.Dense(1, dtype="float64")])
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((13, 5)), rng.standard_normal((13, 1))
    w = rng.uniform(0.5, 1.5, size=13)
    operator = OPERATORS[name](model, (x, y, w), loss=keras.losses.MeanSquaredError(dtype="float64"),
                               batch_size=5)
    assert_matrix_close(dense(operator), linear_least_squares_hessian(x, w))


def test_for_a_linear_model_the_ggn_is_the_hessian_also_on_the_autodiff_path():
    model = linear_softmax_model()
    x, y = classification_data((4,), n=9, seed=4)
    ggn = GGNOperator(model, (x, y), loss=per_example_sparse_ce, batch_size=4)
    assert not ggn.closed_form
    assert_matrix_close(dense(ggn), dense(HessianOperator(model, (x, y), loss=sparse_ce(), batch_size=4)))


# -- nonlinear models against explicit Jacobians and per-example gradients -------------------------------

def nonlinear_case(kind):
    if kind == "mlp":
        model, shape = tiny_mlp(), (4,)
    else:
        model, shape = tiny_cnn(l2=0.02), (6, 6, 1)
    x, y = classification_data(shape, n=13, seed=6)
    w = np.random.default_rng(7).uniform(0.3, 1.7, size=13)
    return model, x, y, w


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_ggn_against_explicit_jacobians(kind):
    model, x, y, w = nonlinear_case(kind)
    reference = explicit_ggn(model, x, y, softmax_ce_output_hessian, sample_weight=w)
    closed = GGNOperator(model, (x, y, w), loss=sparse_ce(), batch_size=5)
    autodiff = GGNOperator(model, (x, y, w), loss=per_example_sparse_ce, batch_size=5)
    assert closed.closed_form and not autodiff.closed_form
    assert_matrix_close(dense(closed), reference)
    assert_matrix_close(dense(autodiff), reference)
    if kind == "cnn":  # the reference includes the L2 terms' Hessian: check it is really there
        assert np.linalg.norm(regularization_hessian(model)) > 0.01 * np.linalg.norm(reference)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_empirical_fisher_against_explicit_per_example_gradients(kind):
    model, x, y, w = nonlinear_case(kind)
    reference = explicit_fisher(model, x, y, sparse_ce(), sample_weight=w)
    for loss in (sparse_ce(), per_example_sparse_ce):
        operator = EmpiricalFisherOperator(model, (x, y, w), loss=loss, batch_size=5)
        assert_matrix_close(dense(operator), reference)


def test_hessian_with_sample_weights_against_explicit_hessian():
    model, x, y, w = nonlinear_case("cnn")
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            logits = model(x)
            loss = tf.reduce_sum(w * keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
            loss = loss / len(x) + tf.add_n(model.losses)
        grads = inner.gradient(loss, model.trainable_variables)
        flat = tf.concat([tf.reshape(g, [-1]) for g in grads], axis=0)
    reference = np.concatenate([tf.reshape(j, [flat.shape[0], -1]).numpy()
                                for j in outer.jacobian(flat, model.trainable_variables)], axis=1)
    assert_matrix_close(dense(HessianOperator(model, (x, y, w), loss=sparse_ce(), batch_size=5)), reference)


def test_ggn_of_mean_squared_error_takes_the_autodiff_path(floatx):
    floatx("float64")
    model = tiny_mlp()
    model.compile(loss="mse")
    x, _ = classification_data((4,), n=10, seed=8)
    targets = np.random.default_rng(9).standard_normal((10, 3))
    operator = GGNOperator(model, (x, targets), batch_size=4)  # the compiled loss
    assert not operator.closed_form
    reference = explicit_ggn(model, x, targets, lambda z, _: 2.0 / 3.0 * np.eye(3))
    assert_matrix_close(dense(operator), reference)


def test_compiled_cross_entropy_uses_the_closed_form(floatx):
    floatx("float64")
    model, x, y, _ = nonlinear_case("cnn")
    model.compile(loss=sparse_ce())
    operator = GGNOperator(model, (x, y), batch_size=6)
    assert operator.closed_form
    assert_matrix_close(dense(operator), explicit_ggn(model, x, y, softmax_ce_output_hessian))


# -- blocks ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_a_block_is_the_diagonal_block_of_the_full_matrix(name):
    model, x, y, w = nonlinear_case("cnn")
    full = dense(OPERATORS[name](model, (x, y, w), loss=sparse_ce(), batch_size=5))
    layer = model.layers[-1]  # the Dense layer: kernel and bias, the last two variables
    block = OPERATORS[name](model, (x, y, w), loss=sparse_ce(), batch_size=5, variables=layer)
    start = full.shape[0] - block.dim
    assert block.dim == sum(int(np.prod(v.shape)) for v in layer.trainable_variables)
    assert_matrix_close(dense(block), full[start:, start:])
    # Variables given out of order come back in model order; a single variable is a block too.
    kernel, bias = layer.trainable_variables
    swapped = OPERATORS[name](model, (x, y), loss=sparse_ce(), variables=[bias, kernel])
    assert [v.path for v in swapped.variables] == [kernel.path, bias.path]
    only_bias = OPERATORS[name](model, (x, y, w), loss=sparse_ce(), batch_size=5, variables=bias)
    assert_matrix_close(dense(only_bias), full[-3:, -3:])


def test_a_variable_of_another_model_is_refused_by_name():
    model, x, y, _ = nonlinear_case("mlp")
    stranger = tiny_mlp(seed=3).trainable_variables[0]
    with pytest.raises(ValueError, match=f"'{stranger.path}' is not one of the model's trainable variables"):
        HessianOperator(model, (x, y), loss=sparse_ce(), variables=[model.layers[0], stranger])
    with pytest.raises(ValueError, match="empty list"):
        GGNOperator(model, (x, y), loss=sparse_ce(), variables=[])


# -- tracing, state --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_each_operator_traces_once_and_moves_to_new_data(name):
    model, x, y, _ = nonlinear_case("mlp")
    operator = OPERATORS[name](model, (x[:9], y[:9]), loss=sparse_ce(), batch_size=4)  # 4, 4, 1
    v = np.random.default_rng(0).standard_normal(operator.dim)
    for _ in range(3):
        operator.matvec(v)
    operator.set_data((x[4:], y[4:]))  # 4, 4, 1 again: no new trace
    moved = operator.matvec(v).numpy()
    assert operator.traced_functions["matvec"].experimental_get_tracing_count() == 1 and operator.num_matvecs == 4
    fresh = OPERATORS[name](model, (x[4:], y[4:]), loss=sparse_ce(), batch_size=9)
    np.testing.assert_allclose(moved, fresh.matvec(v).numpy(), rtol=1e-10)


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_training_mode_products_leave_every_model_variable_as_it_was(name):
    model = batchnorm_dropout_model()
    x, y = classification_data((5,), n=12, seed=1)
    before = [v.numpy().copy() for v in model.variables]  # moving statistics and the dropout seed too
    operator = OPERATORS[name](model, (x, y), loss=sparse_ce(), batch_size=12, training=True)
    v = np.random.default_rng(1).standard_normal(operator.dim)
    first = operator.matvec(v).numpy()
    for _ in range(3):
        second = operator.matvec(v).numpy()
    for old, variable in zip(before, model.variables):
        np.testing.assert_array_equal(variable.numpy(), old, err_msg=variable.path)
    # One fixed dropout mask: the operator is one linear map, not a new random one per product.
    np.testing.assert_array_equal(first, second)


def test_training_mode_hessian_uses_batch_statistics():
    model = keras.Sequential([keras.Input((5,), dtype="float64"), keras.layers.Dense(6, dtype="float64"),
                              keras.layers.BatchNormalization(dtype="float64"),
                              keras.layers.Activation("tanh", dtype="float64"), keras.layers.Dense(3, dtype="float64")])
    x, y = classification_data((5,), n=12, seed=1)
    operator = HessianOperator(model, (x, y), loss=sparse_ce(), batch_size=12, training=True)
    measured = dense(operator)
    reference = explicit_hessian(model, x, y, sparse_ce(), training=True)  # one batch: the same statistics
    assert_matrix_close(measured, reference)
    assert np.linalg.norm(reference - explicit_hessian(model, x, y, sparse_ce())) > 1e-3 * np.linalg.norm(reference)


# -- preconditioned curvature ------------------------------------------------------------------------

ADAPTIVE = {
    "Adam": lambda: keras.optimizers.Adam(0.01, beta_1=0.0),
    "Adam_amsgrad": lambda: keras.optimizers.Adam(0.01, beta_1=0.0, amsgrad=True),
    "AdamW": lambda: keras.optimizers.AdamW(0.01, beta_1=0.0, weight_decay=0.0),
    "Nadam": lambda: keras.optimizers.Nadam(0.01, beta_1=0.0),
    "Adamax": lambda: keras.optimizers.Adamax(0.01, beta_1=0.0),
    "RMSprop": lambda: keras.optimizers.RMSprop(0.01),
    "RMSprop_centered": lambda: keras.optimizers.RMSprop(0.01, centered=True),
    "Adagrad": lambda: keras.optimizers.Adagrad(0.01),
}


def adaptive_steps(optimizer, model, x, y, steps):
    """Takes ``steps`` optimizer steps on the loss; returns the last step's gradient and update (flat)."""
    variables = model.trainable_variables
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = sparse_ce()(y, model(x))
        grads = tape.gradient(loss, variables)
        before = np.concatenate([v.numpy().ravel() for v in variables])
        optimizer.apply_gradients(zip(grads, variables))
    after = np.concatenate([v.numpy().ravel() for v in variables])
    return np.concatenate([g.numpy().ravel() for g in grads]), after - before


@pytest.mark.parametrize("name", sorted(ADAPTIVE))
def test_optimizer_preconditioner_is_what_the_optimizer_divides_its_step_by(name):
    model = tiny_mlp()
    x, y = classification_data((4,), n=16, seed=2)
    optimizer = ADAPTIVE[name]()
    gradient, update = adaptive_steps(optimizer, model, x, y, steps=4)
    diagonal = optimizer_preconditioner(optimizer, model.trainable_variables)
    # With no first-moment averaging (beta_1 = 0), each rule's step is -lr * g / D, D read after the step.
    learning_rate = float(optimizer.learning_rate.numpy())  # 0.01 as the float32 Keras stores it
    np.testing.assert_allclose(update, -learning_rate * gradient / diagonal, rtol=1e-9, atol=1e-14)


def test_preconditioned_hessian_against_explicit_matrix_with_adam_state():
    model = tiny_mlp()
    x, y = classification_data((4,), n=16, seed=2)
    optimizer = keras.optimizers.Adam(0.01)
    adaptive_steps(optimizer, model, x, y, steps=5)
    hessian = HessianOperator(model, (x, y), loss=sparse_ce(), batch_size=6)
    diagonal = optimizer_preconditioner(optimizer, hessian.variables)
    beta_2 = float(np.float32(0.999))  # Keras's TF backend casts its Python float through float32
    correction = 1 - beta_2 ** 5
    v_hat = np.concatenate([s.numpy().ravel() for s in optimizer._velocities]) / correction
    np.testing.assert_allclose(diagonal, np.sqrt(v_hat) + 1e-7 / np.sqrt(correction), rtol=1e-12)
    preconditioned = PreconditionedOperator(hessian, diagonal)
    explicit = explicit_hessian(model, x, y, sparse_ce())
    scale = 1.0 / np.sqrt(diagonal)
    reference = scale[:, None] * explicit * scale[None, :]
    assert_matrix_close(dense(preconditioned), reference)
    assert preconditioned.layout is hessian.layout and preconditioned.model is model
    # Its eigenvalues are those of D^-1 H, the matrix the optimizer's step sees.
    np.testing.assert_allclose(np.linalg.eigvalsh(reference)[-3:],
                               np.sort(np.linalg.eigvals(explicit / diagonal[:, None]).real)[-3:], rtol=1e-8)


def test_preconditioner_bad_input():
    model = tiny_mlp()
    x, y = classification_data((4,), n=8)
    hessian = HessianOperator(model, (x, y), loss=sparse_ce())
    diagonal = np.ones(hessian.dim)
    for bad, value in ((0, 0.0), (3, -1.0), (7, np.nan), (9, np.inf)):
        broken = diagonal.copy()
        broken[bad] = value
        with pytest.raises(ValueError, match=f"positive and finite; entry {bad} is"):
            PreconditionedOperator(hessian, broken)
    with pytest.raises(ValueError, match=f"length {hessian.dim}"):
        PreconditionedOperator(hessian, diagonal[:-1])
    with pytest.raises(ValueError, match="no second-moment slots.*Adam"):
        optimizer_preconditioner(keras.optimizers.SGD(0.1), model.trainable_variables)
    with pytest.raises(ValueError, match="not built yet"):
        optimizer_preconditioner(keras.optimizers.Adam(), model.trainable_variables)
    optimizer = keras.optimizers.Adam(0.01)
    adaptive_steps(optimizer, model, x, y, steps=1)
    with pytest.raises(ValueError, match="does not update"):
        optimizer_preconditioner(optimizer, tiny_mlp(seed=4).trainable_variables)


# -- samples ------------------------------------------------------------------------------------------

def endless_dataset():
    def forever():
        rng = np.random.default_rng(0)
        while True:
            yield rng.standard_normal((2, 4)), rng.integers(0, 3, 2)

    return tf.data.Dataset.from_generator(forever, output_signature=(
        tf.TensorSpec([None, 4], tf.float64), tf.TensorSpec([None], tf.int64)))


def test_a_dataset_that_never_ends_is_refused_within_the_bound(monkeypatch):
    from tf_sharpest.hessian import top_eigenpairs
    from tf_sharpest.operators import Sample
    from tf_sharpest.operators import sample as sample_module

    with pytest.raises(ValueError, match="has not ended after 25 batches.*dataset.take"):
        Sample.from_data(endless_dataset(), max_batches=25)
    monkeypatch.setattr(sample_module, "MAX_BATCHES", 40)  # the documented, configurable default
    with pytest.raises(ValueError, match="has not ended after 40 batches"):
        top_eigenpairs(tiny_mlp(), endless_dataset(), k=1, loss=sparse_ce())
    finite = Sample.from_data(endless_dataset().take(30), max_batches=30)  # a known end within the bound
    assert finite.num_examples == 60 and finite.equal_batches and finite.weights[0] == pytest.approx(1 / 30)


def test_sample_is_immutable_and_set_data_swaps_it_whole():
    model, x, y, _ = nonlinear_case("mlp")
    operator = HessianOperator(model, (x, y), loss=sparse_ce(), batch_size=4)
    first = operator.sample
    with pytest.raises(AttributeError):
        first.sizes = (1,)
    operator.matvec(np.ones(operator.dim))
    assert operator.sample is first  # a product sets nothing
    operator.set_data((x[:6], y[:6]))
    assert operator.sample is not first and operator.sample.sizes == (4, 2) and first.sizes == (4, 4, 4, 1)
    with pytest.raises(ValueError, match="do not match"):
        operator.set_data((x[:6, :3], y[:6]))
    assert operator.sample.sizes == (4, 2)  # kept after a refused move
