"""Smoke test of an INSTALLED tf_sharpest (the built wheel in a clean venv), run from outside the repository.

Checks that the package imported is the installed one (not a source tree on ``sys.path``), that every module
the source tree has made it into the wheel (a package file left out of the build fails here: the list of modules
is passed in from the source tree, see ``.ci/wheel.sh``), that the licence travels in the wheel's metadata, then
two computations against references that do not use the library:

* ``top_eigenpairs`` on a linear least-squares model, whose loss ``mean((X w - y)^2)`` has the Hessian
  ``2 X^T X / n`` exactly: its eigenvalues from ``numpy.linalg.eigvalsh``;
* one NSGD step with fixed directions against the hand-computed update
  ``w - lr (I - E E^T) g - gamma lr E E^T g`` with ``g = 2 X^T (X w - y) / n``.

    python .ci/wheel_smoke.py [--modules tf_sharpest,tf_sharpest.utils,...]

Exit status 0 when all pass; an AssertionError names what failed otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def check_installed(expected_modules: list[str]) -> None:
    import tf_sharpest

    location = os.path.dirname(os.path.abspath(tf_sharpest.__file__))
    assert "site-packages" in location, f"tf_sharpest was imported from {location}, not from an installed wheel"
    for name in expected_modules:  # a module the source tree has but the wheel lacks fails to import here
        importlib.import_module(name)
    distribution = importlib.metadata.distribution("tf_sharpest")
    assert distribution.version == tf_sharpest.__version__, (distribution.version, tf_sharpest.__version__)
    assert distribution.metadata["License"] == "Apache-2.0", distribution.metadata["License"]
    licence = [f for f in distribution.files or [] if os.path.basename(str(f)) == "LICENSE"]
    assert licence, "the wheel's metadata carries no LICENSE file"
    text = licence[0].read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text, "LICENSE is not the Apache-2.0 text"
    print(f"installed: tf_sharpest {tf_sharpest.__version__} from {location}; {len(expected_modules)} modules "
          "import; LICENSE in the metadata")


def least_squares(seed: int = 0, n: int = 40, d: int = 6):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype("float32") * np.linspace(0.5, 2.0, d).astype("float32")
    y = rng.standard_normal((n, 1)).astype("float32")
    return x, y


def linear_model(d: int, optimizer):
    import keras

    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(optimizer=optimizer, loss="mse")
    return model


def check_top_eigenpairs() -> None:
    import keras
    import numpy as np

    from tf_sharpest.hessian import top_eigenpairs

    x, y = least_squares()
    n, d = x.shape
    model = linear_model(d, keras.optimizers.SGD(0.1))
    result = top_eigenpairs(model, (x, y), k=3, tol=1e-6)
    hessian = 2.0 * x.astype("float64").T @ x.astype("float64") / n  # of mean((Xw - y)^2), w being [d, 1]
    reference, vectors = np.linalg.eigh(hessian)
    reference, vectors = reference[::-1][:3], vectors[:, ::-1][:, :3]
    np.testing.assert_allclose(result.eigenvalues, reference, rtol=1e-4)
    overlaps = np.abs(np.sum(np.asarray(result.eigenvectors, "float64") * vectors, axis=0))
    np.testing.assert_allclose(overlaps, 1.0, atol=1e-3)
    print(f"top_eigenpairs: {np.round(result.eigenvalues, 5)} against eigh of 2 X^T X / n {np.round(reference, 5)}")


def check_nsgd_step() -> None:
    import numpy as np

    from tf_sharpest.optimizers import NSGD

    x, y = least_squares(seed=1)
    n, d = x.shape
    lr, gamma = 0.05, 0.25
    model = linear_model(d, NSGD(learning_rate=lr, gamma=gamma, top_k=2))
    w0 = model.get_weights()[0].astype("float64")  # [d, 1]
    rng = np.random.default_rng(2)
    directions, _ = np.linalg.qr(rng.standard_normal((d, 2)))  # orthonormal columns
    model.optimizer.build(model.trainable_variables)
    model.optimizer.set_directions(None, directions.astype("float32"))  # no eigenvalues: directions only
    model.fit(x, y, batch_size=n, epochs=1, shuffle=False, verbose=0)  # one step on the whole data
    xd, yd = x.astype("float64"), y.astype("float64")
    gradient = 2.0 * xd.T @ (xd @ w0 - yd) / n
    projection = directions @ (directions.T @ gradient)
    expected = w0 - lr * (gradient - projection) - gamma * lr * projection
    np.testing.assert_allclose(model.get_weights()[0], expected, rtol=1e-4, atol=1e-6)
    sgd_only = w0 - lr * gradient  # NSGD with gamma != 1 must differ from plain SGD along E
    assert np.abs(expected - sgd_only).max() > 1e-3
    np.testing.assert_allclose(model.optimizer.alpha.numpy(), np.abs(directions.T @ gradient).ravel(), rtol=1e-4)
    print(f"NSGD step: max |w - hand-computed| = {np.abs(model.get_weights()[0] - expected).max():.2e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", default="tf_sharpest",
                        help="comma-separated modules that must import from the installed package")
    args = parser.parse_args(argv)
    check_installed([m for m in args.modules.split(",") if m])
    check_top_eigenpairs()
    check_nsgd_step()
    print("wheel smoke test: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
