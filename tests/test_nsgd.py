import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_sharpest.optimizers import NSGD

SHAPES = [(3, 4), (4,), (4, 2), (2,)]


def make_variables(seed=0):
    rng = np.random.default_rng(seed)
    return [keras.Variable(rng.standard_normal(s).astype("float32"), name=f"w{i}") for i, s in enumerate(SHAPES)]


def random_gradients(steps, seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype("float32") for s in SHAPES] for _ in range(steps)]


def orthonormal_directions(k=3, seed=2):
    dim = sum(int(np.prod(s)) for s in SHAPES)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, k)))
    return q.astype("float32")  # dense columns: every direction spans all variables


def flat(values):
    return np.concatenate([np.asarray(v.numpy() if hasattr(v, "numpy") else v).reshape(-1) for v in values])


def run(optimizer, gradients, variables=None, directions=None, new_directions=None):
    """Applies ``gradients``; ``new_directions`` maps a step index to directions set before that step."""
    variables = variables or make_variables()
    optimizer.build(variables)
    if directions is not None:
        optimizer.set_directions(directions)
    trajectory = [flat(variables)]
    for step, grads in enumerate(gradients):
        if new_directions and step in new_directions:
            optimizer.set_directions(new_directions[step])
        optimizer.apply(grads, variables)
        trajectory.append(flat(variables))
    return np.array(trajectory)


def numpy_nsgd(theta, gradients, lr, momentum, gamma, directions, nudge, nesterov=False):
    """The update rules of NSGD, written out on flat NumPy vectors; ``directions[t]`` is E at step t."""
    v = np.zeros_like(theta)
    trajectory = [theta.copy()]
    for grads, E in zip(gradients, directions):
        P = E @ E.T
        g = flat(grads).astype(np.float64)
        if nudge == "gradient":
            g = g + (gamma - 1) * P @ g
        v = momentum * v - lr * g
        step = momentum * v - lr * g if nesterov else v
        if nudge == "velocity":
            step = step + (gamma - 1) * P @ step
        theta = theta + step
        trajectory.append(theta.copy())
    return np.array(trajectory)


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_gamma_one_and_no_directions_are_keras_sgd(momentum, nesterov):
    gradients = random_gradients(20)
    reference = run(keras.optimizers.SGD(0.05, momentum=momentum, nesterov=nesterov), gradients)
    gamma_one = run(NSGD(0.05, momentum=momentum, nesterov=nesterov, gamma=1.0, top_k=3), gradients,
                    directions=orthonormal_directions())
    no_directions = run(NSGD(0.05, momentum=momentum, nesterov=nesterov, gamma=0.2, top_k=3), gradients)
    np.testing.assert_allclose(gamma_one, reference, atol=1e-6)
    np.testing.assert_allclose(no_directions, reference, atol=1e-6)


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
    np.testing.assert_allclose(ours, expected, atol=2e-5)
    # With fixed directions the two modes coincide; once the directions move and
    # momentum carries old steps along, they differ: the test tells them apart.
    if momentum:
        other_mode = "gradient" if nudge == "velocity" else "velocity"
        other = numpy_nsgd(theta, gradients, 0.1, momentum, 0.25, schedule, other_mode, nesterov)
        assert np.abs(other - expected).max() > 1e-3


def test_only_the_top_subspace_feels_gamma_and_zero_freezes_it():
    E = orthonormal_directions()
    gradients = random_gradients(1)
    steps = {gamma: np.diff(run(NSGD(0.1, gamma=gamma, top_k=3), gradients, directions=E), axis=0)[0]
             for gamma in (0.0, 0.3, 1.0, 5.0)}
    outside = np.eye(len(E)) - E @ E.T
    for gamma, step in steps.items():
        np.testing.assert_allclose(outside @ step, outside @ steps[1.0], atol=1e-6)
        np.testing.assert_allclose(E.T @ step, gamma * (E.T @ steps[1.0]), atol=1e-6)
    np.testing.assert_allclose(E.T @ steps[0.0], 0.0, atol=1e-6)


def test_first_top_k_columns_structured_form_and_alpha():
    E = orthonormal_directions(k=4)
    optimizer = NSGD(0.1, gamma=0.5, top_k=2)
    variables = make_variables()
    optimizer.build(variables)
    offsets = np.cumsum([0] + [int(np.prod(s)) for s in SHAPES])
    optimizer.set_directions([E[a:b].reshape(s + (4,)) for a, b, s in zip(offsets[:-1], offsets[1:], SHAPES)])
    np.testing.assert_array_equal(optimizer.get_directions(), E[:, :2])
    grads = random_gradients(1)[0]
    optimizer.apply(grads, variables)
    g = flat(grads)
    np.testing.assert_allclose(optimizer.alpha.numpy(), np.abs(E[:, :2].T @ g), rtol=1e-5)
    np.testing.assert_allclose(optimizer.alpha_ratio.numpy(), np.abs(E[:, :2].T @ g) / np.linalg.norm(g), rtol=1e-5)


def test_directions_set_before_build_are_applied_at_build():
    E = orthonormal_directions()
    optimizer = NSGD(0.1, gamma=0.0, top_k=3)
    optimizer.set_directions(E)
    step = np.diff(run(optimizer, random_gradients(1)), axis=0)[0]
    np.testing.assert_allclose(E.T @ step, 0.0, atol=1e-6)


def test_gamma_changes_inside_a_compiled_step():
    variables = make_variables()
    optimizer = NSGD(0.1, gamma=1.0, top_k=3)
    optimizer.build(variables)
    E = orthonormal_directions()
    optimizer.set_directions(E)
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
    assert len(traces) == 1
    np.testing.assert_allclose(E.T @ second, 0.0, atol=1e-6)
    assert np.abs(E.T @ first).max() > 1e-3


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(3)])


def classification(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)).astype("float32"), rng.integers(0, 3, n)


def model_directions(model, k=2, seed=3):
    dim = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, k)))[0].astype("float32")


def compile_nsgd(model, jit_compile=False, **kwargs):
    model.compile(optimizer=NSGD(**kwargs), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit_compile)
    model.optimizer.build(model.trainable_variables)
    model.optimizer.set_directions(model_directions(model))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_model_fit_with_and_without_xla(jit_compile):
    x, y = classification()
    model = tiny_model()
    compile_nsgd(model, jit_compile, learning_rate=0.1, gamma=0.0, top_k=2, momentum=0.5)
    E = model.optimizer.get_directions()
    start = flat(model.trainable_variables)
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    assert history.history["loss"][1] < history.history["loss"][0]
    moved = flat(model.trainable_variables) - start
    assert np.abs(moved).max() > 1e-3
    np.testing.assert_allclose(E.T @ moved, 0.0, atol=1e-5)  # gamma=0 froze the top subspace


def test_schedule_and_reduce_lr_on_plateau():
    x, y = classification()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.2, decay_steps=2, decay_rate=0.5)
    model, reference = tiny_model(), tiny_model()
    compile_nsgd(model, learning_rate=schedule, gamma=1.0, top_k=2)
    reference.compile(optimizer=keras.optimizers.SGD(schedule),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    reference.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    np.testing.assert_allclose(flat(model.trainable_variables), flat(reference.trainable_variables), atol=1e-6)

    def plateau_run(model):
        reduce = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0)
        return model.fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=[reduce]).history["learning_rate"]

    plateau, sgd = tiny_model(), tiny_model()
    compile_nsgd(plateau, learning_rate=0.1, gamma=0.5, top_k=2)
    sgd.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rates = plateau_run(plateau)
    np.testing.assert_allclose(rates, plateau_run(sgd), rtol=1e-6)
    assert rates[-1] < rates[0] and plateau.optimizer.learning_rate.numpy() < 0.1 / 4


def test_save_load_round_trip_continues_identically(tmp_path):
    x, y = classification()
    settings = dict(learning_rate=0.1, momentum=0.9, gamma=0.3, top_k=2, nudge="gradient")
    uninterrupted = tiny_model()
    compile_nsgd(uninterrupted, **settings)
    uninterrupted.fit(x, y, batch_size=8, epochs=4, verbose=0, shuffle=False)

    first = tiny_model()
    compile_nsgd(first, **settings)
    first.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    path = str(tmp_path / "m.keras")
    first.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects, safe mode
    optimizer = loaded.optimizer
    assert isinstance(optimizer, NSGD)
    assert optimizer.gamma == pytest.approx(0.3)
    assert (optimizer.top_k, optimizer.nudge, optimizer.momentum) == (2, "gradient", 0.9)
    assert optimizer.has_directions
    np.testing.assert_array_equal(optimizer.get_directions(), first.optimizer.get_directions())
    loaded.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    np.testing.assert_allclose(flat(loaded.trainable_variables), flat(uninterrupted.trainable_variables), atol=1e-6)


def test_mirrored_strategy_matches_one_device():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    x, y = classification()
    single = tiny_model()
    compile_nsgd(single, learning_rate=0.1, gamma=0.2, top_k=2, momentum=0.5)
    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
        mirrored = tiny_model()
        compile_nsgd(mirrored, learning_rate=0.1, gamma=0.2, top_k=2, momentum=0.5)
    np.testing.assert_array_equal(mirrored.optimizer.get_directions(), single.optimizer.get_directions())
    single.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    mirrored.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    np.testing.assert_allclose(flat(mirrored.trainable_variables), flat(single.trainable_variables), atol=1e-5)
    np.testing.assert_allclose(mirrored.optimizer.alpha.numpy(), single.optimizer.alpha.numpy(), rtol=1e-4)


def test_bad_input():
    with pytest.raises(ValueError, match=r"Unknown nudge 'correct_v'; choose one of \('velocity', 'gradient'\)"):
        NSGD(nudge="correct_v")
    with pytest.raises(ValueError, match="top_k"):
        NSGD(top_k=0)
    with pytest.raises(ValueError, match="gamma"):
        NSGD(gamma=float("nan"))
    with pytest.raises(ValueError, match="momentum"):
        NSGD(momentum=1.5)
    optimizer = NSGD(top_k=3)
    optimizer.build(make_variables())
    with pytest.raises(ValueError, match=r"shape \[dim=26, K\]"):
        optimizer.set_directions(np.ones((25, 3)))
    with pytest.raises(ValueError, match="top_k=3"):
        optimizer.set_directions(np.ones((26, 2)))
    bad = orthonormal_directions()
    bad[0, 0] = np.nan
    optimizer.set_directions(orthonormal_directions())
    with pytest.raises(ValueError, match="NaN"):
        optimizer.set_directions(bad)
    np.testing.assert_array_equal(optimizer.get_directions(), orthonormal_directions())
    with pytest.raises(ValueError, match="NaN"):
        NSGD().set_directions(bad)
