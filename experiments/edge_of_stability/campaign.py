"""The stationarity campaign of study 5 (``run --campaign stationarity``): its runs, and the EoSS-like setting.

Every part runs at three or more learning rates, long enough for the later half
to be judged stationary (:mod:`experiments.edge_of_stability.stationarity`):

* ``gd``: full-batch GD on 2,000 examples, 1,500 steps, measured every 25
  steps (odd: both sides of GD's period-2 flip are seen);
* ``sgd``: SGD at batch 32, 128 and 512 on 3,000 examples, each run 3,000 steps
  whatever the batch size (the old runs' 96 steps at batch 512 were cut short);
* ``sgd_data``: SGD at batch 128 on 1,000 and 8,000 examples (with ``sgd``'s
  batch-128 runs on 3,000: three training-set sizes at one batch size);
* ``momentum``: heavy-ball 0.9 at batch 32 and 512;
* ``adam``: full-batch Adam with beta1 = 0.9 and 0.5, 1,000 steps, to test
  (2 + 2 beta1) / ((1 - beta1) eta) itself (38/eta and 6/eta);
* ``eoss``: the closest this machine gets to the Edge of Stochastic Stability
  paper (Andreyev & Beneventano, arXiv 2412.20553; the authors' code,
  github.com/arseniqum/edge-of-stochastic-stability). There: CIFAR-10 (8,192
  examples), an MLP with two hidden ReLU layers of 512, the squared loss summed
  over the one-hot classes (averaged over examples), Kaiming-normal weights
  scaled by 0.2 and zero biases (a small initial sharpness, no catapult), SGD at
  batch 16 (also 8) and eta = 0.01, run until the loss is 1e-5 (up to 150,000
  steps), batch sharpness E_B[g_B^T H_B g_B / ||g_B||^2] over fresh batches until
  its relative error is 0.5%. Here: Fashion-MNIST (no CIFAR-10 on this machine),
  4,096 examples, the same MLP, loss and initialisation, batch 16, eta = 0.01,
  0.02 and 0.04, 20,000 steps, the batch sharpness over 64 random batches per
  measurement (its standard error is logged). ``--eoss_loss cross_entropy``
  trains the same MLP with study 5's cross-entropy (folders ``eoss/bs16_ce_*``):
  the control that tells the loss apart from the rest of the setting.
"""

from __future__ import annotations

import math

#: Campaign defaults per flag: (campaign, campaign with --smoke). Flags not named keep the study's defaults.
CAMPAIGN_DEFAULTS = {
    "seeds": ("0,1", "0"),
    "gd_lrs": ("0.03,0.06,0.12", "0.1,0.2"),
    "gd_steps": (1500, 6),
    "gd_measure_every": (25, 3),
    "batch_sizes": ("32,128,512", "32"),
    "sgd_lrs": ("0.025,0.05,0.1", "0.05,0.1"),
    "momentum_batch_sizes": ("32,512", "32"),
    "momentum_lrs": ("0.0025,0.005,0.01", "0.005,0.01"),
    "adam_batch_sizes": ("full", "full"),
    "adam_lrs": ("0.0005,0.001,0.002", "0.001,0.002"),
    "adam_beta1s": ("0.9,0.5", "0.9,0.5"),
    "adam_steps": (1000, 6),
    "data_sizes": ("1000,8000", "128,256"),  # with part sgd's batch-128 runs on 3,000: three sizes
    "data_batch_size": (128, 32),
    "data_lrs": ("0.025,0.05,0.1", "0.05"),
    "minibatch_steps": (3000, 16),
    "measurements": (40, 4),
    "eoss_lrs": ("0.01,0.02,0.04", "0.01,0.02"),
    "eoss_steps": (20000, 16),
    "eoss_examples": (4096, 128),
    "eoss_hidden": (512, 16),
    "eoss_num_batches": (64, 4),
}

#: The parts a campaign runs by default (``--parts`` picks some).
CAMPAIGN_PARTS = ("gd", "sgd", "sgd_data", "momentum", "adam", "eoss")


def fit_length(steps: int, batch_size: int, n_train: int, measurements: int) -> tuple[int, int]:
    """``(epochs, measure every so many epochs)`` for a ``model.fit`` run of at least ``steps`` steps measured
    about ``measurements`` times (at least once per epoch's worth, and after training)."""
    per_epoch = math.ceil(n_train / batch_size)
    epochs = max(1, math.ceil(steps / per_epoch))
    return epochs, max(1, math.ceil(epochs / max(1, measurements)))


def squared_loss(y_true, y_pred):
    """The EoSS paper's loss: ``sum_c (f_c(x) - onehot(y)_c)^2`` per example (Keras averages over the batch)."""
    import tensorflow as tf

    labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
    return tf.reduce_sum(tf.square(y_pred - tf.one_hot(labels, tf.shape(y_pred)[-1], dtype=y_pred.dtype)), axis=-1)


def eoss_mlp(input_shape, hidden: int, init_scale: float, num_classes: int = 10, layers: int = 2):
    """An MLP of ``layers`` hidden ReLU layers of ``hidden`` units: Kaiming-normal weights (fan in) times
    ``init_scale``, zero biases, a linear last layer named ``logits`` (the EoSS paper's ``mlp`` preset at 512)."""
    import keras

    # Kaiming normal has variance 2 / fan_in; scaling the weights by s scales it by s^2.
    init = keras.initializers.VarianceScaling(scale=2.0 * init_scale**2, mode="fan_in",
                                              distribution="untruncated_normal")
    model = keras.Sequential([keras.Input(input_shape), keras.layers.Flatten()], name="eoss_mlp")
    for _ in range(layers):
        model.add(keras.layers.Dense(hidden, activation="relu", kernel_initializer=init, bias_initializer="zeros"))
    model.add(keras.layers.Dense(num_classes, kernel_initializer=init, bias_initializer="zeros", name="logits"))
    return model


def _name(lr: float, seed: int, prefix: str = "") -> str:
    return f"{prefix}lr{lr:g}_seed{seed}"


def planned_runs(args, scale) -> list[tuple[str, dict, dict]]:
    """``(folder, config, measure)`` of every campaign run of the chosen parts; ``measure`` holds the run's
    ``sample_sizes``, ``num_batches`` and ``measure_every`` (epochs)."""
    runs = []
    plain = {"sample_sizes": [], "num_batches": args.num_batches, "measure_every": 1}
    full_batch = {"batch_size": None, "n_train": args.gd_examples, "measure_every_steps": args.gd_measure_every}

    def minibatch(part, folder, lr, momentum, seed, batch_size, n_train, **extra):
        epochs, every = fit_length(args.minibatch_steps, batch_size, n_train, args.measurements)
        config = {"part": part, "optimizer": "sgd", "lr": lr, "momentum": momentum, "seed": seed,
                  "batch_size": batch_size, "n_train": n_train, "epochs": epochs, **extra}
        runs.append((folder, config, {**plain, "measure_every": every}))

    for part in args.parts:
        for seed in args.seeds:
            if part == "gd":
                for lr in args.gd_lrs:
                    runs.append((f"gd/{_name(lr, seed)}", {"part": "gd", "optimizer": "sgd", "lr": lr, "momentum": 0.0,
                                                          "seed": seed, "steps": args.gd_steps, **full_batch}, plain))
            elif part in ("sgd", "momentum"):
                lrs, sizes = (args.sgd_lrs, args.batch_sizes) if part == "sgd" else (args.momentum_lrs,
                                                                                     args.momentum_batch_sizes)
                momentum = 0.0 if part == "sgd" else args.momentum
                for batch_size in sizes:
                    for lr in lrs:
                        minibatch(part, f"{part}/bs{batch_size}_{_name(lr, seed)}", lr, momentum, seed, batch_size,
                                  scale.n_examples)
            elif part == "sgd_data":
                for n_train in args.data_sizes:
                    for lr in args.data_lrs:
                        minibatch(part, f"sgd_data/n{n_train}_bs{args.data_batch_size}_{_name(lr, seed)}", lr, 0.0,
                                  seed, args.data_batch_size, n_train)
            elif part == "adam":
                for size in args.adam_batch_sizes:
                    for b1 in args.adam_beta1s:
                        for lr in args.adam_lrs:
                            if size == "full":
                                config = {**full_batch, "steps": args.adam_steps}
                            else:
                                epochs, _ = fit_length(args.minibatch_steps, int(size), scale.n_examples, 1)
                                config = {"batch_size": int(size), "n_train": scale.n_examples, "epochs": epochs}
                            every = fit_length(args.minibatch_steps, int(size), scale.n_examples,
                                               args.measurements)[1] if size != "full" else 1
                            runs.append((f"adam/bs{size}_b1{b1:g}_{_name(lr, seed)}",
                                         {"part": "adam", "optimizer": "adam", "lr": lr, "momentum": 0.0, "beta1": b1,
                                          "seed": seed, **config}, {**plain, "measure_every": every}))
            elif part == "eoss":
                for lr in args.eoss_lrs:
                    epochs, every = fit_length(args.eoss_steps, args.eoss_batch_size, args.eoss_examples,
                                               args.measurements)
                    loss = "" if args.eoss_loss == "squared" else "_ce"  # the control runs beside the others
                    runs.append((f"eoss/bs{args.eoss_batch_size}{loss}_{_name(lr, seed)}",
                                 {"part": "eoss", "optimizer": "sgd", "lr": lr, "momentum": 0.0, "seed": seed,
                                  "batch_size": args.eoss_batch_size, "n_train": args.eoss_examples, "epochs": epochs,
                                  "model": "mlp", "hidden": args.eoss_hidden, "init_scale": args.eoss_init_scale,
                                  "loss": args.eoss_loss},
                                 {**plain, "num_batches": args.eoss_num_batches, "measure_every": every}))
    order = {part: i for i, part in enumerate(args.parts)}
    return sorted(runs, key=lambda run: (order[run[1]["part"]], run[0]))
