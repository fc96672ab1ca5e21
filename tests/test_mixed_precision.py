"""Mixed precision (issue 22): NSGD and the preconditioner see through Keras's LossScaleOptimizer.

Under ``keras.mixed_precision.set_global_policy("mixed_float16")`` the model computes in float16, keeps its
variables in float32, and ``model.compile`` wraps the optimizer in ``keras.optimizers.LossScaleOptimizer``,
which multiplies the loss by a dynamic scale and divides the gradients by it before its inner optimizer steps.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_sharpest.callbacks import LanczosCallback
from tf_sharpest.operators import optimizer_preconditioner
from tf_sharpest.operators._preconditioned import optimizer_preconditioner_supports
from tf_sharpest.optimizers import NSGD

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="tanh"),
                             keras.layers.Dense(3, dtype="float32")])  # float32 logits, as Keras advises


def classification(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)).astype("float32"), rng.integers(0, 3, n)


def flat(variables):
    return np.concatenate([np.asarray(v.numpy(), dtype=np.float64).reshape(-1) for v in variables])


def orthonormal(dim, k, seed=3):
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, k)))[0].astype("float32")


def test_nsgd_step_nudges_the_unscaled_gradient(mixed_float16):
    """One step of NSGD inside the LossScaleOptimizer against Keras's SGD's step under the same policy."""
    x, y = classification(n=8)
    nudged, reference = tiny_model(), tiny_model()
    assert nudged.layers[0].compute_dtype == "float16"
    nudged.compile(optimizer=NSGD(0.1, gamma=0.3, top_k=2), loss=LOSS)
    reference.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    assert isinstance(nudged.optimizer, keras.optimizers.LossScaleOptimizer)
    dim = sum(int(np.prod(v.shape)) for v in nudged.trainable_variables)
    E = orthonormal(dim, 2)
    nudged.optimizer.inner_optimizer.set_directions(None, E)
    start = flat(nudged.trainable_variables)
    for model in (nudged, reference):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)  # one step
        # The scaled gradient was finite, so the step was taken (the inner optimizer counts it in every Keras).
        assert int(model.optimizer.inner_optimizer.iterations.numpy()) == 1
    sgd_step = flat(reference.trainable_variables) - start  # -lr g, g the unscaled gradient Keras computed
    assert np.abs(sgd_step).max() > 1e-3
    gradient = -sgd_step / 0.1
    E64 = E.astype(np.float64)
    expected = sgd_step + (0.3 - 1.0) * E64 @ (E64.T @ sgd_step)  # -lr (g + (gamma - 1) E E^T g)
    np.testing.assert_allclose(flat(nudged.trainable_variables) - start, expected, atol=2e-6)
    # alpha is |E^T g| of the unscaled gradient (the scaled one is 32768 times larger).
    np.testing.assert_allclose(nudged.optimizer.inner_optimizer.alpha.numpy(), np.abs(E64.T @ gradient), rtol=1e-3)


def test_lanczos_callback_steers_nsgd_inside_the_loss_scale_optimizer(mixed_float16):
    """Regression: the callback handed no directions to the wrapped NSGD and logged no nsgd_alpha_*."""
    x, y = classification(n=32)
    model = tiny_model()
    model.compile(optimizer=NSGD(0.05, momentum=0.5, gamma=0.2, top_k=2), loss=LOSS)
    callback = LanczosCallback((x, y), top_k=2, num_samples=32, batch_size=16, resample=False, seed=0)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False, callbacks=[callback])
    nsgd = model.optimizer.inner_optimizer
    assert nsgd.has_directions
    logged = history.history
    for key in ("nsgd_alpha_1", "nsgd_alpha_2", "nsgd_alpha_ratio_1", "nsgd_alpha_ratio_2"):
        assert key in logged and len(logged[key]) == 2, sorted(logged)
    # The directions are the callback's last eigenvectors; the logged alphas are what the optimizer computed.
    np.testing.assert_allclose(logged["nsgd_alpha_1"][-1], float(nsgd.alpha.numpy()[0]), rtol=1e-6)
    assert 0.0 < logged["nsgd_alpha_ratio_1"][-1] <= 1.0
    eigenvectors = nsgd.get_directions()
    np.testing.assert_allclose(eigenvectors.T @ eigenvectors, np.eye(2), atol=1e-4)
    assert logged["lambda_1"][-1] >= logged["lambda_2"][-1] > 0


def test_optimizer_preconditioner_reads_the_adam_inside_the_loss_scale_optimizer(mixed_float16):
    x, y = classification(n=16)
    model = tiny_model()
    model.compile(optimizer=keras.optimizers.Adam(0.01, beta_1=0.0), loss=LOSS)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    wrapper = model.optimizer
    assert isinstance(wrapper, keras.optimizers.LossScaleOptimizer)
    assert optimizer_preconditioner_supports(wrapper) == "Adam"
    # One more step of the inner Adam with a known gradient, handed in scaled as Keras's train step does.
    rng = np.random.default_rng(5)
    gradient = [rng.standard_normal(v.shape).astype("float32") for v in model.trainable_variables]
    before = flat(model.trainable_variables)
    scale = float(wrapper.dynamic_scale.numpy())
    wrapper.apply([tf.constant(g * scale) for g in gradient], model.trainable_variables)
    update = flat(model.trainable_variables) - before
    diagonal = optimizer_preconditioner(wrapper, model.trainable_variables)
    np.testing.assert_array_equal(diagonal, optimizer_preconditioner(wrapper.inner_optimizer,
                                                                     model.trainable_variables))
    # With beta_1 = 0 Adam's step is -lr * g / D, D read after the step (tests/test_operators.py, unwrapped).
    learning_rate = float(wrapper.inner_optimizer.learning_rate.numpy())
    np.testing.assert_allclose(update, -learning_rate * np.concatenate([g.ravel() for g in gradient]) / diagonal,
                               rtol=1e-4, atol=1e-9)


def test_nsgd_under_mixed_precision_and_mirrored_strategy_matches_one_device(mirrored_strategy, mixed_float16):
    """The LossScaleOptimizer runs NSGD's step per replica (inside a merge call): the nudge still sees the sum."""
    x, y = classification(n=32)
    single = tiny_model()
    single.compile(optimizer=NSGD(0.1, momentum=0.5, gamma=0.3, top_k=2), loss=LOSS)
    with mirrored_strategy.scope():
        mirrored = tiny_model()
        mirrored.compile(optimizer=NSGD(0.1, momentum=0.5, gamma=0.3, top_k=2), loss=LOSS)
    E = orthonormal(sum(int(np.prod(v.shape)) for v in single.trainable_variables), 2)
    start = flat(single.trainable_variables)
    for model in (single, mirrored):
        model.optimizer.inner_optimizer.set_directions(None, E)
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)  # two steps
        assert int(model.optimizer.inner_optimizer.iterations.numpy()) == 2
    moved = flat(single.trainable_variables) - start
    assert np.abs(moved).max() > 1e-2
    # float16 forward passes over different shards: agreement to float16 round-off of the step.
    np.testing.assert_allclose(flat(mirrored.trainable_variables) - start, moved, atol=1e-4)
    np.testing.assert_allclose(mirrored.optimizer.inner_optimizer.alpha.numpy(),
                               single.optimizer.inner_optimizer.alpha.numpy(), rtol=2e-3)
