"""Matvecs and seconds per LanczosCallback measurement, warm-started vs cold, along one real run.

Two callbacks measure the same weights on the same samples at the start of
every epoch of one short SimpleCNN run on real Fashion-MNIST: one starts
Lanczos from the previous eigenvectors, the other from a random vector.

    python benchmarks/lanczos_warm_start.py
"""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    """The flags, built before TensorFlow is imported so that --help and usage errors answer at once."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_examples", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--num_samples", type=int, default=512)
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--n_filters", type=int, default=32)
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # --help and usage errors answer here, before TensorFlow is imported


from _common import machine, markdown_table, median  # noqa: E402  (first: it imports TensorFlow quietly)

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402

from tf_sharpest import data, models  # noqa: E402
from tf_sharpest.callbacks import LanczosCallback  # noqa: E402
from tf_sharpest.linalg import LanczosSolver  # noqa: E402


def main():
    parser = build_parser()
    args = parser.parse_args()

    print(f"Machine: {machine()}")
    splits = data.load("fashion_mnist")
    x, y = splits.x_train[: args.n_examples], splits.y_train[: args.n_examples]
    keras.utils.set_random_seed(0)
    model = models.simple_cnn("root", input_shape=x.shape[1:], n_filters=args.n_filters)
    model.compile(optimizer=keras.optimizers.SGD(args.lr), loss=models.default_loss(), metrics=["accuracy"])
    common = dict(top_k=args.top_k, num_samples=args.num_samples, batch_size=256, seed=1)
    warm = LanczosCallback((x, y), solver=LanczosSolver(tol=args.tol), log_prefix="warm_", **common)
    cold = LanczosCallback((x, y), solver=LanczosSolver(tol=args.tol, warm_start=False), log_prefix="cold_",
                           **common)
    model.fit(x, y, batch_size=128, epochs=args.epochs, verbose=2, callbacks=[warm, cold])

    rows = []
    for w, c in zip(warm.history, cold.history):
        rows.append([w.epoch, f"{w.eigenvalues[0]:.3f}", f"{c.eigenvalues[0]:.3f}", w.matvecs, c.matvecs,
                     f"{w.seconds:.1f}", f"{c.seconds:.1f}"])
    print(f"\nSimpleCNN-root (n_filters={args.n_filters}, {model.count_params():,} parameters), {args.n_examples} "
          f"Fashion-MNIST training examples, SGD lr={args.lr}, batch 128; top-{args.top_k} on "
          f"{args.num_samples} samples per measurement, tol={args.tol:g}.\n")
    print(markdown_table(["epoch", "λ1 warm", "λ1 cold", "matvecs warm", "matvecs cold", "s warm", "s cold"], rows))
    later = slice(1, None)  # the first measurement has nothing to start from
    warm_mv = [m.matvecs for m in warm.history[later]]
    cold_mv = [m.matvecs for m in cold.history[later]]
    warm_s = [m.seconds for m in warm.history[later]]
    cold_s = [m.seconds for m in cold.history[later]]
    agreement = max(float(np.max(np.abs(w.eigenvalues - c.eigenvalues) / np.abs(c.eigenvalues)))
                    for w, c in zip(warm.history, cold.history))
    print(f"\nAfter the first measurement: median matvecs warm {median(warm_mv)} vs cold {median(cold_mv)} "
          f"(ratio {median(warm_mv) / median(cold_mv):.2f}); median seconds warm {median(warm_s):.1f} vs cold "
          f"{median(cold_s):.1f} (ratio {median(warm_s) / median(cold_s):.2f}); largest relative disagreement "
          f"of the top-{args.top_k} eigenvalues between the two: {agreement:.1e}.")


if __name__ == "__main__":
    main()
