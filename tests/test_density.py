import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_sharpest.linalg import MomentEstimate, SpectralDensity, spectral_density
from tf_sharpest.operators import FunctionOperator, HessianOperator, MatrixOperator

from references import classification_data, explicit_hessian, sparse_ce, symmetric_matrix, tiny_cnn

wasserstein_distance = pytest.importorskip("scipy.stats").wasserstein_distance

# A bulk in [0, 1] and 5 outliers out of 200 eigenvalues, like a trained network's Hessian.
BULK = np.random.default_rng(0).uniform(0.0, 1.0, 195) ** 2
OUTLIERS = np.array([10.0, 11.0, 12.0, 13.0, 14.0])
SPECTRUM = np.concatenate([BULK, OUTLIERS])
MATRIX = symmetric_matrix(SPECTRUM, seed=0)


@pytest.fixture(scope="module")
def slq():
    return spectral_density(MATRIX, num_probes=20, num_steps=40, seed=0)


def w1(result, eigenvalues):
    """Wasserstein-1 distance between the SLQ quadrature (probes averaged) and the true eigenvalues."""
    return wasserstein_distance(result.nodes.ravel(), eigenvalues, result.weights.ravel())


def test_shapes_weights_and_cost(slq):
    assert isinstance(slq, SpectralDensity)
    assert slq.nodes.shape == slq.weights.shape == (20, 40) and slq.dim == 200
    assert slq.num_matvecs == 20 * 40
    np.testing.assert_allclose(slq.weights.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(np.diff(slq.nodes, axis=1) >= 0)
    assert slq.nodes.min() >= SPECTRUM.min() - 1e-9 and slq.nodes.max() <= SPECTRUM.max() + 1e-9


def test_close_to_the_true_distribution_in_wasserstein_distance(slq):
    distance = w1(slq, SPECTRUM)
    # 0.5% of the spectrum's width; most of it is the noise of the outliers' mass across probes
    assert distance < 0.005 * np.ptp(SPECTRUM), distance
    # and it tells a wrong spectrum apart: a bulk 50% wider, or no outliers
    assert distance < 0.5 * w1(slq, np.concatenate([1.5 * BULK, OUTLIERS]))
    assert distance < 0.25 * w1(slq, np.concatenate([BULK, np.full(5, 0.5)]))
    # the bulk alone (nodes below the gap, renormalized) is closer still, and a bulk 20% wider is not
    below = slq.nodes < 5.0
    bulk_distance = wasserstein_distance(slq.nodes[below], BULK, slq.weights[below])
    assert bulk_distance < 0.02 and bulk_distance < 0.3 * wasserstein_distance(
        slq.nodes[below], 1.2 * BULK, slq.weights[below])
    # Ritz values resolve the outliers themselves: each has a node within 1e-6
    assert all(np.min(np.abs(slq.nodes - outlier)) < 1e-6 for outlier in OUTLIERS)


def test_right_mass_on_the_outlier_cluster(slq):
    per_probe = np.sum(slq.weights * (slq.nodes > 5.0), axis=1)
    stderr = np.std(per_probe, ddof=1) / np.sqrt(len(per_probe))
    assert abs(per_probe.mean() - 5 / 200) < 3.5 * stderr and abs(per_probe.mean() - 5 / 200) < 0.01
    grid = np.linspace(5.0, 20.0, 3001)  # the smoothed density gives the same mass
    mass = np.trapezoid(slq.density(grid, sigma=0.05), grid)
    assert mass == pytest.approx(per_probe.mean(), abs=1e-6)


def test_moments_within_their_standard_errors():
    # 2 steps per probe: the quadrature is exact up to degree 3, so only the probes' noise is left.
    seeds, z, pooled = 30, {1: [], 2: []}, {1: [], 2: []}
    for seed in range(seeds):
        result = spectral_density(MATRIX, num_probes=20, num_steps=2, seed=seed)
        for p in (1, 2):
            estimate = result.moment(p, normalized=False)
            z[p].append((estimate.value - np.sum(SPECTRUM ** p)) / estimate.stderr)
            pooled[p].append(estimate.value)
            assert result.moment(p).value == pytest.approx(estimate.value / 200, rel=1e-12)
    for p in (1, 2):
        within = np.abs(z[p])
        # about 68% within one standard error and 95% within two for a calibrated error (a few
        # less here: 20 probes of a skewed distribution), and no estimate wildly off
        assert np.mean(within < 1) >= 0.5 and np.mean(within < 2) >= 0.8 and np.max(within) < 5, z[p]
        assert 0.7 < np.sqrt(np.mean(np.square(z[p]))) < 1.5, z[p]
        # unbiased: 600 probes together are within a few of their standard errors
        grand = (np.mean(pooled[p]) - np.sum(SPECTRUM ** p)) / (np.std(pooled[p], ddof=1) / np.sqrt(seeds))
        assert abs(grand) < 3.5, grand
    zeroth = result.moment(0)  # the weights sum to 1: no noise at all
    assert isinstance(zeroth, MomentEstimate)
    assert zeroth.value == pytest.approx(1.0, abs=1e-12) and zeroth.stderr < 1e-12


def test_density_integrates_to_one_and_is_the_gaussian_mixture(slq):
    grid = np.linspace(-2.0, 17.0, 20001)
    values = slq.density(grid, sigma=0.1)
    assert np.trapezoid(values, grid) == pytest.approx(1.0, abs=1e-6)
    point, sigma = 12.0, 0.3
    expected = np.mean(np.sum(slq.weights * np.exp(-0.5 * ((point - slq.nodes) / sigma) ** 2), axis=1)) / (
        sigma * np.sqrt(2 * np.pi))
    assert slq.density(np.array([[point]]), sigma)[0, 0] == pytest.approx(expected, rel=1e-12)


def test_breakdown_pads_with_zero_weights():
    matrix = symmetric_matrix(np.repeat([3.0, 1.0, -2.0], [5, 10, 15]), seed=7)
    operator = MatrixOperator(matrix)
    result = spectral_density(operator, num_probes=3, num_steps=10, seed=1)
    assert result.nodes.shape == (3, 10) and result.num_matvecs == operator.num_matvecs == 9
    np.testing.assert_allclose(result.nodes[:, :3], np.tile([-2.0, 1.0, 3.0], (3, 1)), atol=1e-10)
    assert np.all(result.weights[:, 3:] == 0.0) and np.all(result.nodes[:, 3:] == result.nodes[:, 2:3])
    assert result.moment(1).value == pytest.approx(
        np.mean([np.sum(w * n) for w, n in zip(result.weights, result.nodes)]))


@pytest.mark.parametrize("num_steps", [30 + 1000, 10**9])
def test_arrays_are_sized_by_the_steps_that_can_run(num_steps):
    """Regression: num_steps=10**9 allocated [num_probes, 10**9] arrays (MemoryError) though at most dim run."""
    tracemalloc = pytest.importorskip("tracemalloc")
    matrix = symmetric_matrix(np.linspace(-1.0, 2.0, 30), seed=3)
    tracemalloc.start()
    try:
        result = spectral_density(matrix, num_probes=2, num_steps=num_steps, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, peak  # a few kilobytes of nodes, not 16 GB
    assert result.nodes.shape == result.weights.shape == (2, 30) and result.num_matvecs == 2 * 30
    # dim steps make the quadrature exact: every eigenvalue is a node, and moments are the probes' exact ones
    np.testing.assert_allclose(np.sort(result.nodes[0]), np.linspace(-1.0, 2.0, 30), atol=1e-9)
    same = spectral_density(matrix, num_probes=2, num_steps=30, seed=0)
    np.testing.assert_array_equal(result.nodes, same.nodes)


def test_tiny_cnn_hessian_density():
    model = tiny_cnn()
    x, y = classification_data((6, 6, 1))
    eigenvalues = np.linalg.eigvalsh(explicit_hessian(model, x, y, sparse_ce()))
    operator = HessianOperator(model, (x, y), loss=sparse_ce())
    result = spectral_density(operator, num_probes=8, num_steps=30, seed=0)
    estimate = result.moment(1, normalized=False)
    assert abs(estimate.value - eigenvalues.sum()) < 4 * estimate.stderr
    assert w1(result, eigenvalues) < 0.02 * np.ptp(eigenvalues)
    assert result.nodes.max() == pytest.approx(eigenvalues.max(), rel=1e-8)  # the top one converges


def test_plot_draws_the_density(slq):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (linear, logarithmic) = plt.subplots(1, 2)
    grid = np.linspace(-1.0, 16.0, 500)
    assert slq.plot(linear, grid=grid, sigma=0.2, label="slq", color="C1") is linear
    (line,) = linear.get_lines()
    np.testing.assert_array_equal(line.get_xdata(), grid)
    np.testing.assert_allclose(line.get_ydata(), slq.density(grid, 0.2), rtol=1e-15)
    assert line.get_label() == "slq" and linear.get_yscale() == "linear"
    assert linear.get_xlabel() == "eigenvalue" and linear.get_ylabel() == "density"

    slq.plot(logarithmic, log=True)  # default grid and sigma
    (line,) = logarithmic.get_lines()
    xs, ys = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    assert logarithmic.get_yscale() == "log" and len(xs) == 1000
    sigma = slq.default_sigma()
    assert sigma == pytest.approx(0.01 * (slq.nodes.max() - slq.nodes.min()))
    assert xs[0] < SPECTRUM.min() - 4 * sigma and xs[-1] > SPECTRUM.max() + 4 * sigma
    np.testing.assert_allclose(ys, slq.density(xs, sigma), rtol=1e-15)
    assert logarithmic.get_ylim()[0] == pytest.approx(1e-10 * ys.max())
    plt.close(figure)


def test_matplotlib_is_needed_only_to_plot():
    # TensorFlow may import matplotlib itself, so block it instead of looking for it in sys.modules.
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "import numpy as np, tf_sharpest.linalg as linalg\n"
        "result = linalg.spectral_density(np.diag([1.0, 2.0, 3.0]), num_probes=2, num_steps=3)\n"
        "result.density(np.linspace(0, 4, 9), 0.1)\n"
        "try:\n    result.plot()\nexcept ImportError:\n    sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]


NON_SYMMETRIC = np.random.default_rng(3).standard_normal((30, 30))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda r: spectral_density(MATRIX, num_probes=0), "num_probes must be an integer >= 1"),
        (lambda r: spectral_density(MATRIX, num_steps=0), "num_steps must be an integer >= 1"),
        (lambda r: spectral_density(MATRIX, num_steps=2.5), "num_steps must be an integer"),
        (lambda r: r.density(np.linspace(0, 1, 5), sigma=0.0), "sigma must be a positive width"),
        (lambda r: r.density(np.linspace(0, 1, 5), sigma=-1.0), "sigma must be a positive width"),
        (lambda r: r.density(np.linspace(0, 1, 5), sigma=np.nan), "sigma must be a positive width"),
        (lambda r: r.density([], sigma=0.1), "grid must be a non-empty array"),
        (lambda r: r.density([0.0, np.inf], sigma=0.1), "finite points"),
        (lambda r: r.moment(-1), "p must be an integer >= 0"),
        (lambda r: r.plot(num_points=10**12), r"num_points must be an integer with 2 <= num_points <= 1000000"),
        (lambda r: r.plot(num_points=1.5), "num_points must be an integer"),
        (lambda r: spectral_density(NON_SYMMETRIC), "needs a symmetric matrix"),
        (lambda r: spectral_density(MatrixOperator(NON_SYMMETRIC), num_probes=2, num_steps=3), "not symmetric"),
        (lambda r: spectral_density(lambda v: v), "FunctionOperator"),
        (lambda r: spectral_density(FunctionOperator(lambda v: v * np.inf, 4, tf.float64)), "non-finite"),
    ],
)
def test_bad_input_is_refused(slq, call, message):
    with pytest.raises(ValueError, match=message):
        call(slq)


def test_float32_symmetric_operator_passes_the_symmetry_check():
    result = spectral_density(MatrixOperator(MATRIX.astype(np.float32)), num_probes=4, num_steps=20)
    reference = spectral_density(MATRIX, num_probes=4, num_steps=20)
    np.testing.assert_allclose(result.moment(2).value, reference.moment(2).value, rtol=1e-4)
