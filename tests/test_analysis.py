import keras
import numpy as np
import pytest

from tf_sharpest.analysis import alignment, analyze_sgd_step, loss_along, random_alignment
from tf_sharpest.hessian import top_eigenpairs
from tf_sharpest.operators import EmpiricalLoss


def quadratic_problem(seed=0):
    """Linear regression with MSE: the loss is exactly quadratic in the weights."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,), dtype="float64"), keras.layers.Dense(1, dtype="float64")])
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((30, 3)) * np.array([3.0, 1.0, 0.3])
    y = x @ np.array([[1.0], [-2.0], [0.5]]) + 0.1 * rng.standard_normal((30, 1))
    loss = keras.losses.MeanSquaredError(dtype="float64")
    return model, (x, y), loss


def explicit_quadratic(x):
    """Hessian of mean((x w + b - y)^2) in (w, b): 2 [x 1]^T [x 1] / n."""
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    return 2 * design.T @ design / len(x)


def test_loss_along_a_direction_is_the_exact_parabola_and_restores_weights():
    model, data, loss = quadratic_problem()
    objective = EmpiricalLoss(model, data, loss=loss, batch_size=7)
    hessian = explicit_quadratic(data[0])
    gradient = objective.gradient().numpy()
    direction = np.random.default_rng(1).standard_normal(4)
    before = [v.numpy().copy() for v in model.trainable_variables]
    scales = np.array([-1.0, 0.0, 0.3, 2.0])
    expected = objective.value + scales * (gradient @ direction) + 0.5 * scales**2 * (direction @ hessian @ direction)
    np.testing.assert_allclose(loss_along(objective, direction, scales), expected, rtol=1e-10)
    for variable, value in zip(model.trainable_variables, before):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_sgd_step_along_the_top_eigenvector_matches_the_quadratic_model():
    model, data, loss = quadratic_problem()
    hessian = explicit_quadratic(data[0])
    pairs = top_eigenpairs(model, data, k=2, loss=loss, tol=1e-10)
    lam = pairs.eigenvalues[0]
    learning_rate = 2.0 / lam  # on the edge: the full step along e1 cannot lower the loss
    report = analyze_sgd_step(model, data, pairs.eigenvectors, learning_rate, eigenvalues=pairs.eigenvalues,
                              loss=loss, num_random=2)
    gradient = EmpiricalLoss(model, data, loss=loss).gradient().numpy()
    projection = gradient @ pairs.eigenvectors[:, 0]
    m = report.multipliers
    expected = report.loss - m * learning_rate * projection**2 + 0.5 * (m * learning_rate * projection) ** 2 * lam
    np.testing.assert_allclose(report.along_eigenvectors[0], expected, rtol=1e-8)
    one, half = list(m).index(1.0), list(m).index(0.5)
    assert report.along_eigenvectors[0][one] == pytest.approx(report.loss, rel=1e-8)
    assert report.along_eigenvectors[0][half] < report.loss
    curvature = gradient @ hessian @ gradient
    full = report.loss - m * learning_rate * (gradient @ gradient) + 0.5 * (m * learning_rate) ** 2 * curvature
    np.testing.assert_allclose(report.full_step, full, rtol=1e-8)
    assert report.along_random.shape == (2, m.size)
    np.testing.assert_allclose(report.alignment, alignment(gradient, pairs.eigenvectors))


def test_alignment_and_random_baseline():
    g = np.array([3.0, 4.0, 0.0])
    np.testing.assert_allclose(alignment(g, np.eye(3)), [0.6, 0.8, 0.0])
    assert random_alignment(3) == pytest.approx(0.5)  # |cos| is uniform on [0, 1] on the 2-sphere
    assert random_alignment(2) == pytest.approx(2 / np.pi)
    rng = np.random.default_rng(0)
    samples = rng.standard_normal((200000, 50))
    monte_carlo = np.mean(np.abs(samples[:, 0]) / np.linalg.norm(samples, axis=1))
    assert random_alignment(50) == pytest.approx(monte_carlo, rel=1e-2)


def test_bad_directions():
    model, data, loss = quadratic_problem()
    with pytest.raises(ValueError, match="length 4"):
        analyze_sgd_step(model, data, np.ones((3, 1)), 0.1, loss=loss)
    with pytest.raises(ValueError, match="NaN"):
        analyze_sgd_step(model, data, np.full((4, 1), np.nan), 0.1, loss=loss)
