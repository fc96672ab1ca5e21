"""Is the reported sampling error of λ1 the real spread of λ1 over samples? A check on a real network.

SimpleCNN (``--preset``, default ``root``) is trained with ``model.fit`` (SGD,
batch 128) for ``--epochs`` epochs on ``--n_examples`` real Fashion-MNIST
training images; at those weights the training examples are cut into
``--num_draws`` disjoint samples of ``--num_samples`` examples (batches of at
most ``--batch_size``, equal where possible, as ``LanczosCallback`` cuts them). On each, a
tight Lanczos (``--tol``, default 1e-6) finds λ1..λk and, with ``stderr=True``, their standard errors
from the per-batch Rayleigh quotients (the same as :func:`tf_sharpest.linalg.sampling_stderr`,
collected during the solve's own products). The spread of λ1
over the disjoint samples (their standard deviation) is what the standard
error claims to be: the table gives both, their ratio, and the ratio's own
uncertainty from the number of draws (the standard deviation of ``n`` draws
is itself uncertain by about ``1 / sqrt(2 (n - 1))``). With ``--full`` it
also computes λ1 on all the training examples used, to show the bias of a
sample's λ1 (``E[λ1(H_S)] >= λ1(H)``).

    python benchmarks/stderr_calibration.py --smoke        # a minute or two, tiny scale
    python benchmarks/stderr_calibration.py --full         # 20 x 2,250 on 45,000 examples: about an hour on 2 cores
    python benchmarks/stderr_calibration.py --epochs 1 --num_draws 12 --tol 1e-4   # about 15 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from _common import import_tensorflow_quietly, machine, markdown_table

TRAIN_BATCH_SIZE = 128


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="root", help="SimpleCNN preset")
    parser.add_argument("--n_filters", type=int, default=None, help="override the preset's filters")
    parser.add_argument("--n_examples", type=int, default=45_000, help="training examples (the fit, and the pool)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs before measuring")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--num_samples", type=int, default=2250, help="examples per sample (the paper: 2,250)")
    parser.add_argument("--num_draws", type=int, default=20, help="disjoint samples")
    parser.add_argument("--top_k", type=int, default=2)
    parser.add_argument("--tol", type=float, default=1e-6,
                        help="Lanczos tolerance of each draw (1e-4 already puts the solver's error far below the "
                             "sampling error)")
    parser.add_argument("--batch_size", type=int, default=128,
                        help="largest batch of the products (2,250 examples: 18 batches of 125); the standard error "
                             "comes from the spread over the batches, so it is itself noisy with few of them")
    parser.add_argument("--full", action="store_true", help="also λ1 on every example of the pool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="write the numbers as JSON here")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny: 3,000 examples, 1 epoch, 10 disjoint samples of 256 (batches of 32), 8 filters")
    args = parser.parse_args()
    if args.smoke:
        args.n_examples, args.epochs, args.num_samples, args.num_draws = 3000, 1, 256, 10
        args.n_filters, args.full, args.batch_size = 8, True, 32
    if args.num_samples * args.num_draws > args.n_examples:
        parser.error(f"--num_draws x --num_samples = {args.num_samples * args.num_draws} exceeds --n_examples")

    import_tensorflow_quietly()
    import keras

    from tf_sharpest import data, models
    from tf_sharpest.linalg import lanczos
    from tf_sharpest.operators import HessianOperator
    from tf_sharpest.utils import even_batch_size

    print(f"Machine: {machine()}")
    splits = data.load("fashion_mnist")
    x, y = splits.x_train[: args.n_examples], splits.y_train[: args.n_examples]
    keras.utils.set_random_seed(args.seed)
    overrides = {} if args.n_filters is None else {"n_filters": args.n_filters}
    model = models.simple_cnn(args.preset, input_shape=(28, 28, 1), **overrides)
    model.compile(optimizer=keras.optimizers.SGD(args.lr), loss=models.default_loss())
    start = time.perf_counter()
    model.fit(x, y, batch_size=TRAIN_BATCH_SIZE, epochs=args.epochs, verbose=2)
    print(f"trained in {time.perf_counter() - start:.0f} s")

    order = np.random.default_rng(args.seed).permutation(len(y))
    batch_size = even_batch_size(args.num_samples, args.batch_size)
    hessian = None
    values, stderr, products = [], [], []
    start = time.perf_counter()
    for draw in range(args.num_draws):
        chosen = order[draw * args.num_samples:(draw + 1) * args.num_samples]
        sample = (x[chosen], y[chosen])
        if hessian is None:
            hessian = HessianOperator(model, sample, loss=models.default_loss(), batch_size=batch_size)
        else:
            hessian.set_data(sample, batch_size)
        result = lanczos(hessian, k=args.top_k, tol=args.tol, seed=draw, stderr=True)
        values.append(result.eigenvalues)
        stderr.append(result.stderr)
        products.append(result.num_matvecs)
        print(f"draw {draw}: λ = {np.array2string(result.eigenvalues, precision=3)} ± "
              f"{np.array2string(stderr[-1], precision=3)} ({result.num_matvecs} products)", flush=True)
    seconds = time.perf_counter() - start
    values, stderr = np.array(values), np.array(stderr)

    full = None
    if args.full:
        pool = order[: args.num_samples * args.num_draws]
        everything = HessianOperator(model, (x[pool], y[pool]), loss=models.default_loss(),
                                     batch_size=even_batch_size(len(pool), args.batch_size))
        # The bias it measures is a few percent of λ1, so 1e-4 is ample; a tighter solve only adds products on
        # every pooled example, the slowest step of the script.
        full = lanczos(everything, k=args.top_k, tol=1e-4, seed=0).eigenvalues

    n = args.num_draws
    rows = []
    for i in range(args.top_k):
        spread = float(np.std(values[:, i], ddof=1))
        reported = float(np.sqrt(np.mean(stderr[:, i] ** 2)))
        rows.append([f"λ{i + 1}", f"{np.mean(values[:, i]):.3f}", "-" if full is None else f"{full[i]:.3f}",
                     f"{spread:.3f}", f"{reported:.3f}", f"{reported / spread:.2f}",
                     f"± {reported / spread / np.sqrt(2 * (n - 1)):.2f}"])
    filters = "" if args.n_filters is None else f" (F={args.n_filters})"
    print(f"\nSimpleCNN-{args.preset}{filters} ({model.count_params():,} parameters) after {args.epochs} epochs of SGD "
          f"lr={args.lr} on {args.n_examples:,} Fashion-MNIST training images; {n} disjoint samples of "
          f"{args.num_samples} (batches of {batch_size}), Lanczos tol {args.tol:g}; {seconds:.0f} s for the draws, "
          f"median {int(np.median(products))} products each.\n")
    print(markdown_table(["", "mean over samples", "all pooled examples", "spread over samples (sd)",
                          "reported stderr (rms)", "reported / spread", "uncertainty of the ratio"], rows))
    if args.output:
        with open(args.output, "w") as handle:
            json.dump({"args": vars(args), "eigenvalues": values.tolist(), "stderr": stderr.tolist(),
                       "full": None if full is None else full.tolist()}, handle, indent=1)


if __name__ == "__main__":
    main()
