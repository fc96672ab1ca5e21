"""What NSGD's nudge costs per step, against Keras's SGD, on a SimpleCNN.

Two copies of the same SimpleCNN (the paper's "root" layout, built here
inline: conv 32 3x3 same - relu - conv 32 3x3 valid - relu - maxpool 2 -
conv 64 3x3 same - relu - conv 64 3x3 valid - relu - maxpool 2 - flatten -
dense 128 - relu - dense 10; 361,898 parameters on 32x32x3) are trained side
by side, one with ``keras.optimizers.SGD`` and one with ``NSGD`` with K
orthonormal directions set (so the nudge is really computed). Two things are
timed, each inside a ``tf.function`` (with and without XLA):

* the optimizer apply alone: ``optimizer.apply(grads, variables)`` on fixed
  gradients, ``--applies`` calls in a graph loop per sample to rise above the
  dispatch noise;
* the full train step: forward pass, loss, gradient and apply on one batch.

Samples of NSGD and SGD alternate (and the order flips every repeat), so
drifts in machine load hit both alike; medians over ``--repeats`` samples.

    python benchmarks/nsgd_step_cost.py                           # defaults
    python benchmarks/nsgd_step_cost.py --batch_size 32 --repeats 15 --applies 10
"""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    """The flags, built before TensorFlow is imported so that --help and usage errors answer at once."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--applies", type=int, default=20, help="optimizer applies per timed sample")
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--gamma", type=float, default=0.1)
    parser.add_argument("--nudge", default="velocity", choices=["velocity", "gradient"])
    parser.add_argument("--jit_compile", nargs="+", default=["off", "on"], choices=["off", "on"])
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # --help and usage errors answer here, before TensorFlow is imported


from _common import machine, markdown_table, median, timed  # noqa: E402  (first: it imports TensorFlow quietly)

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_sharpest.optimizers import NSGD  # noqa: E402


def simple_cnn(input_shape=(32, 32, 3), filters=32, n_dense=128, num_classes=10, seed=0):
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(filters, 3, padding="same", activation="relu"),
        layers.Conv2D(filters, 3, padding="valid", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(2 * filters, 3, padding="same", activation="relu"),
        layers.Conv2D(2 * filters, 3, padding="valid", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(n_dense, activation="relu"),
        layers.Dense(num_classes),
    ])


def functions(model, optimizer, loss_fn, applies, jit_compile):
    """Traced optimizer-apply and train-step functions for one model/optimizer pair."""
    variables = model.trainable_variables
    optimizer.build(variables)

    @tf.function(jit_compile=jit_compile)
    def apply_only(grads):
        # A graph loop, not an unrolled one: unrolled, XLA and grappler would fuse or share work across
        # consecutive SGD applies on the same gradients, which a real step cannot.
        for _ in tf.range(applies):
            optimizer.apply(grads, variables)
        return optimizer.iterations

    @tf.function(jit_compile=jit_compile)
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    return apply_only, train_step


def measure(args, jit_compile):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch_size, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, args.batch_size)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    sgd_model, nsgd_model = simple_cnn(), simple_cnn()
    params = sgd_model.count_params()
    lr = 1e-4  # small: the weights barely move over the run, so both stay comparable
    sgd = keras.optimizers.SGD(lr, momentum=args.momentum)
    nsgd = NSGD(lr, momentum=args.momentum, gamma=args.gamma, top_k=args.top_k, nudge=args.nudge)
    runs = {"SGD": functions(sgd_model, sgd, loss_fn, args.applies, jit_compile),
            "NSGD": functions(nsgd_model, nsgd, loss_fn, args.applies, jit_compile)}
    directions = np.linalg.qr(rng.standard_normal((params, args.top_k)))[0].astype("float32")
    nsgd.set_directions(None, directions)
    grads = [tf.constant(rng.standard_normal(v.shape).astype("float32") * 1e-2)
             for v in sgd_model.trainable_variables]
    x, y = tf.constant(x), tf.constant(y)
    for apply_only, train_step in runs.values():  # trace and warm up
        for _ in range(2):
            timed(apply_only, grads), timed(train_step, x, y)
    times = {(name, part): [] for name in runs for part in ("apply", "step")}
    for repeat in range(args.repeats):
        order = list(runs) if repeat % 2 == 0 else list(runs)[::-1]
        for name in order:
            times[name, "apply"].append(timed(runs[name][0], grads) / args.applies)
        for name in order:
            times[name, "step"].append(timed(runs[name][1], x, y))
    assert nsgd.has_directions and np.all(np.isfinite(nsgd.alpha.numpy()))
    return params, {key: median(values) for key, values in times.items()}


def main():
    parser = build_parser()
    args = parser.parse_args()

    print(f"Machine: {machine()}")
    print(f"SimpleCNN root inline (32x32x3 inputs), batch {args.batch_size}, K={args.top_k}, "
          f"momentum {args.momentum}, nudge={args.nudge!r}, gamma {args.gamma}; medians of {args.repeats} "
          f"interleaved samples, apply timed over {args.applies} calls per sample\n", flush=True)
    rows = []
    for mode in args.jit_compile:
        params, t = measure(args, jit_compile=mode == "on")
        for part, label in (("apply", "optimizer apply"), ("step", "full train step")):
            rows.append([label, mode, f"{params:,}", f"{t['SGD', part] * 1e3:.3f}", f"{t['NSGD', part] * 1e3:.3f}",
                         f"{t['NSGD', part] / t['SGD', part]:.2f}"])
        print(f"XLA {mode}: done", flush=True)
    print("\n" + markdown_table(["timed", "XLA", "parameters", "SGD ms", "NSGD ms", "NSGD / SGD"], rows))


if __name__ == "__main__":
    main()
