"""Study 3: Nudged SGD, the SGD step along the top-K eigenvectors scaled by gamma.

The paper's claim: a smaller gamma (a shorter step along the sharpest
directions) steers training to sharper regions (larger lambda_1 and
||H_K||), trains faster, and generalizes at least as well as SGD (gamma=1).
Paper settings: lr 0.01, no momentum, batch 128, K=5, gamma in
{0.01, 0.1, 1, 5}, two seeds (three here by default); the eigenvectors are
re-measured every epoch.

    python -m experiments.nudged_sgd.run                # reduced scale (see experiments/RESULTS.md)
    python -m experiments.nudged_sgd.plot
    python -m experiments.nudged_sgd.run --smoke --out /tmp/s3
"""

from __future__ import annotations

import os

from experiments import scale as scales
from experiments._cli import nonnegative_int_list, number_list
from experiments.results import run_label

STUDY = "nudged_sgd"


def parse_args(argv=None):
    parser = scales.study_parser(__doc__, STUDY, top_k=5, default=scales.MULTI_SEED)
    parser.add_argument("--gammas", type=number_list, default=None,
                        help="NSGD gammas, 1 is plain SGD (default 0.01,0.1,1,5; 0.1,1 with --smoke)")
    parser.add_argument("--seeds", type=nonnegative_int_list, default=None, help="default 0,1,2 (0 with --smoke)")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--augment", action="store_true", help="train on randomly shifted and flipped images")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    from experiments.training import train_run  # TensorFlow: imported once the arguments are parsed

    scale, top_k = scales.study_setup(args)
    results = []
    # Seeds outermost, so a study cut short still covers every gamma once.
    gammas = args.gammas or ([0.1, 1.0] if args.smoke else [0.01, 0.1, 1.0, 5.0])
    for seed in args.seeds or ([0] if args.smoke else [0, 1, 2]):
        for gamma in gammas:
            out = os.path.join(args.out, f"gamma{gamma:g}_seed{seed}")
            result = train_run(out, scale, lr=args.lr, batch_size=args.batch_size, gamma=gamma, top_k=top_k,
                               seed=seed, augment=args.augment, force=args.force)
            print(f"seed {seed}, {run_label(result)}: lambda_1 per epoch "
                  f"{[round(float(m.eigenvalues[0]), 2) for m in result['measurements']]}, val acc "
                  f"{result['logs']['val_accuracy'][-1]:.4f} ({result['seconds']:.0f} s)", flush=True)
            results.append(result)
    return results


if __name__ == "__main__":
    main()
