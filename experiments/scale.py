"""How big a study's runs are, and the command-line flags every study shares.

The paper's full scale is far beyond two CPU cores, so every study runs at a
stated, reduced :class:`Scale`, and every field of it is a flag
(``--n_examples 50000 --epochs 200 --num_samples 2250 ...``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Scale:
    """How big the runs are: every study states this under its figures."""

    n_examples: int = 8000      # training examples (the first of the 50,000-image training split)
    epochs: int = 8             # passes over them
    n_filters: int = 32         # SimpleCNN-root has 32
    num_samples: int = 512      # examples per Lanczos measurement (the paper: 2,250 or 2,560)
    lanczos_batch_size: int = 256
    tol: float = 1e-3           # Lanczos residual tolerance
    n_valid: int = 2000         # validation examples (of the 10,000 held out)
    n_test: int = 10000         # test examples
    n_train_eval: int = 10000   # un-augmented training examples for the final training loss

    def describe(self) -> str:
        return (f"SimpleCNN-root (F={self.n_filters}) on {self.n_examples:,} Fashion-MNIST training images, "
                f"{self.epochs} epochs, Lanczos on {self.num_samples:,} examples (tol {self.tol:g})")


#: The smoke scale: every study end to end in seconds, for the tests.
SMOKE = Scale(n_examples=256, epochs=2, n_filters=4, num_samples=64, lanczos_batch_size=64, tol=1e-2,
              n_valid=128, n_test=128, n_train_eval=256)


#: Studies 2 and 3 train every setting with three seeds; half the filters make that fit in the same time.
MULTI_SEED = dataclasses.replace(Scale(), n_filters=16)


def study_parser(doc: str, study: str, top_k: int, default: Scale = Scale()) -> argparse.ArgumentParser:
    """The flags every study's run script takes: ``--out``, ``--top_k`` and the scale (with ``--smoke``)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help=f"folder of the runs (default runs/experiments/{study})")
    parser.add_argument("--top_k", type=int, default=None,
                        help=f"eigenvalues measured (default {top_k}; 2 with --smoke)")
    parser.set_defaults(study=study, default_top_k=top_k, default_scale=default)
    scale_arguments(parser, default)
    return parser


def study_setup(args: argparse.Namespace) -> tuple[Scale, int]:
    """Resolves ``--out`` in place and returns the scale and the number of eigenvalues."""
    args.out = args.out or default_out(args.study, args.smoke)
    return scale_from(args, args.default_scale), args.top_k or (2 if args.smoke else args.default_top_k)


def scale_arguments(parser: argparse.ArgumentParser, default: Scale = Scale()) -> None:
    """Adds ``--smoke``, ``--force`` and one flag per :class:`Scale` field."""
    parser.add_argument("--smoke", action="store_true", help="tiny scale, seconds (for tests)")
    parser.add_argument("--force", action="store_true", help="train again runs that already have a result")
    for field in dataclasses.fields(Scale):
        value = getattr(default, field.name)
        parser.add_argument(f"--{field.name}", type=type(value), default=None,
                            help=f"default {value} ({getattr(SMOKE, field.name)} with --smoke)")


def scale_from(args: argparse.Namespace, default: Scale = Scale()) -> Scale:
    """The scale the flags ask for: ``default`` (or :data:`SMOKE` with ``--smoke``) with each given field replaced."""
    base = SMOKE if args.smoke else default
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Scale) if getattr(args, f.name) is not None}
    return dataclasses.replace(base, **given)


def default_out(study: str, smoke: bool = False) -> str:
    """Where a study's runs go: ``runs/experiments/<study>`` (``runs/experiments_smoke/...`` for smoke runs)."""
    return os.path.join(ROOT, "runs", "experiments_smoke" if smoke else "experiments", study)
