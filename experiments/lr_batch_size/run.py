"""Study 2: the learning rate and the batch size set the peak of the top eigenvalues.

The paper's claim: a larger learning rate or a smaller batch gives a lower
and earlier peak of lambda_1 (and lambda_2). Paper settings: lr in
{0.001, 0.01, 0.1} at batch 128; batch in {32 (or 8), 128, 1024} at lr 0.05;
K=5, N=2250, no momentum. Every setting runs with each of ``--seeds``
(three by default), so that the plot's statistics show their spread.

    python -m experiments.lr_batch_size.run             # reduced scale (see experiments/RESULTS.md)
    python -m experiments.lr_batch_size.plot
    python -m experiments.lr_batch_size.run --smoke --out /tmp/s2
"""

from __future__ import annotations

import os

from experiments import scale as scales
from experiments._cli import nonnegative_int_list, number_list, positive_int_list
from experiments.results import run_label

STUDY = "lr_batch_size"


def parse_args(argv=None):
    parser = scales.study_parser(__doc__, STUDY, top_k=5, default=scales.MULTI_SEED)
    parser.add_argument("--lrs", type=number_list, default=None,
                        help="learning rates of the lr sweep (default 0.001,0.01,0.1; 0.01,0.1 with --smoke)")
    parser.add_argument("--lr_sweep_batch_size", type=int, default=128)
    parser.add_argument("--batch_sizes", type=positive_int_list, default=None,
                        help="batch sizes of the batch sweep (default 32,128,1024; 32,128 with --smoke)")
    parser.add_argument("--batch_sweep_lr", type=float, default=0.05)
    parser.add_argument("--seeds", type=nonnegative_int_list, default=None,
                        help="seeds of every setting (default 0,1,2; 0 with --smoke)")
    parser.add_argument("--augment", action="store_true", help="train on randomly shifted and flipped images")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    from experiments.training import train_run  # TensorFlow: imported once the arguments are parsed

    scale, top_k = scales.study_setup(args)
    lrs = args.lrs or ([0.01, 0.1] if args.smoke else [0.001, 0.01, 0.1])
    batch_sizes = args.batch_sizes or ([32, 128] if args.smoke else [32, 128, 1024])
    runs = [("lr", lr, args.lr_sweep_batch_size) for lr in lrs]
    runs += [("batch", args.batch_sweep_lr, bs) for bs in batch_sizes]
    results = []
    # Seeds outermost, so a study cut short still covers every setting once.
    for seed in args.seeds or ([0] if args.smoke else [0, 1, 2]):
        for sweep, lr, batch_size in runs:
            out = os.path.join(args.out, f"{sweep}_sweep", f"lr{lr:g}_bs{batch_size}_seed{seed}")
            result = train_run(out, scale, lr=lr, batch_size=batch_size, top_k=top_k, seed=seed,
                               augment=args.augment, force=args.force)
            result["sweep"] = sweep
            print(f"{sweep} sweep, seed {seed}, {run_label(result)}: lambda_1 per epoch "
                  f"{[round(float(m.eigenvalues[0]), 2) for m in result['measurements']]} "
                  f"({result['seconds']:.0f} s)", flush=True)
            results.append(result)
    return results


if __name__ == "__main__":
    main()
