"""Top-5 GGN eigenvalues: tf_sharpest's GGNOperator against curvlinops' GGNLinearOperator, same network.

SimpleCNN-root is trained briefly with SGD on real Fashion-MNIST (the same
training and weight cache as ``peers.py``); its PyTorch twin receives the
very same weights and must reproduce its logits and loss. Then both libraries
compute the top-5 eigenvalues of the generalized Gauss-Newton matrix of the
mean cross-entropy over the same examples, each with a tight tolerance:

* tf_sharpest: ``GGNOperator`` + ``lanczos`` (tol 1e-6);
* curvlinops: ``GGNLinearOperator(...).to_scipy()`` + scipy ``eigsh`` (tol 1e-6).

The check passes when they agree to ``--rtol`` (default 1e-4) relative. The
top-5 Hessian eigenvalues are printed beside them (GGN outliers explain the
Hessian's top eigenvalues for cross-entropy).

    python benchmarks/ggn_crosscheck.py
    python benchmarks/ggn_crosscheck.py --n_examples 256 --train_steps 20    # quicker

Needs the ``bench`` extra (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    """The flags, built before TensorFlow is imported so that --help and usage errors answer at once."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_examples", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=0)
    parser.add_argument("--train_steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # --help and usage errors answer here, before TensorFlow is imported


import numpy as np  # noqa: E402

from _common import machine, markdown_table  # noqa: E402
from peers import THREADS, benchmark_examples, check_twin, load_fashion_mnist, set_threads, train  # noqa: E402


def main():
    parser = build_parser()
    args = parser.parse_args()
    for name in ("n_examples", "batch_size", "train_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be positive")

    set_threads(THREADS)
    import torch
    from curvlinops import GGNLinearOperator
    from scipy.sparse.linalg import eigsh

    from tf_sharpest import models
    from tf_sharpest.linalg import lanczos
    from tf_sharpest.operators import GGNOperator, HessianOperator

    from torch_simple_cnn import from_keras, keras_to_torch_vector, to_nchw

    print(f"Machine: {machine()}")
    print("Command: python benchmarks/ggn_crosscheck.py " + " ".join(sys.argv[1:]), flush=True)
    splits, source = load_fashion_mnist()
    model, _, _ = train(splits, args.epochs, args.train_steps, 1, args.lr, 128, args.seed, cache="")
    x, y = benchmark_examples(splits, args.n_examples, args.seed)
    twin = from_keras(model)
    check_twin(model, twin, x, y, 1e-5)

    ggn = GGNOperator(model, (x, y), loss=models.default_loss(), batch_size=args.batch_size)
    ours = lanczos(ggn, k=5, tol=1e-6, max_iterations=600)
    hessian = lanczos(HessianOperator(model, (x, y), loss=models.default_loss(), batch_size=args.batch_size),
                      k=5, tol=1e-6, max_iterations=600).eigenvalues

    params = [p for p in twin.parameters() if p.requires_grad]
    batches = [(to_nchw(x[i:i + args.batch_size]), torch.from_numpy(y[i:i + args.batch_size]))
               for i in range(0, len(x), args.batch_size)]
    theirs_operator = GGNLinearOperator(twin, torch.nn.CrossEntropyLoss(), params, batches,
                                        check_deterministic=False, num_data=len(x)).to_scipy()
    start = np.random.default_rng(args.seed).standard_normal(theirs_operator.shape[0]).astype(np.float32)
    theirs = np.sort(eigsh(theirs_operator, k=5, which="LA", tol=1e-6, v0=start, return_eigenvectors=False))[::-1]

    # The eigenvector of the top pair, mapped into the twin's layout, is also one of curvlinops' GGN.
    top = keras_to_torch_vector(ours.eigenvectors[:, 0], model, twin)
    residual = np.linalg.norm(theirs_operator @ top - ours.eigenvalues[0] * top) / abs(ours.eigenvalues[0])

    error = np.abs(ours.eigenvalues - theirs) / np.abs(theirs)
    rows = [[i + 1, f"{a:.6f}", f"{b:.6f}", f"{e:.1e}", f"{h:.6f}"]
            for i, (a, b, e, h) in enumerate(zip(ours.eigenvalues, theirs, error, hessian))]
    print(f"\nSimpleCNN-root after {args.train_steps} SGD steps (lr {args.lr}), GGN of the mean cross-entropy over "
          f"{args.n_examples} Fashion-MNIST training examples ({source}):\n")
    print(markdown_table(["i", "tf_sharpest GGN λi", "curvlinops GGN λi", "relative difference", "Hessian λi"],
                         rows))
    print(f"\ncurvlinops' GGN applied to tf_sharpest's top eigenvector: relative residual {residual:.1e}")
    verdict = "PASS" if np.all(error <= args.rtol) else "FAIL"
    print(f"{verdict}: largest relative difference {error.max():.1e} (tolerance {args.rtol:g}); "
          f"tf_sharpest used {ours.num_matvecs} GGN products.")
    if verdict == "FAIL":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
