"""A keras-tuner search over NSGD's gamma (and K) on Fashion-MNIST, with LanczosCallback attached.

Objective: val_accuracy. Prints the best gamma, its K and its last lambda_1.
Small by default (minutes on a CPU); the flags give real scale.

    python examples/tune_gamma.py
    python examples/tune_gamma.py --max_trials 20 --epochs 50 --n_examples 50000 --n_filters 32 --num_samples 2250
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cli import (  # noqa: E402
    HelpFormatter,
    import_tensorflow_quietly,
    number_list,
    positive_float,
    positive_int,
    positive_int_list,
)

# TensorFlow, keras-tuner and tf_sharpest are imported in main() once the arguments are parsed: --help and
# usage errors then come back at once instead of after TensorFlow's import (seconds).


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", default="runs/tune_gamma",
                        help="keras-tuner's folder (its nsgd_gamma project is replaced at each run)")
    parser.add_argument("--gammas", type=number_list, default=[0.01, 0.1, 1.0, 5.0],
                        help="comma-separated NSGD gammas to choose from")
    parser.add_argument("--top_ks", type=positive_int_list, default=[1, 5],
                        help="comma-separated NSGD top_k values (K) to choose from")
    parser.add_argument("--max_trials", type=positive_int, default=3, help="trials of the random search")
    parser.add_argument("--epochs", type=positive_int, default=2, help="training epochs per trial")
    parser.add_argument("--n_examples", type=positive_int, default=2000, help="training examples (of the 50,000)")
    parser.add_argument("--n_filters", type=positive_int, default=8, help="SimpleCNN filters (root preset: 32)")
    parser.add_argument("--lr", type=positive_float, default=0.05, help="learning rate")
    parser.add_argument("--num_samples", type=positive_int, default=256, help="examples per Lanczos measurement")
    parser.add_argument("--batch_size", type=positive_int, default=128, help="training batch size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the search, batches and Lanczos samples")
    return parser


def main():
    parser = build_parser()
    args = parser.parse_args()

    import_tensorflow_quietly()  # without CUDA's and absl's start-up lines on stderr
    try:
        import keras_tuner
    except ImportError:
        raise SystemExit("This example needs keras-tuner: pip install keras-tuner "
                         '(or pip install -e ".[tune]").') from None

    from tf_sharpest import data, models
    from tf_sharpest.callbacks import LanczosCallback
    from tf_sharpest.optimizers import NSGD

    splits = data.load("fashion_mnist")
    print(f"Data: Fashion-MNIST from {splits.source}", flush=True)
    if args.n_examples > len(splits.x_train):
        parser.error(f"--n_examples={args.n_examples} is more than the {len(splits.x_train):,} training examples")
    x, y = splits.x_train[: args.n_examples], splits.y_train[: args.n_examples]
    x_valid, y_valid = splits.x_valid[:2000], splits.y_valid[:2000]

    def build(hp):
        model = models.simple_cnn("root", input_shape=x.shape[1:], n_filters=args.n_filters)
        optimizer = NSGD(args.lr, gamma=hp.Choice("gamma", args.gammas), top_k=hp.Choice("top_k", args.top_ks))
        model.compile(optimizer=optimizer, loss=models.default_loss(), metrics=["accuracy"])
        return model

    tuner = keras_tuner.RandomSearch(build, objective="val_accuracy", max_trials=args.max_trials, seed=args.seed,
                                     directory=args.out, project_name="nsgd_gamma", overwrite=True)
    # Measures as many directions as the largest K tried; each trial gets its own deep copy.
    lanczos = LanczosCallback((x, y), top_k=max(args.top_ks), num_samples=args.num_samples, batch_size=256,
                              seed=args.seed)
    tuner.search(data.train_dataset(x, y, args.batch_size, augment=False, seed=args.seed),
                 validation_data=data.eval_dataset(x_valid, y_valid), epochs=args.epochs, callbacks=[lanczos],
                 verbose=2)
    print("\n| gamma | K | val_accuracy | lambda_1 (last epoch) |\n|---|---|---|---|")
    best = tuner.oracle.get_best_trials(args.max_trials)
    for trial in best:
        hp = trial.hyperparameters
        print(f"| {hp.get('gamma'):g} | {hp.get('top_k')} | {trial.score:.4f} | "
              f"{trial.metrics.get_last_value('lambda_1'):.3f} |")
    top = best[0]
    print(f"\nBest gamma: {top.hyperparameters.get('gamma'):g} (K={top.hyperparameters.get('top_k')}), "
          f"val_accuracy {top.score:.4f}, lambda_1 {top.metrics.get_last_value('lambda_1'):.3f}")


if __name__ == "__main__":
    main()
