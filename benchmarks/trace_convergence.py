"""Trace estimators' RMS error against the number of matvecs, on a matrix with a decaying spectrum.

A random rotation of ``diag(lambda)`` with ``lambda_i = i^(-decay)`` (positive
semidefinite, like the top of a trained network's Hessian), estimated by
``tf_sharpest.linalg.trace`` with Hutchinson, Hutch++ and XTrace at equal
matvec budgets over many seeds. Prints a markdown table of RMS errors, their
ratios, and the slopes of log(RMS) against log(m) fitted by least squares
(theory: -1/2 for Hutchinson; -1 or steeper for Hutch++ and XTrace on such
spectra).

Usage: ``cd benchmarks && python trace_convergence.py [--dim 1000] [--decay 1.0 2.0] [--seeds 200]``
"""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    """The flags, built before TensorFlow is imported so that --help and usage errors answer at once."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=1000)
    parser.add_argument("--decay", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[12, 24, 48, 96, 192])
    parser.add_argument("--seeds", type=int, default=200)
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # --help and usage errors answer here, before TensorFlow is imported


from _common import machine, markdown_table  # noqa: E402, F401  (first: it imports TensorFlow quietly)

# isort: split
import numpy as np  # noqa: E402

from tf_sharpest.linalg import trace  # noqa: E402
from tf_sharpest.operators import MatrixOperator  # noqa: E402

METHODS = ("hutchinson", "hutch++", "xtrace")


def decaying_matrix(dim: int, decay: float, seed: int = 0) -> np.ndarray:
    """``Q diag(i^-decay) Q^T`` for a random orthogonal ``Q`` (so the diagonal is not the spectrum)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return (q * np.arange(1, dim + 1, dtype=np.float64) ** -decay) @ q.T


def rms_errors(matrix: np.ndarray, budgets, seeds: int) -> dict:
    """RMS error of each method at each budget, over ``seeds`` independent runs."""
    operator, exact = MatrixOperator(matrix), float(np.trace(matrix))
    errors = {}
    for method in METHODS:
        for m in budgets:
            values = np.array([trace(operator, method=method, num_matvecs=m, seed=s).value for s in range(seeds)])
            errors[method, m] = float(np.sqrt(np.mean((values - exact) ** 2)))
    return errors


def slope(budgets, values) -> float:
    """Least-squares slope of log(values) against log(budgets)."""
    return float(np.polyfit(np.log(budgets), np.log(values), 1)[0])


def table(errors: dict, budgets) -> str:
    rows = []
    for m in budgets:
        hutchinson, plus, xtrace = (errors[method, m] for method in METHODS)
        rows.append([m, f"{hutchinson:.3g}", f"{plus:.3g}", f"{xtrace:.3g}", f"{hutchinson / plus:.1f}",
                     f"{hutchinson / xtrace:.1f}"])
    rows.append(["slope (log-log fit)"] + [f"{slope(budgets, [errors[method, m] for m in budgets]):.2f}"
                                          for method in METHODS] + ["", ""])
    return markdown_table(["m (matvecs)", "RMS Hutchinson", "RMS Hutch++", "RMS XTrace", "Hutchinson / Hutch++",
                           "Hutchinson / XTrace"], rows)


def main():
    parser = build_parser()
    args = parser.parse_args()
    print(f"Machine: {machine()}")
    print(f"dim {args.dim}, {args.seeds} seeds per cell, RMS error of the trace estimate\n")
    for decay in args.decay:
        matrix = decaying_matrix(args.dim, decay)
        print(f"lambda_i = i^-{decay:g} (trace {np.trace(matrix):.4f}):\n")
        print(table(rms_errors(matrix, args.budgets, args.seeds), args.budgets) + "\n", flush=True)


if __name__ == "__main__":
    main()
