"""The paper's training runs through plain ``model.fit``: flags, data, model, optimizer, callbacks.

Shared by ``train_simple_cnn_cifar.py`` and ``train_resnet_cifar.py``; each
accepts the original research code's command lines, for example::

    python examples/train_simple_cnn_cifar.py medium gamma=01 --n_epochs=1000 \\
        --opt_kwargs="{'overshoot':0.1,'KK':5}" --optim=nsgd --lr=0.01 --m=0 --seed=800 --data_seed=800 \\
        --reduce_callback --reduce_callback_kwargs="{'monitor': 'val_loss', 'patience':200}" \\
        --early_stopping --early_stopping_patience=500 --lanczos_top_K=5 --lanczos_top_K_N=2250

Positional arguments: CONFIG (a model preset) and SAVE_DIR. SAVE_DIR gets
``config.json`` (every flag), ``history.csv`` (one row per epoch: losses,
accuracies, learning rate, ``lambda_1..K``), the Lanczos outputs
(``lanczos.npz``/``lanczos.csv``), ``model_last.keras``, TensorBoard logs, a
``backup/`` that lets the same command resume an interrupted run (see
``epoch_backup.py``), and
``final.json`` with the test metrics.
"""

from __future__ import annotations

import ast
import csv
import json
import os

from absl import app, flags

FLAGS = flags.FLAGS

# Keys of --opt_kwargs as the original code spelled them, and NSGD's names for them.
OPT_KWARG_ALIASES = {"overshoot": "gamma", "KK": "top_k"}
NSGD_KWARGS = ("gamma", "top_k", "nudge", "nesterov")
NUDGE_ALIASES = {"correct_v": "velocity", "correct_g": "gradient"}
MODEL_FLAGS = {
    "simple_cnn": ("n_filters", "kernel_size", "n_dense", "dropout", "bn", "use_bias", "activation",
                   "kernel_initializer", "l2"),
    "resnet": ("depth", "bn", "dropout", "init_scale", "l2", "width", "activation"),
}


#: Names of the flags ``define_flags`` defined (written to config.json).
TRAINING_FLAGS: list[str] = []


def define_flags(family: str) -> None:
    """Defines the training flags; ``family`` is ``"simple_cnn"`` or ``"resnet"``."""
    before = set(FLAGS)
    flags.DEFINE_enum("optim", "sgd", ["sgd", "nsgd", "adam"], "Optimizer.")
    flags.DEFINE_float("lr", 0.01, "Learning rate.")
    flags.DEFINE_float("m", 0.0, "Momentum (sgd, nsgd).")
    flags.DEFINE_string("opt_kwargs", "{}", "Dict literal of optimizer keywords; for nsgd 'overshoot' (gamma), "
                        "'KK' (top_k), 'nudge', 'nesterov'.")
    flags.DEFINE_integer("batch_size", 128, "Training batch size.")
    flags.DEFINE_integer("n_epochs", 10, "Epochs.")
    flags.DEFINE_integer("epoch_size", 0, "Training examples per epoch (0: the whole training set). A smaller or "
                         "larger value cycles through a repeating, reshuffled stream.")
    flags.DEFINE_integer("seed", 777, "Seed of weights, shuffling, augmentation and Lanczos samples.")
    flags.DEFINE_integer("data_seed", 777, "Seed of the train/valid split.")
    flags.DEFINE_enum("dataset", "cifar", ["cifar", "fmnist"], "CIFAR-10 or Fashion-MNIST.")
    flags.DEFINE_boolean("augmentation", False, "Random shifts (0.125) and horizontal flips.")
    flags.DEFINE_boolean("reduce_callback", False, "Use ReduceLROnPlateau.")
    flags.DEFINE_string("reduce_callback_kwargs", "{}", "Dict literal of ReduceLROnPlateau keywords.")
    flags.DEFINE_boolean("early_stopping", False, "Use EarlyStopping on val_loss.")
    flags.DEFINE_integer("early_stopping_patience", 10, "EarlyStopping patience in epochs.")
    flags.DEFINE_integer("lanczos_top_K", 5, "Top Hessian eigenvalues measured each epoch (0: none).")
    flags.DEFINE_integer("lanczos_top_K_N", 2250, "Training examples per Lanczos measurement.")
    flags.DEFINE_float("lanczos_tol", 1e-3, "Lanczos residual tolerance (relative).")
    flags.DEFINE_integer("lanczos_batch_size", 128, "Batch size of the Hessian-vector products.")
    flags.DEFINE_string("data_dir", None, "Folder with a tfds copy or raw files of the dataset.")
    flags.DEFINE_integer("n_examples", 0, "Train on the first N training examples (0: all).")
    flags.DEFINE_integer("verbose", 2, "Keras fit verbosity.")
    flags.DEFINE_integer("n_filters", None, "SimpleCNN: filters of the first convolutions.")
    flags.DEFINE_integer("kernel_size", None, "SimpleCNN: kernel size.")
    flags.DEFINE_integer("n_dense", None, "SimpleCNN: units of the hidden dense layer.")
    flags.DEFINE_float("dropout", None, "Dropout rate.")
    flags.DEFINE_boolean("bn", None, "BatchNormalization.")
    flags.DEFINE_boolean("use_bias", None, "SimpleCNN: biases.")
    flags.DEFINE_string("activation", None, "Activation.")
    flags.DEFINE_string("kernel_initializer", None, "SimpleCNN: kernel initializer.")
    flags.DEFINE_float("l2", None, "L2 regularization coefficient (the preset's when unset).")
    flags.DEFINE_integer("depth", None, "ResNet: depth (6n+2).")
    flags.DEFINE_float("init_scale", None, "ResNet: initialisation scale.")
    flags.DEFINE_integer("width", None, "ResNet: filters of the first stage.")
    flags.register_validator("batch_size", lambda v: v > 0, "--batch_size must be positive.")
    flags.register_validator("n_epochs", lambda v: v > 0, "--n_epochs must be positive.")
    TRAINING_FLAGS[:] = sorted(set(FLAGS) - before)


def parse_dict_flag(name: str, text: str) -> dict:
    """Parses a dict-valued flag as a Python literal; anything else (code included) is refused."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise app.UsageError(f"--{name} must be a dict literal such as \"{{'overshoot': 0.1, 'KK': 5}}\"; "
                             f"{text!r} is not a literal and was not run.") from None
    if not isinstance(value, dict):
        raise app.UsageError(f"--{name} must be a dict literal, got {type(value).__name__}: {text!r}.")
    return value


def optimizer_kwargs() -> dict:
    """--opt_kwargs with the original names mapped to NSGD's, validated."""
    raw = parse_dict_flag("opt_kwargs", FLAGS.opt_kwargs)
    if FLAGS.optim != "nsgd":
        return raw
    kwargs = {OPT_KWARG_ALIASES.get(k, k): v for k, v in raw.items()}
    unknown = sorted(set(kwargs) - set(NSGD_KWARGS))
    if unknown:
        raise app.UsageError(f"Unknown --opt_kwargs key(s) {unknown} for nsgd; use {sorted(OPT_KWARG_ALIASES)} "
                             f"or {list(NSGD_KWARGS)}.")
    if "nudge" in kwargs:
        kwargs["nudge"] = NUDGE_ALIASES.get(kwargs["nudge"], kwargs["nudge"])
    return kwargs


def model_overrides(family: str) -> dict:
    return {name: getattr(FLAGS, name) for name in MODEL_FLAGS[family] if getattr(FLAGS, name) is not None}


def trim_history(path: str, finished_epochs: int) -> None:
    """Keeps the rows of epochs ``< finished_epochs`` in a CSVLogger file.

    A run killed after CSVLogger wrote an epoch's row but before the backup of
    that epoch was saved would otherwise repeat the row when it resumes.
    """
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    kept = [row for row in body if row and int(row[0]) < finished_epochs]
    if len(kept) != len(body):
        from tf_sharpest.utils.files import atomic_path

        with atomic_path(path) as temporary, open(temporary, "w", newline="") as f:
            csv.writer(f).writerows([header] + kept)


def build_optimizer(kwargs: dict):
    import keras

    from tf_sharpest.optimizers import NSGD

    try:
        if FLAGS.optim == "nsgd":
            return NSGD(learning_rate=FLAGS.lr, momentum=FLAGS.m, **kwargs)
        if FLAGS.optim == "sgd":
            return keras.optimizers.SGD(learning_rate=FLAGS.lr, momentum=FLAGS.m, **kwargs)
        return keras.optimizers.Adam(learning_rate=FLAGS.lr, **kwargs)
    except (TypeError, ValueError) as error:
        raise app.UsageError(f"--opt_kwargs do not fit --optim={FLAGS.optim}: {error}") from None


def run(argv, family: str) -> dict:
    """Trains as the flags say; returns the final metrics."""
    if len(argv) != 3:
        raise app.UsageError(f"Usage: {os.path.basename(argv[0])} CONFIG SAVE_DIR [--flags]; got {argv[1:]}.")
    config, save_dir = argv[1], argv[2]
    # Everything that can be refused is checked before any data is read or anything runs.
    opt_kwargs = optimizer_kwargs()
    reduce_kwargs = parse_dict_flag("reduce_callback_kwargs", FLAGS.reduce_callback_kwargs)
    if FLAGS.optim == "nsgd" and FLAGS.lanczos_top_K < opt_kwargs.get("top_k", 5):
        raise app.UsageError(f"--optim=nsgd nudges top_k={opt_kwargs.get('top_k', 5)} directions: set "
                             "--lanczos_top_K at least that large so they are measured.")

    import keras

    from epoch_backup import EpochBackup, finished_epochs, restore_backup
    from tf_sharpest import data, models
    from tf_sharpest.callbacks import LanczosCallback

    factory = models.simple_cnn if family == "simple_cnn" else models.resnet
    presets = models.SIMPLE_CNN_PRESETS if family == "simple_cnn" else models.RESNET_PRESETS
    if config not in presets:
        raise app.UsageError(f"Unknown CONFIG {config!r}; choose one of {sorted(presets)}.")

    os.makedirs(save_dir, exist_ok=True)
    with open(os.path.join(save_dir, "config.json"), "w") as f:
        json.dump({"config": config, "save_dir": save_dir, "family": family, "optimizer_kwargs": opt_kwargs,
                   "flags": {name: FLAGS[name].value for name in TRAINING_FLAGS}}, f, indent=2, sort_keys=True)

    keras.utils.set_random_seed(FLAGS.seed)
    splits = data.load("cifar10" if FLAGS.dataset == "cifar" else "fashion_mnist", data_dir=FLAGS.data_dir,
                       data_seed=FLAGS.data_seed)
    x_train, y_train = splits.x_train, splits.y_train
    if FLAGS.n_examples:
        x_train, y_train = x_train[: FLAGS.n_examples], y_train[: FLAGS.n_examples]
    model = factory(config, input_shape=x_train.shape[1:], num_classes=10, **model_overrides(family))
    model.compile(optimizer=build_optimizer(opt_kwargs), loss=models.default_loss(), metrics=["accuracy"])

    train = data.train_dataset(x_train, y_train, FLAGS.batch_size, augment=FLAGS.augmentation, seed=FLAGS.seed)
    steps_per_epoch = None
    if FLAGS.epoch_size:
        train = train.repeat()
        steps_per_epoch = max(1, FLAGS.epoch_size // FLAGS.batch_size)

    backup_dir = os.path.join(save_dir, "backup")
    history_path = os.path.join(save_dir, "history.csv")
    trim_history(history_path, finished_epochs(backup_dir))
    initial_epoch = restore_backup(model, backup_dir)
    callbacks = []
    if FLAGS.lanczos_top_K:
        # As the paper did: the (augmented, when on) training stream, without dropout or BN updates.
        lanczos_data = (data.train_dataset(x_train, y_train, FLAGS.lanczos_batch_size, augment=True,
                                           seed=FLAGS.seed + 1).repeat()
                        if FLAGS.augmentation else (x_train, y_train))
        callbacks.append(LanczosCallback(lanczos_data, top_k=FLAGS.lanczos_top_K,
                                         num_samples=FLAGS.lanczos_top_K_N, batch_size=FLAGS.lanczos_batch_size,
                                         tol=FLAGS.lanczos_tol, seed=FLAGS.seed, save_dir=save_dir,
                                         verbose=1 if FLAGS.verbose == 1 else 0))
    if FLAGS.reduce_callback:
        try:
            callbacks.append(keras.callbacks.ReduceLROnPlateau(**reduce_kwargs))
        except TypeError as error:
            raise app.UsageError(f"--reduce_callback_kwargs: {error}") from None
    if FLAGS.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=FLAGS.early_stopping_patience))
    callbacks += [
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.setdefault(
            "learning_rate", float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))),
        keras.callbacks.CSVLogger(history_path, append=True),
        keras.callbacks.TensorBoard(os.path.join(save_dir, "tensorboard")),
        keras.callbacks.ModelCheckpoint(os.path.join(save_dir, "model_last.keras")),
        # Last, so that an epoch's row is written before the epoch counts as done.
        EpochBackup(backup_dir),
    ]
    model.fit(train, epochs=FLAGS.n_epochs, initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
              validation_data=data.eval_dataset(splits.x_valid, splits.y_valid), callbacks=callbacks,
              verbose=FLAGS.verbose, shuffle=False)  # the dataset shuffles itself
    test_loss, test_accuracy = model.evaluate(data.eval_dataset(splits.x_test, splits.y_test), verbose=0)
    final = {"test_loss": float(test_loss), "test_accuracy": float(test_accuracy)}
    with open(os.path.join(save_dir, "final.json"), "w") as f:
        json.dump(final, f, indent=2)
    print(f"Test accuracy {test_accuracy:.4f}, test loss {test_loss:.4f}; results in {save_dir}")
    return final

