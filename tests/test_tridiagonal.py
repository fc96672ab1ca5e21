import numpy as np
import pytest
import tensorflow as tf

from tf_sharpest.linalg._tridiagonal import lanczos_step, next_basis_vector, orthogonalize, tridiagonalize
from tf_sharpest.operators import FunctionOperator, MatrixOperator

from references import symmetric_matrix


def unit(vector):
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def test_step_projects_and_orthogonalizes_against_the_whole_basis():
    matrix = symmetric_matrix(np.linspace(-3, 5, 30), seed=1)
    operator = MatrixOperator(matrix)
    rng = np.random.default_rng(0)
    basis_rows = np.linalg.qr(rng.standard_normal((30, 4)))[0].T  # 4 orthonormal rows
    basis = tf.Variable(np.zeros((6, 30)))
    basis[:3].assign(basis_rows[:3])
    step = lanczos_step(operator, basis, 3, tf.constant(basis_rows[3]))
    np.testing.assert_array_equal(basis[3].numpy(), basis_rows[3])
    product = matrix @ basis_rows[3]
    np.testing.assert_allclose(step.product.numpy(), product, atol=1e-12)
    np.testing.assert_allclose(step.coefficients, basis_rows @ product, atol=1e-12)
    assert step.coefficients.dtype == np.float64 and step.alpha == pytest.approx(basis_rows[3] @ product)
    expected_residual = product - basis_rows.T @ (basis_rows @ product)
    np.testing.assert_allclose(step.residual.numpy(), expected_residual, atol=1e-12)
    assert step.beta == pytest.approx(np.linalg.norm(expected_residual))
    assert operator.num_matvecs == 1

    vector, beta = next_basis_vector(step, basis[:4], rng)
    np.testing.assert_allclose(vector.numpy(), expected_residual / np.linalg.norm(expected_residual), atol=1e-12)
    assert beta == step.beta


def test_next_vector_after_a_breakdown_is_random_orthogonal_and_uncoupled():
    operator = MatrixOperator(np.diag([2.0, 2.0, 1.0, 1.0, 0.5]))
    basis = tf.Variable(np.zeros((5, 5)))
    step = lanczos_step(operator, basis, 0, tf.constant(unit([1.0, 0, 0, 0, 0])))  # an eigenvector
    assert step.is_breakdown()
    vector, beta = next_basis_vector(step, basis[:1], np.random.default_rng(3))
    assert beta == 0.0
    assert abs(float(vector[0])) < 1e-14 and float(tf.norm(vector)) == pytest.approx(1.0)


def test_orthogonalize_twice_is_enough_for_a_nearly_dependent_vector():
    rng = np.random.default_rng(2)
    basis = np.linalg.qr(rng.standard_normal((200, 20)))[0].T
    almost_inside = basis.T @ rng.standard_normal(20) + 1e-9 * rng.standard_normal(200)
    residual, coefficients = orthogonalize(tf.constant(basis), tf.constant(almost_inside))
    assert np.max(np.abs(basis @ residual.numpy())) < 1e-14 * np.linalg.norm(residual)
    np.testing.assert_allclose(coefficients, basis @ almost_inside, atol=1e-9)


def test_dim_steps_give_the_exact_spectrum_without_ghosts():
    # An outlier far above the bulk is where Lanczos without reorthogonalization
    # produces spurious copies ("ghosts") of the converged value.
    spectrum = np.concatenate([[100.0], np.linspace(0.0, 1.0, 59)])
    matrix = symmetric_matrix(spectrum, seed=4)
    operator = MatrixOperator(matrix)
    result = tridiagonalize(operator, np.ones(60), 500)  # capped at dim steps
    assert result.size == 60 and operator.num_matvecs == 60
    nodes, weights = result.gauss_quadrature()
    np.testing.assert_allclose(nodes, np.sort(spectrum), atol=1e-9)
    assert np.sum(np.abs(nodes - 100.0) < 1e-3) == 1
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)


def test_gauss_quadrature_is_exact_below_degree_2m():
    matrix = symmetric_matrix(np.random.default_rng(5).uniform(-2.0, 3.0, 80), seed=5)
    start = unit(np.random.default_rng(6).standard_normal(80))
    steps = 6
    result = tridiagonalize(MatrixOperator(matrix), start, steps)
    assert result.size == steps and not result.breakdown
    assert result.betas.shape == (steps - 1,) and result.matrix().shape == (steps, steps)
    nodes, weights = result.gauss_quadrature()
    power = start.copy()
    for p in range(2 * steps):
        np.testing.assert_allclose(np.sum(weights * nodes ** p), start @ power, rtol=1e-9, atol=1e-12)
        power = matrix @ power
    # degree 2m is no longer exact: the quadrature is really of m points
    assert abs(np.sum(weights * nodes ** (2 * steps)) - start @ power) > 1e-6 * abs(start @ power)
    np.testing.assert_allclose(result.start_product.numpy(), matrix @ start, atol=1e-12)


def test_breakdown_stops_early_with_the_exact_quadrature():
    spectrum = np.repeat([3.0, 1.0, -2.0], [5, 10, 15])
    matrix = symmetric_matrix(spectrum, seed=7)
    eigenvalues, vectors = np.linalg.eigh(matrix)
    start = unit(np.random.default_rng(8).standard_normal(30))
    operator = MatrixOperator(matrix)
    result = tridiagonalize(operator, start, 20)
    assert result.breakdown and result.size == 3 and operator.num_matvecs == 3
    nodes, weights = result.gauss_quadrature()
    np.testing.assert_allclose(nodes, [-2.0, 1.0, 3.0], atol=1e-10)
    mass = [np.sum((vectors[:, np.isclose(eigenvalues, value)].T @ start) ** 2) for value in (-2.0, 1.0, 3.0)]
    np.testing.assert_allclose(weights, mass, atol=1e-10)


def test_float32_operator():
    matrix = symmetric_matrix(np.linspace(1.0, 2.0, 50), seed=9).astype(np.float32)
    result = tridiagonalize(MatrixOperator(matrix), np.ones(50), 50)
    nodes, _ = result.gauss_quadrature()
    np.testing.assert_allclose(nodes, np.linspace(1.0, 2.0, 50), atol=1e-5)


@pytest.mark.parametrize(
    "start, steps, message",
    [(np.ones(10), 0, "num_steps"), (np.zeros(10), 3, "non-zero"), (np.ones(9), 3, r"shape \[dim=10\]"),
     (np.full(10, np.nan), 3, "finite")],
)
def test_bad_arguments(start, steps, message):
    with pytest.raises(ValueError, match=message):
        tridiagonalize(MatrixOperator(np.eye(10)), start, steps)


def test_non_finite_products_are_reported():
    with pytest.raises(ValueError, match="non-finite values at matvec 1"):
        tridiagonalize(FunctionOperator(lambda v: v * np.nan, 5, tf.float64), np.ones(5), 3)
