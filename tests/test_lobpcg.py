"""lobpcg against numpy.linalg.eigh: hard spectra, warm starts, tracking, a real Hessian, bad input."""

import numpy as np
import pytest
import tensorflow as tf

from tf_sharpest.linalg import EigenResult, lanczos, lobpcg
from tf_sharpest.operators import FunctionOperator, HessianOperator, MatrixOperator

from references import classification_data, explicit_hessian, sparse_ce, symmetric_matrix, tiny_mlp

SPECTRA = {
    "separated": np.concatenate([[10.0, 9.0, 8.5, 8.0, 7.0], np.linspace(-2, 6.5, 195)]),
    "clustered": np.concatenate([[5.0, 4.999, 4.998, 4.99, 4.98], np.linspace(-1, 3, 195)]),
    "repeated": np.concatenate([[7.0, 7.0, 7.0, 2.0, 2.0], np.linspace(-1, 1.5, 145)]),
    # Large negative eigenvalues below a small positive top: |lambda_max| is set by the bottom.
    "negative_below": np.concatenate([[3.0, 2.5, 2.0, 1.5, 1.25], np.linspace(-4, 1, 170), [-20.0, -12.0]]),
}


def reference(matrix, which, k):
    values, vectors = np.linalg.eigh(matrix)
    order = np.argsort(-values if which == "largest" else values, kind="stable")[:k]
    return values[order], vectors[:, order]


def projector(vectors):
    q, _ = np.linalg.qr(vectors)
    return q @ q.T


def check_pairs(matrix, result, which, k, rtol=1e-7):
    expected, _ = reference(matrix, which, k)
    scale = np.abs(np.linalg.eigvalsh(matrix)).max()
    np.testing.assert_allclose(result.eigenvalues, expected, rtol=rtol, atol=rtol * scale)
    vectors = result.eigenvectors
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(k), atol=1e-10)
    residuals = np.linalg.norm(matrix @ vectors - vectors * result.eigenvalues, axis=0)
    # The reported residual norms are the true ones, not an estimate.
    np.testing.assert_allclose(result.residual_norms, residuals, rtol=1e-6, atol=1e-12 * scale)


@pytest.mark.parametrize("spectrum", sorted(SPECTRA))
@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_matches_eigh_on_hard_spectra(spectrum, which):
    matrix = symmetric_matrix(SPECTRA[spectrum], seed=3)
    result = lobpcg(matrix, 5, tol=1e-9, which=which, max_matvecs=3000)
    assert isinstance(result, EigenResult) and result.converged
    check_pairs(matrix, result, which, 5)
    scale = np.abs(SPECTRA[spectrum]).max()
    assert np.all(result.residual_norms <= 1e-9 * scale * (1 + 1e-6))
    order = -result.eigenvalues if which == "largest" else result.eigenvalues
    assert np.all(np.diff(order) >= 0)


@pytest.mark.parametrize("max_basis_size", [None, 21])
def test_classic_lobpcg_basis_converges_too(max_basis_size):
    """``max_basis_size = 3 * block_size`` is classic LOBPCG ([X, W, P]); it must reach the same pairs."""
    matrix = symmetric_matrix(SPECTRA["separated"], seed=5)
    result = lobpcg(matrix, 5, tol=1e-9, max_basis_size=max_basis_size, max_matvecs=3000)
    assert result.converged
    if max_basis_size:
        assert result.num_restarts > 5
    check_pairs(matrix, result, "largest", 5)


def test_exactly_repeated_top_eigenvalue_returns_a_basis_of_its_eigenspace():
    spectrum = np.concatenate([[7.0, 7.0, 7.0], np.linspace(-1, 5, 117)])
    matrix = symmetric_matrix(spectrum, seed=8)
    _, vectors = np.linalg.eigh(matrix)
    eigenspace = projector(vectors[:, -3:])
    result = lobpcg(matrix, 3, tol=1e-10)
    np.testing.assert_allclose(result.eigenvalues, [7.0, 7.0, 7.0], rtol=1e-10)
    # Same subspace: the orthogonal projectors agree (every principal angle is ~0).
    np.testing.assert_allclose(projector(result.eigenvectors), eigenspace, atol=1e-8)
    cosines = np.linalg.svd(vectors[:, -3:].T @ result.eigenvectors, compute_uv=False)
    assert np.min(cosines) > 1 - 1e-12
    # Fewer vectors than the multiplicity: they must lie inside the eigenspace.
    two = lobpcg(matrix, 2, tol=1e-10, seed=4)
    np.testing.assert_allclose(eigenspace @ two.eigenvectors, two.eigenvectors, atol=1e-8)


def test_warm_start_from_perturbed_eigenvectors_needs_far_fewer_matvecs():
    spectrum = np.concatenate([[10.0, 9.0, 8.5, 8.0, 7.0], np.linspace(-2, 6.5, 395)])
    matrix = symmetric_matrix(spectrum, seed=6)
    _, exact = reference(matrix, "largest", 5)
    rng = np.random.default_rng(0)
    nearby = exact + 1e-3 * rng.standard_normal(exact.shape) / np.sqrt(400)  # vectors ~1e-3 away
    counts = {}
    for tol in (1e-3, 1e-6):
        cold = lobpcg(matrix, 5, tol=tol)
        warm = lobpcg(matrix, 5, tol=tol, initial_vectors=nearby)
        assert cold.converged and warm.converged
        np.testing.assert_allclose(cold.eigenvalues, spectrum[:5], rtol=1e-5)
        np.testing.assert_allclose(warm.eigenvalues, spectrum[:5], rtol=1e-5)
        counts[tol] = warm.num_matvecs, cold.num_matvecs, lanczos(matrix, k=5, tol=tol).num_matvecs
    warm, cold, cold_lanczos = counts[1e-3]
    # At the tracking tolerance a close start is one block (5 guesses + 2 fresh directions):
    # over 9x fewer products than cold (7 against 68), almost 4x fewer than a cold Lanczos (27).
    assert warm <= cold / 9 and warm <= cold_lanczos / 3.5, counts
    # Far below the start's distance the block method must still iterate, yet saves over half.
    warm, cold, _ = counts[1e-6]
    assert warm <= 0.5 * cold, counts


def test_warm_start_with_exact_eigenvectors_costs_one_block():
    matrix = symmetric_matrix(SPECTRA["separated"], seed=2)
    _, exact = reference(matrix, "largest", 5)
    result = lobpcg(matrix, 5, tol=1e-8, initial_vectors=exact)
    assert result.converged and result.num_matvecs == 5 + 2  # the block: 5 guesses and 2 fresh directions
    check_pairs(matrix, result, "largest", 5)


def test_a_new_sharp_direction_enters_through_the_residuals():
    """A bulk direction becomes the second-sharpest; the old top-5 eigenvectors (slightly off) still find it."""
    dim = 300
    spectrum = np.concatenate([[10.0, 9.0, 8.5, 8.0, 7.0], np.linspace(-2, 6.5, dim - 5)])
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    new_direction = q[:, 100]
    matrix = (q * spectrum) @ q.T + 9.0 * np.outer(new_direction, new_direction)
    expected, _ = reference(matrix, "largest", 5)
    assert expected[1] not in spectrum  # 9.75: a new eigenvalue, not one of the old top-5
    old_top = q[:, :5] + 1e-3 * rng.standard_normal((dim, 5)) / np.sqrt(dim)
    result = lobpcg(matrix, 5, tol=1e-6, initial_vectors=old_top)
    np.testing.assert_allclose(result.eigenvalues, expected, rtol=1e-9)
    assert abs(result.eigenvectors[:, 1] @ (np.linalg.eigh(matrix)[1][:, -2])) > 1 - 1e-9


def test_eigenvalue_stop_is_cheaper_and_accurate():
    spectrum = np.concatenate([[10.0, 9.0, 8.5, 8.0, 7.0], np.linspace(-2, 6.5, 395)])
    matrix = symmetric_matrix(spectrum, seed=7)
    _, exact = reference(matrix, "largest", 5)
    rng = np.random.default_rng(1)
    nearby = exact + 0.05 * rng.standard_normal(exact.shape) / np.sqrt(400)
    by_residual = lobpcg(matrix, 5, tol=1e-4, initial_vectors=nearby)
    by_values = lobpcg(matrix, 5, tol=1e-4, initial_vectors=nearby, stop_on="eigenvalues")
    assert by_residual.converged and by_values.converged
    assert by_values.num_matvecs < by_residual.num_matvecs
    # The last change bounds the remaining error only for fast convergence; here it is ~tol / 8.
    np.testing.assert_allclose(by_values.eigenvalues, spectrum[:5], rtol=1e-4)
    # Residuals are still reported, truthfully, even though they did not decide the stop.
    residuals = np.linalg.norm(matrix @ by_values.eigenvectors - by_values.eigenvectors * by_values.eigenvalues,
                               axis=0)
    np.testing.assert_allclose(by_values.residual_norms, residuals, rtol=1e-6)


def rotating_matrices(steps, dim=300, seed=0):
    """A slowly changing symmetric matrix: eigenvectors rotate by a small angle, top eigenvalues drift."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    generator = rng.standard_normal((dim, dim))
    generator = 0.005 * (generator - generator.T) / np.sqrt(dim)  # a small rotation per step
    rotation, _ = np.linalg.qr(np.eye(dim) + generator)
    bulk = np.linspace(-1, 4, dim - 5)
    for t in range(steps):
        top = np.array([10.0, 8.0, 7.5, 7.0, 6.0]) * (1 + 0.03 * t) + np.array([0, 0.1, -0.1, 0.05, 0]) * t
        yield (basis * np.concatenate([top, bulk])) @ basis.T
        basis = rotation @ basis


def test_warm_tracking_along_rotating_matrices_matches_cold_to_1e_3():
    previous, warm_matvecs, cold_matvecs = None, [], []
    for t, matrix in enumerate(rotating_matrices(6)):
        cold = lanczos(matrix, k=5, tol=1e-3, seed=t)
        warm = lobpcg(matrix, 5, tol=1e-3, initial_vectors=previous, seed=t)
        expected, _ = reference(matrix, "largest", 5)
        np.testing.assert_allclose(warm.eigenvalues, cold.eigenvalues, rtol=1e-3)
        np.testing.assert_allclose(warm.eigenvalues, expected, rtol=1e-4)
        previous = warm.eigenvectors
        if t > 0:
            warm_matvecs.append(warm.num_matvecs)
            cold_matvecs.append(lobpcg(matrix, 5, tol=1e-3, seed=t).num_matvecs)
    assert np.sum(warm_matvecs) <= 0.5 * np.sum(cold_matvecs), (warm_matvecs, cold_matvecs)


def test_eigenvalue_stop_tracks_rotating_matrices():
    previous = None
    for t, matrix in enumerate(rotating_matrices(5, seed=1)):
        expected, _ = reference(matrix, "largest", 5)
        result = lobpcg(matrix, 5, tol=1e-4, initial_vectors=previous, seed=t, stop_on="eigenvalues")
        np.testing.assert_allclose(result.eigenvalues, expected, rtol=1e-3)
        previous = result.eigenvectors


def test_hessian_of_a_tiny_model_matches_eigh_of_its_explicit_hessian():
    model = tiny_mlp()
    x, y = classification_data((4,), n=23)
    explicit = explicit_hessian(model, x, y, sparse_ce())
    operator = HessianOperator(model, (x, y), loss=sparse_ce(), batch_size=8)
    result = lobpcg(operator, 4, tol=1e-9)
    assert result.converged and result.eigenvectors.dtype == np.float64
    check_pairs(explicit, result, "largest", 4, rtol=1e-7)
    assert operator.num_matvecs == result.num_matvecs
    # Warm start from the answer after a small weight change: fewer products than cold.
    for variable in model.trainable_variables:
        variable.assign(variable * 1.01)
    moved = HessianOperator(model, (x, y), loss=sparse_ce(), batch_size=8)
    warm = lobpcg(moved, 4, tol=1e-6, initial_vectors=result.eigenvectors)
    cold = lobpcg(moved, 4, tol=1e-6)
    expected, _ = reference(explicit_hessian(model, x, y, sparse_ce()), "largest", 4)
    np.testing.assert_allclose(warm.eigenvalues, expected, rtol=1e-6)
    assert warm.num_matvecs < cold.num_matvecs


def test_float32_callable_and_block_products():
    matrix = symmetric_matrix(np.linspace(-2, 10, 80), seed=1).astype(np.float32)
    blocks = []

    class Counting(MatrixOperator):
        def _matmat(self, vectors):
            blocks.append(int(vectors.shape[1]))
            return super()._matmat(vectors)

    operator = Counting(matrix)
    result = lobpcg(operator, 3, tol=1e-5)
    assert result.eigenvectors.dtype == np.float32
    np.testing.assert_allclose(result.eigenvalues, np.linalg.eigvalsh(matrix.astype(np.float64))[::-1][:3], rtol=1e-5)
    # Every product went through matmat, in blocks, and was counted.
    assert len(blocks) >= 2 and sum(blocks) == result.num_matvecs == operator.num_matvecs
    assert blocks[0] == 5
    callable_result = lobpcg(lambda v: tf.linalg.matvec(matrix, v), 3, dim=80, tol=1e-5)
    np.testing.assert_allclose(callable_result.eigenvalues, result.eigenvalues, rtol=1e-5)


def test_deterministic_for_a_seed_and_seed_matters():
    matrix = symmetric_matrix(SPECTRA["clustered"], seed=4)
    a = lobpcg(matrix, 3, tol=1e-3, seed=7)
    b = lobpcg(matrix, 3, tol=1e-3, seed=7)
    c = lobpcg(matrix, 3, tol=1e-3, seed=8)
    np.testing.assert_array_equal(a.eigenvectors, b.eigenvectors)
    assert a.num_matvecs == b.num_matvecs
    assert not np.array_equal(a.eigenvectors, c.eigenvectors)


def test_small_whole_space_and_dependent_warm_start():
    matrix = symmetric_matrix([3.0, 1.0, -2.0, 0.5], seed=2)
    result = lobpcg(matrix, 4)
    np.testing.assert_allclose(result.eigenvalues, [3.0, 1.0, 0.5, -2.0], atol=1e-12)
    assert result.converged
    # Two copies of one vector and a zero column: the block is refilled with random directions.
    big = symmetric_matrix(SPECTRA["separated"], seed=9)
    _, exact = reference(big, "largest", 1)
    guesses = np.concatenate([exact, exact, np.zeros_like(exact)], axis=1)
    again = lobpcg(big, 3, tol=1e-8, initial_vectors=guesses)
    check_pairs(big, again, "largest", 3)


def test_budget_is_respected_and_reported():
    matrix = symmetric_matrix(SPECTRA["clustered"], seed=1)
    result = lobpcg(matrix, 5, tol=1e-12, max_matvecs=23)
    assert result.num_matvecs == 23 and not result.converged


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, "1 <= k <= dim"),
        ({"k": 11}, "1 <= k <= dim"),
        ({"k": 2.0}, "1 <= k <= dim"),
        ({"k": 2, "tol": 0.0}, "tol"),
        ({"k": 2, "tol": float("nan")}, "tol"),
        ({"k": 2, "stop_on": "values"}, "stop_on"),
        ({"k": 2, "which": "biggest"}, "which"),
        ({"k": 2, "initial_vectors": np.ones(3)}, "initial_vectors"),
        ({"k": 2, "initial_vectors": np.ones((10, 0))}, "initial_vectors"),
        ({"k": 2, "initial_vectors": np.full((10, 2), np.nan)}, "NaN or inf"),
        ({"k": 3, "block_size": 2}, "block_size"),
        ({"k": 2, "block_size": 11}, "block_size"),
        ({"k": 2, "block_size": 2, "initial_vectors": np.eye(10)[:, :3]}, "block_size"),
        ({"k": 2, "max_matvecs": 3}, "max_matvecs must be an integer >= 4, got 3. 4 matvecs are needed to multiply"),
        ({"k": 2, "max_basis_size": 5}, "max_basis_size"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lobpcg(np.eye(10), **kwargs)


def test_callable_needs_dim_and_non_finite_operator_is_reported():
    with pytest.raises(ValueError, match="dim"):
        lobpcg(lambda v: v, 1)
    with pytest.raises(ValueError, match="non-finite"):
        lobpcg(FunctionOperator(lambda v: v * np.nan, 5, tf.float64), 1)
