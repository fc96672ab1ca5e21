"""What the four studies share: the reduced scale, the data, one training run, and reading its results.

Every study trains SimpleCNN on real Fashion-MNIST through ``model.fit``
with a :class:`~tf_sharpest.callbacks.LanczosCallback` (the top-K Hessian
eigenvalues at the start of every epoch and once after training), and keeps
one ``result.json`` per run. A run whose ``result.json`` exists is not
trained again (``--force`` redoes it), so a study interrupted half-way picks
up where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tf_sharpest import data as tfs_data  # noqa: E402
from tf_sharpest import models  # noqa: E402
from tf_sharpest.callbacks import LanczosCallback  # noqa: E402
from tf_sharpest.optimizers import NSGD  # noqa: E402
from tf_sharpest.utils.files import atomic_path  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Scale:
    """How big the runs are: the paper's full scale is far beyond two CPU cores, so every study states this."""

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


def study_parser(doc: str, study: str, top_k: int) -> argparse.ArgumentParser:
    """The flags every study's run script takes: ``--out``, ``--top_k`` and the scale (with ``--smoke``)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help=f"folder of the runs (default runs/experiments/{study})")
    parser.add_argument("--top_k", type=int, default=None,
                        help=f"eigenvalues measured (default {top_k}; 2 with --smoke)")
    parser.set_defaults(study=study, default_top_k=top_k)
    scale_arguments(parser)
    return parser


def study_setup(args: argparse.Namespace) -> tuple[Scale, int]:
    """Resolves ``--out`` in place and returns the scale and the number of eigenvalues."""
    args.out = args.out or default_out(args.study, args.smoke)
    return scale_from(args), args.top_k or (2 if args.smoke else args.default_top_k)


def scale_arguments(parser: argparse.ArgumentParser, default: Scale = Scale()) -> None:
    """Adds ``--smoke``, ``--force`` and one flag per :class:`Scale` field."""
    parser.add_argument("--smoke", action="store_true", help="tiny scale, seconds (for tests)")
    parser.add_argument("--force", action="store_true", help="train again runs that already have a result")
    for field in dataclasses.fields(Scale):
        value = getattr(default, field.name)
        parser.add_argument(f"--{field.name}", type=type(value), default=None,
                            help=f"default {value} ({getattr(SMOKE, field.name)} with --smoke)")


def scale_from(args: argparse.Namespace, default: Scale = Scale()) -> Scale:
    base = SMOKE if args.smoke else default
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Scale) if getattr(args, f.name) is not None}
    return dataclasses.replace(base, **given)


def parse_floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"expected comma-separated numbers, got {text!r}") from None


def parse_ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"expected comma-separated integers, got {text!r}") from None


_DATA_CACHE: dict = {}


def load_data(scale: Scale):
    """``(x, y)`` training subset, ``(x, y)`` validation subset, ``(x, y)`` test subset (real Fashion-MNIST)."""
    if "splits" not in _DATA_CACHE:
        _DATA_CACHE["splits"] = tfs_data.load("fashion_mnist")
    s = _DATA_CACHE["splits"]
    return ((s.x_train[: scale.n_examples], s.y_train[: scale.n_examples]),
            (s.x_valid[: scale.n_valid], s.y_valid[: scale.n_valid]),
            (s.x_test[: scale.n_test], s.y_test[: scale.n_test]))


class TestAccuracyAndDistance(keras.callbacks.Callback):
    """Logs ``test_accuracy`` and ``distance_from_init`` (``||theta - theta_0||``) after every epoch.

    Test accuracy is recorded every epoch so that the accuracy "at the
    best-validation epoch" can be read off afterwards, as the paper reports it.
    """

    def __init__(self, test_data):
        super().__init__()
        self.test_data = test_data

    def on_train_begin(self, logs=None):
        self._initial = [v.numpy().copy() for v in self.model.trainable_variables]

    def distance(self) -> float:
        return float(np.sqrt(sum(np.sum((v.numpy() - w0) ** 2)
                                 for v, w0 in zip(self.model.trainable_variables, self._initial))))

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        _, accuracy = self.model.evaluate(self.test_data, verbose=0)
        logs["test_accuracy"] = float(accuracy)
        logs["distance_from_init"] = self.distance()


def train_run(out_dir: str, scale: Scale, *, lr: float, batch_size: int = 128, gamma: float | None = None,
              top_k: int = 5, seed: int = 0, force: bool = False, callbacks: Sequence = (),
              measure: bool = True) -> dict:
    """Trains one SimpleCNN with SGD (``gamma=None``) or NSGD, measuring top-K eigenvalues every epoch.

    Returns (and writes to ``out_dir/result.json``) the configuration, the
    per-epoch ``logs`` (losses, accuracies, ``lambda_i``, ``test_accuracy``,
    ``distance_from_init``), every Lanczos measurement, the final training
    loss on up to ``scale.n_train_eval`` un-augmented training examples and the
    wall time. A diverged run (NaN loss) stops early and is marked so.
    ``measure=False`` leaves out the LanczosCallback (a study that measures
    at chosen points itself); NSGD needs it.
    """
    if gamma is not None and not measure:
        raise ValueError("NSGD needs the LanczosCallback's eigenvectors: keep measure=True.")
    path = os.path.join(out_dir, "result.json")
    config = {"lr": lr, "batch_size": batch_size, "gamma": gamma, "top_k": top_k, "seed": seed,
              "optimizer": "SGD" if gamma is None else "NSGD", "momentum": 0.0, "scale": dataclasses.asdict(scale)}
    if os.path.exists(path) and not force:
        with open(path) as f:
            stored = json.load(f)
        if {k: stored["config"].get(k) for k in config} != config:
            raise SystemExit(f"{path} holds a run with another configuration ({stored['config']}); "
                             "pass --force to train it again, or another --out.")
        return stored
    os.makedirs(out_dir, exist_ok=True)
    (x, y), valid, test = load_data(scale)
    keras.utils.set_random_seed(seed)  # weights, batch order and Lanczos samples follow the seed
    model = models.simple_cnn("root", input_shape=x.shape[1:], n_filters=scale.n_filters)
    optimizer = (keras.optimizers.SGD(lr) if gamma is None
                 else NSGD(lr, gamma=gamma, top_k=top_k))
    model.compile(optimizer=optimizer, loss=models.default_loss(), metrics=["accuracy"])
    lanczos = LanczosCallback((x, y), top_k=top_k, num_samples=min(scale.num_samples, len(x)),
                              batch_size=scale.lanczos_batch_size, tol=scale.tol, seed=seed, save_dir=out_dir)
    tracker = TestAccuracyAndDistance(tfs_data.eval_dataset(*test))
    measuring = [lanczos] if measure else []
    start = time.perf_counter()
    history = model.fit(tfs_data.train_dataset(x, y, batch_size, augment=False, seed=seed),
                        validation_data=tfs_data.eval_dataset(*valid), epochs=scale.epochs, verbose=0,
                        shuffle=False, callbacks=[*measuring, tracker, *callbacks, keras.callbacks.TerminateOnNaN(),
                                   keras.callbacks.CSVLogger(os.path.join(out_dir, "history.csv"))])
    seconds = time.perf_counter() - start
    n_eval = min(scale.n_train_eval, len(x))
    train_loss, train_accuracy = model.evaluate(tfs_data.eval_dataset(x[:n_eval], y[:n_eval]), verbose=0)
    result = {
        "config": {**config, "steps_per_epoch": int(np.ceil(len(x) / batch_size))},
        "logs": {k: [float(v) for v in values] for k, values in history.history.items()},
        "lanczos": [{"epoch": m.epoch, "step": m.step, "eigenvalues": [float(v) for v in m.eigenvalues],
                     "matvecs": m.matvecs, "seconds": m.seconds, "loss": m.loss, "error": m.error}
                    for m in (lanczos.history if measure else [])],
        "final": {"train_loss": float(train_loss), "train_accuracy": float(train_accuracy),
                  "train_eval_examples": n_eval, "distance_from_init": tracker.distance(),
                  "diverged": bool(not np.isfinite(train_loss) or len(history.history.get("loss", [])) <
                                   scale.epochs)},
        "seconds": seconds,
    }
    with atomic_path(path) as temporary, open(temporary, "w") as f:
        json.dump(result, f, indent=1, allow_nan=True)
    return result


def run_label(result: dict) -> str:
    c = result["config"]
    if c["gamma"] is None:
        return f"SGD lr={c['lr']:g} bs={c['batch_size']}"
    return f"NSGD gamma={c['gamma']:g} lr={c['lr']:g}"


# -- reading results -------------------------------------------------------------------------------------

def eigenvalue_curve(result: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(epochs, [n, K] eigenvalues)`` of every measurement, in order (epoch e = after e epochs)."""
    epochs = np.array([m["epoch"] for m in result["lanczos"]], dtype=float)
    values = np.array([m["eigenvalues"] for m in result["lanczos"]], dtype=float)
    return epochs, values


def peak(values: Sequence[float]) -> tuple[int, float]:
    """Index and value of the largest finite entry (``(-1, nan)`` if none is finite)."""
    values = np.asarray(values, dtype=float)
    if not np.any(np.isfinite(values)):
        return -1, float("nan")
    i = int(np.nanargmax(values))
    return i, float(values[i])


def best_validation_epoch(logs: dict) -> int:
    """Index of the epoch with the highest validation accuracy (the first if tied)."""
    accuracy = np.asarray(logs["val_accuracy"], dtype=float)
    return int(np.nanargmax(accuracy))


def top_k_norm(values: np.ndarray) -> np.ndarray:
    """``sqrt(sum_k lambda_k^2)`` per measurement: the Frobenius norm of the Hessian restricted to the top K."""
    return np.sqrt(np.sum(np.asarray(values, dtype=float) ** 2, axis=-1))


def load_results(folder: str) -> list[dict]:
    """Every ``result.json`` under ``folder`` (sorted by path)."""
    found = []
    for here, _, files in sorted(os.walk(folder)):
        if "result.json" in files:
            with open(os.path.join(here, "result.json")) as f:
                found.append(json.load(f))
    if not found:
        raise SystemExit(f"no result.json under {folder}: run the study's run script first.")
    return found


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_table(table: str, folder: str, *figures: str) -> str:
    """Writes ``table.md`` next to the figures and prints both."""
    with open(os.path.join(folder, "table.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    print("figures: " + ", ".join(figures))
    return table


def plot_parser(doc: str, study: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--out", default=default_out(study), help="folder of the runs")
    parser.add_argument("--figures", default=default_figures(study), help="folder of the PNGs and table.md")
    return parser


def save_figure(fig, path: str, caption: str) -> None:
    """Saves with the scale written under the axes, so the figure never travels without it."""
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        if ax.get_xlabel().startswith("epoch"):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.text(0.5, 0.005, caption, ha="center", va="bottom", fontsize=7, color="dimgray", wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


def default_out(study: str, smoke: bool = False) -> str:
    """Where a study's runs go: ``runs/experiments/<study>`` (``runs/experiments_smoke/...`` for smoke runs)."""
    return os.path.join(ROOT, "runs", "experiments_smoke" if smoke else "experiments", study)


def default_figures(study: str) -> str:
    return os.path.join(ROOT, "experiments", study, "results")
