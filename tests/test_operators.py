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
    LinearCombination,
    MatrixOperator,
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
    from tf_sharpest.operators import _sample as sample_module

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


# -- algebra and the ways out to SciPy and TensorFlow ----------------------------------------------------

def hessian_and_ggn():
    """The Hessian and GGN of a float64 MLP on 13 examples, with their explicitly formed matrices."""
    model, x, y, _ = nonlinear_case("mlp")
    hessian = HessianOperator(model, (x, y), loss=sparse_ce(), batch_size=5)
    ggn = GGNOperator(model, (x, y), loss=sparse_ce(), batch_size=5)
    reference_ggn = explicit_ggn(model, x, y, softmax_ce_output_hessian)
    return hessian, ggn, explicit_hessian(model, x, y, sparse_ce()), reference_ggn


def test_sums_differences_and_multiples_of_operators_against_explicit_matrices():
    hessian, ggn, h, g = hessian_and_ggn()
    rng = np.random.default_rng(11)
    v, block = rng.standard_normal(hessian.dim), rng.standard_normal((hessian.dim, 3))
    identity = MatrixOperator(np.eye(hessian.dim))
    cases = {
        "a + b": (hessian + ggn, h + g),
        "a - b": (hessian - ggn, h - g),
        "c * a": (2.5 * hessian, 2.5 * h),
        "a * c": (ggn * -0.5, -0.5 * g),
        "-a": (-hessian, -h),
        "numpy scalar": (np.float64(3.0) * ggn, 3.0 * g),
        "nested": ((hessian - ggn) + 0.1 * identity - 2 * (hessian + identity), -h - g - 1.9 * np.eye(hessian.dim)),
    }
    for name, (operator, matrix) in cases.items():
        assert isinstance(operator, LinearCombination) and operator.dim == hessian.dim, name
        assert_matrix_close(operator.matvec(v).numpy()[:, None], (matrix @ v)[:, None])
        assert_matrix_close(operator.matmat(block).numpy(), matrix @ block)
    assert len(cases["nested"][0].terms) == 5  # flattened: H, G, I, H, I with their coefficients
    # Lazy: forming a combination costs no product; each product runs each term's own.
    before = hessian.num_matvecs
    combination = hessian + ggn
    assert hessian.num_matvecs == before
    combination.matmat(block)
    assert combination.num_matvecs == 3 and hessian.num_matvecs == before + 3


def test_operator_algebra_refuses_mismatched_operators_clearly():
    hessian, _, _, _ = hessian_and_ggn()
    with pytest.raises(ValueError, match=f"different sizes: HessianOperator has dim={hessian.dim}, MatrixOperator "
                                         f"has dim={hessian.dim + 1}"):
        hessian + MatrixOperator(np.eye(hessian.dim + 1))
    with pytest.raises(ValueError, match="different dtypes: HessianOperator is float64, MatrixOperator is float32"):
        hessian - MatrixOperator(np.eye(hessian.dim, dtype=np.float32))
    with pytest.raises(TypeError, match="real number only"):
        hessian * hessian
    with pytest.raises(TypeError, match="real number only"):
        "2" * hessian
    with pytest.raises(ValueError, match="coefficient must be finite"):
        np.inf * hessian
    with pytest.raises(TypeError):
        hessian + 1.0  # adding a number is not a linear operator: Python's own TypeError


def test_to_scipy_works_with_eigsh_lobpcg_and_cg():
    import scipy.sparse.linalg

    hessian, ggn, h, g = hessian_and_ggn()
    operator = hessian.to_scipy()
    assert operator.shape == (hessian.dim, hessian.dim) and operator.dtype == np.float64
    values = scipy.sparse.linalg.eigsh(operator, k=3, which="LA", tol=1e-10, return_eigenvectors=False)
    np.testing.assert_allclose(np.sort(values), np.linalg.eigh(h)[0][-3:], rtol=1e-8)
    start = np.random.default_rng(12).standard_normal((hessian.dim, 2))
    top, _ = scipy.sparse.linalg.lobpcg(operator, start, tol=1e-9, maxiter=500, largest=True)
    np.testing.assert_allclose(np.sort(top), np.linalg.eigh(h)[0][-2:], rtol=1e-6)
    damped = ggn + 0.1 * MatrixOperator(np.eye(ggn.dim))  # positive definite
    rhs = np.random.default_rng(13).standard_normal(ggn.dim)
    solution, info = scipy.sparse.linalg.cg(damped.to_scipy(), rhs, rtol=1e-12, maxiter=1000)
    assert info == 0
    np.testing.assert_allclose(solution, np.linalg.solve(g + 0.1 * np.eye(ggn.dim), rhs), rtol=1e-7)


def test_to_tf_is_a_self_adjoint_tf_linear_operator():
    hessian, ggn, h, g = hessian_and_ggn()
    operator = hessian.to_tf()
    assert isinstance(operator, tf.linalg.LinearOperator) and operator.is_self_adjoint and operator.is_square
    assert operator.shape == (hessian.dim, hessian.dim) and operator.dtype == tf.float64
    block = np.random.default_rng(14).standard_normal((hessian.dim, 3))
    assert_matrix_close(operator.matmul(block).numpy(), h @ block)
    assert_matrix_close(operator.matmul(block.T, adjoint_arg=True).numpy(), h @ block)
    assert_matrix_close(operator.matvec(block[:, 0]).numpy()[:, None], (h @ block[:, :1]))
    assert_matrix_close(operator.to_dense().numpy(), h)
    assert operator.is_positive_definite is None  # unknown: a Hessian may be indefinite
    damped = (ggn + 0.1 * MatrixOperator(np.eye(ggn.dim))).to_tf(is_positive_definite=True)
    rhs = tf.constant(block[:, 1])
    result = tf.linalg.experimental.conjugate_gradient(damped, rhs, tol=1e-12, max_iter=500)
    np.testing.assert_allclose(result.x.numpy(), np.linalg.solve(g + 0.1 * np.eye(ggn.dim), block[:, 1]), rtol=1e-7)


# -- bad input refused before any graph runs (issue 22) -----------------------------------------------------

def test_inf_in_any_input_is_refused_naming_the_input_batch_and_example():
    model = tiny_mlp()
    x, y = classification_data((4,), n=12, seed=3)
    for value, kind in ((np.inf, "Inf"), (-np.inf, "Inf"), (np.nan, "NaN")):
        bad = x.copy()
        bad[6, 2] = value  # batch 1 (batches of 4), its example 2
        with pytest.raises(ValueError, match=f"not finite: x in batch 1 \\(0-based\\) holds {kind} \\(first at "
                                             "example 2 of the batch\\)"):
            HessianOperator(model, (bad, y), loss=sparse_ce(), batch_size=4)
    weights = np.ones(12)
    weights[11] = np.inf
    with pytest.raises(ValueError, match="sample_weight in batch 2 .* holds Inf"):
        GGNOperator(model, (x, y, weights), loss=sparse_ce(), batch_size=4)


def test_inf_in_one_input_of_a_multi_input_model_is_named():
    keras.utils.set_random_seed(0)
    first, second = keras.Input((2,), name="first", dtype="float64"), keras.Input((2,), name="second", dtype="float64")
    outputs = keras.layers.Dense(3, dtype="float64")(keras.layers.Concatenate(dtype="float64")([first, second]))
    model = keras.Model({"first": first, "second": second}, outputs)
    x = {"first": np.ones((5, 2)), "second": np.ones((5, 2))}
    x["second"][4, 0] = np.inf
    with pytest.raises(ValueError, match="x\\['second'\\] in batch 0 .* holds Inf \\(first at example 4"):
        HessianOperator(model, (x, np.zeros(5, "int64")), loss=sparse_ce())


def endless_empty_batches(limit=3000):
    """Empty batches, ``limit`` of them: endless for any guard that skips them (a bound keeps the test finite)."""
    def empties():
        for _ in range(limit):
            yield np.zeros((0, 4)), np.zeros((0,), "int64")

    return tf.data.Dataset.from_generator(empties, output_signature=(
        tf.TensorSpec([None, 4], tf.float64), tf.TensorSpec([None], tf.int64)))


def test_a_stream_of_empty_batches_is_refused_within_the_bound(monkeypatch):
    from tf_sharpest.operators import Sample
    from tf_sharpest.operators import _sample as sample_module

    with pytest.raises(ValueError, match="has not ended after 25 batches"):
        Sample.from_data(endless_empty_batches(), max_batches=25)
    monkeypatch.setattr(sample_module, "MAX_BATCHES", 30)
    with pytest.raises(ValueError, match="has not ended after 30 batches"):
        HessianOperator(tiny_mlp(), endless_empty_batches(), loss=sparse_ce())


def one_hot(y, classes=3):
    return np.eye(classes)[y]


def test_out_of_range_labels_are_refused_naming_the_labels_and_the_loss():
    model = tiny_mlp()  # 3 outputs
    x, y = classification_data((4,), n=12, seed=4)
    bad = y.copy()
    bad[[5, 9]] = [12, 3]
    for name in sorted(OPERATORS):
        with pytest.raises(ValueError, match="Labels out of range for loss= SparseCategoricalCrossentropy: the model "
                                             "has 3 outputs \\(class ids 0..2\\), but y holds 3, 12 \\(2 examples, the "
                                             "first in batch 1\\). Pass labels in 0..2"):
            OPERATORS[name](model, (x, bad), loss=sparse_ce(), batch_size=4)
    bad[[5, 9]] = [-1, 0]
    with pytest.raises(ValueError, match="y holds -1"):
        HessianOperator(model, (x, bad), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ignoring = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1, dtype="float64")
    assert HessianOperator(model, (x, bad), loss=ignoring).num_examples == 12  # the ignored class is a valid label


def test_one_hot_and_class_id_mismatches_say_what_to_pass(floatx):
    model = tiny_mlp()
    x, y = classification_data((4,), n=12, seed=4)
    with pytest.raises(ValueError, match="SparseCategoricalCrossentropy takes integer class ids of shape \\[batch\\] "
                                         "or \\[batch, 1\\], but y has shape \\(4, 3\\) \\(one-hot, it looks like\\): "
                                         "pass y.argmax"):
        GGNOperator(model, (x, one_hot(y)), loss=sparse_ce(), batch_size=4)
    categorical = keras.losses.CategoricalCrossentropy(from_logits=True, dtype="float64")
    with pytest.raises(ValueError, match="loss= CategoricalCrossentropy takes one-hot labels of shape \\[batch, 3\\], "
                                         "but y has shape \\(4,\\) \\(class ids, it looks like\\): pass "
                                         "keras.utils.to_categorical\\(y, 3\\)"):
        EmpiricalFisherOperator(model, (x, y), loss=categorical, batch_size=4)
    np.testing.assert_allclose(HessianOperator(model, (x, one_hot(y)), loss=categorical).loss,
                               HessianOperator(model, (x, y), loss=sparse_ce()).loss, rtol=1e-12)
    floatx("float64")
    model.compile(loss="sparse_categorical_crossentropy")  # by name: the compiled loss is checked too
    with pytest.raises(ValueError, match="the compiled loss .*sparse_categorical_crossentropy.*y holds 7"):
        HessianOperator(model, (x, np.where(y == 0, 7, y)))


def test_optimizer_preconditioner_refuses_every_optimizer_before_its_first_step():
    model = tiny_mlp()
    for make in ADAPTIVE.values():
        optimizer = make()
        optimizer.build(model.trainable_variables)  # built, slots at their initial values, no step taken
        with pytest.raises(ValueError, match="has taken no step yet \\(iterations = 0\\).*Train at least one step"):
            optimizer_preconditioner(optimizer, model.trainable_variables)


def test_optimizer_preconditioner_reads_the_adam_inside_a_loss_scale_optimizer():
    model = tiny_mlp()
    x, y = classification_data((4,), n=16, seed=2)
    adam = keras.optimizers.Adam(0.01)
    adaptive_steps(adam, model, x, y, steps=3)
    wrapped = keras.optimizers.LossScaleOptimizer(adam)  # what mixed precision's compile() makes of it
    np.testing.assert_array_equal(optimizer_preconditioner(wrapped, model.trainable_variables),
                                  optimizer_preconditioner(adam, model.trainable_variables))


def test_a_preconditioner_entry_whose_inverse_overflows_the_dtype_is_refused():
    model = tiny_mlp("float32")
    x, y = classification_data((4,), n=8, dtype="float32")
    hessian = HessianOperator(model, (x, y), loss=sparse_ce("float32"))
    diagonal = np.ones(hessian.dim)
    diagonal[4] = 1e-300
    with pytest.raises(ValueError, match="entry 4 is 1e-300 .*inverse overflows float32.*Add an epsilon"):
        PreconditionedOperator(hessian, diagonal)
    diagonal[4] = 1e-30  # small, but its inverse (1e30) is a float32: accepted, and the products stay finite
    products = PreconditionedOperator(hessian, diagonal).matvec(np.ones(hessian.dim)).numpy()
    assert np.all(np.isfinite(products)) and abs(products[4]) > 1e20
