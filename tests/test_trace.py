import numpy as np
import pytest
import tensorflow as tf

from tf_sharpest.linalg import DiagonalResult, TraceResult, diagonal, trace
from tf_sharpest.linalg._probes import PROBE_BLOCK, rademacher
from tf_sharpest.operators import FunctionOperator, HessianOperator, LinearOperator, MatrixOperator

from references import classification_data, explicit_hessian, sparse_ce, symmetric_matrix, tiny_cnn

# Eigenvalues of both signs and a sizeable off-diagonal part, so every estimator has real variance.
MIXED = symmetric_matrix(np.random.default_rng(0).uniform(-1.0, 3.0, 60), seed=0)


def decaying(dim=200, decay=2.0, seed=1):
    """A random rotation of diag(i^-decay): positive semidefinite with a fast-decaying spectrum."""
    return symmetric_matrix(np.arange(1, dim + 1, dtype=np.float64) ** -decay, seed=seed)


def estimates(matrix, method, num_matvecs, seeds):
    results = [trace(matrix, method=method, num_matvecs=num_matvecs, seed=s) for s in range(seeds)]
    return np.array([r.value for r in results]), np.array([r.stderr for r in results])


def test_hutchinson_is_unbiased_and_its_stderr_is_calibrated():
    values, stderrs = estimates(MIXED, "hutchinson", 10, 400)
    exact = np.trace(MIXED)
    spread = np.std(values, ddof=1)
    # The mean of 400 independent estimates lies within a few of its standard errors of the
    # exact trace; a bias of a quarter of one estimate's spread (z ~ 5) would fail this.
    z = (np.mean(values) - exact) / (spread / np.sqrt(len(values)))
    assert abs(z) < 3.5, z
    # The reported standard error (sample std / sqrt(m)) matches the actual spread.
    assert 0.85 < np.mean(stderrs) / spread < 1.15
    # Rademacher variance of z^T A z is 2 * sum of squared off-diagonal entries.
    variance = 2.0 * (np.sum(MIXED ** 2) - np.sum(np.diag(MIXED) ** 2))
    assert spread == pytest.approx(np.sqrt(variance / 10), rel=0.1)


@pytest.mark.parametrize("method, num_matvecs", [("hutch++", 12), ("xtrace", 12)])
def test_hutch_plus_plus_and_xtrace_are_unbiased(method, num_matvecs):
    values, stderrs = estimates(MIXED, method, num_matvecs, 300)
    spread = np.std(values, ddof=1)
    z = (np.mean(values) - np.trace(MIXED)) / (spread / np.sqrt(len(values)))
    assert abs(z) < 3.5, z
    # Their error estimates are of the right size (XTrace's is known to be approximate).
    assert 0.6 < np.mean(stderrs) / spread < 1.3


def test_hutch_plus_plus_beats_hutchinson_and_converges_faster():
    matrix, budgets = decaying(), [12, 24, 48]
    exact = np.trace(matrix)
    rms = {method: [np.sqrt(np.mean((estimates(matrix, method, m, 40)[0] - exact) ** 2)) for m in budgets]
           for method in ("hutchinson", "hutch++", "xtrace")}
    for method in ("hutch++", "xtrace"):
        assert all(h >= 3.0 * p for h, p in zip(rms["hutchinson"], rms[method])), rms
    slopes = {method: np.polyfit(np.log(budgets), np.log(errors), 1)[0] for method, errors in rms.items()}
    assert -0.8 < slopes["hutchinson"] < -0.25, slopes  # 1/sqrt(m)
    assert slopes["hutch++"] < -0.9 and slopes["xtrace"] < -0.9, slopes  # 1/m or faster
    assert slopes["hutch++"] < slopes["hutchinson"] - 0.4, slopes


def naive_hutch_plus_plus(matrix, num_matvecs, seed):
    """Hutch++ as Meyer et al. state it, with the same probes the estimator draws."""
    rng = np.random.default_rng(seed)
    k = num_matvecs // 3
    sketch = rademacher(rng, len(matrix), k).numpy()
    tests = np.concatenate([rademacher(rng, len(matrix), min(PROBE_BLOCK, num_matvecs - 2 * k - start)).numpy()
                            for start in range(0, num_matvecs - 2 * k, PROBE_BLOCK)], axis=1)
    q = np.linalg.qr(matrix @ sketch)[0]
    rest = np.eye(len(matrix)) - q @ q.T
    return np.trace(q.T @ matrix @ q) + np.trace(tests.T @ rest @ matrix @ rest @ tests) / tests.shape[1]


def naive_xtrace(matrix, num_matvecs, seed):
    """XTrace by its definition: probe i tests the sketch of all the other probes, each basis by its own QR."""
    probes = rademacher(np.random.default_rng(seed), len(matrix), num_matvecs // 2).numpy()
    samples = []
    for i in range(probes.shape[1]):
        q = np.linalg.qr(matrix @ np.delete(probes, i, axis=1))[0]
        rest = np.eye(len(matrix)) - q @ q.T
        samples.append(np.trace(q.T @ matrix @ q) + probes[:, i] @ rest @ matrix @ rest @ probes[:, i])
    return np.mean(samples), np.std(samples, ddof=1) / np.sqrt(len(samples))


@pytest.mark.parametrize("num_matvecs", [4, 9, 40])
def test_estimators_match_their_definitions(num_matvecs):
    result = trace(MIXED, method="xtrace", num_matvecs=num_matvecs, seed=3)
    value, stderr = naive_xtrace(MIXED, num_matvecs, seed=3)
    assert result.value == pytest.approx(value, rel=1e-10) and result.stderr == pytest.approx(stderr, rel=1e-8)
    assert result.num_matvecs == 2 * (num_matvecs // 2) and result.method == "xtrace"
    result = trace(MIXED, method="hutch++", num_matvecs=num_matvecs + 3, seed=3)
    assert result.value == pytest.approx(naive_hutch_plus_plus(MIXED, num_matvecs + 3, seed=3), rel=1e-10)
    assert result.num_matvecs == num_matvecs + 3


def test_xtrace_and_hutch_plus_plus_are_exact_when_the_sketch_spans_the_range():
    # rank 5 < the sketch: XTrace's R is singular, so it takes the rank-deficient path.
    matrix = symmetric_matrix(np.concatenate([np.arange(1.0, 6.0), np.zeros(95)]), seed=2)
    for method in ("xtrace", "hutch++"):
        result = trace(matrix, method=method, num_matvecs=40)
        assert result.value == pytest.approx(15.0, rel=1e-10) and result.stderr < 1e-10


def test_hutchinson_trace_is_the_sum_of_the_hutchinson_diagonal():
    # Same seed, same probes: the two estimators are consistent, not just close.
    for m in (1, 17, 40):
        assert trace(MIXED, method="hutchinson", num_matvecs=m, seed=5).value == pytest.approx(
            np.sum(diagonal(MIXED, num_matvecs=m, seed=5).values), rel=1e-12)


def test_diagonal_is_unbiased_with_calibrated_stderr():
    # 400 probes need more than 400 rows: at dim probes or more, method="exact" is refused in favour of exact.
    wide = symmetric_matrix(np.random.default_rng(0).uniform(-1.0, 3.0, 450), seed=0)
    result = diagonal(wide, num_matvecs=400, seed=1)
    assert isinstance(result, DiagonalResult) and result.values.shape == (450,) and result.num_matvecs == 400
    z = (result.values - np.diag(wide)) / result.stderr
    assert np.max(np.abs(z)) < 4.5 and 0.75 < np.sqrt(np.mean(z ** 2)) < 1.25
    # the per-entry error is the one Rademacher probes predict: sum of the row's off-diagonal squares
    predicted = np.sqrt((np.sum(wide ** 2, axis=1) - np.diag(wide) ** 2) / 400)
    np.testing.assert_allclose(result.stderr, predicted, rtol=0.25)
    exact = diagonal(MIXED, method="exact")
    np.testing.assert_allclose(exact.values, np.diag(MIXED), atol=1e-12)
    assert exact.num_matvecs == 60 and not np.any(exact.stderr)
    assert diagonal(MIXED, num_matvecs=1).stderr is None


def test_exact_trace_and_determinism():
    result = trace(MIXED, method="exact")
    assert isinstance(result, TraceResult)
    assert result.value == pytest.approx(np.trace(MIXED), rel=1e-12) and result.stderr == 0.0
    assert result.num_matvecs == 60
    a, b = trace(MIXED, seed=11, num_matvecs=30), trace(MIXED, seed=11, num_matvecs=30)
    assert a == b and a.value != trace(MIXED, seed=12, num_matvecs=30).value
    assert trace(MIXED, method="hutchinson", num_matvecs=1).stderr is None


class BlockRecorder(LinearOperator):
    """A float32 matrix operator that records the width of every block product."""

    def __init__(self, matrix):
        super().__init__(matrix.shape[0], tf.float32)
        self.matrix, self.widths = tf.constant(matrix, tf.float32), []

    def _matvec(self, vector):
        return tf.linalg.matvec(self.matrix, vector)

    def _matmat(self, vectors):
        self.widths.append(int(vectors.shape[1]))
        return tf.matmul(self.matrix, vectors)


@pytest.mark.parametrize("method, num_matvecs", [("hutchinson", 50), ("hutch++", 50), ("xtrace", 50)])
def test_products_go_in_bounded_blocks_and_are_counted(method, num_matvecs):
    operator = BlockRecorder(decaying(dim=120))
    result = trace(operator, method=method, num_matvecs=num_matvecs)
    assert max(operator.widths) <= PROBE_BLOCK
    assert sum(operator.widths) == operator.num_matvecs == result.num_matvecs == num_matvecs
    # float32 products, float64 accumulation: the same estimate as in float64, up to float32 rounding
    in_float64 = trace(decaying(dim=120), method=method, num_matvecs=num_matvecs)
    assert result.value == pytest.approx(in_float64.value, rel=1e-5)


def test_tiny_cnn_hessian_trace():
    model = tiny_cnn()
    x, y = classification_data((6, 6, 1))
    exact = np.trace(explicit_hessian(model, x, y, sparse_ce()))
    operator = HessianOperator(model, (x, y), loss=sparse_ce())
    assert trace(operator, method="exact").value == pytest.approx(exact, rel=1e-9)
    result = trace(operator, method="hutch++", num_matvecs=150, seed=0)
    assert abs(result.value - exact) < 4 * result.stderr and abs(result.value - exact) < 0.05 * abs(exact)
    hutchinson = trace(operator, method="hutchinson", num_matvecs=150, seed=0)
    assert abs(hutchinson.value - exact) < 4 * hutchinson.stderr
    assert result.stderr < hutchinson.stderr  # the sketch takes the top of the spectrum out of the noise


NON_SYMMETRIC = np.random.default_rng(3).standard_normal((30, 30))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: trace(MIXED, method="hutch"), r"method must be one of \('hutch\+\+', 'hutchinson'"),
        (lambda: trace(MIXED, method="hutch++", num_matvecs=2), r"'hutch\+\+' needs num_matvecs >= 3"),
        (lambda: trace(MIXED, method="xtrace", num_matvecs=3), "'xtrace' needs num_matvecs >= 4"),
        (lambda: trace(MIXED, method="hutchinson", num_matvecs=0), "'hutchinson' needs num_matvecs >= 1"),
        (lambda: trace(MIXED, num_matvecs=10.5), "an integer"),
        (lambda: trace(MIXED, method="xtrace", num_matvecs=60), "method='exact' gives the exact trace"),
        (lambda: trace(MIXED, method="hutch++", num_matvecs=61), "needs num_matvecs < dim=60"),
        (lambda: trace(NON_SYMMETRIC), r"symmetric matrix.*\(A \+ A\^T\) / 2"),
        (lambda: trace(lambda v: v), "FunctionOperator"),
        (lambda: diagonal(MIXED, method="hutch++"), r"method must be one of \('hutchinson', 'exact'\)"),
        (lambda: diagonal(MIXED, num_matvecs=0), "needs num_matvecs >= 1"),
        (lambda: diagonal(NON_SYMMETRIC), "symmetric matrix"),
    ],
)
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace", "exact"])
def test_non_symmetric_operator_is_detected_at_no_extra_cost(method):
    operator = MatrixOperator(NON_SYMMETRIC)  # no explicit check on an operator: the probes show it
    with pytest.raises(ValueError, match="not symmetric"):
        trace(operator, method=method, num_matvecs=12)
    with pytest.raises(ValueError, match="not symmetric"):
        diagonal(operator, method="exact" if method == "exact" else "hutchinson", num_matvecs=12)
    # a symmetric float32 operator passes: rounding is far below the tolerance
    trace(MatrixOperator(MIXED.astype(np.float32)), method=method, num_matvecs=12)


class LimitedOperator(LinearOperator):
    """MIXED, refusing to run past ``limit`` products: a budget that is not refused up front fails here."""

    def __init__(self, limit):
        super().__init__(MIXED.shape[0], tf.float64)
        self.limit = limit

    def _matmat(self, vectors):
        if self.num_matvecs > self.limit:
            raise RuntimeError(f"ran past {self.limit} products")
        return tf.matmul(tf.constant(MIXED), vectors)

    def _matvec(self, vector):
        return self._matmat(vector[:, None])[:, 0]


@pytest.mark.parametrize("function, computes", [(trace, "trace"), (diagonal, "diagonal")])
@pytest.mark.parametrize("num_matvecs", [60, 61, 10**12, np.int64(10**12)])
def test_hutchinson_budgets_of_dim_or_more_are_refused_for_exact(function, computes, num_matvecs):
    """Regression: trace/diagonal(method="hutchinson", num_matvecs=10**12) ran without bound."""
    operator = LimitedOperator(limit=200)
    with pytest.raises(ValueError, match=rf"needs num_matvecs < dim=60.*method='exact' gives the exact {computes}"):
        function(operator, method="hutchinson", num_matvecs=num_matvecs)
    assert operator.num_matvecs == 0  # refused before any product
    # the way out the message names: dim products, no error
    exact = function(operator, method="exact")
    assert exact.num_matvecs == operator.num_matvecs == 60
    expected = np.trace(MIXED) if computes == "trace" else np.diag(MIXED)
    np.testing.assert_allclose(exact.value if computes == "trace" else exact.values, expected, rtol=1e-12)
    # and the largest budget that can help still runs
    assert function(operator, method="hutchinson", num_matvecs=59).num_matvecs == 59


def test_non_finite_products_are_reported():
    with pytest.raises(ValueError, match="non-finite"):
        trace(FunctionOperator(lambda v: v * np.nan, 5, tf.float64), method="hutchinson", num_matvecs=3)
