"""Study 1: the shape of the top-K spectrum along SGD training.

The paper's claim: lambda_1..lambda_K rise quickly early in training, peak,
then fall or level off, and for SGD the peak stays below 2/eta. Paper
settings: SimpleCNN, lr 0.01-0.1, batch 128, no momentum, K=10, N=2560.

    python -m experiments.spectrum_shape.run            # reduced scale (see experiments/RESULTS.md)
    python -m experiments.spectrum_shape.plot
    python -m experiments.spectrum_shape.run --smoke --out /tmp/s1   # seconds
"""

from __future__ import annotations

import os

from experiments._cli import number_list
from experiments.results import run_label
from experiments.scale import study_parser, study_setup

STUDY = "spectrum_shape"


def parse_args(argv=None):
    parser = study_parser(__doc__, STUDY, top_k=10)
    parser.add_argument("--lrs", type=number_list, default=[0.01, 0.1], help="learning rates, comma-separated")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    from experiments.training import train_run  # TensorFlow: imported once the arguments are parsed

    scale, top_k = study_setup(args)
    results = []
    for lr in args.lrs:
        out = os.path.join(args.out, f"lr{lr:g}")
        result = train_run(out, scale, lr=lr, batch_size=args.batch_size, top_k=top_k, seed=args.seed,
                                  force=args.force)
        print(f"{run_label(result)}: lambda_1 per epoch "
              f"{[round(float(m.eigenvalues[0]), 2) for m in result['measurements']]} ({result['seconds']:.0f} s)",
              flush=True)
        results.append(result)
    return results


if __name__ == "__main__":
    main()
