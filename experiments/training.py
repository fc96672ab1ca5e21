"""One training run of a study: SimpleCNN on real Fashion-MNIST with SGD or NSGD, measured every epoch.

Every study trains through ``model.fit`` with a
:class:`~tf_sharpest.callbacks.LanczosCallback` (the top-K Hessian eigenvalues
at the start of every epoch and once after training). A run's folder holds
``result.json`` (configuration, per-epoch logs, final numbers, wall time),
``history.csv``, and the measurements as the callback writes them
(``lanczos.npz`` / ``lanczos.csv``, read back with
:class:`~tf_sharpest.callbacks.MeasurementLog`). A run whose ``result.json``
exists is not trained again (``--force`` redoes it), so a study interrupted
half-way picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence

from experiments._cli import import_tensorflow_quietly

import_tensorflow_quietly()  # TensorFlow without its CUDA/absl start-up lines on stderr

import keras  # noqa: E402
import numpy as np  # noqa: E402

from experiments.results import with_measurements  # noqa: E402
from experiments.scale import Scale  # noqa: E402
from tf_sharpest import data as tfs_data  # noqa: E402
from tf_sharpest import models  # noqa: E402
from tf_sharpest.callbacks import LanczosCallback  # noqa: E402
from tf_sharpest.linalg import LanczosSolver  # noqa: E402
from tf_sharpest.optimizers import NSGD  # noqa: E402
from tf_sharpest.utils import atomic_path  # noqa: E402

_SPLITS: dict = {}  # Fashion-MNIST is read once per process: a study trains many runs on it


def load_data(scale: Scale):
    """``(x, y)`` training subset, ``(x, y)`` validation subset, ``(x, y)`` test subset (real Fashion-MNIST)."""
    if "fashion_mnist" not in _SPLITS:
        _SPLITS["fashion_mnist"] = tfs_data.load("fashion_mnist")
    s = _SPLITS["fashion_mnist"]
    return ((s.x_train[: scale.n_examples], s.y_train[: scale.n_examples]),
            (s.x_valid[: scale.n_valid], s.y_valid[: scale.n_valid]),
            (s.x_test[: scale.n_test], s.y_test[: scale.n_test]))


class HeldOutAccuracyAndDistance(keras.callbacks.Callback):
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
              top_k: int = 5, seed: int = 0, augment: bool = False, force: bool = False,
              callbacks: Sequence = (), measure: bool = True) -> dict:
    """Trains one SimpleCNN with SGD (``gamma=None``) or NSGD, measuring top-K eigenvalues every epoch.

    Returns the configuration, the per-epoch ``logs`` (losses, accuracies,
    ``lambda_i``, ``test_accuracy``, ``distance_from_init``), the final
    training loss on up to ``scale.n_train_eval`` un-augmented training
    examples and the wall time (all kept in ``out_dir/result.json``), and
    ``measurements``: every Lanczos measurement, a list of
    :class:`~tf_sharpest.callbacks.Measurement` (kept by the callback in
    ``out_dir/lanczos.npz``). A diverged run (NaN loss) stops early and is
    marked so. ``measure=False`` leaves out the LanczosCallback (a study
    that measures at chosen points itself); NSGD needs it.
    """
    if gamma is not None and not measure:
        raise ValueError("NSGD needs the LanczosCallback's eigenvectors: keep measure=True.")
    path = os.path.join(out_dir, "result.json")
    config = {"lr": lr, "batch_size": batch_size, "gamma": gamma, "top_k": top_k, "seed": seed, "augment": augment,
              "optimizer": "SGD" if gamma is None else "NSGD", "momentum": 0.0, "scale": dataclasses.asdict(scale)}
    if os.path.exists(path) and not force:
        with open(path) as f:
            stored = json.load(f)
        if {k: stored["config"].get(k) for k in config} != config:
            raise SystemExit(f"{path} holds a run with another configuration ({stored['config']}); "
                             "pass --force to train it again, or another --out.")
        return with_measurements(stored, out_dir)
    os.makedirs(out_dir, exist_ok=True)
    (x, y), valid, test = load_data(scale)
    keras.utils.set_random_seed(seed)  # weights, batch order and Lanczos samples follow the seed
    model = models.simple_cnn("root", input_shape=x.shape[1:], n_filters=scale.n_filters)
    optimizer = (keras.optimizers.SGD(lr) if gamma is None
                 else NSGD(lr, gamma=gamma, top_k=top_k))
    model.compile(optimizer=optimizer, loss=models.default_loss(), metrics=["accuracy"])
    measuring = []
    if measure:
        measuring.append(LanczosCallback((x, y), top_k=top_k, num_samples=min(scale.num_samples, len(x)),
                                         batch_size=scale.lanczos_batch_size, solver=LanczosSolver(tol=scale.tol),
                                         seed=seed,
                                         save_dir=out_dir))
    tracker = HeldOutAccuracyAndDistance(tfs_data.eval_dataset(*test))
    start = time.perf_counter()
    history = model.fit(tfs_data.train_dataset(x, y, batch_size, augment=augment, seed=seed),
                        validation_data=tfs_data.eval_dataset(*valid), epochs=scale.epochs, verbose=0,
                        shuffle=False, callbacks=[*measuring, tracker, *callbacks, keras.callbacks.TerminateOnNaN(),
                                   keras.callbacks.CSVLogger(os.path.join(out_dir, "history.csv"))])
    seconds = time.perf_counter() - start
    n_eval = min(scale.n_train_eval, len(x))
    train_loss, train_accuracy = model.evaluate(tfs_data.eval_dataset(x[:n_eval], y[:n_eval]), verbose=0)
    result = {
        "config": {**config, "steps_per_epoch": int(np.ceil(len(x) / batch_size))},
        "logs": {k: [float(v) for v in values] for k, values in history.history.items()},
        "final": {"train_loss": float(train_loss), "train_accuracy": float(train_accuracy),
                  "train_eval_examples": n_eval, "distance_from_init": tracker.distance(),
                  "diverged": bool(not np.isfinite(train_loss) or len(history.history.get("loss", [])) <
                                   scale.epochs)},
        "seconds": seconds,
    }
    with atomic_path(path) as temporary, open(temporary, "w") as f:
        json.dump(result, f, indent=1, allow_nan=True)
    return with_measurements(result, out_dir)
