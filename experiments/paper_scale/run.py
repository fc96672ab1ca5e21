"""Study 6: the paper's protocol at full scale, run through the examples' resumable command line.

SimpleCNN-root on real Fashion-MNIST, an epoch of 45,000 training examples
(the first 45,000 of the 50,000-image training split), batch 128, and
``LanczosCallback`` measuring the top-5 Hessian eigenvalues on 2,250 training
examples at the start of every epoch (and after the last), for ``--epochs``
epochs (default 30). Each run is one command of
``examples/train_simple_cnn_cifar.py`` in its own folder, so an interrupted
run resumes from its last finished epoch when this script is run again, and a
finished run is skipped. The runs are separate processes: this study imports
nothing from ``examples/``.

    python -m experiments.paper_scale.run                  # every run, about 30-40 CPU minutes each here
    python -m experiments.paper_scale.run --runs sgd_lr0.01 --epochs 2   # one run, shorter
    python -m experiments.paper_scale.collect              # copy the finished histories into results/

Runs (the same seed, so the same initial weights and batches):

- ``sgd_lr0.01`` and ``sgd_lr0.05``: SGD at two learning rates (the paper: λ1 is set by η, ~2/η);
- ``nsgd_gamma0.1``: NSGD, γ = 0.1, K = 5, lr 0.01 (the paper: γ < 1 finds sharper regions);
- ``nsgd_gamma5``: NSGD, γ = 5, K = 5, lr 0.01 (the paper: γ > 1 finds flatter ones).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_SCRIPT = os.path.join(ROOT, "examples", "train_simple_cnn_cifar.py")
DEFAULT_OUT = os.path.join(ROOT, "runs", "experiments", "paper_scale")

#: The paper's protocol: flags shared by every run.
PROTOCOL = ("--dataset=fmnist", "--n_examples=45000", "--batch_size=128", "--lanczos_top_K=5",
            "--lanczos_top_K_N=2250", "--lanczos_batch_size=125", "--seed=0", "--data_seed=0", "--verbose=2")

#: Run name -> the flags that set it apart.
RUNS = {
    "sgd_lr0.01": ("--optim=sgd", "--lr=0.01"),
    "nsgd_gamma0.1": ("--optim=nsgd", "--lr=0.01", "--opt_kwargs={'overshoot': 0.1, 'KK': 5}"),
    "sgd_lr0.05": ("--optim=sgd", "--lr=0.05"),
    "nsgd_gamma5": ("--optim=nsgd", "--lr=0.01", "--opt_kwargs={'overshoot': 5.0, 'KK': 5}"),
}


def command(name: str, out: str, epochs: int) -> list[str]:
    """The examples' command line that trains run ``name`` into ``out/name``."""
    return [sys.executable, TRAIN_SCRIPT, "root", os.path.join(out, name), *PROTOCOL, *RUNS[name],
            f"--n_epochs={epochs}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder of the runs (default runs/experiments/paper_scale)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs per run (default 30)")
    parser.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=list(RUNS), help="runs to train")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be a positive integer, got {args.epochs}.")
    for name in args.runs:
        cmd = command(name, args.out, args.epochs)
        print("$", " ".join(cmd), flush=True)
        status = subprocess.call(cmd, cwd=ROOT)
        if status != 0:
            print(f"run {name} stopped with status {status}; rerun this command to resume it.", file=sys.stderr)
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
