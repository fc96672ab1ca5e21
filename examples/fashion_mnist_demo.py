"""The main job: a short real Fashion-MNIST run, Nudged SGD (gamma=0.1, K=5) against plain SGD.

Both runs start from the same weights and see the same batches; a
LanczosCallback measures the top-5 Hessian eigenvalues at the start of every
epoch (and after the last). The script prints a table (accuracies and lambda_1
per epoch for both runs) and writes a PNG of lambda_1..lambda_5 per epoch.
After training, a SpectrumCallback estimates each run's Hessian trace and its
spectral density by stochastic Lanczos quadrature (a few probes, on the same
examples as the first Lanczos measurement), and density.png shows both
densities on a log scale, as PyHessian plots them; landscape.png shows each
run's loss along its final top eigenvector with the 2/eta parabola.

    python examples/fashion_mnist_demo.py                 # about 10 minutes on 2 idle cores, 32 shared
    python examples/fashion_mnist_demo.py --epochs 3 --n_examples 2000   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cli import (  # noqa: E402
    HelpFormatter,
    finite_float,
    import_tensorflow_quietly,
    markdown_table,
    positive_float,
    positive_int,
)

# TensorFlow, Keras and tf_sharpest are imported in main() once the arguments are parsed: --help and usage
# errors then take a fraction of a second instead of TensorFlow's import time.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="output folder (plot, histories)")
    parser.add_argument("--n_examples", type=positive_int, default=10000,
                        help="training examples (of the 50,000)")
    parser.add_argument("--epochs", type=positive_int, default=6, help="training epochs per run")
    parser.add_argument("--lr", type=positive_float, default=0.05, help="learning rate of both runs")
    parser.add_argument("--gamma", type=finite_float, default=0.1, help="NSGD's factor inside the top-K subspace")
    parser.add_argument("--top_k", type=positive_int, default=5, help="eigenvalues measured and directions nudged")
    parser.add_argument("--n_filters", type=positive_int, default=16, help="SimpleCNN filters (root preset: 32)")
    parser.add_argument("--num_samples", type=positive_int, default=1024,
                        help="examples per Lanczos measurement")
    parser.add_argument("--batch_size", type=positive_int, default=128, help="training batch size")
    # 3 x 30 products and a 15-product trace: 105 per run, well under what its seven Lanczos measurements spend.
    parser.add_argument("--density_probes", type=positive_int, default=3,
                        help="probes of the spectral density after training")
    parser.add_argument("--density_steps", type=positive_int, default=30,
                        help="Lanczos steps per probe of the spectral density")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, batches and Lanczos samples")
    return parser


def parse_args():
    return build_parser().parse_args()


def train(name, optimizer, splits, x, y, args):
    import keras
    import numpy as np

    from tf_sharpest import data, models
    from tf_sharpest.callbacks import LanczosCallback, SpectrumCallback

    os.makedirs(os.path.join(args.out, name), exist_ok=True)
    keras.utils.set_random_seed(args.seed)  # same initial weights and batches for both runs
    model = models.simple_cnn("root", input_shape=x.shape[1:], n_filters=args.n_filters)
    model.compile(optimizer=optimizer, loss=models.default_loss(), metrics=["accuracy"])
    lanczos = LanczosCallback((x, y), top_k=args.top_k, num_samples=args.num_samples, batch_size=256,
                              seed=args.seed, save_dir=os.path.join(args.out, name))
    # Once, after training: the trace and the density. resample=False with the same seed draws the
    # examples of the Lanczos callback's first measurement, the same in both runs.
    spectrum = SpectrumCallback((x, y), num_samples=args.num_samples, batch_size=256, frequency=None,
                                trace_matvecs=15, num_probes=args.density_probes, num_steps=args.density_steps,
                                resample=False, seed=args.seed, save_dir=os.path.join(args.out, name))
    print(f"\n== {name}: {model.count_params():,} parameters, {len(x)} examples, {args.epochs} epochs ==",
          flush=True)
    history = model.fit(data.train_dataset(x, y, args.batch_size, augment=False, seed=args.seed),
                        validation_data=data.eval_dataset(splits.x_valid[:2000], splits.y_valid[:2000]),
                        epochs=args.epochs, callbacks=[lanczos, spectrum, keras.callbacks.CSVLogger(
                            os.path.join(args.out, name, "history.csv"))], verbose=2, shuffle=False)
    test_accuracy = model.evaluate(data.eval_dataset(splits.x_test, splits.y_test), verbose=0)[1]
    return {"history": history.history, "test_accuracy": float(test_accuracy),
            "eigenvalues": np.array([m.eigenvalues for m in lanczos.history]),
            "stderr": np.array([m.values.get("stderr", np.full(args.top_k, np.nan)) for m in lanczos.history]),
            "trace": spectrum.history[-1].values, "density": spectrum.density,
            "landscape": final_landscape(model, lanczos, x[: args.num_samples], y[: args.num_samples])}


def final_landscape(model, lanczos, x, y):
    """The loss along the final top eigenvector, out to where its quadratic model rises by 4 (None if unmeasured)."""
    import numpy as np

    from tf_sharpest.analysis import loss_landscape

    top = lanczos.history[-1].eigenvalues[:1] if lanczos.history else []
    if lanczos.eigenvectors is None or len(top) == 0 or not np.isfinite(top[0]):
        return None
    reach = 2.0 * np.sqrt(2.0 / max(float(top[0]), 1e-6))
    return loss_landscape(model, (x, y), lanczos.eigenvectors[:, 0], steps=np.linspace(-reach, reach, 21),
                          batch_size=256)


def plot_landscapes(results, args, path):
    """Each run's loss along its final e1, with the quadratic models of lambda_1 and of 2/eta."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tf_sharpest.analysis import plot_loss_lines

    drawn = {name: r for name, r in results.items() if r["landscape"] is not None}
    if not drawn:
        return False
    fig, axes = plt.subplots(1, len(drawn), figsize=(5.8 * len(drawn), 4.2), squeeze=False)
    for ax, (name, result) in zip(axes[0], drawn.items()):
        plot_loss_lines({"e1": result["landscape"]}, eigenvalues=result["eigenvalues"][-1][:1], learning_rate=args.lr,
                        ax=ax, title=f"{name}: loss along the final top eigenvector")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def plot(results, args, path):
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), sharey=True)
    for ax, (name, result) in zip(np.atleast_1d(axes), results.items()):
        values = result["eigenvalues"]
        epochs = np.arange(len(values))
        stderr = result.get("stderr", np.full(values.shape, np.nan))
        for i in range(values.shape[1]):
            line, = ax.plot(epochs, values[:, i], marker="o", label=f"$\\lambda_{i + 1}$")
            # The band: +-2 standard errors due to the sample (LanczosCallback's lambda_i_stderr).
            ax.fill_between(epochs, values[:, i] - 2 * stderr[:, i], values[:, i] + 2 * stderr[:, i],
                            color=line.get_color(), alpha=0.2, linewidth=0)
        ax.axhline(2 / args.lr, color="gray", linestyle="--", label="$2/\\eta$")
        ax.set_title(name)
        ax.set_xlabel("epoch (measured at its start; last point: after training)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("Hessian eigenvalue")
    np.atleast_1d(axes)[-1].legend(loc="best", fontsize=8)
    fig.suptitle(f"Top-{args.top_k} Hessian eigenvalues, SimpleCNN (F={args.n_filters}) on "
                 f"{args.n_examples} Fashion-MNIST examples, lr={args.lr}; bands: ±2 sampling errors")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_densities(results, args, path):
    """Both runs' densities after training on one log-scale axis, with one grid and one kernel width."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    densities = {name: r["density"] for name, r in results.items() if r["density"] is not None}
    if not densities:
        return False
    used = np.concatenate([d.nodes[d.weights > 0] for d in densities.values()])
    low, high = float(used.min()), float(used.max())
    sigma = 0.01 * (high - low)  # one width for both, so their peaks compare
    grid = np.linspace(low - 0.05 * (high - low), high + 0.05 * (high - low), 2000)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, density in densities.items():
        density.plot(ax=ax, log=True, grid=grid, sigma=sigma, label=name)
    ax.axvline(2 / args.lr, color="gray", linestyle="--", label="$2/\\eta$")
    ax.set_xlabel("Hessian eigenvalue")
    ax.set_ylim(bottom=1e-8 * max(float(d.density(grid, sigma).max()) for d in densities.values()))
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    first = next(iter(densities.values()))
    ax.set_title(f"Hessian spectral density after {args.epochs} epochs (SLQ: {first.num_probes} probes x "
                 f"{args.density_steps} steps on {args.num_samples} examples)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main():
    parser = build_parser()
    args = parser.parse_args()
    start = time.perf_counter()

    import_tensorflow_quietly()  # without CUDA's and absl's start-up lines on stderr
    import keras

    from tf_sharpest import data
    from tf_sharpest.optimizers import NSGD

    os.makedirs(args.out, exist_ok=True)
    splits = data.load("fashion_mnist")
    print(f"Data: Fashion-MNIST from {splits.source}", flush=True)
    if args.n_examples > len(splits.x_train):
        parser.error(f"--n_examples={args.n_examples} is more than the {len(splits.x_train):,} training examples")
    x, y = splits.x_train[: args.n_examples], splits.y_train[: args.n_examples]
    runs = {
        f"NSGD gamma={args.gamma:g}": NSGD(args.lr, gamma=args.gamma, top_k=args.top_k),
        "SGD": keras.optimizers.SGD(args.lr),
    }
    results = {}
    for name, optimizer in runs.items():
        results[name] = train(name.replace(" ", "_").replace("=", ""), optimizer, splits, x, y, args)

    print(f"\nSimpleCNN (n_filters={args.n_filters}) on {args.n_examples} real Fashion-MNIST training examples, "
          f"lr={args.lr}, batch {args.batch_size}, {args.epochs} epochs; top-{args.top_k} eigenvalues on "
          f"{args.num_samples} samples per measurement.\n")
    header = ["run", "val acc", "test acc"] + [f"λ1 ep{e}" for e in range(args.epochs)] + ["λ1 end"]
    print(markdown_table(header, [[name, f"{result['history']['val_accuracy'][-1]:.4f}",
                                   f"{result['test_accuracy']:.4f}", *(f"{v:.2f}" for v in result["eigenvalues"][:, 0])]
                                  for name, result in results.items()]))
    print()
    for name, result in results.items():
        trace = result["trace"]
        print(f"{name}: Hessian trace after training {trace['trace']:.1f} +- {trace['trace_stderr']:.1f} "
              f"(Hutch++, on the {args.num_samples} examples of the density)")
    path = os.path.join(args.out, "eigenvalues.png")
    plot(results, args, path)
    density_path = os.path.join(args.out, "density.png")
    if not plot_densities(results, args, density_path):
        density_path = "not written (the density measurements failed; see the warnings)"
    landscape_path = os.path.join(args.out, "landscape.png")
    if not plot_landscapes(results, args, landscape_path):
        landscape_path = "not written (no final eigenvector)"
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({name: {"test_accuracy": r["test_accuracy"], "val_accuracy": r["history"]["val_accuracy"],
                          "eigenvalues": r["eigenvalues"].tolist(),
                          "trace": {k: float(v) for k, v in r["trace"].items()}} for name, r in results.items()},
                  f, indent=2)
    print(f"\nPlot: {path}\nDensity: {density_path}\nLandscape: {landscape_path}\n"
          f"Total wall time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
