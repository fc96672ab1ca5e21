"""Tests of tf_sharpest.optimizers.NSGD against Keras's SGD, NumPy versions of its rules, and Keras workflows."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_sharpest.optimizers import NSGD, DirectionConsumer, nudge

SHAPES = [(3, 4), (4,), (4, 2), (2,)]
DIM = sum(int(np.prod(s)) for s in SHAPES)


def make_variables(seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    return [keras.Variable(rng.standard_normal(s).astype(dtype), name=f"w{i}") for i, s in enumerate(SHAPES)]


def random_gradients(steps, seed=1, dtype="float32"):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]


def orthonormal_directions(k=3, seed=2, dim=DIM):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, k)))
    return q.astype("float32")  # dense columns: every direction spans all variables


def flat(values):
    return np.concatenate([np.asarray(v.numpy() if hasattr(v, "numpy") else v).reshape(-1) for v in values])


def run(optimizer, gradients, variables=None, directions=None, new_directions=None):
    """Applies ``gradients``; ``new_directions`` maps a step index to directions set before that step."""
    variables = variables or make_variables()
    optimizer.build(variables)
    if directions is not None:
        optimizer.set_directions(None, directions)
    trajectory = [flat(variables)]
    for step, grads in enumerate(gradients):
        if new_directions and step in new_directions:
            optimizer.set_directions(None, new_directions[step])
        optimizer.apply(grads, variables)
        trajectory.append(flat(variables))
    return np.array(trajectory)


def numpy_nsgd(theta, gradients, lr, momentum, gamma, directions, nudge, nesterov=False):
    """NSGD's update rules on flat float64 NumPy vectors; ``directions[t]``/``lr[t]`` are E and lr at step t."""
    lrs = lr if np.ndim(lr) else [lr] * len(gradients)
    v = np.zeros_like(theta)
    trajectory = [theta.copy()]
    for grads, E, eta in zip(gradients, directions, lrs):
        P = E @ E.T
        g = flat(grads).astype(np.float64)
        if nudge == "gradient":
            g = g + (gamma - 1) * P @ g
        v = momentum * v - eta * g
        step = momentum * v - eta * g if nesterov else v
        if nudge == "velocity":
            step = step + (gamma - 1) * P @ step
        theta = theta + step
        trajectory.append(theta.copy())
    return np.array(trajectory)


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(3)])


def classification(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)).astype("float32"), rng.integers(0, 3, n)


def model_directions(model, k=2, seed=3):
    return orthonormal_directions(k, seed, dim=sum(int(np.prod(v.shape)) for v in model.trainable_variables))


def compile_nsgd(model, jit_compile=False, **kwargs):
    model.compile(optimizer=NSGD(**kwargs), loss=LOSS, jit_compile=jit_compile)
    model.optimizer.build(model.trainable_variables)
    model.optimizer.set_directions(None, model_directions(model))


# -- the pure nudge and the steering protocol ----------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nudge_is_a_pure_function_equal_to_the_numpy_nudge(dtype):
    E = orthonormal_directions(k=3).astype(dtype)
    grads = random_gradients(1, seed=4, dtype=dtype)[0]
    g = flat(grads).astype(np.float64)
    tolerance = 1e-12 if dtype == "float64" else 1e-5
    for gamma in (0.0, 0.3, 1.0, 4.0):
        expected = g + (gamma - 1.0) * (E.astype(np.float64) @ (E.astype(np.float64).T @ g))
        flat_result = nudge(tf.constant(g.astype(dtype)), tf.constant(E), gamma)
        assert flat_result.dtype == dtype and flat_result.shape == (DIM,)
        np.testing.assert_allclose(flat_result.numpy(), expected, atol=tolerance)
        offsets = np.cumsum([0] + [int(np.prod(s)) for s in SHAPES])
        per_variable = [E[a:b].reshape(s + (3,)) for a, b, s in zip(offsets[:-1], offsets[1:], SHAPES)]
        parts = nudge([tf.constant(p) for p in grads], [tf.constant(e) for e in per_variable], gamma)
        assert [tuple(p.shape) for p in parts] == SHAPES
        np.testing.assert_allclose(flat(parts), expected, atol=tolerance)
    # The part outside the span is untouched; the part inside is scaled by gamma.
    Q = np.linalg.qr(E.astype(np.float64))[0]
    nudged = nudge(tf.constant(g), tf.constant(Q), 0.25).numpy()
    np.testing.assert_allclose(Q.T @ nudged, 0.25 * (Q.T @ g), atol=1e-12)
    np.testing.assert_allclose(nudged - Q @ (Q.T @ nudged), g - Q @ (Q.T @ g), atol=1e-12)
    with pytest.raises(ValueError, match="one \\[\\*shape, K\\] tensor per gradient"):
        nudge([tf.ones(3)], tf.ones((3, 1)), 0.5)


def test_steering_protocol_directions_eigenvalues_and_logs():
    optimizer = NSGD(0.1, gamma=0.5, top_k=2)
    assert isinstance(optimizer, DirectionConsumer) and isinstance(optimizer, keras.optimizers.SGD)
    assert optimizer.num_directions == 2 and optimizer.direction_logs() == {}
    E = orthonormal_directions(k=3)
    optimizer.set_directions(np.array([3.0, 2.0, 1.0]), E)  # before build: kept for the build
    variables = make_variables()
    grads = random_gradients(1)[0]
    optimizer.apply(grads, variables)
    np.testing.assert_array_equal(optimizer.get_directions(), E[:, :2])
    g = flat(grads)
    alpha = np.abs(E[:, :2].T @ g)
    logs = optimizer.direction_logs()
    assert sorted(logs) == ["nsgd_alpha_1", "nsgd_alpha_2", "nsgd_alpha_ratio_1", "nsgd_alpha_ratio_2"]
    np.testing.assert_allclose([logs["nsgd_alpha_1"], logs["nsgd_alpha_2"]], alpha, rtol=1e-5)
    np.testing.assert_allclose([logs["nsgd_alpha_ratio_1"], logs["nsgd_alpha_ratio_2"]], alpha / np.linalg.norm(g),
                               rtol=1e-5)
    assert all(type(value) is float for value in logs.values())
    optimizer.set_directions(None, E[:, 1:])  # eigenvalues are optional
    np.testing.assert_array_equal(optimizer.get_directions(), E[:, 1:])
    for eigenvalues, message in ((np.ones(2), r"one value per eigenvector column \(3\)"),
                                 (np.ones((3, 1)), r"shape \[K\]"), (np.array([1.0, np.nan, 0.0]), "NaN or inf")):
        with pytest.raises(ValueError, match=message):
            optimizer.set_directions(eigenvalues, E)
    np.testing.assert_array_equal(optimizer.get_directions(), E[:, 1:])  # refused: the previous ones are kept
    with pytest.raises(TypeError, match="needs the eigenvectors"):
        optimizer.set_directions()


def test_one_argument_set_directions_and_vectors_keyword_still_work_and_warn():
    E = orthonormal_directions(k=3)
    optimizer = NSGD(0.1, top_k=3)
    optimizer.build(make_variables())
    with pytest.warns(DeprecationWarning, match=r"set_directions\(eigenvalues, vectors\)"):
        optimizer.set_directions(E)
    np.testing.assert_array_equal(optimizer.get_directions(), E)
    optimizer.clear_directions()
    with pytest.warns(DeprecationWarning, match="vectors= is deprecated.*write eigenvectors="):
        optimizer.set_directions(vectors=E)
    np.testing.assert_array_equal(optimizer.get_directions(), E)
    unbuilt = NSGD(0.1, top_k=3)
    with pytest.warns(DeprecationWarning):
        unbuilt.set_directions(E)
    assert unbuilt.has_directions


# -- the update rules -----------------------------------------------------------------------
@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_gamma_one_and_no_directions_are_keras_sgd(momentum, nesterov):
    gradients = random_gradients(20)
    reference = run(keras.optimizers.SGD(0.05, momentum=momentum, nesterov=nesterov), gradients)
    gamma_one = run(NSGD(0.05, momentum=momentum, nesterov=nesterov, gamma=1.0, top_k=3), gradients,
                    directions=orthonormal_directions())
    no_directions = run(NSGD(0.05, momentum=momentum, nesterov=nesterov, gamma=0.2, top_k=3), gradients)
    # NSGD runs Keras's own SGD update and adds exactly zero: the same floats, bit for bit.
    np.testing.assert_array_equal(gamma_one, reference)
    np.testing.assert_array_equal(no_directions, reference)


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_gamma_one_and_no_directions_are_keras_sgd_on_a_model(momentum, nesterov):
    """20 ``fit`` steps on real gradients of a small model, so any deviation compounds."""
    x, y = classification(n=160)
    reference, gamma_one, no_directions = tiny_model(), tiny_model(), tiny_model()
    reference.compile(optimizer=keras.optimizers.SGD(0.1, momentum=momentum, nesterov=nesterov), loss=LOSS)
    compile_nsgd(gamma_one, learning_rate=0.1, momentum=momentum, nesterov=nesterov, gamma=1.0, top_k=2)
    no_directions.compile(optimizer=NSGD(0.1, momentum=momentum, nesterov=nesterov, gamma=0.3, top_k=2), loss=LOSS)
    for model in (reference, gamma_one, no_directions):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)  # 20 steps
        assert int(model.optimizer.iterations.numpy()) == 20
    assert np.abs(flat(reference.trainable_variables) - flat(tiny_model().trainable_variables)).max() > 1e-2
    np.testing.assert_array_equal(flat(gamma_one.trainable_variables), flat(reference.trainable_variables))
    np.testing.assert_array_equal(flat(no_directions.trainable_variables), flat(reference.trainable_variables))


@pytest.mark.parametrize("nudge", ["velocity", "gradient"])
@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.8, False), (0.8, True)])
def test_matches_numpy_rules(nudge, momentum, nesterov):
    gradients = random_gradients(6)
    first, second = orthonormal_directions(seed=2), orthonormal_directions(seed=5)
    ours = run(NSGD(0.1, momentum=momentum, nesterov=nesterov, gamma=0.25, top_k=3, nudge=nudge), gradients,
               directions=first, new_directions={3: second})
    schedule = [first.astype(np.float64)] * 3 + [second.astype(np.float64)] * 3
    theta = flat(make_variables()).astype(np.float64)
    expected = numpy_nsgd(theta, gradients, 0.1, momentum, 0.25, schedule, nudge, nesterov)
    assert np.abs(np.diff(expected, axis=0)).max() > 0.1
    np.testing.assert_allclose(ours, expected, atol=2e-5)
    # With fixed directions the two modes coincide; once the directions move and
    # momentum carries old steps along, they differ: the test tells them apart.
    if momentum:
        other_mode = "gradient" if nudge == "velocity" else "velocity"
        other = numpy_nsgd(theta, gradients, 0.1, momentum, 0.25, schedule, other_mode, nesterov)
        assert np.abs(other - expected).max() > 1e-3


@pytest.mark.parametrize("nudge", ["velocity", "gradient"])
def test_matches_numpy_rules_in_float64_with_a_schedule(nudge, floatx):
    floatx("float64")
    schedule = keras.optimizers.schedules.ExponentialDecay(0.25, decay_steps=1, decay_rate=0.5)
    gradients = random_gradients(5, dtype="float64")
    E = np.linalg.qr(np.random.default_rng(7).standard_normal((DIM, 2)))[0]
    variables = make_variables(dtype="float64")
    optimizer = NSGD(schedule, momentum=0.7, gamma=3.0, top_k=2, nudge=nudge)
    ours = run(optimizer, gradients, variables=variables, directions=E)
    assert optimizer.get_directions().dtype == np.float64
    rates = [float(schedule(t)) for t in range(5)]  # as Keras evaluates it (in float32)
    momentum = float(np.float32(0.7))  # Keras's SGD casts a Python float through float32, also for float64
    expected = numpy_nsgd(flat(make_variables(dtype="float64")), gradients, rates, momentum, 3.0, [E] * 5, nudge)
    np.testing.assert_allclose(ours, expected, atol=1e-12)


def test_only_the_top_subspace_feels_gamma_and_zero_freezes_it():
    E = orthonormal_directions()
    outside = np.eye(len(E)) - E @ E.T
    for momentum in (0.0, 0.9):
        gradients = random_gradients(4)
        steps = {gamma: np.diff(run(NSGD(0.1, momentum=momentum, gamma=gamma, top_k=3), gradients, directions=E),
                                axis=0) for gamma in (0.0, 0.3, 1.0, 5.0)}
        for gamma, step in steps.items():
            np.testing.assert_allclose(step @ outside, steps[1.0] @ outside, atol=1e-5)  # outside E: as SGD
            np.testing.assert_allclose(step @ E, gamma * (steps[1.0] @ E), atol=1e-5)  # inside E: gamma x SGD
        np.testing.assert_allclose(steps[0.0] @ E, 0.0, atol=1e-6)
        assert np.abs(steps[0.0]).max() > 0.05


def test_first_top_k_columns_structured_form_and_alpha():
    E = orthonormal_directions(k=4)
    optimizer = NSGD(0.1, gamma=0.5, top_k=2)
    variables = make_variables()
    optimizer.build(variables)
    offsets = np.cumsum([0] + [int(np.prod(s)) for s in SHAPES])
    optimizer.set_directions(None, [E[a:b].reshape(s + (4,)) for a, b, s in zip(offsets[:-1], offsets[1:], SHAPES)])
    np.testing.assert_array_equal(optimizer.get_directions(), E[:, :2])
    optimizer.set_directions(None, tf.constant(E[:, 2:]))  # a tensor, K == top_k
    np.testing.assert_array_equal(optimizer.get_directions(), E[:, 2:])
    optimizer.set_directions(None, E)  # flat, K > top_k
    np.testing.assert_array_equal(optimizer.get_directions(), E[:, :2])
    for grads in random_gradients(2):
        optimizer.apply(grads, variables)
        g = flat(grads)
        np.testing.assert_allclose(optimizer.alpha.numpy(), np.abs(E[:, :2].T @ g), rtol=1e-5)
        np.testing.assert_allclose(optimizer.alpha_ratio.numpy(), np.abs(E[:, :2].T @ g) / np.linalg.norm(g),
                                   rtol=1e-5)


def test_directions_set_before_build_are_applied_at_build():
    E = orthonormal_directions()
    optimizer = NSGD(0.1, gamma=0.0, top_k=3)
    optimizer.set_directions(None, E)
    assert optimizer.has_directions
    step = np.diff(run(optimizer, random_gradients(1)), axis=0)[0]
    np.testing.assert_allclose(E.T @ step, 0.0, atol=1e-6)
    np.testing.assert_array_equal(optimizer.get_directions(), E)


def test_clear_directions_goes_back_to_sgd():
    gradients = random_gradients(3)
    optimizer = NSGD(0.05, momentum=0.9, gamma=0.0, top_k=3)
    variables = make_variables()
    run(optimizer, gradients[:1], variables=variables, directions=orthonormal_directions())
    optimizer.clear_directions()
    assert not optimizer.has_directions
    reference = keras.optimizers.SGD(0.05, momentum=0.9)
    expected_variables = [keras.Variable(v.numpy()) for v in variables]
    reference.build(expected_variables)
    for mine, theirs in zip(optimizer.momentums, reference.momentums):  # same starting velocity
        theirs.assign(mine)
    for grads in gradients[1:]:
        optimizer.apply(grads, variables)
        reference.apply(grads, expected_variables)
    np.testing.assert_allclose(flat(variables), flat(expected_variables), atol=1e-6)
    np.testing.assert_array_equal(optimizer.alpha.numpy(), 0.0)


def test_gamma_changes_inside_a_compiled_step():
    variables = make_variables()
    optimizer = NSGD(0.1, gamma=1.0, top_k=3)
    optimizer.build(variables)
    E = orthonormal_directions()
    optimizer.set_directions(None, E)
    traces = []

    @tf.function(jit_compile=True)
    def step(grads):
        traces.append(1)
        optimizer.apply(grads, variables)

    grads = [tf.constant(g) for g in random_gradients(1)[0]]
    before = flat(variables)
    step(grads)
    first = flat(variables) - before
    optimizer.gamma = 0.0
    before = flat(variables)
    step(grads)
    second = flat(variables) - before
    optimizer.set_directions(None, orthonormal_directions(seed=9))  # new directions: no retrace either
    step(grads)
    assert len(traces) == 1
    assert optimizer.gamma == 0.0
    np.testing.assert_allclose(E.T @ second, 0.0, atol=1e-6)
    assert np.abs(E.T @ first).max() > 1e-3


def test_optimizer_options_gradient_accumulation_and_sparse_gradients():
    gradients = random_gradients(6)
    common = dict(momentum=0.9, gradient_accumulation_steps=2, global_clipnorm=1.0)
    reference = run(keras.optimizers.SGD(0.05, **common), gradients)
    ours = run(NSGD(0.05, gamma=1.0, top_k=3, **common), gradients, directions=orthonormal_directions())
    np.testing.assert_allclose(ours, reference, atol=1e-6)
    frozen = np.diff(run(NSGD(0.05, gamma=0.0, top_k=3, **common), gradients, directions=orthonormal_directions()),
                     axis=0)
    assert np.abs(frozen).max() > 1e-3
    np.testing.assert_allclose(frozen @ orthonormal_directions(), 0.0, atol=1e-6)

    # An Embedding layer's gradient is an IndexedSlices; the nudge still sees the whole vector.
    def embedding_model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((3,), dtype="int32"), keras.layers.Embedding(10, 4),
                                 keras.layers.Flatten(), keras.layers.Dense(3)])

    x, y = np.random.default_rng(0).integers(0, 10, (32, 3)), np.random.default_rng(1).integers(0, 3, 32)
    sgd, one, zero = embedding_model(), embedding_model(), embedding_model()
    sgd.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.5), loss=LOSS)
    compile_nsgd(one, learning_rate=0.1, momentum=0.5, gamma=1.0, top_k=2)
    compile_nsgd(zero, learning_rate=0.1, momentum=0.5, gamma=0.0, top_k=2)
    start = flat(zero.trainable_variables)
    for model in (sgd, one, zero):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_allclose(flat(one.trainable_variables), flat(sgd.trainable_variables), atol=1e-6)
    np.testing.assert_allclose(zero.optimizer.get_directions().T @ (flat(zero.trainable_variables) - start), 0.0,
                               atol=1e-6)


# -- Keras workflows --------------------------------------------------------------------------
@pytest.mark.parametrize("jit_compile", [False, True])
def test_model_fit_with_and_without_xla_and_gamma_changed_mid_fit(jit_compile):
    x, y = classification()
    model = tiny_model()
    E = model_directions(model)
    model.compile(optimizer=NSGD(learning_rate=0.1, gamma=1.0, top_k=2, momentum=0.5), loss=LOSS,
                  jit_compile=jit_compile)
    model.optimizer.set_directions(None, E)  # before the optimizer is built: applied when fit builds it
    weights = [flat(model.trainable_variables)]

    def after_epoch(epoch, logs):
        weights.append(flat(model.trainable_variables))
        model.optimizer.gamma = 0.0  # from the second epoch on, the top subspace is frozen

    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False,
                        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=after_epoch)])
    assert history.history["loss"][2] < history.history["loss"][0]
    np.testing.assert_array_equal(model.optimizer.get_directions(), E)
    first, second, third = np.diff(weights, axis=0)
    assert np.abs(E.T @ first).max() > 1e-3  # gamma=1 moves inside E
    for moved in (second, third):
        assert np.abs(moved).max() > 1e-3
        np.testing.assert_allclose(E.T @ moved, 0.0, atol=1e-5)  # gamma=0 froze the top subspace
    assert np.all(model.optimizer.alpha.numpy() > 0)


def test_schedule_and_reduce_lr_on_plateau():
    x, y = classification()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.2, decay_steps=2, decay_rate=0.5)
    model, reference = tiny_model(), tiny_model()
    compile_nsgd(model, learning_rate=schedule, gamma=1.0, top_k=2)
    reference.compile(optimizer=keras.optimizers.SGD(schedule), loss=LOSS)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    reference.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    np.testing.assert_allclose(flat(model.trainable_variables), flat(reference.trainable_variables), atol=1e-6)

    def plateau_run(model):
        reduce = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0)
        return model.fit(x, y, batch_size=8, epochs=4, verbose=0, shuffle=False,
                         callbacks=[reduce]).history["learning_rate"]

    nudged, plain, sgd = tiny_model(), tiny_model(), tiny_model()
    compile_nsgd(nudged, learning_rate=0.1, momentum=0.5, gamma=0.0, top_k=2)
    compile_nsgd(plain, learning_rate=0.1, momentum=0.5, gamma=1.0, top_k=2)
    sgd.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.5), loss=LOSS)
    start = flat(nudged.trainable_variables)
    rates = plateau_run(nudged)
    np.testing.assert_allclose(rates, [0.1, 0.1, 0.05, 0.025], rtol=1e-6)  # logged before each cut
    np.testing.assert_allclose(plateau_run(plain), rates, rtol=1e-6)
    plateau_run(sgd)  # the reduced rates reach the step: same weights as SGD under the same callback
    np.testing.assert_allclose(flat(plain.trainable_variables), flat(sgd.trainable_variables), atol=1e-6)
    E = nudged.optimizer.get_directions()
    np.testing.assert_allclose(E.T @ (flat(nudged.trainable_variables) - start), 0.0, atol=1e-5)


@pytest.mark.parametrize("nudge", ["velocity", "gradient"])
def test_save_load_round_trip_continues_identically(tmp_path, nudge):
    x, y = classification()
    settings = dict(learning_rate=0.1, momentum=0.9, gamma=0.3, top_k=2, nudge=nudge)

    def train(model, epochs, initial_epoch=0):
        def change_gamma(epoch, logs):
            if epoch == 0:
                model.optimizer.gamma = 2.5  # saved in the optimizer's variables, not only its config
        model.fit(x, y, batch_size=8, epochs=epochs, initial_epoch=initial_epoch, verbose=0, shuffle=False,
                  callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=change_gamma)])

    uninterrupted = tiny_model()
    compile_nsgd(uninterrupted, **settings)
    train(uninterrupted, 4)

    first = tiny_model()
    compile_nsgd(first, **settings)
    train(first, 2)
    path = str(tmp_path / "m.keras")
    first.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects, safe mode
    optimizer = loaded.optimizer
    assert isinstance(optimizer, NSGD)
    assert optimizer.gamma == pytest.approx(2.5)
    assert (optimizer.top_k, optimizer.nudge, optimizer.momentum) == (2, nudge, 0.9)
    assert optimizer.has_directions and int(optimizer.iterations.numpy()) == 8
    np.testing.assert_array_equal(optimizer.get_directions(), first.optimizer.get_directions())
    np.testing.assert_array_equal(flat(optimizer.momentums), flat(first.optimizer.momentums))
    train(loaded, 4, initial_epoch=2)
    np.testing.assert_allclose(flat(loaded.trainable_variables), flat(uninterrupted.trainable_variables), atol=1e-6)


def test_a_file_saved_by_the_previous_nsgd_loads_its_whole_optimizer_state():
    """Regression: files of the NSGD before it built on Keras's SGD lack the step's projections, so Keras skipped
    the whole optimizer state (directions, velocities, step count) with a warning. The file was written by commit
    81bc5c1's NSGD under Keras 3.8.0 (the oldest supported, so every supported Keras reads it) with the steps
    below; this NSGD, taking the same steps, must hold the same state."""
    import warnings

    path = os.path.join(os.path.dirname(__file__), "data", "nsgd_velocity_before_keras_sgd.keras")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Skipping variable loading")
        loaded = keras.models.load_model(path)
    keras.utils.set_random_seed(0)
    reference = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    reference.compile(optimizer=NSGD(0.1, momentum=0.9, gamma=0.3, top_k=2), loss="mse")
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((16, 4)).astype("float32"), rng.standard_normal((16, 3)).astype("float32")
    reference.optimizer.set_directions(
        None, np.linalg.qr(np.random.default_rng(2).standard_normal((15, 2)))[0].astype("float32"))
    reference.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    optimizer = loaded.optimizer
    assert optimizer.has_directions and int(optimizer.iterations.numpy()) == 2 and optimizer.gamma == pytest.approx(0.3)
    np.testing.assert_array_equal(optimizer.get_directions(), reference.optimizer.get_directions())
    np.testing.assert_allclose(flat(optimizer.momentums), flat(reference.optimizer.momentums), atol=1e-6)
    assert np.abs(flat(optimizer.momentums)).max() > 1e-2
    for model in (loaded, reference):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_allclose(flat(loaded.trainable_variables), flat(reference.trainable_variables), atol=1e-6)


def test_config_round_trip():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.2, decay_steps=2, decay_rate=0.5)
    optimizer = NSGD(schedule, momentum=0.9, nesterov=True, gamma=0.4, top_k=3, nudge="gradient", clipnorm=1.0)
    config = optimizer.get_config()
    assert {k: config[k] for k in ("momentum", "nesterov", "gamma", "top_k", "nudge")} == dict(
        momentum=0.9, nesterov=True, gamma=0.4, top_k=3, nudge="gradient")
    for copy in (NSGD.from_config(config), keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))):
        assert isinstance(copy, NSGD)
        assert keras.optimizers.serialize(copy) == keras.optimizers.serialize(optimizer)
    assert keras.saving.get_registered_name(NSGD) == "tf_sharpest>NSGD"


def test_mirrored_strategy_matches_one_device(mirrored_strategy):
    x, y = classification()
    settings = dict(learning_rate=0.1, gamma=0.2, top_k=2, momentum=0.5)
    single = tiny_model()
    compile_nsgd(single, **settings)
    with mirrored_strategy.scope():
        mirrored = tiny_model()
        compile_nsgd(mirrored, **settings)
    np.testing.assert_array_equal(mirrored.optimizer.get_directions(), single.optimizer.get_directions())
    for model in (single, mirrored):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
        # As a callback would, between epochs and outside the strategy's scope:
        model.optimizer.set_directions(None, model_directions(model, seed=11))
        model.optimizer.gamma = 3.0
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_allclose(flat(mirrored.trainable_variables), flat(single.trainable_variables), atol=1e-5)
    np.testing.assert_allclose(mirrored.optimizer.alpha.numpy(), single.optimizer.alpha.numpy(), rtol=1e-4)
    assert np.all(mirrored.optimizer.alpha.numpy() > 0)


def test_bad_input():
    with pytest.raises(ValueError, match=r"Unknown nudge 'correct_v'; choose one of \('velocity', 'gradient'\)"):
        NSGD(nudge="correct_v")
    for top_k in (0, -1, 2.5):
        with pytest.raises(ValueError, match="top_k must be a positive integer"):
            NSGD(top_k=top_k)
    with pytest.raises(ValueError, match="gamma"):
        NSGD(gamma=float("nan"))
    with pytest.raises(ValueError, match="momentum"):
        NSGD(momentum=1.5)
    optimizer = NSGD(top_k=3)
    with pytest.raises(ValueError, match="not built"):
        optimizer.get_directions()
    with pytest.raises(ValueError, match=r"shape \[dim, K\]"):
        optimizer.set_directions(None, np.ones((26, 3, 1)))  # caught before build too
    optimizer.build(make_variables())
    with pytest.raises(ValueError, match=r"shape \[dim=26, K\]"):
        optimizer.set_directions(None, np.ones((25, 3)))
    with pytest.raises(ValueError, match="2 columns but top_k=3; pass K >= top_k"):
        optimizer.set_directions(None, np.ones((26, 2)))
    with pytest.raises(ValueError, match="Expected 4 per-variable"):
        optimizer.set_directions(None, [np.ones((3, 4, 3))])
    with pytest.raises(ValueError, match=r"has shape \(4, 3, 3\); expected \(3, 4, 'K'\)"):
        optimizer.set_directions(None, [np.ones((4, 3, 3)), np.ones((4, 3)), np.ones((4, 2, 3)), np.ones((2, 3))])
    good = orthonormal_directions()
    optimizer.set_directions(None, good)
    for value in (np.nan, np.inf):
        bad = good.copy()
        bad[0, 0] = value
        with pytest.raises(ValueError, match="NaN or inf"):
            optimizer.set_directions(None, bad)
    np.testing.assert_array_equal(optimizer.get_directions(), good)  # the previous directions are kept
    with pytest.raises(ValueError, match="NaN or inf"):
        NSGD().set_directions(None, bad)
    with pytest.warns(UserWarning, match="not orthonormal"):
        optimizer.set_directions(None, 2 * good)


def test_numpy_scalars_are_accepted_and_bools_strings_and_out_of_range_refused():
    # Keras's own SGD takes NumPy momentum values (np.float64 is a float); NSGD takes every NumPy scalar.
    optimizer = NSGD(momentum=np.float32(0.9), gamma=np.float32(0.25), top_k=np.int64(3), nesterov=np.bool_(True))
    assert optimizer.momentum == pytest.approx(0.9) and type(optimizer.momentum) is float
    assert optimizer.gamma == 0.25 and type(optimizer.gamma) is float
    assert optimizer.top_k == 3 and type(optimizer.top_k) is int and optimizer.nesterov is True
    assert NSGD(momentum=np.float64(0.5), gamma=np.int32(2)).get_config()["momentum"] == 0.5
    assert NSGD(momentum=1, nesterov=0).nesterov is False  # Python ints as before
    optimizer.gamma = np.float16(0.5)
    assert optimizer.gamma == 0.5
    for momentum in (True, np.bool_(False), "0.9", np.float32(1.5), -0.1, np.float64("nan"), None):
        with pytest.raises(ValueError, match=r"momentum must be a float in \[0, 1\], got"):
            NSGD(momentum=momentum)
    for gamma in (True, np.bool_(True), "0.1", np.float32("inf"), None):
        with pytest.raises(ValueError, match="gamma must be a finite number, got"):
            NSGD(gamma=gamma)
        with pytest.raises(ValueError, match="gamma must be a finite number, got"):
            optimizer.gamma = gamma
    for top_k in (True, np.bool_(True), np.float32(3.0), "3", np.int64(0)):
        with pytest.raises(ValueError, match="top_k must be a positive integer, got"):
            NSGD(top_k=top_k)
    for nesterov in ("False", 2, None):
        with pytest.raises(ValueError, match="nesterov must be True or False, got"):
            NSGD(nesterov=nesterov)
