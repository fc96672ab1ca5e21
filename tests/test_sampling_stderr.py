"""Sampling errors of eigenvalues (issue 24): per-batch Rayleigh quotients, their calibration, the accuracy-aware
stop of LanczosSolver, and what LanczosCallback logs (stderr, epoch-equivalents, OverheadBudget)."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_sharpest.callbacks import LanczosCallback, MeasurementLog, OverheadBudget
from tf_sharpest.hessian import top_eigenpairs
from tf_sharpest.linalg import BatchProjections, LanczosSolver, batch_rayleigh_quotients, lanczos, sampling_stderr
from tf_sharpest.operators import HessianOperator, MatrixOperator

from references import (
    classification_data,
    explicit_hessian,
    linear_softmax_regression,
    sparse_ce,
    tiny_cnn,
    tiny_mlp,
)


def teacher_data(n, scale=3.0, seed=1):
    """Inputs with one wide feature and labels that depend on it: a top eigenvalue well apart from the rest."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)) * np.array([scale, 1.0, 1.0, 1.0])
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 1).astype("int64")
    return x, y


def dense(operator):
    matrix = operator.matmat(tf.eye(operator.dim, dtype=operator.dtype)).numpy()
    return (matrix + matrix.T) / 2


def test_batch_rayleigh_quotients_are_those_of_the_explicit_batch_hessians():
    model, loss = tiny_mlp(), sparse_ce()
    x, y = teacher_data(24)
    hessian = HessianOperator(model, (x, y), loss=loss, batch_size=8)
    batches = [explicit_hessian(model, x[b:b + 8], y[b:b + 8], loss) for b in range(0, 24, 8)]
    values, vectors = np.linalg.eigh(np.mean(batches, axis=0))
    top = vectors[:, ::-1][:, :2]
    before = hessian.num_matvecs
    quotients, weights = batch_rayleigh_quotients(hessian, top)
    expected = np.array([[v @ h @ v for v in top.T] for h in batches])
    np.testing.assert_allclose(quotients, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(weights, [1 / 3] * 3)
    np.testing.assert_allclose(weights @ quotients, values[::-1][:2], rtol=1e-9)
    assert hessian.num_matvecs - before == 2  # two products on the whole sample, not two per batch
    # Equal batches: the standard deviation over batches over sqrt(3).
    np.testing.assert_allclose(sampling_stderr(hessian, top), expected.std(axis=0, ddof=1) / np.sqrt(3), rtol=1e-9)
    # The operator is back on its whole sample.
    np.testing.assert_allclose(hessian.matvec(top[:, 0]).numpy(), np.mean(batches, axis=0) @ top[:, 0], atol=1e-10)


def test_unequal_batches_are_weighted_by_their_examples():
    model, loss = tiny_mlp(), sparse_ce()
    x, y = teacher_data(20)
    hessian = HessianOperator(model, (x, y), loss=loss, batch_size=8)  # batches of 8, 8, 4
    v = np.linalg.eigh(dense(hessian))[1][:, -1]
    r = np.array([v @ explicit_hessian(model, x[a:b], y[a:b], loss) @ v for a, b in ((0, 8), (8, 16), (16, 20))])
    w = np.array([0.4, 0.4, 0.2])
    expected = np.sqrt(3 / 2 * np.sum(w**2 * (r - w @ r) ** 2))
    np.testing.assert_allclose(sampling_stderr(hessian, v[:, None]), [expected], rtol=1e-8)


# -- the sampling error from the solver's own products (BatchProjections) ------------------------------------------

def softmax_regression(n=38, d=6, classes=4, l2=0.03125, batch_size=8, seed=0, **kwargs):
    """A float64 linear softmax regression, its Hessian operator, and each batch's closed-form Hessian (no autodiff).

    l2 is a power of 2: Keras holds it in float32, and 0.03 would differ from the reference by 1e-9.
    """
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((d,), dtype="float64"),
                              keras.layers.Dense(classes, kernel_regularizer=keras.regularizers.L2(l2),
                                                 dtype="float64")])
    x, y = classification_data((d,), n=n, classes=classes, seed=seed + 1)
    x[:, 0] *= 3.0  # one wide feature: a top eigenvalue apart from the rest
    kernel, bias = (v.numpy() for v in model.trainable_variables)
    hessian = HessianOperator(model, (x, y), loss=sparse_ce(), batch_size=batch_size, **kwargs)
    cuts = list(range(0, n, batch_size)) + [n]
    batches = [linear_softmax_regression(x[a:b], y[a:b], kernel, bias, l2=l2)[0] for a, b in zip(cuts, cuts[1:])]
    weights = np.diff(cuts) / n
    return hessian, np.array(batches), weights


def explicit_stderr(batches, weights, vectors):
    r = np.einsum("ik,bij,jk->bk", vectors, batches, vectors)
    return np.sqrt(len(weights) / (len(weights) - 1) * (weights**2) @ (r - weights @ r) ** 2)


def test_batch_projections_give_each_batchs_rayleigh_quotients_through_a_restart():
    hessian, batches, weights = softmax_regression()  # batches of 8, 8, 8, 8, 6
    rng = np.random.default_rng(0)
    basis_rows = np.linalg.qr(rng.standard_normal((hessian.dim, 6)))[0].T  # [6, dim] orthonormal
    basis = tf.Variable(np.zeros((8, hessian.dim)))
    projections = BatchProjections(hessian, 8)
    for j in range(4):
        with projections.step(basis, j):  # as in lanczos: the vector is stored inside the step, then multiplied
            basis[j].assign(basis_rows[j])
            hessian.matvec(basis_rows[j])
    # A thick restart keeps 3 combinations of the 4 vectors, then the basis grows by two more.
    combination = np.linalg.qr(rng.standard_normal((4, 3)))[0]
    kept = combination.T @ basis_rows[:4]
    basis[:3].assign(kept)
    projections.restart(combination)
    rows = np.concatenate([kept, basis_rows[4:6]])
    for j in (3, 4):
        with projections.step(basis, j):
            basis[j].assign(rows[j])
            hessian.matvec(rows[j])
    y = np.linalg.qr(rng.standard_normal((5, 2)))[0]
    vectors = rows.T @ y
    expected = np.einsum("ik,bij,jk->bk", vectors, batches, vectors)
    np.testing.assert_allclose(projections.quotients(y), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(projections.quotients(y), batch_rayleigh_quotients(hessian, vectors)[0], rtol=1e-10)
    np.testing.assert_allclose(projections.stderr(y), explicit_stderr(batches, weights, vectors), rtol=1e-10)


@pytest.mark.parametrize("micro_batch_size", [None, 3])
def test_lanczos_stderr_costs_no_product_and_matches_the_explicit_batches(micro_batch_size):
    hessian, batches, weights = softmax_regression(micro_batch_size=micro_batch_size)
    before = hessian.num_matvecs
    # max_basis_size=8 for 3 pairs of a 28-dimensional operator: several thick restarts.
    result = lanczos(hessian, 3, tol=1e-10, max_basis_size=8, seed=0, stderr=True)
    spent = hessian.num_matvecs - before
    assert result.num_restarts >= 2 and result.converged
    plain = lanczos(hessian, 3, tol=1e-10, max_basis_size=8, seed=0)
    assert result.num_matvecs == spent == plain.num_matvecs  # no product for the error bars
    np.testing.assert_allclose(result.eigenvalues, plain.eigenvalues, rtol=1e-12)
    exact = np.linalg.eigvalsh(np.tensordot(weights, batches, 1))[::-1][:3]
    np.testing.assert_allclose(result.eigenvalues, exact, rtol=1e-9)
    expected = explicit_stderr(batches, weights, result.eigenvectors)
    np.testing.assert_allclose(result.stderr, expected, rtol=1e-6)
    np.testing.assert_allclose(result.stderr, sampling_stderr(hessian, result), rtol=1e-6)


def test_products_that_bypass_the_batches_fall_back_to_k_products():
    """A curvature operator whose matvec does not go through the per-batch accumulation hands out no parts: the
    projections are incomplete, and the error bars come from sampling_stderr (k more products, counted)."""
    hessian, batches, weights = softmax_regression()
    matrix = tf.constant(np.tensordot(weights, batches, 1))

    class Bypassing(HessianOperator):
        def _matvec(self, vector):
            return tf.linalg.matvec(matrix, vector)

    bypassing = Bypassing(hessian.model, hessian.sample, loss=sparse_ce())
    plain = lanczos(bypassing, 2, tol=1e-10, seed=0)
    result = lanczos(bypassing, 2, tol=1e-10, seed=0, stderr=True)
    assert result.num_matvecs == plain.num_matvecs + 2
    np.testing.assert_allclose(result.stderr, explicit_stderr(batches, weights, result.eigenvectors), rtol=1e-6)


def test_an_operator_without_batches_is_refused_with_what_to_do():
    with pytest.raises(ValueError, match="per-batch products"):
        sampling_stderr(MatrixOperator(np.eye(3)), np.eye(3)[:, :1])
    with pytest.raises(ValueError, match="numeric eigenvalue_tol"):
        LanczosSolver(eigenvalue_tol="sampling").solve(MatrixOperator(np.diag([3.0, 2.0, 1.0])), 1)


def test_stderr_matches_the_spread_of_lambda_1_over_disjoint_samples():
    """Calibration: 40 disjoint samples of 64 examples (8 batches of 8) of the same data, the same weights."""
    model, loss = tiny_mlp(), sparse_ce()
    num, size = 40, 64
    x, y = teacher_data(num * size)
    hessian = HessianOperator(model, (x[:size], y[:size]), loss=loss, batch_size=8)
    top, stderr = [], []
    for s in range(num):
        hessian.set_data((x[s * size:(s + 1) * size], y[s * size:(s + 1) * size]))
        values, vectors = np.linalg.eigh(dense(hessian))
        top.append(values[-1])
        stderr.append(sampling_stderr(hessian, vectors[:, -1:])[0])
    spread = np.std(top, ddof=1)
    reported = np.sqrt(np.mean(np.square(stderr)))
    # Seen: spread 0.279, reported 0.283 (ratio 1.01); lambda_1 - lambda_2 of the full data is 0.67.
    assert 1 / 1.5 <= reported / spread <= 1.5, (reported, spread)


def test_the_eigenvalue_stop_meets_its_bound_and_spends_fewer_products():
    model, loss = tiny_mlp(), sparse_ce()
    x, y = teacher_data(256)
    hessian = HessianOperator(model, (x, y), loss=loss, batch_size=32)
    exact = np.linalg.eigvalsh(dense(hessian))[::-1][:3]
    tight = lanczos(hessian, 3, tol=1e-8, seed=0)
    np.testing.assert_allclose(tight.eigenvalues, exact, rtol=1e-9)
    for tol in (1e-2, 1e-4):
        result = lanczos(hessian, 3, eigenvalue_tol=tol, seed=0)
        assert result.converged and np.all(result.error_bounds <= tol)
        assert np.all(np.abs(result.eigenvalues - exact) <= result.error_bounds * (1 + 1e-6) + 1e-12)
    loose = LanczosSolver(eigenvalue_tol=1e-2, relative=True).solve(hessian, 3, seed=0)
    assert np.all(loose.error_bounds <= 1e-2 * np.abs(loose.eigenvalues))
    assert np.all(np.abs(loose.eigenvalues - exact) <= 1e-2 * exact)
    assert loose.num_matvecs < tight.num_matvecs


def test_the_sampling_stop_is_within_its_fraction_of_the_sampling_error():
    model, loss = tiny_mlp(), sparse_ce()
    x, y = teacher_data(256)
    hessian = HessianOperator(model, (x, y), loss=loss, batch_size=32)
    exact_values, exact_vectors = np.linalg.eigh(dense(hessian))
    result = LanczosSolver(eigenvalue_tol="sampling").solve(hessian, 3, seed=0)
    assert result.converged
    np.testing.assert_allclose(result.stderr, sampling_stderr(hessian, result), rtol=1e-8)
    assert np.all(result.error_bounds <= 0.66 * result.stderr)
    assert np.all(np.abs(result.eigenvalues - exact_values[::-1][:3]) <= 0.66 * result.stderr)
    # The sampling errors of the exact eigenvectors are those of the found ones.
    np.testing.assert_allclose(result.stderr, sampling_stderr(hessian, exact_vectors[:, ::-1][:, :3]), rtol=0.05)
    assert result.num_matvecs < lanczos(hessian, 3, tol=1e-6, seed=0).num_matvecs
    # Whatever the stop, a solve on a curvature operator carries its error bars, at no product.
    residual_stop = LanczosSolver(tol=1e-4).solve(hessian, 3, seed=0)
    assert residual_stop.num_matvecs == lanczos(hessian, 3, tol=1e-4, seed=0).num_matvecs
    np.testing.assert_allclose(residual_stop.stderr, sampling_stderr(hessian, residual_stop), rtol=1e-8)


def test_solver_options_are_checked_and_serialized():
    solver = LanczosSolver(eigenvalue_tol=1e-3, relative=True)
    assert LanczosSolver.from_config(solver.get_config()) == solver
    with pytest.raises(ValueError, match="eigenvalue_tol"):
        LanczosSolver(eigenvalue_tol=-1.0)
    with pytest.raises(ValueError, match="relative=True applies"):
        LanczosSolver(relative=True)
    with pytest.raises(ValueError, match="stderr_fraction"):
        LanczosSolver(eigenvalue_tol="sampling", stderr_fraction=0.0)


def test_top_eigenpairs_offers_the_sampling_error():
    model, loss = tiny_mlp(), sparse_ce()
    x, y = teacher_data(48)
    result = top_eigenpairs(model, (x, y), k=2, loss=loss, batch_size=16, tol=1e-8, stderr=True)
    hessian = HessianOperator(model, (x, y), loss=loss, batch_size=16)
    np.testing.assert_allclose(result.stderr, sampling_stderr(hessian, result), rtol=1e-6)
    assert top_eigenpairs(model, (x, y), k=2, loss=loss, batch_size=16).stderr is None


def compiled_cnn():
    model = tiny_cnn("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=sparse_ce("float32"))
    return model


def test_callback_logs_and_saves_the_sampling_error_and_the_cost(tmp_path):
    x, y = classification_data((6, 6, 1), n=64, dtype="float32", seed=3)
    model = compiled_cnn()
    callback = LanczosCallback((x, y), top_k=2, num_samples=64, batch_size=16, seed=1, save_dir=str(tmp_path))
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])
    # The weights never change (lr 0) and every sample is the whole data (in some order): compare the final
    # measurement with the explicit Hessian and the explicit Hessians of its sample's batches.
    values = np.linalg.eigvalsh(explicit_hessian(model, x, y, sparse_ce("float32")))[::-1]
    batches = [explicit_hessian(model, bx, by, sparse_ce("float32")) for bx, by in callback.operator.sample.batches]
    r = np.array([[v @ h @ v for v in callback.eigenvectors.T] for h in batches])
    np.testing.assert_allclose(callback.history[-1].values["stderr"], r.std(axis=0, ddof=1) / 2, rtol=1e-3)
    for i in range(2):
        # The default solver stops once its error is within 0.66 of the sampling error (and float32 rounding).
        stderr = np.array(history.history[f"lambda_{i + 1}_stderr"])
        assert np.all(np.abs(np.array(history.history[f"lambda_{i + 1}"]) - values[i]) <= 0.66 * stderr + 1e-4)
        assert np.all((0.0 < stderr) & (stderr < values[i]))
    # Epoch-equivalents: the seconds over those of an epoch (median batch time of epoch 0 times 8 steps); the
    # first measurement, taken before any batch was timed, is costed by epoch 0's batches when that epoch ends.
    epoch_seconds = np.median(callback._batch_seconds[:8]) * 8
    for i in range(2):
        np.testing.assert_allclose(history.history["lanczos_epoch_equivalents"][i],
                                   callback.history[i].seconds / epoch_seconds, rtol=1e-6)
    saved = MeasurementLog(str(tmp_path)).read()
    np.testing.assert_allclose(saved[0].values["epoch_equivalents"], callback.history[0].seconds / epoch_seconds,
                               rtol=1e-6)
    np.testing.assert_allclose(saved[1].values["stderr"], history.history["lambda_1_stderr"][1:2]
                               + history.history["lambda_2_stderr"][1:2])
    header = open(tmp_path / "lanczos.csv").readline().strip().split(",")
    assert {"stderr_1", "stderr_2", "epoch_equivalents"} <= set(header)
    assert model.optimizer.iterations.numpy() == 16


def test_overhead_budget_thins_measurements_and_never_stops_training():
    x, y = classification_data((6, 6, 1), n=64, dtype="float32", seed=3)
    model = compiled_cnn()
    weights = [w.copy() for w in model.get_weights()]
    callback = LanczosCallback((x, y), top_k=2, num_samples=32, batch_size=16, seed=1,
                               frequency=OverheadBudget(max_overhead=0.01, frequency=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])
    messages = [str(w.message) for w in caught if "max_overhead=0.01" in str(w.message)]
    assert len(messages) == 1  # warned once
    # The first measurement is always taken, then the budget (1% of a few ms of training) skips the rest.
    assert np.isfinite(history.history["lambda_1"][0]) and np.isnan(history.history["lambda_1"][1])
    assert history.history["lanczos_skipped"] == [3.0, 7.0]  # steps 2, 4, 6 of 8; then 8 ... 14
    assert len(callback.history) == 2  # the first and the one after training
    assert history.history["lanczos_overhead"][1] > 0.01
    assert model.optimizer.iterations.numpy() == 16
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    with pytest.raises(ValueError, match="max_overhead"):
        OverheadBudget(max_overhead=0)
    with pytest.raises(ValueError, match="frequency"):
        OverheadBudget(0.1, frequency="daily")


def one_device_and_mirrored_mlp(mirrored_strategy):
    """The same small tanh MLP (6-8-3, compiled with a from-logits cross-entropy) on one device and under the
    strategy, with equal weights."""
    import keras

    def build():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
        model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    single = build()
    with mirrored_strategy.scope():
        mirrored = build()
    mirrored.set_weights(single.get_weights())
    return single, mirrored


def test_lanczos_stderr_under_a_mirrored_strategy_equals_one_device(mirrored_strategy):
    """Two replicas cannot hand out per-batch parts, so the error bars come from k counted products: the same
    eigenvalues and standard errors as on one device, two more products."""
    from tf_sharpest.linalg import lanczos
    from tf_sharpest.operators import HessianOperator

    x = np.random.default_rng(0).standard_normal((48, 6)).astype("float32")
    y = np.arange(48) % 3

    single, mirrored = one_device_and_mirrored_mlp(mirrored_strategy)
    one = lanczos(HessianOperator(single, (x, y), batch_size=8), k=2, stderr=True, tol=1e-6)
    two = lanczos(HessianOperator(mirrored, (x, y), batch_size=8), k=2, stderr=True, tol=1e-6)
    np.testing.assert_allclose(two.eigenvalues, one.eigenvalues, rtol=1e-5)
    np.testing.assert_allclose(two.stderr, one.stderr, rtol=1e-4)
    assert np.all(one.stderr > 0) and two.num_matvecs == one.num_matvecs + 2


def test_the_guarded_sampling_stop_under_a_mirrored_strategy_agrees_with_one_device(mirrored_strategy):
    """The callback's default solver (sampling stop with two guard pairs) where the sampling error costs products
    (two replicas): its eigenvalues within the asked 0.66 sampling errors of a tight solve, k error bars, the same
    as one device's, and every product it made counted."""
    from tf_sharpest.linalg import LanczosSolver, lanczos
    from tf_sharpest.operators import HessianOperator

    x = np.random.default_rng(1).standard_normal((64, 6)).astype("float32")
    y = np.arange(64) % 3

    single, mirrored = one_device_and_mirrored_mlp(mirrored_strategy)
    tight = lanczos(HessianOperator(single, (x, y), batch_size=8), k=3, stderr=True, tol=1e-8)
    solver = LanczosSolver(eigenvalue_tol="sampling")
    one = solver.solve(HessianOperator(single, (x, y), batch_size=8), 3, seed=0)
    operator = HessianOperator(mirrored, (x, y), batch_size=8)
    two = solver.solve(operator, 3, seed=0)
    for result in (one, two):
        assert result.stderr.shape == (3,)
        assert np.all(np.abs(result.eigenvalues - tight.eigenvalues) <= 0.66 * tight.stderr + 1e-6)
        np.testing.assert_allclose(result.stderr, tight.stderr, rtol=1e-2)
    assert two.num_matvecs == operator.num_matvecs  # the error bars' products are counted
