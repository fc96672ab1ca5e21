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

Rerunning a command whose SAVE_DIR holds ``final.json`` prints that the run is
complete and exits (status 0) without training; ``--overwrite`` deletes the
run's outputs and trains from scratch. ``--help`` lists the flags.
"""

from __future__ import annotations

import ast
import csv
import inspect
import json
import math
import os
import shutil
import sys

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

#: Longest accepted value of a dict-literal flag (``--opt_kwargs``, ``--reduce_callback_kwargs``), in
#: characters. Real values are a few dozen characters; a literal of millions of elements took tens of seconds
#: and gigabytes to parse before it could be refused, so longer values are refused before they are parsed.
MAX_DICT_FLAG_CHARS = 4096

#: Characters of a refused flag value quoted back in the error message.
QUOTED_CHARS = 80

#: Files and folders a run writes into SAVE_DIR; ``--overwrite`` deletes them (and nothing else there).
RUN_OUTPUTS = ("config.json", "history.csv", "lanczos.npz", "lanczos.csv", "model_last.keras", "final.json",
               "backup", "tensorboard")

#: Arguments that show this script's help (absl's own ``--help`` exits with status 1 and, since the flags
#: are defined here rather than in the script, lists none of them).
HELP_ARGS = ("--help", "-help", "--helpshort", "-helpshort", "-h", "-?")
HELPFULL_ARGS = ("--helpfull", "-helpfull")


def _define_model_flag(name: str) -> None:
    """Defines one model flag; each script defines only its own family's."""
    definitions = {
        "n_filters": (flags.DEFINE_integer, "Filters of the first convolutions (the preset's when unset)."),
        "kernel_size": (flags.DEFINE_integer, "Kernel size (the preset's when unset)."),
        "n_dense": (flags.DEFINE_integer, "Units of the hidden dense layer (the preset's when unset)."),
        "dropout": (flags.DEFINE_float, "Dropout rate in [0, 1) (the preset's when unset)."),
        "bn": (flags.DEFINE_boolean, "BatchNormalization (the preset's when unset)."),
        "use_bias": (flags.DEFINE_boolean, "Biases (the preset's when unset)."),
        "activation": (flags.DEFINE_string, "Keras activation name (the preset's when unset)."),
        "kernel_initializer": (flags.DEFINE_string, "Keras kernel initializer name (the preset's when unset)."),
        "l2": (flags.DEFINE_float, "L2 regularization coefficient, >= 0 (the preset's when unset)."),
        "depth": (flags.DEFINE_integer, "Depth, 6n+2: 20, 32, 44, 56, 110, ... (the preset's when unset)."),
        "init_scale": (flags.DEFINE_float, "Initialisation scale, > 0 (the preset's when unset)."),
        "width": (flags.DEFINE_integer, "Filter multiplier w: stages of 16w, 32w and 64w filters (the preset's "
                  "when unset)."),
    }
    define, help_text = definitions[name]
    define(name, None, help_text)


def _check(name: str, test, message: str) -> None:
    """A validator run when the flags are parsed: before any data is read or anything is built."""
    flags.register_validator(name, test, f"--{name} {message}")


def _is_set_and(test):
    return lambda value: value is None or test(value)


#: Names of the flags ``define_flags`` defined (written to config.json).
TRAINING_FLAGS: list[str] = []


def define_flags(family: str) -> None:
    """Defines the training flags; ``family`` is ``"simple_cnn"`` or ``"resnet"``.

    The model flags are the family's own (``MODEL_FLAGS[family]``), so each
    script's ``--help`` lists only the flags it takes. Sizes, counts and
    rates are checked when the flags are parsed: a negative or zero size is a
    usage error before any data is loaded.
    """
    if family not in MODEL_FLAGS:
        raise ValueError(f"Unknown model family {family!r}; choose one of {sorted(MODEL_FLAGS)}.")
    before = set(FLAGS)
    flags.DEFINE_enum("optim", "sgd", ["sgd", "nsgd", "adam"], "Optimizer.")
    flags.DEFINE_float("lr", 0.01, "Learning rate.")
    flags.DEFINE_float("m", 0.0, "Momentum (sgd, nsgd).")
    flags.DEFINE_string("opt_kwargs", "{}", "Dict literal of optimizer keywords; for nsgd 'overshoot' (gamma), "
                        f"'KK' (top_k), 'nudge', 'nesterov'. At most {MAX_DICT_FLAG_CHARS} characters.")
    flags.DEFINE_integer("batch_size", 128, "Training batch size.")
    flags.DEFINE_integer("n_epochs", 10, "Epochs.")
    flags.DEFINE_integer("epoch_size", None, "Training examples per epoch (unset: one pass over the training set). "
                         "A smaller or larger value cycles through a repeating, reshuffled stream.")
    flags.DEFINE_integer("seed", 777, "Seed of weights, shuffling, augmentation and Lanczos samples.")
    flags.DEFINE_integer("data_seed", 777, "Seed of the train/valid split.")
    flags.DEFINE_enum("dataset", "cifar", ["cifar", "fmnist"], "CIFAR-10 or Fashion-MNIST.")
    flags.DEFINE_boolean("augmentation", False, "Random shifts (0.125) and horizontal flips.")
    flags.DEFINE_boolean("reduce_callback", False, "Use ReduceLROnPlateau.")
    flags.DEFINE_string("reduce_callback_kwargs", "{}", "Dict literal of ReduceLROnPlateau keywords. At most "
                        f"{MAX_DICT_FLAG_CHARS} characters.")
    flags.DEFINE_boolean("early_stopping", False, "Use EarlyStopping on val_loss.")
    flags.DEFINE_integer("early_stopping_patience", 10, "EarlyStopping patience in epochs.")
    flags.DEFINE_integer("lanczos_top_K", 5, "Top Hessian eigenvalues measured each epoch (0: none).")
    flags.DEFINE_integer("lanczos_top_K_N", 2250, "Training examples per Lanczos measurement.")
    flags.DEFINE_float("lanczos_tol", 1e-3, "Lanczos residual tolerance (relative).")
    flags.DEFINE_integer("lanczos_batch_size", 128, "Batch size of the Hessian-vector products.")
    flags.DEFINE_string("data_dir", None, "Folder with a tfds copy or raw files of the dataset.")
    flags.DEFINE_integer("n_examples", None, "Train on the first N training examples (unset: all).")
    flags.DEFINE_integer("verbose", 2, "Keras fit verbosity: 0, 1 or 2.")
    flags.DEFINE_boolean("overwrite", False, "Train from scratch in a SAVE_DIR that holds a complete or "
                         "interrupted run, deleting its outputs; without it a complete run is left as it is and "
                         "an interrupted one resumes.")
    for name in MODEL_FLAGS[family]:
        _define_model_flag(name)

    positive = "must be a positive integer"
    _check("batch_size", lambda v: v > 0, f"{positive}.")
    _check("n_epochs", lambda v: v > 0, f"{positive}.")
    _check("lr", lambda v: math.isfinite(v) and v > 0, "must be a positive number.")
    _check("m", lambda v: 0 <= v <= 1, "(momentum) must be in [0, 1].")
    _check("epoch_size", _is_set_and(lambda v: v > 0),
           f"{positive} (examples per epoch); leave it unset for one pass over the training set per epoch.")
    _check("n_examples", _is_set_and(lambda v: v > 0),
           f"{positive} (training examples used); leave it unset to train on all of them.")
    _check("early_stopping_patience", lambda v: v >= 0, "must be 0 or more epochs.")
    _check("lanczos_top_K", lambda v: v >= 0, "must be 0 (no measurements) or a positive number of eigenvalues.")
    _check("lanczos_top_K_N", lambda v: v > 0, f"{positive} (training examples per Lanczos measurement).")
    _check("lanczos_batch_size", lambda v: v > 0, f"{positive}.")
    _check("lanczos_tol", lambda v: math.isfinite(v) and v > 0, "must be a positive number.")
    _check("verbose", lambda v: v in (0, 1, 2), "must be 0, 1 or 2.")
    for name in ("n_filters", "kernel_size", "n_dense", "depth", "width"):
        if name in MODEL_FLAGS[family]:
            _check(name, _is_set_and(lambda v: v > 0), f"{positive} (leave it unset for the preset's).")
    if "dropout" in MODEL_FLAGS[family]:
        _check("dropout", _is_set_and(lambda v: 0 <= v < 1), "must be in [0, 1) (leave it unset for the preset's).")
    if "l2" in MODEL_FLAGS[family]:
        _check("l2", _is_set_and(lambda v: math.isfinite(v) and v >= 0), "must be 0 or more.")
    if "init_scale" in MODEL_FLAGS[family]:
        _check("init_scale", _is_set_and(lambda v: math.isfinite(v) and v > 0), "must be a positive number.")
    TRAINING_FLAGS[:] = sorted(set(FLAGS) - before)


def _quote(text: str) -> str:
    """``text`` for an error message: its start only when it is long."""
    if len(text) <= QUOTED_CHARS:
        return repr(text)
    return f"{text[:QUOTED_CHARS]!r}... ({len(text):,} characters)"


def parse_dict_flag(name: str, text: str) -> dict:
    """Parses a dict-valued flag as a Python literal; anything else (code included) is refused.

    Values longer than :data:`MAX_DICT_FLAG_CHARS` are refused before they are
    parsed, and error messages quote only the start of a long value.
    """
    if len(text) > MAX_DICT_FLAG_CHARS:
        raise app.UsageError(f"--{name} is {len(text):,} characters long; at most {MAX_DICT_FLAG_CHARS:,} are "
                             f"accepted (a dict literal such as \"{{'overshoot': 0.1, 'KK': 5}}\"). It starts "
                             f"{text[:QUOTED_CHARS]!r} and was not parsed.")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise app.UsageError(f"--{name} must be a dict literal such as \"{{'overshoot': 0.1, 'KK': 5}}\"; "
                             f"{_quote(text)} is not a literal and was not run.") from None
    if not isinstance(value, dict):
        raise app.UsageError(f"--{name} must be a dict literal, got {type(value).__name__}: {_quote(text)}.")
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


def history_logger(path: str):
    """A ``CSVLogger`` appending to ``path`` that keeps every row under its own column when the logged keys change.

    Keras's ``CSVLogger(append=True)`` takes its columns from the first epoch it
    logs and writes no header into a file that has one: a run resumed by a newer
    version of the library that logs one more metric (``lanczos_converged``, say)
    would write its rows one column off under the old header. This one reads the
    header already there, keeps its column order, and when new keys appear rewrites
    the file once with the added columns (empty in the earlier rows).
    """
    import keras

    class HistoryLogger(keras.callbacks.CSVLogger):
        def on_epoch_end(self, epoch, logs=None):
            if self.keys is None and not self.append_header:
                with open(self.filename, newline="") as f:
                    rows = list(csv.reader(f))
                header = rows[0][1:] if rows else []
                added = sorted(set(logs or {}) - set(header))
                if added:
                    self.csv_file.close()
                    with open(self.filename, "w", newline="") as f:
                        csv.writer(f).writerows([["epoch", *header, *added]] +
                                                [row + [""] * len(added) for row in rows[1:]])
                    self.csv_file = open(self.filename, "a", newline="")  # noqa: SIM115 (Keras closes it)
                self.keys = header + added
            super().on_epoch_end(epoch, logs)

    return HistoryLogger(path, append=True)


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
        from tf_sharpest.utils import atomic_path

        with atomic_path(path) as temporary, open(temporary, "w", newline="") as f:
            csv.writer(f).writerows([header] + kept)


def help_text(full: bool = False) -> str:
    """The running script's docstring and its flags (with ``full``, absl's own flags as well)."""
    doc = (getattr(sys.modules["__main__"], "__doc__", None) or "").strip("\n")
    if full:
        listing = FLAGS.get_help()
    else:
        # module_help starts with a "paper_training:" heading, which means nothing to the user.
        lines = FLAGS.module_help(__name__).strip("\n").splitlines()
        listing = "\n".join(lines[1:] if lines and lines[0].strip() == f"{__name__}:" else lines)
        listing += "\n\nTry --helpfull to list absl's own flags as well."
    return f"{doc}\n\nflags:\n{listing}\n"


def parse_flags(argv: list[str]) -> list[str]:
    """``app.run``'s ``flags_parser``: ``--help`` prints the script's flags and exits with status 0.

    absl's own ``--help`` exits with status 1 and lists only flags defined in
    the script itself, i.e. none, since they are defined here. Other arguments
    are parsed by absl (``app.parse_flags_with_usage``), which checks every
    flag's validator.
    """
    options = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    if any(arg in HELP_ARGS for arg in options):
        sys.stdout.write(help_text())
        sys.exit(0)
    if any(arg in HELPFULL_ARGS for arg in options):
        sys.stdout.write(help_text(full=True))
        sys.exit(0)
    return app.parse_flags_with_usage(argv)


def _differences(save_dir: str, config: str) -> list[str]:
    """Names of what this command sets differently from the run saved in ``save_dir`` (its config.json)."""
    try:
        with open(os.path.join(save_dir, "config.json")) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return []
    current = {name: FLAGS[name].value for name in TRAINING_FLAGS if name != "overwrite"}
    differ = [name for name, value in current.items() if saved.get("flags", {}).get(name, value) != value]
    if saved.get("config", config) != config:
        differ.insert(0, "CONFIG")
    return differ


def _clear_outputs(save_dir: str) -> None:
    """Deletes the outputs of an earlier run (``RUN_OUTPUTS``) from ``save_dir``, nothing else."""
    removed = []
    for name in RUN_OUTPUTS:
        path = os.path.join(save_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        else:
            continue
        removed.append(name)
    if removed:
        print(f"--overwrite: deleted the earlier run's {', '.join(removed)} in {save_dir}; training from scratch.")


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

    final_path = os.path.join(save_dir, "final.json")
    if os.path.exists(final_path) and not FLAGS.overwrite:
        # final.json is written last (atomically): its presence means this run trained and was tested.
        try:
            with open(final_path) as f:
                final = json.load(f)
            summary = f"test accuracy {final['test_accuracy']:.4f}, test loss {final['test_loss']:.4f}"
        except (OSError, ValueError, KeyError, TypeError):
            final, summary = {}, "final.json unreadable"
        differ = _differences(save_dir, config)
        note = f" This command differs from that run in: {', '.join(differ)}." if differ else ""
        print(f"The run in {save_dir} is complete ({summary}); nothing to do.{note} Pass --overwrite to delete "
              "its outputs and train again from scratch.")
        return final
    if FLAGS.overwrite:
        _clear_outputs(save_dir)

    # TensorFlow only now: a refused flag or a complete run answers without its seconds of start-up.
    from cli import import_tensorflow_quietly  # beside this file, as train_*.py put it on sys.path

    import_tensorflow_quietly()  # without CUDA's and absl's start-up lines on stderr
    import keras

    from tf_sharpest import data, models
    from tf_sharpest.callbacks import LanczosCallback
    from tf_sharpest.linalg import LanczosSolver
    from tf_sharpest.utils import atomic_path

    from epoch_backup import EpochBackup, finished_epochs, restore_backup, training_finished

    factory = models.simple_cnn if family == "simple_cnn" else models.resnet
    presets = models.SIMPLE_CNN_PRESETS if family == "simple_cnn" else models.RESNET_PRESETS
    if config not in presets:
        raise app.UsageError(f"Unknown CONFIG {config!r}; choose one of {sorted(presets)}.")
    dataset = "cifar10" if FLAGS.dataset == "cifar" else "fashion_mnist"

    # The model and optimizer are built before the data is read, so that a flag they refuse (a depth that is
    # not 6n+2, a kernel too large for the images, ...) is a usage error within seconds. Loading the data
    # draws no random numbers, so the weights are those of a model built after it.
    keras.utils.set_random_seed(FLAGS.seed)
    try:
        model = factory(config, input_shape=data.DATASETS[dataset]["shape"], num_classes=10,
                        **model_overrides(family))
    except ValueError as error:
        raise app.UsageError(f"The model flags do not fit CONFIG {config!r}: {error}") from None
    model.compile(optimizer=build_optimizer(opt_kwargs), loss=models.default_loss(), metrics=["accuracy"])
    reduce_callback = None
    if FLAGS.reduce_callback:
        # ReduceLROnPlateau takes **kwargs and ignores unknown keys: a misspelt 'patience' would silently
        # leave the default.
        known = [name for name in inspect.signature(keras.callbacks.ReduceLROnPlateau.__init__).parameters
                 if name not in ("self", "kwargs")]
        unknown = sorted(set(reduce_kwargs) - set(known))
        if unknown:
            raise app.UsageError(f"Unknown --reduce_callback_kwargs key(s) {unknown}; ReduceLROnPlateau takes "
                                 f"{known}.")
        try:
            reduce_callback = keras.callbacks.ReduceLROnPlateau(**reduce_kwargs)
        except (TypeError, ValueError) as error:
            raise app.UsageError(f"--reduce_callback_kwargs: {error}") from None

    os.makedirs(save_dir, exist_ok=True)
    with open(os.path.join(save_dir, "config.json"), "w") as f:
        json.dump({"config": config, "save_dir": save_dir, "family": family, "optimizer_kwargs": opt_kwargs,
                   "flags": {name: FLAGS[name].value for name in TRAINING_FLAGS}}, f, indent=2, sort_keys=True)

    splits = data.load(dataset, data_dir=FLAGS.data_dir, data_seed=FLAGS.data_seed)
    x_train, y_train = splits.x_train, splits.y_train
    if FLAGS.n_examples:
        if FLAGS.n_examples > len(x_train):
            raise app.UsageError(f"--n_examples={FLAGS.n_examples} is more than the {len(x_train):,} training "
                                 "examples; leave it unset to train on all of them.")
        x_train, y_train = x_train[: FLAGS.n_examples], y_train[: FLAGS.n_examples]

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
                                         solver=LanczosSolver(tol=FLAGS.lanczos_tol), seed=FLAGS.seed,
                                         save_dir=save_dir,
                                         verbose=1 if FLAGS.verbose == 1 else 0))
    if reduce_callback is not None:
        callbacks.append(reduce_callback)
    if FLAGS.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=FLAGS.early_stopping_patience))
    callbacks += [
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.setdefault(
            "learning_rate", float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))),
        history_logger(history_path),
        keras.callbacks.TensorBoard(os.path.join(save_dir, "tensorboard")),
        keras.callbacks.ModelCheckpoint(os.path.join(save_dir, "model_last.keras")),
        # Last, so that an epoch's row is written before the epoch counts as done. The backup is kept, marked
        # finished, until final.json is written: a run killed while it is tested is then tested again when
        # rerun, not trained again.
        EpochBackup(backup_dir, delete_on_train_end=False),
    ]
    if training_finished(backup_dir):
        print(f"Training in {save_dir} had finished ({initial_epoch} of {FLAGS.n_epochs} epochs run); testing the "
              "backed-up model.")
    else:
        model.fit(train, epochs=FLAGS.n_epochs, initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
                  validation_data=data.eval_dataset(splits.x_valid, splits.y_valid), callbacks=callbacks,
                  verbose=FLAGS.verbose, shuffle=False)  # the dataset shuffles itself
    test_loss, test_accuracy = model.evaluate(data.eval_dataset(splits.x_test, splits.y_test), verbose=0)
    final = {"test_loss": float(test_loss), "test_accuracy": float(test_accuracy)}
    with atomic_path(final_path) as path, open(path, "w") as f:
        json.dump(final, f, indent=2)
    shutil.rmtree(backup_dir, ignore_errors=True)  # the run is complete: a rerun says so instead of resuming
    print(f"Test accuracy {test_accuracy:.4f}, test loss {test_loss:.4f}; results in {save_dir}")
    return final


def main(family: str) -> None:
    """A training script's whole entry point: defines ``family``'s flags, then runs ``run`` under absl.

    The two scripts differ only in their docstring (their ``--help``) and the
    model family; everything else is here once.
    """
    define_flags(family)

    def train(argv):
        run(argv, family)  # not returned: app.run would exit with the metrics dict as an error status

    app.run(train, flags_parser=parse_flags)
