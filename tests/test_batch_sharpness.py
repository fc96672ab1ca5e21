"""batch_sharpness against per-batch Hessians and gradients formed explicitly in float64."""

import copy
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_sharpest.analysis import BatchSharpnessMeter, batch_indices, batch_sharpness

from references import classification_data, explicit_hessian, sparse_ce, tiny_cnn, tiny_mlp

RTOL = 1e-6


def explicit_quotient(model, x, y, loss_fn, sample_weight=None, parts=False):
    """``g^T H g / ||g||^2`` of one batch's mean loss (+ regularization), with g and H formed in one call each.

    ``parts=True`` returns ``(g^T H g, ||g||^2)`` instead.
    """
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        per_example = loss_fn(y, model(x, training=False))
        if sample_weight is not None:
            per_example = per_example * sample_weight
        loss = tf.reduce_mean(per_example)
        if model.losses:
            loss = loss + tf.add_n(model.losses)
    g = np.concatenate([t.numpy().ravel() for t in tape.gradient(loss, variables)])
    if sample_weight is None:
        hessian = explicit_hessian(model, x, y, loss_fn)
    else:
        hessian = weighted_hessian(model, x, y, loss_fn, sample_weight)
    if parts:
        return float(g @ hessian @ g), float(g @ g)
    return float(g @ hessian @ g / (g @ g))


def weighted_hessian(model, x, y, loss_fn, sample_weight):
    """The explicit Hessian of ``mean(w_i * l_i) + sum(model.losses)``."""
    variables = model.trainable_variables
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = tf.reduce_mean(loss_fn(y, model(x, training=False)) * sample_weight)
            if model.losses:
                loss = loss + tf.add_n(model.losses)
        flat = tf.concat([tf.reshape(g, [-1]) for g in inner.gradient(loss, variables)], axis=0)
    jacobians = outer.jacobian(flat, variables)
    return tf.concat([tf.reshape(j, [flat.shape[0], -1]) for j in jacobians], axis=1).numpy()


def per_example_ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none", dtype="float64")


def test_consecutive_batches_of_uneven_data_match_explicit_hessians():
    model = tiny_cnn("float64")  # with L2 regularizers: they enter g_B and H_B as in a training step
    x, y = classification_data((6, 6, 1), n=23, seed=3)
    before = [v.numpy().copy() for v in model.trainable_variables]
    result = batch_sharpness(model, (x, y), batch_size=5, shuffle=False, loss=sparse_ce())
    # 23 examples in batches of 5: four full ones and a last of 3, each counted once.
    expected = [explicit_quotient(model, x[a:a + 5], y[a:a + 5], per_example_ce()) for a in range(0, 23, 5)]
    assert result.num_batches == 5 and [len(i) for i in result.indices] == [5, 5, 5, 5, 3]
    np.testing.assert_allclose(result.values, expected, rtol=RTOL)
    np.testing.assert_allclose(result.value, np.mean(expected), rtol=RTOL)
    np.testing.assert_allclose(result.stderr, np.std(expected, ddof=1) / np.sqrt(5), rtol=RTOL)
    for variable, value in zip(model.trainable_variables, before):
        np.testing.assert_array_equal(variable.numpy(), value)  # the model is left as it was


def test_random_batches_are_the_seeded_draws_and_match_explicit_hessians():
    model = tiny_mlp("float64")
    model.compile(optimizer="sgd", loss=sparse_ce())  # the compiled loss is used when loss=None
    x, y = classification_data((4,), n=40, seed=4)
    result = batch_sharpness(model, (x, y), batch_size=8, num_batches=6, seed=11)
    rng = np.random.default_rng(11)
    draws = [rng.choice(40, 8, replace=False) for _ in range(6)]  # the documented draw, made independently
    for drawn, used in zip(draws, result.indices):
        np.testing.assert_array_equal(drawn, used)
    expected = [explicit_quotient(model, x[i], y[i], per_example_ce()) for i in draws]
    np.testing.assert_allclose(result.values, expected, rtol=RTOL)
    np.testing.assert_allclose(result.value, np.mean(expected), rtol=RTOL)
    assert result.num_batches == 6 and result.batch_size == 8
    curvatures, squared_norms = zip(*(explicit_quotient(model, x[i], y[i], per_example_ce(), parts=True)
                                      for i in draws))
    np.testing.assert_allclose(result.ratio_of_means, sum(curvatures) / sum(squared_norms), rtol=RTOL)
    np.testing.assert_allclose(result.gradient_norms, np.sqrt(squared_norms), rtol=RTOL)
    # The same seed gives the same batches; another seed others.
    again = batch_sharpness(model, (x, y), batch_size=8, num_batches=6, seed=11)
    np.testing.assert_array_equal(again.values, result.values)
    other = batch_sharpness(model, (x, y), batch_size=8, num_batches=6, seed=12)
    assert not np.allclose(other.values, result.values)


def test_one_shuffled_pass_and_the_first_consecutive_batches():
    model = tiny_mlp("float64", seed=2)
    x, y = classification_data((4,), n=17, seed=5)
    shuffled = batch_sharpness(model, (x, y), batch_size=4, seed=3, loss=sparse_ce())
    order = np.random.default_rng(3).permutation(17)
    batches = [order[a:a + 4] for a in range(0, 17, 4)]  # four of 4 and one of 1
    expected = [explicit_quotient(model, x[i], y[i], per_example_ce()) for i in batches]
    assert shuffled.num_batches == 5
    np.testing.assert_allclose(shuffled.values, expected, rtol=RTOL)
    first = batch_sharpness(model, (x, y), batch_size=4, num_batches=2, shuffle=False, loss=sparse_ce())
    expected = [explicit_quotient(model, x[a:a + 4], y[a:a + 4], per_example_ce()) for a in (0, 4)]
    np.testing.assert_allclose(first.values, expected, rtol=RTOL)
    assert np.isfinite(first.stderr)


def test_sample_weights_weight_each_batch_loss():
    model = tiny_cnn("float64", seed=1)
    x, y = classification_data((6, 6, 1), n=14, seed=6)
    w = np.random.default_rng(0).uniform(0.2, 3.0, size=14)
    result = batch_sharpness(model, (x, y, w), batch_size=7, shuffle=False, loss=sparse_ce())
    expected = [explicit_quotient(model, x[a:a + 7], y[a:a + 7], per_example_ce(), sample_weight=w[a:a + 7])
                for a in (0, 7)]
    np.testing.assert_allclose(result.values, expected, rtol=RTOL)
    unweighted = batch_sharpness(model, (x, y), batch_size=7, shuffle=False, loss=sparse_ce())
    assert not np.allclose(unweighted.values, result.values)  # the weights matter


def test_per_batch_quotient_lies_within_the_batch_hessian_spectrum():
    model = tiny_mlp("float64", seed=4)
    x, y = classification_data((4,), n=12, seed=8)
    result = batch_sharpness(model, (x, y), batch_size=6, shuffle=False, loss=sparse_ce())
    for index, value in zip(result.indices, result.values):
        spectrum = np.linalg.eigvalsh(explicit_hessian(model, x[index], y[index], per_example_ce()))
        assert spectrum[0] - 1e-9 <= value <= spectrum[-1] + 1e-9


def test_the_meter_traces_once_for_equal_batches_and_reuses_its_operator():
    model = tiny_mlp("float64")
    x, y = classification_data((4,), n=30, seed=9)
    meter = BatchSharpnessMeter(model, loss=sparse_ce())
    first = meter.measure((x, y), batch_size=6, num_batches=4, seed=0)
    operator = meter.operator
    traces = {name: f.experimental_get_tracing_count() for name, f in operator.traced_functions.items()}
    second = meter.measure((x, y), batch_size=6, num_batches=4, seed=1)
    assert meter.operator is operator and traces["matvec"] == 1  # no new trace:
    assert {name: f.experimental_get_tracing_count() for name, f in operator.traced_functions.items()} == traces
    assert operator.num_matvecs == 8  # one Hessian-vector product per batch
    assert first.values.shape == second.values.shape == (4,)


def test_bad_input_is_refused_with_clear_messages():
    model = tiny_mlp("float64")
    x, y = classification_data((4,), n=10, seed=1)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        batch_sharpness(model, (x, y), batch_size=0, loss=sparse_ce())
    with pytest.raises(ValueError, match="num_batches must be a positive integer"):
        batch_sharpness(model, (x, y), batch_size=2, num_batches=0, loss=sparse_ce())
    with pytest.raises(ValueError, match="one pass, which holds 4 batches"):
        batch_sharpness(model, (x, y), batch_size=3, num_batches=5, shuffle=False, loss=sparse_ce())
    with pytest.raises(ValueError, match="fewer than one batch of 11"):
        batch_sharpness(model, (x, y), batch_size=11, loss=sparse_ce())
    with pytest.raises(ValueError, match="same number of examples"):
        batch_sharpness(model, (x, y[:9]), batch_size=2, loss=sparse_ce())
    with pytest.raises(ValueError, match="arrays"):
        batch_sharpness(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(2), batch_size=2, loss=sparse_ce())
    # At an exact fit of a regression the batch gradient is zero: the quotient is undefined.
    regression = keras.Sequential([keras.Input((4,), dtype="float64"), keras.layers.Dense(1, dtype="float64")])
    exact = regression(x).numpy()
    with pytest.raises(ValueError, match="gradient of batch 0 .* is zero"):
        batch_sharpness(regression, (x, exact), batch_size=5, loss=keras.losses.MeanSquaredError(dtype="float64"))
    assert batch_indices(10, 4, shuffle=False)[-1].tolist() == [8, 9]


# -- BatchSharpnessCallback ----------------------------------------------------------------------------------------

def test_batch_sharpness_callback_logs_the_mean_quotient_of_explicit_float64_batches(floatx):
    from tf_sharpest.callbacks import BatchSharpnessCallback

    floatx("float64")  # fit's training step of a float64 model with regularizers needs it
    model = tiny_cnn("float64", seed=3)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=sparse_ce())
    x, y = classification_data((6, 6, 1), n=20, seed=10)
    callback = BatchSharpnessCallback((x, y), batch_size=5, num_batches=3, num_samples=20, resample=False, seed=0,
                                      verbose=0, log_prefix="train_")
    history = model.fit(x, y, batch_size=5, epochs=2, verbose=0, shuffle=False, callbacks=[callback])
    assert len(callback.history) == 3  # two epochs and one after training
    assert history.history["train_batch_sharpness"] == [m.values["batch_sharpness"] for m in callback.history[:2]]
    assert history.history["train_batch_sharpness_stderr"] == \
        [m.values["batch_sharpness_stderr"] for m in callback.history[:2]]
    last = callback.result  # at the final weights
    assert last.num_batches == 3 and all(len(i) == 5 for i in last.indices)
    expected = np.array([explicit_quotient(model, x[i], y[i], per_example_ce()) for i in last.indices])
    np.testing.assert_allclose(last.values, expected, rtol=RTOL)
    np.testing.assert_allclose(callback.history[-1].values["batch_sharpness"], expected.mean(), rtol=RTOL)
    np.testing.assert_allclose(callback.history[-1].values["batch_sharpness_stderr"],
                               expected.std(ddof=1) / np.sqrt(3), rtol=1e-5)
    clone = copy.deepcopy(callback)  # keras-tuner copies used callbacks: the clone traces its own graphs
    assert clone._meter is None and clone.num_batches == 3 and clone.data is callback.data


def test_batch_sharpness_callback_failure_is_nan_with_one_warning_and_training_goes_on(floatx, tmp_path):
    from tf_sharpest.callbacks import BatchSharpnessCallback, MeasurementLog

    floatx("float64")
    x, y = classification_data((4,), n=12, seed=11)
    model = tiny_mlp("float64", seed=5)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=sparse_ce())
    callback = BatchSharpnessCallback((x, y), batch_size=128, seed=0, verbose=0, save_dir=str(tmp_path))
    with pytest.warns(RuntimeWarning, match="fewer than one batch of 128") as caught:
        history = model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[callback])
    assert len([w for w in caught if "BatchSharpnessCallback" in str(w.message)]) == 1
    assert len(history.history["loss"]) == 2 and np.all(np.isnan(history.history["batch_sharpness"]))
    saved = MeasurementLog(str(tmp_path), "batch_sharpness").read()
    assert len(saved) == 3 and all("fewer than one batch" in m.error for m in saved)
    with pytest.raises(ValueError, match="num_batches must be a positive integer"):
        BatchSharpnessCallback((x, y), batch_size=4, num_batches=0)


# -- LanczosCallback(batch_sharpness=True): deprecated, still works for one release ---------------------------------

def test_lanczos_callback_logs_the_batch_sharpness_of_its_sample(floatx):
    from tf_sharpest.callbacks import LanczosCallback
    from tf_sharpest.linalg import LanczosSolver

    floatx("float64")  # fit's training step of a float64 model with regularizers needs it
    model = tiny_cnn("float64", seed=3)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=sparse_ce())
    x, y = classification_data((6, 6, 1), n=20, seed=10)
    with pytest.warns(DeprecationWarning, match=r"write a callback of its own: tf_sharpest\.callbacks\."
                                                r"BatchSharpnessCallback\(data, batch_size=5, num_batches=3\)"):
        callback = LanczosCallback((x, y), top_k=1, num_samples=20, resample=False, seed=0, verbose=0,
                                   solver=LanczosSolver(tol=1e-8), batch_sharpness=True, batch_sharpness_batch_size=5,
                                   batch_sharpness_num_batches=3)
    history = model.fit(x, y, batch_size=5, epochs=2, verbose=0, shuffle=False, callbacks=[callback])
    assert len(history.history["batch_sharpness"]) == 2 and len(history.history["batch_sharpness_stderr"]) == 2
    # Every measurement (two epochs and the one after training) holds it; the last is at the final weights.
    assert len(callback.history) == 3
    assert all(np.isfinite(m.values["batch_sharpness"]) for m in callback.history)
    assert history.history["batch_sharpness"] == [m.values["batch_sharpness"] for m in callback.history[:2]]
    last = callback.batch_sharpness_result
    assert last.num_batches == 3 and all(len(i) == 5 for i in last.indices)
    expected = [explicit_quotient(model, x[i], y[i], per_example_ce()) for i in last.indices]
    np.testing.assert_allclose(last.values, expected, rtol=RTOL)
    np.testing.assert_allclose(callback.history[-1].values["batch_sharpness"], np.mean(expected), rtol=RTOL)
    clone = copy.deepcopy(callback)  # keras-tuner copies used callbacks: the clone traces its own graphs
    assert clone._sharpness_meter is None and clone._sharpness == {"batch_size": 5, "num_batches": 3}


def test_lanczos_callback_batch_sharpness_failure_is_nan_and_the_eigenvalues_do_not_change(floatx):
    from tf_sharpest.callbacks import LanczosCallback

    floatx("float64")
    x, y = classification_data((4,), n=12, seed=11)
    runs = []
    for enabled in (False, True):
        model = tiny_mlp("float64", seed=5)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=sparse_ce())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # The default batch size (128: Keras 3's fit does not tell callbacks its own) exceeds the 12 examples.
            callback = LanczosCallback((x, y), top_k=2, num_samples=12, seed=0, verbose=0,
                                       **({"batch_sharpness": True} if enabled else {}))
            history = model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[callback])
        runs.append((history.history, [str(w.message) for w in caught]))
    (plain, _), (measured, messages) = runs
    assert "batch_sharpness" not in plain
    assert np.all(np.isnan(measured["batch_sharpness"])) and np.all(np.isnan(measured["batch_sharpness_stderr"]))
    assert any("batch sharpness failed" in m and "fewer than one batch of 128" in m for m in messages)
    assert any("batch_sharpness= is deprecated" in m for m in messages)
    np.testing.assert_array_equal(measured["lambda_1"], plain["lambda_1"])  # same seeds, same eigenvalues
    with pytest.raises(ValueError, match="batch_sharpness_num_batches must be a positive integer"):
        LanczosCallback((x, y), batch_sharpness=True, batch_sharpness_num_batches=0)
