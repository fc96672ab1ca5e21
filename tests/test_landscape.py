"""loss_landscape and random_directions against explicit loops that move the weights of a copy and evaluate."""

import keras
import numpy as np
import pytest

from tf_sharpest.analysis import LandscapeEvaluator, loss_landscape, random_directions


def conv_bn_model(seed=0, l2=0.01, dtype="float32", compile=True):
    """Conv -> BatchNorm -> Dense with an L2 regularizer: every kind of variable a landscape must handle."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((5, 5, 1), dtype=dtype),
        keras.layers.Conv2D(2, 3, dtype=dtype),
        keras.layers.BatchNormalization(dtype=dtype),
        keras.layers.Activation("relu", dtype=dtype),
        keras.layers.Flatten(dtype=dtype),
        keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L2(l2), dtype=dtype),
    ])
    # Moving statistics away from their initial values, so a forgotten update would show.
    bn = model.layers[1]
    bn.moving_mean.assign(np.array([0.3, -0.2]))
    bn.moving_variance.assign(np.array([1.5, 0.7]))
    if compile:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=dtype)
        model.compile(optimizer="sgd", loss=loss, metrics=["accuracy"])
    return model


def fake_data(n=22, seed=1, dtype="float32"):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5, 5, 1)).astype(dtype)
    y = rng.integers(0, 3, n)
    return x, y


def explicit_landscape(model, data, directions, steps, batch_size, training=False):
    """Loss and accuracy at each grid point: weights assigned in a copy, batches evaluated one by one."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    start = [v.numpy().copy() for v in copy.trainable_variables]
    frozen = [v.numpy().copy() for v in copy.non_trainable_variables]
    sizes = [v.numpy().size for v in copy.trainable_variables]
    offsets = np.cumsum([0] + sizes)
    x, y = data
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=copy.dtype)
    grids = np.meshgrid(*([steps] * len(directions)), indexing="ij")
    losses, accuracy = np.zeros(grids[0].shape), np.zeros(grids[0].shape)
    for index in np.ndindex(grids[0].shape):
        point = sum(grid[index] * d for grid, d in zip(grids, directions))
        for variable, value, low, high in zip(copy.trainable_variables, start, offsets[:-1], offsets[1:]):
            variable.assign(value + point[low:high].reshape(value.shape))
        total, correct = 0.0, 0
        for first in range(0, len(x), batch_size):
            for variable, value in zip(copy.non_trainable_variables, frozen):
                variable.assign(value)
            xb, yb = x[first:first + batch_size], y[first:first + batch_size]
            logits = copy(xb, training=training)
            batch_loss = float(cross_entropy(yb, logits)) + sum(float(term) for term in copy.losses)
            total += batch_loss * len(xb)
            correct += int(np.sum(np.argmax(logits.numpy(), axis=1) == yb))
        losses[index], accuracy[index] = total / len(x), correct / len(x)
    return losses, accuracy


def snapshot(model):
    return [v.numpy().copy() for v in model.variables]


def assert_unchanged(model, before):
    after = snapshot(model)
    assert len(after) == len(before)
    for old, new, variable in zip(before, after, model.variables):
        np.testing.assert_array_equal(new, old, err_msg=variable.path)


@pytest.fixture
def float64_policy(floatx):
    """floatx and the global dtype policy float64 for one test: Keras's compiled loss computes in the global policy
    (cached at its first use in the session), and its compute_loss adds the regularization in floatx."""
    floatx("float64")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize("training", [False, True])
def test_1d_and_2d_match_an_explicit_loop_in_float64_and_leave_the_model_bit_identical(float64_policy, training):
    model = conv_bn_model(dtype="float64")
    data = fake_data(dtype="float64")
    directions = random_directions(model, 2, seed=3)
    steps = np.array([-0.8, 0.0, 0.5, 1.0])
    before = snapshot(model)

    line = loss_landscape(model, data, directions[0], steps=steps, batch_size=8, training=training)
    expected_loss, expected_accuracy = explicit_landscape(model, data, directions[:1], steps, 8, training)
    assert line.losses.shape == (4,) and line.coordinates[0] is line.steps
    np.testing.assert_allclose(line.losses, expected_loss, rtol=0, atol=1e-10)  # seen: 2.2e-16
    np.testing.assert_allclose(line.metrics["accuracy"], expected_accuracy, rtol=0, atol=1e-12)
    assert_unchanged(model, before)

    plane = loss_landscape(model, data, directions, steps=steps, batch_size=8, training=training)
    expected_loss, expected_accuracy = explicit_landscape(model, data, directions, steps, 8, training)
    assert plane.losses.shape == (4, 4) and len(plane.coordinates) == 2
    np.testing.assert_allclose(plane.losses, expected_loss, rtol=0, atol=1e-10)
    np.testing.assert_allclose(plane.metrics["accuracy"], expected_accuracy, rtol=0, atol=1e-12)
    # Axis 0 runs along the first direction: the plane's column at b = 0 is the line.
    np.testing.assert_allclose(plane.losses[:, 1], line.losses, rtol=0, atol=1e-12)
    assert_unchanged(model, before)
    # The point theta itself: what Keras's own evaluate reports (inference mode).
    if not training:
        loss, accuracy = model.evaluate(*data, batch_size=8, verbose=0)
        assert plane.at_origin() == pytest.approx(loss, abs=1e-6)
        assert plane.metrics["accuracy"][1, 1] == pytest.approx(accuracy, abs=1e-12)
        assert_unchanged(model, before)


def test_one_trace_for_every_grid_on_the_same_data():
    model = conv_bn_model()
    evaluator = LandscapeEvaluator(model, fake_data(), batch_size=8)   # batches of 8, 8 and 6
    directions = random_directions(model, 2)
    plane = evaluator.landscape(directions, np.linspace(-1, 1, 5))
    line = evaluator.landscape(directions[1], np.linspace(-1, 1, 7))
    assert evaluator.traced_functions["landscape"].experimental_get_tracing_count() == 1
    assert plane.losses.shape == (5, 5) and line.losses.shape == (7,)
    np.testing.assert_allclose(line.losses[3], plane.losses[2, 2], rtol=1e-6)


def test_filter_normalization_is_exact_per_filter_and_zero_for_biases_and_batchnorm():
    model = conv_bn_model(dtype="float64")
    directions = random_directions(model, 2, seed=5)
    dim = sum(v.numpy().size for v in model.trainable_variables)
    assert directions.shape == (2, dim) and directions.dtype == np.float64
    for row in directions:
        offset = 0
        for variable in model.trainable_variables:
            weights = variable.numpy()
            part = row[offset:offset + weights.size].reshape(weights.shape)
            offset += weights.size
            if weights.ndim >= 2:  # Conv kernel [3, 3, 1, 2], Dense kernel [32, 3]: one norm per output filter
                for j in range(weights.shape[-1]):
                    assert np.linalg.norm(part[..., j]) == pytest.approx(np.linalg.norm(weights[..., j]), rel=1e-12)
            else:  # conv bias, BN gamma and beta, dense bias
                np.testing.assert_array_equal(part, 0.0)
    assert not np.allclose(directions[0], directions[1])
    np.testing.assert_array_equal(random_directions(model, 2, seed=5), directions)

    plain = random_directions(model, 1, normalization=None, seed=5)[0]
    rng = np.random.default_rng(5)
    expected = np.concatenate([rng.standard_normal(v.shape).ravel() for v in model.trainable_variables])
    np.testing.assert_array_equal(plain, expected)
    with pytest.raises(ValueError, match="normalization must be 'filter'"):
        random_directions(model, 1, normalization="layer")
    with pytest.raises(ValueError, match="num must be a positive integer"):
        random_directions(model, 0)


def test_distributed_equals_one_device(mirrored_strategy):
    data = fake_data(n=17)   # shards of 9 (batches of 8 and 1) and 8 examples: one replica pads a step
    single = conv_bn_model(seed=2)
    directions = random_directions(single, 2, seed=4)
    steps = np.linspace(-1.0, 1.0, 3)
    expected = loss_landscape(single, data, directions, steps=steps, batch_size=8)
    with mirrored_strategy.scope():
        model = conv_bn_model(seed=2)
    model.set_weights(single.get_weights())
    before = snapshot(model)
    result = loss_landscape(model, data, directions, steps=steps, batch_size=8)
    np.testing.assert_allclose(result.losses, expected.losses, rtol=1e-6)
    np.testing.assert_allclose(result.metrics["accuracy"], expected.metrics["accuracy"], rtol=0, atol=1e-7)
    assert_unchanged(model, before)


def test_bad_input_is_refused_with_a_message():
    model = conv_bn_model()
    data = fake_data()
    dim = sum(v.numpy().size for v in model.trainable_variables)
    good = random_directions(model, 1)[0]
    with pytest.raises(ValueError, match=f"flat vector of length {dim}"):
        loss_landscape(model, data, np.ones(dim - 1), steps=[0.0, 1.0])
    with pytest.raises(ValueError, match=f"flat vector of length {dim}"):
        loss_landscape(model, data, [good, np.ones(dim + 2)], steps=[0.0, 1.0])
    with pytest.raises(ValueError, match="Direction 1 is zero"):
        loss_landscape(model, data, [good, np.zeros(dim)], steps=[0.0, 1.0])
    with pytest.raises(ValueError, match="Direction 0 contains NaN"):
        loss_landscape(model, data, np.full(dim, np.nan), steps=[0.0, 1.0])
    with pytest.raises(ValueError, match="steps must be finite"):
        loss_landscape(model, data, good, steps=[0.0, np.inf])
    with pytest.raises(ValueError, match="steps must be a non-empty 1-D"):
        loss_landscape(model, data, good, steps=[])
    with pytest.raises(ValueError, match="one direction .a line. or two .a plane.; got 3"):
        loss_landscape(model, data, random_directions(model, 3), steps=[0.0, 1.0])
    with pytest.raises(ValueError, match="[Ee]mpty"):
        loss_landscape(model, (data[0][:0], data[1][:0]), good, steps=[0.0])


def test_eigenvector_columns_and_a_custom_loss():
    model = conv_bn_model()
    data = fake_data()
    directions = random_directions(model, 2, seed=7)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rows = loss_landscape(model, data, directions, steps=[0.0, 0.3], loss=loss)
    columns = loss_landscape(model, data, directions.T, steps=[0.0, 0.3], loss=loss)   # [dim, 2], as eigenvectors
    np.testing.assert_array_equal(rows.losses, columns.losses)
    uncompiled = conv_bn_model(compile=False)
    uncompiled.set_weights(model.get_weights())
    plain = loss_landscape(uncompiled, data, directions, steps=[0.0, 0.3], loss=loss)
    assert plain.metrics == {}
    np.testing.assert_allclose(plain.losses, rows.losses, rtol=1e-6)
