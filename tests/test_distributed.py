"""Curvature products under tf.distribute.MirroredStrategy over two logical CPUs, against one device."""

import keras
import numpy as np
import pytest

from tf_sharpest.hessian import top_eigenpairs
from tf_sharpest.operators import CURVATURES, HessianOperator, Sample

from references import batchnorm_dropout_model, classification_data, explicit_hessian, sparse_ce, tiny_cnn, twin_models


@pytest.mark.parametrize("name", sorted(CURVATURES))
@pytest.mark.parametrize("loss", ["compiled", "explicit"])
def test_products_equal_single_device_ones_on_an_uneven_sample(mirrored_strategy, name, loss):
    single, mirrored = twin_models(mirrored_strategy)
    x, y = classification_data((6, 6, 1), n=23, dtype="float32", seed=2)  # 12 + 11 examples, batches of 5
    kwargs = {} if loss == "compiled" else {"loss": sparse_ce("float32")}
    reference = CURVATURES[name](single, (x, y), batch_size=5, **kwargs)
    distributed = CURVATURES[name](mirrored, (x, y), batch_size=5, **kwargs)
    assert distributed.strategy is mirrored_strategy and distributed.num_replicas == 2
    assert distributed.replica_plan.examples_per_replica == [12, 11]
    rng = np.random.default_rng(0)
    for _ in range(2):
        v = rng.standard_normal(reference.dim).astype("float32")
        expected = reference.matvec(v).numpy()
        actual = distributed.matvec(v).numpy()
        assert np.linalg.norm(actual - expected) <= 1e-5 * np.linalg.norm(expected)


def test_eigenpairs_under_the_strategy_equal_single_device(mirrored_strategy):
    single, mirrored = twin_models(mirrored_strategy, seed=1)
    x, y = classification_data((6, 6, 1), n=19, dtype="float32", seed=3)
    expected = top_eigenpairs(single, (x, y), k=3, batch_size=4, tol=1e-6).eigenvalues
    actual = top_eigenpairs(mirrored, (x, y), k=3, batch_size=4, tol=1e-6).eigenvalues
    np.testing.assert_allclose(actual, expected, rtol=1e-4)


def test_sample_split_puts_every_example_in_one_shard():
    x, y = classification_data((3,), n=11, dtype="float32")
    shards = Sample.from_data((x, y), batch_size=4).split(3)
    assert [s.num_examples for s in shards] == [4, 4, 3]
    labels = np.concatenate([b[1].numpy() for s in shards for b in s.batches])
    np.testing.assert_array_equal(labels, y)
    with pytest.raises(ValueError, match="fewer than the 12 replicas"):
        Sample.from_data((x, y)).split(12)


def test_bad_strategies_are_refused(mirrored_strategy):
    single, mirrored = twin_models(mirrored_strategy)
    x, y = classification_data((6, 6, 1), n=8, dtype="float32")
    with pytest.raises(ValueError, match="built under _DefaultDistributionStrategy, not the MirroredStrategy"):
        HessianOperator(single, (x, y), strategy=mirrored_strategy)
    with pytest.raises(ValueError, match="fewer than the 2 replicas"):
        HessianOperator(mirrored, (x[:1], y[:1]))
    with pytest.raises(ValueError, match="must be a tf.distribute.Strategy"):
        HessianOperator(mirrored, (x, y), strategy="mirrored")


def test_lanczos_callback_and_nsgd_in_a_mirrored_fit(mirrored_strategy):
    from tf_sharpest.callbacks import LanczosCallback
    from tf_sharpest.linalg import LanczosSolver
    from tf_sharpest.optimizers import NSGD

    single, _ = twin_models(mirrored_strategy, seed=2)
    x, y = classification_data((6, 6, 1), n=40, dtype="float32", seed=4)
    expected = top_eigenpairs(single, (x, y), k=2, batch_size=8, tol=1e-6).eigenvalues  # the initial weights
    with mirrored_strategy.scope():
        model = tiny_cnn("float32", seed=2)
        model.compile(optimizer=NSGD(0.05, gamma=0.5, top_k=2), loss=sparse_ce("float32"))
    model.set_weights(single.get_weights())
    callback = LanczosCallback((x, y), top_k=2, num_samples=len(x), batch_size=8, solver=LanczosSolver(tol=1e-6),
                               resample=False)
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])
    assert callback.operator.num_replicas == 2 and callback.operator.replica_plan.examples_per_replica == [20, 20]
    np.testing.assert_allclose(callback.history[0].eigenvalues, expected, rtol=1e-4)  # measured before any step
    np.testing.assert_array_equal(model.optimizer.get_directions(), callback.eigenvectors)
    assert np.all(np.isfinite(history.history["lambda_1"])) and history.history["nsgd_alpha_ratio_1"][-1] > 0


def batchnorm_model():
    """The float64 BatchNormalization MLP without dropout (one device and the replicas see the same function)."""
    model = batchnorm_dropout_model()
    model.layers[3].rate = 0.0
    return model


@pytest.mark.parametrize("name", sorted(CURVATURES))
def test_training_mode_batchnorm_under_the_strategy_uses_one_devices_batches(mirrored_strategy, name):
    # 50 examples at batch_size 16: one device uses batches of 16, 16, 16 and 2, whose batch statistics
    # differ from those of two contiguous shards of 25 (16 + 9 each), which replicas used before.
    single = batchnorm_model()
    with mirrored_strategy.scope():
        mirrored = batchnorm_model()
    mirrored.set_weights(single.get_weights())
    x, y = classification_data((5,), n=50, seed=7)
    reference = CURVATURES[name](single, (x, y), loss=sparse_ce(), batch_size=16, training=True)
    distributed = CURVATURES[name](mirrored, (x, y), loss=sparse_ce(), batch_size=16, training=True)
    assert reference.sample.sizes == (16, 16, 16, 2)
    assert distributed.replica_plan.batch_sizes_per_replica == [[16, 16], [16, 2]]
    block = np.random.default_rng(8).standard_normal((reference.dim, 3))
    expected = reference.matmat(block).numpy()
    if name == "hessian":  # and one device's operator is the example-weighted sum of per-batch Hessians
        explicit = sum(n / 50 * explicit_hessian(single, x[a:a + n], y[a:a + n], sparse_ce(), training=True)
                       for a, n in zip((0, 16, 32, 48), (16, 16, 16, 2)))
        np.testing.assert_allclose(expected, explicit @ block, rtol=1e-8, atol=1e-10 * np.abs(expected).max())
    np.testing.assert_allclose(distributed.matmat(block).numpy(), expected, rtol=1e-10,
                               atol=1e-12 * np.abs(expected).max())
    np.testing.assert_allclose(distributed.matvec(block[:, 0]).numpy(), expected[:, 0], rtol=1e-10,
                               atol=1e-12 * np.abs(expected).max())


def test_inference_mode_keeps_the_even_split(mirrored_strategy):
    single, mirrored = twin_models(mirrored_strategy)
    x, y = classification_data((6, 6, 1), n=50, dtype="float32", seed=8)
    distributed = HessianOperator(mirrored, (x, y), batch_size=16)
    assert distributed.replica_plan.batch_sizes_per_replica == [[16, 9], [16, 9]]  # balanced, exact in inference


def test_synchronized_batchnorm_in_training_mode_is_refused(mirrored_strategy):
    with mirrored_strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4),
                                  keras.layers.BatchNormalization(synchronized=True), keras.layers.Dense(3)])
    x, y = classification_data((5,), n=20, dtype="float32")
    with pytest.raises(ValueError, match="synchronized.*mix the batches of all replicas.*training=False"):
        HessianOperator(model, (x, y), loss=sparse_ce("float32"), training=True)
    assert HessianOperator(model, (x, y), loss=sparse_ce("float32"), training=False).num_replicas == 2
