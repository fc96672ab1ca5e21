"""Study 4: what the SGD step does along the sharpest directions.

At several points of an SGD run, on a fixed sample of training examples
with gradient g and top-K Hessian eigenpairs (lambda_i, e_i): the loss after
a step of gamma' * eta * (g . e_i) e_i along each e_i, along random unit
directions, and after the full step gamma' * eta * g, for gamma' in
{0.25, 0.5, 1, 2, 4}; and |cos(g, e_i)| against a random direction's.
The paper's claim: the full-eta step along e_1 does not lower the loss (or
raises it) while 0.5 eta does, and g is far more aligned with the top
directions than chance. Uses tf_sharpest.hessian.top_eigenpairs and
tf_sharpest.analysis.analyze_sgd_step.

    python -m experiments.sgd_step.run                  # reduced scale (see experiments/RESULTS.md)
    python -m experiments.sgd_step.plot
    python -m experiments.sgd_step.run --smoke --out /tmp/s4
"""

from __future__ import annotations

import json
import os

from experiments._cli import import_tensorflow_quietly, nonnegative_int_list
from experiments.scale import study_parser, study_setup

STUDY = "sgd_step"


def parse_args(argv=None):
    parser = study_parser(__doc__, STUDY, top_k=5)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--at_epochs", type=nonnegative_int_list, default=None,
                        help="epochs to analyse at (default 0, 1, 2, half and all of --epochs)")
    parser.add_argument("--num_random", type=int, default=5, help="random unit directions per point")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import_tensorflow_quietly()  # first: TensorFlow without its CUDA/absl start-up lines on stderr
    import numpy as np

    from experiments.sgd_step._analysis import StepAnalysisAt  # TensorFlow: once the arguments are parsed
    from experiments.training import load_data, train_run

    scale, top_k = study_setup(args)
    at_epochs = (args.at_epochs if args.at_epochs
                 else sorted({e for e in (0, 1, 2, scale.epochs // 2, scale.epochs) if e <= scale.epochs}))
    if max(at_epochs) > scale.epochs or min(at_epochs) < 0:
        raise SystemExit(f"--at_epochs must lie in 0..{scale.epochs} (the number of epochs), got {at_epochs}.")
    out = os.path.join(args.out, f"lr{args.lr:g}")
    path = os.path.join(out, "step_analysis.json")
    if os.path.exists(path) and os.path.exists(os.path.join(out, "result.json")) and not args.force:
        with open(path) as f:
            return json.load(f)
    (x, y), _, _ = load_data(scale)
    rng = np.random.default_rng(args.seed)
    pick = np.sort(rng.choice(len(x), min(scale.num_samples, len(x)), replace=False))
    analysis = StepAnalysisAt((x[pick], y[pick]), at_epochs, scale.epochs, learning_rate=args.lr, top_k=top_k,
                              num_random=args.num_random, batch_size=scale.lanczos_batch_size, tol=scale.tol,
                              path=path, seed=args.seed)
    train_run(out, scale, lr=args.lr, batch_size=args.batch_size, top_k=top_k, seed=args.seed,
                     force=True, callbacks=[analysis], measure=False)
    with open(path) as f:
        return json.load(f)


if __name__ == "__main__":
    main()
