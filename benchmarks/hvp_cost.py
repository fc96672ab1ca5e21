"""What one Hessian-vector product costs, and how many Lanczos needs against ARPACK.

Part 1: time of one HVP over a batch divided by one gradient over the same
batch (the operator's forward-over-reverse product, and double backprop
beside it), for SimpleCNN with 32 and 100 filters (medians over interleaved repeats,
in one run), and the same HVP graph traced with an open batch dimension; and
the Gauss-Newton and empirical-Fisher products on the same batch beside them.
Part 2: matvecs that ``tf_sharpest.linalg.lanczos`` and scipy's
``eigsh`` (ARPACK) need for the top-5 eigenvalues to a given relative accuracy
on the same Hessian operator.
Part 3: the Hessian's block product ``matmat`` on ``K`` vectors (one forward
and first backward pass per batch, shared) against ``K`` separate matvecs, on
the same batch, side by side (medians over interleaved repeats); and the block product with one column in
flight (the operator's) against ten (``_block_variants.py``, the operator before issue 25).

    python benchmarks/hvp_cost.py                  # all parts
    python benchmarks/hvp_cost.py --skip_eigsh     # ratios and block products
    python benchmarks/hvp_cost.py --skip_ratio --skip_eigsh --repeats 15    # block products only
    python benchmarks/hvp_cost.py --skip_ratio --skip_eigsh --block_input_shape 28 28 1 --batch_size 125
"""

from __future__ import annotations

import argparse

import numpy as np
import tensorflow as tf
from _block_variants import BlockHessianInFlight
from _double_backprop import ReverseOverReverseHessian

from tf_sharpest import models
from tf_sharpest.linalg import lanczos
from tf_sharpest.operators import EmpiricalFisherOperator, GGNOperator, HessianOperator

from _common import interleaved_medians, machine, markdown_table, positive_int


def gradient_function(model, loss_fn):
    @tf.function
    def gradient(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=False))
        return tape.gradient(loss, model.trainable_variables)

    return gradient


def random_batch(preset, batch_size, seed=0, input_shape=None):
    """SimpleCNN ``preset`` (on ``input_shape``, default its preset's) and one batch of random inputs and labels."""
    model = models.simple_cnn(preset, input_shape=input_shape)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size,) + tuple(model.input_shape[1:])).astype("float32")
    y = rng.integers(0, 10, batch_size)
    return model, x, y, rng


def hvp_ratio(preset, batch_size, repeats, seed=0):
    """Median seconds of a gradient, an HVP, the same HVP graph traced with an open batch dimension, a GGN and
    an empirical-Fisher product, all on the same batch."""
    model, x, y, rng = random_batch(preset, batch_size, seed)
    loss_fn = models.default_loss()
    gradient = gradient_function(model, loss_fn)
    operator = HessianOperator(model, (x, y), loss=loss_fn, batch_size=batch_size)
    ggn = GGNOperator(model, (x, y), loss=loss_fn, batch_size=batch_size)
    fisher = EmpiricalFisherOperator(model, (x, y), loss=loss_fn, batch_size=batch_size)
    v = tf.constant(rng.standard_normal(operator.dim).astype("float32"))
    reverse = ReverseOverReverseHessian(model, (x, y), loss=loss_fn, batch_size=batch_size)
    # What the operator ran before it traced equal batches for their fixed shape (and still runs
    # when the last batch is smaller): its per-batch graph with the batch dimension left open.
    flat = tf.TensorSpec([operator.dim], tf.float32)
    open_batch_graph = tf.function(operator.batch_matvec, input_signature=[operator.sample.batch_spec, flat])
    batch = next(iter(operator.objective.batches()))
    calls = {"gradient": lambda: gradient(x, y), "hvp": lambda: operator.matvec(v),
             "hvp_reverse": lambda: reverse.matvec(v), "hvp_open_batch": lambda: open_batch_graph(batch, v),
             "ggn": lambda: ggn.matvec(v), "empirical_fisher": lambda: fisher.matvec(v)}
    return model.count_params(), interleaved_medians(calls, repeats)


def block_cost(preset, batch_size, block_sizes, repeats, seed=0, input_shape=None):
    """Median seconds of ``matmat`` on ``K`` vectors and of ``K`` separate matvecs, for each ``K``, interleaved."""
    model, x, y, rng = random_batch(preset, batch_size, seed, input_shape)
    operator = HessianOperator(model, (x, y), loss=models.default_loss(), batch_size=batch_size)
    in_flight = BlockHessianInFlight(model, (x, y), loss=models.default_loss(), batch_size=batch_size)
    calls = {}
    for k in block_sizes:
        block = tf.constant(rng.standard_normal((operator.dim, k)).astype("float32"))
        columns = [block[:, j] for j in range(k)]
        calls[("matmat", k)] = lambda block=block: operator.matmat(block)
        calls[("in_flight", k)] = lambda block=block: in_flight.matmat(block)
        calls[("matvecs", k)] = lambda columns=columns: [operator.matvec(c) for c in columns]
    return model.count_params(), interleaved_medians(calls, repeats)


def fashion_mnist_sample(n, seed=0):
    from tf_sharpest import data

    splits = data.load("fashion_mnist")
    index = np.random.default_rng(seed).choice(len(splits.x_train), n, replace=False)
    return splits.x_train[index], splits.y_train[index], splits


def trained_root_model(splits, steps, seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    model = models.simple_cnn("root", input_shape=splits.x_train.shape[1:])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=models.default_loss())
    model.fit(splits.x_train[: steps * 128], splits.y_train[: steps * 128], batch_size=128, epochs=1, verbose=0)
    return model


def matvecs_to_accuracy(runs, target):
    return min((m for m, err in runs if err <= target), default=None)


def lanczos_vs_eigsh(n_examples, train_steps, tols):
    from scipy.sparse import linalg as sparse_linalg

    x, y, splits = fashion_mnist_sample(n_examples)
    model = trained_root_model(splits, train_steps)
    operator = HessianOperator(model, (x, y), batch_size=256)
    reference = lanczos(operator, k=5, tol=1e-6, max_iterations=600).eigenvalues
    ours, arpack = [], []
    for tol in tols:
        result = lanczos(operator, k=5, tol=tol)
        ours.append((result.num_matvecs, float(np.max(np.abs(result.eigenvalues - reference) / reference))))
        count = [0]

        def matvec(v, count=count):
            count[0] += 1
            return operator.matvec(v.astype(np.float32)).numpy().astype(np.float64)

        arpack_operator = sparse_linalg.LinearOperator((operator.dim, operator.dim), matvec=matvec, dtype=np.float64)
        start = np.random.default_rng(0).standard_normal(operator.dim)
        values = np.sort(sparse_linalg.eigsh(arpack_operator, k=5, which="LA", tol=tol, v0=start)[0])[::-1]
        arpack.append((count[0], float(np.max(np.abs(values - reference) / reference))))
        print(f"  tol={tol:.0e}: lanczos {ours[-1]}, eigsh {arpack[-1]}", flush=True)
    return model.count_params(), reference, ours, arpack


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--repeats", type=positive_int, default=9)
    parser.add_argument("--presets", nargs="+", default=["root", "medium"])
    parser.add_argument("--skip_eigsh", action="store_true")
    parser.add_argument("--n_examples", type=int, default=512)
    parser.add_argument("--train_steps", type=int, default=100)
    parser.add_argument("--skip_ratio", action="store_true", help="skip part 1 (HVP / gradient and GGN / HVP)")
    parser.add_argument("--skip_block", action="store_true", help="skip part 3 (block products)")
    parser.add_argument("--block_sizes", type=positive_int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--block_preset", default="root")
    parser.add_argument("--block_input_shape", type=int, nargs=3, default=None,
                        help="input shape of the block-product network (default: the preset's; 28 28 1 is "
                             "Fashion-MNIST, as in tracking_cost.py)")
    args = parser.parse_args()

    print(f"Machine: {machine()}\n")
    rows = []
    for preset in [] if args.skip_ratio else args.presets:
        params, t = hvp_ratio(preset, args.batch_size, args.repeats)
        rows.append([f"simple_cnn('{preset}')", f"{params:,}", args.batch_size, f"{t['gradient'] * 1e3:.0f}",
                     f"{t['hvp'] * 1e3:.0f}", f"{t['hvp'] / t['gradient']:.2f}",
                     f"{t['hvp_reverse'] * 1e3:.0f}", f"{t['hvp_reverse'] / t['gradient']:.2f}",
                     f"{t['hvp_open_batch'] * 1e3:.0f}", f"{t['hvp_open_batch'] / t['gradient']:.2f}",
                     f"{t['ggn'] * 1e3:.0f}", f"{t['ggn'] / t['hvp']:.2f}",
                     f"{t['empirical_fisher'] * 1e3:.0f}", f"{t['empirical_fisher'] / t['hvp']:.2f}"])
        print(f"{preset}: " + ", ".join(f"{name} {seconds:.3f}s" for name, seconds in t.items()), flush=True)
    if rows:
        print("\n" + markdown_table(["network", "parameters", "batch", "gradient ms", "HVP ms", "HVP / gradient",
                                      "double-backprop HVP ms", "double backprop / gradient",
                                      "HVP, open batch dim, ms", "open / gradient", "GGN ms", "GGN / HVP",
                                      "EF ms", "EF / HVP"], rows))

    if not args.skip_block:
        params, t = block_cost(args.block_preset, args.batch_size, args.block_sizes, args.repeats,
                               input_shape=args.block_input_shape)
        shape = "x".join(str(d) for d in args.block_input_shape) if args.block_input_shape else "preset"
        print(f"\nHessian block product, simple_cnn('{args.block_preset}') ({params:,} parameters, input {shape}), "
              f"one batch of {args.batch_size}, medians of {args.repeats} interleaved repeats:\n")
        one = t[("matvecs", 1)] if ("matvecs", 1) in t else None
        rows = []
        for k in args.block_sizes:
            block, separate = t[("matmat", k)], t[("matvecs", k)]
            in_flight, serial = t[("in_flight", k)], block
            rows.append([k, f"{block * 1e3:.0f}", f"{separate * 1e3:.0f}", f"{block / separate:.2f}",
                         f"{block / k * 1e3:.0f}", f"{block / k / one:.2f}" if one else "-",
                         f"{in_flight * 1e3:.0f}", f"{serial * 1e3:.0f}", f"{serial / in_flight:.2f}"])
        print(markdown_table(["K", "matmat ms", "K matvecs ms", "matmat / K matvecs", "matmat ms per column",
                              "per column / one matvec", "10 columns in flight ms", "1 column in flight ms",
                              "1 / 10 in flight"], rows))

    if not args.skip_eigsh:
        tols = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5]
        print(f"\nLanczos vs eigsh, top-5, SimpleCNN-root on {args.n_examples} Fashion-MNIST examples "
              f"after {args.train_steps} SGD steps:")
        params, reference, ours, arpack = lanczos_vs_eigsh(args.n_examples, args.train_steps, tols)
        print(f"reference eigenvalues (lanczos tol 1e-6): {np.round(reference, 4).tolist()}")
        rows = []
        for target in (1e-2, 1e-3, 1e-4):
            a, b = matvecs_to_accuracy(ours, target), matvecs_to_accuracy(arpack, target)
            rows.append([f"{target:.0e}", a, b, f"{a / b:.2f}" if a and b else "n/a"])
        print("\n" + markdown_table(["max relative error of top-5", "lanczos matvecs", "eigsh matvecs",
                                      "lanczos / eigsh"], rows))


if __name__ == "__main__":
    main()
