"""MultiWorkerMirroredStrategy with two worker processes on 127.0.0.1 ports, bounded in time, always ended."""

import json
import os
import sys

import numpy as np
import pytest

from references import classification_data, sparse_ce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

from local_cluster import run_workers  # noqa: E402


def test_two_workers_share_each_product_and_agree_with_one_process(tmp_path):
    worker = os.path.join(ROOT, "tests", "mwms_worker.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tests"),
                                                       os.environ.get("PYTHONPATH", "")]))
    codes = run_workers(2, lambda index: [sys.executable, worker, str(tmp_path)], timeout=240,
                        log_dir=str(tmp_path), env=env)
    logs = "\n".join(open(tmp_path / f"worker_{i}.log").read()[-2000:] for i in range(2))
    assert codes == [0, 0], logs
    results = [np.load(tmp_path / f"worker_{i}.npz") for i in range(2)]

    # In this process, without a strategy: the same model, weights and data.
    from tf_sharpest.hessian import top_eigenpairs
    from tf_sharpest.operators import GGNOperator, HessianOperator

    from mwms_worker import counting_model

    model = counting_model()
    model.compile(loss=sparse_ce("float32"))
    x, y = classification_data((6, 6, 1), n=23, dtype="float32", seed=5)
    vector = np.random.default_rng(0).standard_normal(sum(int(np.prod(v.shape)) for v in model.trainable_variables))
    vector = vector.astype("float32")
    expected_product = HessianOperator(model, (x, y), batch_size=4).matvec(vector).numpy()
    expected_ggn = GGNOperator(model, (x, y), batch_size=4).matvec(vector).numpy()
    expected = top_eigenpairs(model, (x, y), k=3, batch_size=4, tol=1e-6).eigenvalues

    for result in results:
        assert list(result["plan"]) == [12, 11]
        np.testing.assert_allclose(result["product"], expected_product, rtol=1e-5,
                                   atol=1e-5 * np.abs(expected_product).max())
        np.testing.assert_allclose(result["ggn"], expected_ggn, rtol=1e-5, atol=1e-5 * np.abs(expected_ggn).max())
        np.testing.assert_allclose(result["eigenvalues"], expected, rtol=1e-4)
    assert [int(r["processed"]) for r in results] == [12, 11]  # each worker its own share, once
    np.testing.assert_array_equal(results[0]["eigenvalues"], results[1]["eigenvalues"])
    np.testing.assert_array_equal(results[0]["eigenvectors"], results[1]["eigenvectors"])


@pytest.mark.needs_fmnist
def test_multi_worker_example_trains_with_the_callback_and_nsgd(tmp_path):
    import subprocess

    out = tmp_path / "run"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "multi_worker.py"), "--workers", "2",
                             "--n_examples", "256", "--epochs", "2", "--num_samples", "64", "--top_k", "2",
                             "--n_filters", "4", "--batch_size", "64", "--timeout", "240", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "eigenvalue logs agree, NSGD directions identical" in result.stdout
    workers = [json.load(open(out / f"worker_{i}.json")) for i in range(2)]
    assert workers[0]["history"]["lambda_1"] == workers[1]["history"]["lambda_1"]
    assert len(workers[0]["history"]["lambda_1"]) == 2 and np.all(np.isfinite(workers[0]["history"]["lambda_1"]))
    assert workers[0]["directions"] == workers[1]["directions"]
    assert np.linalg.matrix_rank(np.array(workers[0]["directions"])) == 2  # NSGD really received directions
    assert sorted(os.listdir(out / "lanczos_worker0")) == ["lanczos.csv", "lanczos.npz"]
    assert not (out / "lanczos_worker1").exists() or not os.listdir(out / "lanczos_worker1")
    saved = np.load(out / "lanczos_worker0" / "lanczos.npz")
    np.testing.assert_allclose(saved["eigenvalues"][:2, 0], workers[0]["history"]["lambda_1"], rtol=1e-6)
