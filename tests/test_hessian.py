import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_sharpest.hessian import top_eigenpairs
from tf_sharpest.operators import HessianOperator
from tf_sharpest.utils._batches import even_batch_size

from references import batchnorm_dropout_model, classification_data, explicit_hessian, sparse_ce, tiny_cnn, tiny_mlp


def traces(operator, name="matvec"):
    """How often TensorFlow traced the operator's graph of ``name`` (its tf.function's own count)."""
    return operator.traced_functions[name].experimental_get_tracing_count()


def random_vector(dim, dtype="float64", seed=0):
    return np.random.default_rng(seed).standard_normal(dim).astype(dtype)


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-6), ("float32", 2e-4)])
def test_mlp_hvp_matches_explicit_hessian_with_uneven_batches(dtype, rtol):
    model = tiny_mlp(dtype)
    x, y = classification_data((4,), n=23, dtype=dtype)
    hessian = explicit_hessian(model, x, y, sparse_ce(dtype))
    operator = HessianOperator(model, (x, y), loss=sparse_ce(dtype), batch_size=5)  # batches 5,5,5,5,3
    assert operator.dim == hessian.shape[0] == 51 and operator.num_batches == 5 and operator.num_examples == 23
    for seed in range(3):
        v = random_vector(operator.dim, dtype, seed)
        np.testing.assert_allclose(operator.matvec(v).numpy(), hessian @ v, rtol=rtol,
                                   atol=rtol * np.abs(hessian).max())


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-6), ("float32", 2e-4)])
def test_cnn_with_l2_compiled_loss_and_dataset_input(dtype, rtol, floatx):
    floatx(dtype)  # Keras's compiled loss sums its terms in floatx
    model = tiny_cnn(dtype)
    model.compile(loss=sparse_ce(dtype))
    x, y = classification_data((6, 6, 1), n=19, dtype=dtype, seed=1)
    hessian = explicit_hessian(model, x, y, sparse_ce(dtype))
    assert model.losses, "the reference must include the L2 terms"
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)  # 4,4,4,4,3
    operator = HessianOperator(model, dataset)
    v = random_vector(operator.dim, dtype, 3)
    np.testing.assert_allclose(operator.matvec(v).numpy(), hessian @ v, rtol=rtol, atol=rtol * np.abs(hessian).max())
    # Five batches: an L2 term added per batch instead of once would be 5x too large here.
    with_l2 = np.abs(hessian @ v)
    assert np.max(np.abs(operator.matvec(v).numpy() - hessian @ v)) < rtol * with_l2.max()


def test_structured_form_and_loss_value():
    model = tiny_mlp()
    x, y = classification_data((4,), n=10)
    operator = HessianOperator(model, (x, y), loss=sparse_ce(), batch_size=3)
    v = random_vector(operator.dim)
    parts = operator.matvec_structured(operator.layout.unflatten(v))
    assert [tuple(p.shape) for p in parts] == [tuple(w.shape) for w in model.trainable_variables]
    np.testing.assert_allclose(operator.layout.flatten(parts).numpy(), operator.matvec(v).numpy(), rtol=1e-12)
    np.testing.assert_allclose(operator.loss, float(sparse_ce()(y, model(x))), rtol=1e-12)
    assert operator.num_matvecs == 2


def test_traced_once_per_operator():
    model = tiny_mlp()
    x, y = classification_data((4,), n=23)
    operator = HessianOperator(model, (x, y), loss=sparse_ce(), batch_size=5)
    for seed in range(4):
        operator.matvec(random_vector(operator.dim, seed=seed))
    for seed in range(3):
        operator.matvec_structured(operator.layout.unflatten(random_vector(operator.dim, seed=seed)))
    assert traces(operator) == 1  # 7 products over 5 batches each, the last one smaller
    assert operator.num_matvecs == 7


def test_set_data_moves_the_operator_to_a_new_sample_without_retracing():
    model = tiny_mlp()
    x, y = classification_data((4,), n=30, seed=2)
    operator = HessianOperator(model, (x[:13], y[:13]), loss=sparse_ce(), batch_size=5)
    v = random_vector(operator.dim)
    operator.matvec(v)
    operator.set_data((x[13:], y[13:]))  # 17 other examples: batches 5,5,5,2
    hessian = explicit_hessian(model, x[13:], y[13:], sparse_ce())
    np.testing.assert_allclose(operator.matvec(v).numpy(), hessian @ v, rtol=1e-6, atol=1e-6 * np.abs(hessian).max())
    np.testing.assert_allclose(operator.loss, float(sparse_ce()(y[13:], model(x[13:]))), rtol=1e-12)
    assert (operator.num_examples, operator.num_batches, traces(operator), operator.num_matvecs) == (17, 4, 1, 2)
    assert traces(operator, "loss") == 1  # the loss graph of the new sample is the old one


def test_equal_batches_trace_their_fixed_shape_and_give_the_same_products():
    model = tiny_mlp()
    x, y = classification_data((4,), n=24, seed=3)
    hessian = explicit_hessian(model, x, y, sparse_ce())
    v = random_vector(hessian.shape[0], seed=4)
    fixed = HessianOperator(model, (x, y), loss=sparse_ce(), batch_size=8)  # 8, 8, 8
    open_batch = HessianOperator(model, (x, y), loss=sparse_ce(), batch_size=7)  # 7, 7, 7, 3
    assert [s.shape[0] for s in fixed.objective.trace_spec] == [8, 8]
    assert [s.shape[0] for s in open_batch.objective.trace_spec] == [None, None]
    for operator in (fixed, open_batch):
        np.testing.assert_allclose(operator.matvec(v).numpy(), hessian @ v, rtol=1e-6,
                                   atol=1e-6 * np.abs(hessian).max())
        np.testing.assert_allclose(operator.objective.gradient().numpy(), open_batch.objective.gradient().numpy(),
                                   rtol=1e-10)
    fixed.matvec(v)
    assert traces(fixed) == 1
    assert "shape=(8, 4)" in fixed.traced_functions["matvec"].pretty_printed_concrete_signatures()  # fixed shape
    # New data in batches of another size: one new trace, still exact.
    fixed.set_data((x[:20], y[:20]))  # 8, 8, 4
    part = explicit_hessian(model, x[:20], y[:20], sparse_ce())
    np.testing.assert_allclose(fixed.matvec(v).numpy(), part @ v, rtol=1e-6, atol=1e-6 * np.abs(part).max())
    fixed.matvec(v)
    assert traces(fixed) == 2


def test_even_batch_size():
    assert even_batch_size(2250, 128) == 125  # the paper's sample: 18 batches of 125
    assert even_batch_size(512, 256) == 256
    assert even_batch_size(1000, 128) == 125
    assert even_batch_size(64, 128) == 64  # one batch
    assert even_batch_size(1009, 128) == 128  # a prime: no equal cut of at least 64
    assert even_batch_size(17, 4) == 4


def test_set_data_of_another_structure_is_refused_and_the_operator_kept():
    model = tiny_mlp()
    x, y = classification_data((4,), n=12, seed=2)
    operator = HessianOperator(model, (x, y), loss=sparse_ce(), batch_size=4)
    v = random_vector(operator.dim)
    before = operator.matvec(v).numpy()
    with pytest.raises(ValueError, match="do not match"):
        operator.set_data((x.astype("float32"), y))
    bad = x.copy()
    bad[5, 0] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        operator.set_data((bad, y))
    assert operator.num_examples == 12
    np.testing.assert_array_equal(operator.matvec(v).numpy(), before)


def test_training_flag_controls_batchnorm_and_dropout():
    model = batchnorm_dropout_model()  # Dense(6), BatchNormalization, tanh, Dropout, Dense(3) on 5 inputs
    bn = model.layers[1]
    bn.moving_mean.assign(np.full(6, 0.3))
    bn.moving_variance.assign(np.full(6, 2.0))
    x, y = classification_data((5,), n=12)
    hessian = explicit_hessian(model, x, y, sparse_ce(), training=False)
    operator = HessianOperator(model, (x, y), loss=sparse_ce(), batch_size=12)
    v = random_vector(operator.dim)
    np.testing.assert_allclose(operator.matvec(v).numpy(), hessian @ v, rtol=1e-6, atol=1e-9)
    # Dropout would make a training-mode pass random; compare a deterministic model instead.
    model.layers[3].rate = 0.0
    trained = HessianOperator(model, (x, y), loss=sparse_ce(), batch_size=12, training=True)
    reference = explicit_hessian(model, x, y, sparse_ce(), training=True)
    np.testing.assert_allclose(trained.matvec(v).numpy(), reference @ v, rtol=1e-6, atol=1e-9)
    assert not np.allclose(reference, hessian)


@pytest.mark.parametrize("model_fn, shape", [(tiny_mlp, (4,)), (tiny_cnn, (6, 6, 1))])
def test_top_eigenpairs_match_eigh_of_explicit_hessian(model_fn, shape):
    model = model_fn()
    x, y = classification_data(shape, n=21, seed=2)
    hessian = explicit_hessian(model, x, y, sparse_ce())
    reference_values, reference_vectors = np.linalg.eigh(hessian)
    result = top_eigenpairs(model, (x, y), k=5, loss=sparse_ce(), batch_size=8, tol=1e-8)
    np.testing.assert_allclose(result.eigenvalues, reference_values[::-1][:5], rtol=1e-4)
    assert result.eigenvectors.shape == (hessian.shape[0], 5)
    np.testing.assert_allclose(result.eigenvectors.T @ result.eigenvectors, np.eye(5), atol=1e-8)
    residuals = np.linalg.norm(hessian @ result.eigenvectors - result.eigenvectors * result.eigenvalues, axis=0)
    assert np.all(residuals < 1e-6 * reference_values.max())
    np.testing.assert_allclose(result.residual_norms, residuals, atol=1e-6 * reference_values.max())
    assert result.num_matvecs > 0

    smallest = top_eigenpairs(model, (x, y), k=2, loss=sparse_ce(), which="smallest", tol=1e-8)
    np.testing.assert_allclose(smallest.eigenvalues, reference_values[:2], rtol=1e-4,
                               atol=1e-8 * reference_values.max())


def test_float32_top_eigenpairs_on_a_cnn():
    model = tiny_cnn("float32")
    x, y = classification_data((6, 6, 1), n=30, dtype="float32", seed=4)
    reference = np.linalg.eigvalsh(explicit_hessian(model, x, y, sparse_ce("float32")).astype(np.float64))[::-1][:5]
    result = top_eigenpairs(model, (x, y), k=5, loss=sparse_ce("float32"), batch_size=7, tol=1e-5)
    np.testing.assert_allclose(result.eigenvalues, reference, rtol=1e-4)


class TestBadInput:
    def setup_method(self):
        self.model = tiny_mlp()
        self.x, self.y = classification_data((4,), n=10)

    def test_k_out_of_range(self):
        for k in (0, 52):
            with pytest.raises(ValueError, match="1 <= k <= dim=51"):
                top_eigenpairs(self.model, (self.x, self.y), k=k, loss=sparse_ce())

    def test_empty_data(self):
        with pytest.raises(ValueError, match="empty"):
            HessianOperator(self.model, (self.x[:0], self.y[:0]), loss=sparse_ce())
        with pytest.raises(ValueError, match="empty"):
            HessianOperator(self.model, tf.data.Dataset.from_tensor_slices((self.x, self.y)).batch(4).take(0),
                            loss=sparse_ce())

    def test_infinite_dataset(self):
        dataset = tf.data.Dataset.from_tensor_slices((self.x, self.y)).batch(4).repeat()
        with pytest.raises(ValueError, match="infinite.*take"):
            HessianOperator(self.model, dataset, loss=sparse_ce())

    def test_unbatched_dataset(self):
        with pytest.raises(ValueError, match="unbatched"):
            HessianOperator(self.model, tf.data.Dataset.from_tensor_slices((self.x, self.y)), loss=sparse_ce())

    def test_no_loss(self):
        with pytest.raises(ValueError, match="no loss.*compile"):
            HessianOperator(self.model, (self.x, self.y))

    def test_mismatched_lengths(self):
        with pytest.raises(ValueError, match="same number of examples: x has 10, y has 9"):
            HessianOperator(self.model, (self.x, self.y[:9]), loss=sparse_ce())

    def test_non_finite_loss_names_the_batch(self):
        x = self.x.copy()
        x[7, 0] = np.nan  # batch 1 with batch_size 4
        with pytest.raises(ValueError, match="not finite.*batch 1"):
            HessianOperator(self.model, (x, self.y), loss=sparse_ce(), batch_size=4)

    def test_wrong_vector_shape(self):
        operator = HessianOperator(self.model, (self.x, self.y), loss=sparse_ce())
        with pytest.raises(ValueError, match="length 51"):
            operator.matvec(np.ones(50))
        with pytest.raises(ValueError, match="one per trainable variable"):
            operator.matvec_structured([np.ones(3)])


def test_model_trained_under_mirrored_strategy(mirrored_strategy):
    strategy = mirrored_strategy
    x, y = classification_data((6, 6, 1), n=24, dtype="float32")
    with strategy.scope():
        model = tiny_cnn("float32")
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=sparse_ce("float32"))
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    reference = np.linalg.eigvalsh(explicit_hessian(model, x, y, sparse_ce("float32")).astype(np.float64))[::-1]
    result = top_eigenpairs(model, (x, y), k=3, batch_size=8, tol=1e-6)
    np.testing.assert_allclose(result.eigenvalues, reference[:3], rtol=1e-4)


def test_each_public_name_has_one_home_and_the_documented_paths_still_import():
    import tf_sharpest.hessian
    import tf_sharpest.linalg
    import tf_sharpest.operators

    assert tf_sharpest.hessian.__all__ == ["top_eigenpairs"]
    assert tf_sharpest.hessian.HessianOperator is tf_sharpest.operators.HessianOperator
    assert "EigenResult" in tf_sharpest.linalg.__all__ and "HessianOperator" in tf_sharpest.operators.__all__
