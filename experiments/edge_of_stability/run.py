"""Study 5: lambda_1 against 2/eta, and the edge of stability for GD, SGD, momentum and Adam.

Four parts, each with several seeds, on real Fashion-MNIST:

1. ``gd``: full-batch gradient descent on a few thousand examples at three
   learning rates: progressive sharpening, then lambda_1 against 2/eta
   (Cohen et al., ICLR 2021).
2. ``sgd``: SGD at batch 32, 128 and 512: lambda_1 of every training example,
   of 2,250- and 512-example samples, and the batch sharpness
   E_B[g_B^T H_B g_B / ||g_B||^2], each against 2/eta (Andreyev & Beneventano,
   arXiv 2412.20553).
3. ``momentum``: the same with heavy-ball momentum beta, against 2(1+beta)/eta
   (full-batch: Cohen et al., ICLR 2021; SGD at large batches) and
   2(1-beta)/eta (SGD at small batches: Andreyev et al., arXiv 2604.14108).
4. ``adam``: the preconditioned sharpness lambda_1(P^-1 H) against
   (2 + 2 beta1) / (eta (1 - beta1)) = 38/eta (Cohen et al., arXiv 2207.14484),
   full-batch and at a mini-batch size, with the plain lambda_1 beside it.

    python -m experiments.edge_of_stability.run                 # all parts, reduced scale (RESULTS.md)
    python -m experiments.edge_of_stability.run --parts gd,adam # some parts (e.g. in parallel processes)
    python -m experiments.edge_of_stability.plot
    python -m experiments.edge_of_stability.run --smoke --out /tmp/s5   # seconds

A finished run (``result.json``) is skipped when rerun; ``--force`` trains it again.

The stationarity campaign (issue 27; ``campaign.py`` lists its runs, ``stationarity.py`` analyses them): every
part at three learning rates, two seeds, long runs (GD 1,500 steps, full-batch Adam 1,000 at beta1 0.9 and 0.5,
every mini-batch run 3,000 steps whatever its batch size, about 40 measurements each), SGD also at three
training-set sizes at batch 128 (``sgd_data``), and ``eoss``, the Edge of Stochastic Stability paper's setting as
near as this machine allows (MLP 2x512, squared loss, batch 16, 20,000 steps). Its runs go to
``runs/experiments/edge_of_stability_stationarity``, one folder per run, each skipped once its ``result.json``
exists, so a campaign spread over sessions loses at most the run it was in:

    python -m experiments.edge_of_stability.run --campaign stationarity --parts gd,adam            # 18 runs
    python -m experiments.edge_of_stability.run --campaign stationarity --parts sgd,momentum       # 30 runs
    python -m experiments.edge_of_stability.run --campaign stationarity --parts sgd_data,eoss      # 18 runs
    python -m experiments.keep_runs edge_of_stability --src runs/experiments/edge_of_stability_stationarity \
        --dest experiments/edge_of_stability/results/stationarity/runs
    python -m experiments.edge_of_stability.stationarity --out experiments/edge_of_stability/results/stationarity/runs
    python -m experiments.edge_of_stability.run --campaign stationarity --smoke --out /tmp/s5c   # every part, tiny

Time, measured (two processes at a time on an otherwise idle 2-core machine, seconds per run): GD 1,500 steps
392-554; SGD 3,000 steps at batch 32 281-296, at batch 512 480-501 (at batch 128 1,408-2,977 beside a third long
job); momentum at batch 32 229-250, at 512 439-554; full-batch Adam 1,000 steps 258-383; ``sgd_data`` on 1,000
examples 157, on 8,000 435; ``eoss`` 20,224 steps 480-600. A part at one seed takes 15-50 minutes; the
whole campaign at one seed about 5 hours of runs, half that as two processes. ``--seeds 0`` halves everything.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import time

from experiments._cli import import_tensorflow_quietly, nonnegative_int_list, number_list, positive_int_list
from experiments.edge_of_stability import campaign as campaigns
from experiments.scale import SMOKE as SMOKE_SCALE
from experiments.scale import Scale, default_out, scale_arguments, scale_from

# TensorFlow, Keras and tf_sharpest are imported in the functions that train (after experiments.training, which
# imports TensorFlow quietly), so that --help and usage errors answer at once.

STUDY = "edge_of_stability"
PARTS = ("gd", "sgd", "momentum", "adam")

#: This study's default scale: small enough for ~35 runs on two CPU cores within about an hour.
#: ``n_examples`` is the training set of the mini-batch parts, ``epochs`` their length.
DEFAULT = Scale(n_examples=3000, epochs=16, n_filters=4, num_samples=512, lanczos_batch_size=500,
                       tol=1e-2, n_valid=2000, n_test=0, n_train_eval=0)
SMOKE = dataclasses.replace(SMOKE_SCALE, n_examples=256, epochs=2, n_filters=4, num_samples=64,
                            lanczos_batch_size=128, tol=1e-2, n_valid=128, n_test=0, n_train_eval=0)

#: Per-flag defaults: (full run, smoke run).
FLAG_DEFAULTS = {
    "seeds": ("0,1,2", "0"),
    "gd_lrs": ("0.03,0.06,0.12", "0.1"),
    "gd_examples": (2000, 128),
    "gd_steps": (300, 6),
    "gd_measure_every": (20, 3),
    "sgd_lr": (0.05, 0.05),
    "batch_sizes": ("32,128,512", "32"),
    "momentum": (0.9, 0.9),
    "momentum_lr": (0.005, 0.005),
    "momentum_batch_sizes": ("32,128,512", "32"),
    "adam_lr": (0.001, 0.001),
    "adam_batch_sizes": ("full,128", "full"),
    "adam_steps": (200, 6),
    "mid_samples": (2250, 64),
    "num_batches": (8, 2),
    "measure_every": (2, 1),
    # The stationarity campaign's flags (campaign.CAMPAIGN_DEFAULTS sets them with --campaign stationarity);
    # "" means "the single learning rate above", so that the default runs stay what they were.
    "sgd_lrs": ("", ""),
    "momentum_lrs": ("", ""),
    "adam_lrs": ("", ""),
    "adam_beta1s": ("0.9", "0.9"),
    "data_sizes": ("1000,3000,8000", "128,256"),
    "data_batch_size": (128, 32),
    "data_lrs": ("", ""),
    "minibatch_steps": (3000, 16),
    "measurements": (40, 4),
    "eoss_lrs": ("0.01,0.02,0.04", "0.01"),
    "eoss_steps": (20000, 16),
    "eoss_examples": (4096, 128),
    "eoss_batch_size": (16, 16),
    "eoss_hidden": (512, 16),
    "eoss_init_scale": (0.2, 0.2),
    "eoss_num_batches": (64, 4),
    "eoss_loss": ("squared", "squared"),
}

#: The campaign's run folders go here (runs/experiments/edge_of_stability_stationarity), apart from the study's.
CAMPAIGN_STUDY = "edge_of_stability_stationarity"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help=f"folder of the runs (default runs/experiments/{STUDY})")
    parser.add_argument("--parts", default=None, help=f"parts to run, of {','.join(PARTS)} (default all; with "
                        f"--campaign also sgd_data and eoss: {','.join(campaigns.CAMPAIGN_PARTS)})")
    parser.add_argument("--campaign", choices=["stationarity"], default=None,
                        help="the stationarity campaign: every part at three or more learning rates, run long "
                             "(see the docstring and experiments/edge_of_stability/campaign.py)")
    scale_arguments(parser, DEFAULT)
    help_text = {
        "seeds": "seeds of every setting", "gd_lrs": "learning rates of part 1 (full-batch GD)",
        "gd_examples": "training examples of the full-batch runs (parts 1 and 4)",
        "gd_steps": "steps of full-batch GD", "gd_measure_every": "steps between measurements (full batch)",
        "sgd_lr": "learning rate of part 2", "batch_sizes": "batch sizes of part 2 (SGD)",
        "momentum": "heavy-ball momentum beta of part 3", "momentum_lr": "learning rate of part 3",
        "momentum_batch_sizes": "batch sizes of part 3", "adam_lr": "learning rate of part 4 (Adam)",
        "adam_batch_sizes": "batch sizes of part 4 ('full' for full-batch Adam on --gd_examples examples)",
        "adam_steps": "steps of full-batch Adam", "mid_samples": "size of the larger sample (the paper's 2,250)",
        "num_batches": "random batches per batch-sharpness measurement",
        "measure_every": "epochs between measurements (mini-batch runs)",
        "sgd_lrs": "learning rates of part 2 (campaign; '' for --sgd_lr)",
        "momentum_lrs": "learning rates of part 3 (campaign; '' for --momentum_lr)",
        "adam_lrs": "learning rates of part 4 (campaign; '' for --adam_lr)",
        "adam_beta1s": "Adam's beta1 values (campaign)",
        "data_sizes": "training-set sizes of part sgd_data (campaign)",
        "data_batch_size": "batch size of part sgd_data (campaign)",
        "data_lrs": "learning rates of part sgd_data (campaign; '' for --sgd_lr)",
        "minibatch_steps": "steps of every campaign mini-batch run, whatever its batch size (campaign)",
        "measurements": "about how many measurements per campaign mini-batch run (campaign)",
        "eoss_lrs": "learning rates of part eoss (campaign)", "eoss_steps": "steps of part eoss (campaign)",
        "eoss_examples": "training examples of part eoss (campaign)",
        "eoss_batch_size": "batch size of part eoss (campaign)",
        "eoss_hidden": "units per hidden layer of part eoss's MLP (campaign)",
        "eoss_init_scale": "initial weight scale of part eoss's MLP, times Kaiming normal (campaign)",
        "eoss_num_batches": "random batches per batch-sharpness measurement in part eoss (campaign)",
        "eoss_loss": "loss of part eoss: 'squared' (the EoSS paper's) or 'cross_entropy' (study 5's, a control)",
    }
    for name, (full, smoke) in FLAG_DEFAULTS.items():
        kind = type(full) if not isinstance(full, str) else str
        campaign = campaigns.CAMPAIGN_DEFAULTS.get(name)
        also = f"; {campaign[0]} with --campaign stationarity" if campaign else ""
        parser.add_argument(f"--{name}", type=kind, default=None, help=f"{help_text[name]} (default {full}; "
                            f"{smoke} with --smoke{also})")
    args = parser.parse_args(argv)
    args.out = args.out or default_out(CAMPAIGN_STUDY if args.campaign else STUDY, args.smoke)
    defaults = dict(FLAG_DEFAULTS)
    if args.campaign:
        defaults.update(campaigns.CAMPAIGN_DEFAULTS)
    for name, (full, smoke) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    for name, single in (("sgd_lrs", "sgd_lr"), ("momentum_lrs", "momentum_lr"), ("adam_lrs", "adam_lr"),
                         ("data_lrs", "sgd_lr")):
        if not getattr(args, name).strip():
            setattr(args, name, str(getattr(args, single)))
    lists = {"seeds": nonnegative_int_list, "gd_lrs": number_list, "batch_sizes": positive_int_list,
             "momentum_batch_sizes": positive_int_list, "sgd_lrs": number_list, "momentum_lrs": number_list,
             "adam_lrs": number_list, "adam_beta1s": number_list, "data_sizes": positive_int_list,
             "data_lrs": number_list, "eoss_lrs": number_list}
    for name, parse in lists.items():
        try:
            setattr(args, name, parse(getattr(args, name)))
        except argparse.ArgumentTypeError as error:
            parser.error(f"--{name}: {error}")
    if any(lr <= 0 for name in ("gd_lrs", "sgd_lrs", "momentum_lrs", "adam_lrs", "data_lrs", "eoss_lrs")
           for lr in getattr(args, name)):
        parser.error("learning rates must be positive")
    if any(not 0 <= b < 1 for b in args.adam_beta1s):
        parser.error(f"--adam_beta1s: each beta1 must lie in [0, 1), got {args.adam_beta1s}")
    args.adam_batch_sizes = [s.strip() for s in args.adam_batch_sizes.split(",") if s.strip()]
    if any(s != "full" and not s.isdigit() for s in args.adam_batch_sizes):
        parser.error(f"--adam_batch_sizes: positive integers or 'full', got {args.adam_batch_sizes}")
    allowed = campaigns.CAMPAIGN_PARTS if args.campaign else PARTS
    args.parts = [p for p in (args.parts or ",".join(allowed)).split(",") if p]
    unknown = sorted(set(args.parts) - set(allowed))
    if unknown:
        extra = " (sgd_data and eoss need --campaign stationarity)" if set(unknown) <= {"sgd_data", "eoss"} else ""
        parser.error(f"unknown parts {unknown}; choose from {','.join(allowed)}{extra}")
    if args.eoss_loss not in ("squared", "cross_entropy"):
        parser.error(f"--eoss_loss: 'squared' or 'cross_entropy', got {args.eoss_loss!r}")
    if not args.campaign:
        several = [name for name in ("sgd_lrs", "momentum_lrs", "adam_lrs", "adam_beta1s")
                   if len(getattr(args, name)) > 1]
        if several:
            parser.error(f"several values of {', '.join('--' + n for n in several)} need --campaign stationarity "
                         "(the study's parts run one learning rate and one beta1)")
    for name in ("gd_examples", "gd_steps", "gd_measure_every", "adam_steps", "mid_samples", "num_batches",
                 "measure_every", "data_batch_size", "minibatch_steps", "measurements", "eoss_steps", "eoss_examples",
                 "eoss_batch_size", "eoss_hidden", "eoss_num_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be positive")
    return args


# -- one run -------------------------------------------------------------------------------------------------

def make_optimizer(name: str, lr: float, momentum: float = 0.0,
                   beta1: float = 0.9) -> keras.optimizers.Optimizer:  # noqa: F821
    import keras

    if name == "adam":
        return keras.optimizers.Adam(lr, beta_1=beta1)  # threshold (2 + 2 beta1) / ((1 - beta1) lr): 38 / lr at 0.9
    return keras.optimizers.SGD(lr, momentum=momentum)


def run_one(out_dir: str, scale: Scale, config: dict, *, force: bool, sample_sizes, num_batches: int,
            measure_every: int) -> dict:
    """Trains and measures one run described by ``config``; returns (and stores) its result.

    ``config``: part, optimizer (``sgd``/``adam``), lr, momentum, batch_size (``None``: full batch), seed,
    n_train, and for full-batch runs ``steps`` and ``measure_every_steps``; optionally (campaign runs) ``epochs``
    (instead of the scale's), ``beta1`` (Adam's), and ``model="mlp"`` with ``hidden`` and ``init_scale`` (the
    EoSS-like MLP, trained with the squared loss of :func:`campaign.squared_loss`).
    """
    import_tensorflow_quietly()  # first: TensorFlow without its CUDA/absl start-up lines on stderr
    import keras
    import numpy as np

    from experiments.edge_of_stability.measure import EdgeMeasurer, MeasureEveryEpochs, save_weights, train_full_batch
    from experiments.training import load_data
    from tf_sharpest import data as tfs_data
    from tf_sharpest import models
    from tf_sharpest.utils import atomic_path

    path = os.path.join(out_dir, "result.json")
    config = {**config, "scale": dataclasses.asdict(scale), "sample_sizes": list(sample_sizes),
              "num_batches": num_batches, "measure_every_epochs": measure_every}
    if os.path.exists(path) and not force:
        with open(path) as f:
            stored = json.load(f)
        if stored["config"] != config:
            raise SystemExit(f"{path} holds a run with another configuration ({stored['config']}); "
                             "pass --force to train it again, or another --out.")
        return stored
    os.makedirs(out_dir, exist_ok=True)
    (x, y), valid, _ = load_data(dataclasses.replace(scale, n_examples=config["n_train"]))
    keras.utils.set_random_seed(config["seed"])  # weights, batch order, samples
    if config.get("model", "simple_cnn") == "mlp":
        model = campaigns.eoss_mlp(x.shape[1:], config["hidden"], config["init_scale"])
        loss = campaigns.squared_loss if config["loss"] == "squared" else models.default_loss()
    else:
        model = models.simple_cnn("root", input_shape=x.shape[1:], n_filters=scale.n_filters)
        loss = models.default_loss()
    model.compile(optimizer=make_optimizer(config["optimizer"], config["lr"], config["momentum"],
                                           config.get("beta1", 0.9)),
                  loss=loss, metrics=["accuracy"])
    epochs = config.get("epochs", scale.epochs)
    # Batch sharpness against 2/eta is SGD's criterion; Adam's runs measure the preconditioned sharpness.
    sharpness_batch = config["batch_size"] if config["optimizer"] == "sgd" else None
    measurer = EdgeMeasurer(model, (x, y), valid, sample_sizes=sample_sizes, batch_size=sharpness_batch,
                            num_batches=num_batches, preconditioned=config["optimizer"] == "adam",
                            operator_batch_size=scale.lanczos_batch_size, tol=scale.tol, seed=config["seed"])
    start = time.perf_counter()
    logs: dict = {}
    if config["batch_size"] is None:
        outcome = train_full_batch(model, measurer, steps=config["steps"], measure_every=config["measure_every_steps"])
    else:
        history = model.fit(tfs_data.train_dataset(x, y, config["batch_size"], augment=False, seed=config["seed"]),
                            validation_data=tfs_data.eval_dataset(*valid), epochs=epochs, verbose=0,
                            # campaign runs (hundreds of short epochs) validate when they measure
                            validation_freq=measure_every if "epochs" in config else 1,
                            shuffle=False,
                            callbacks=[MeasureEveryEpochs(measurer, measure_every), keras.callbacks.TerminateOnNaN()])
        logs = {k: [float(v) for v in values] for k, values in history.history.items()}
        outcome = {"steps": int(model.optimizer.iterations.numpy()),
                   "diverged": bool(len(logs.get("loss", [])) < epochs
                                    or not np.isfinite(measurer.records[-1]["train_loss"]))}
    result = {"config": config, "records": measurer.records, "logs": logs, **outcome,
              "seconds": time.perf_counter() - start}
    save_weights(model, out_dir)
    write_records_csv(measurer.records, os.path.join(out_dir, "measurements.csv"))
    with atomic_path(path) as temporary, open(temporary, "w") as f:
        json.dump(result, f, indent=1, allow_nan=True)
    return result


def write_records_csv(records: list[dict], path: str) -> None:
    """Every measurement of a run, one row each (a column per quantity; blank where not measured)."""
    from tf_sharpest.utils import atomic_path

    keys = list(dict.fromkeys(k for record in records for k in record))
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(records)


# -- the parts -----------------------------------------------------------------------------------------------

def planned_runs(args, scale: Scale) -> list[tuple[str, dict]]:
    """``(folder, config)`` of every run of the chosen parts, in order."""
    seeds = args.seeds
    runs = []
    full_batch = {"batch_size": None, "n_train": args.gd_examples, "measure_every_steps": args.gd_measure_every}
    for part in args.parts:
        for seed in seeds:
            if part == "gd":
                for lr in args.gd_lrs:
                    runs.append((f"gd/lr{lr:g}_seed{seed}", {"part": "gd", "optimizer": "sgd", "lr": lr,
                                                              "momentum": 0.0, "seed": seed, "steps": args.gd_steps,
                                                              **full_batch}))
            elif part in ("sgd", "momentum"):
                lr = args.sgd_lrs[0] if part == "sgd" else args.momentum_lrs[0]
                momentum = 0.0 if part == "sgd" else args.momentum
                sizes = args.batch_sizes if part == "sgd" else args.momentum_batch_sizes
                for batch_size in sizes:
                    runs.append((f"{part}/bs{batch_size}_seed{seed}",
                                 {"part": part, "optimizer": "sgd", "lr": lr, "momentum": momentum, "seed": seed,
                                  "batch_size": batch_size, "n_train": scale.n_examples}))
            else:
                for size in args.adam_batch_sizes:
                    if size == "full":
                        config = {**full_batch, "steps": args.adam_steps}
                    else:
                        config = {"batch_size": int(size), "n_train": scale.n_examples}
                    runs.append((f"adam/bs{size}_seed{seed}", {"part": "adam", "optimizer": "adam",
                                                              "lr": args.adam_lrs[0], "momentum": 0.0, "seed": seed,
                                                              **config}))
    return sorted(runs, key=lambda run: (args.parts.index(run[1]["part"]), run[0]))


def planned(args, scale: Scale) -> list[tuple[str, dict, dict]]:
    """``(folder, config, measure)`` of every run: the study's (:func:`planned_runs`) or the campaign's
    (:func:`campaign.planned_runs`; its runs measure no sample lambda_1, which study 5 found within 1% to 6% of the
    full-data value). ``measure`` holds ``run_one``'s ``sample_sizes``, ``num_batches`` and ``measure_every``."""
    if args.campaign:
        return campaigns.planned_runs(args, scale)
    runs = []
    for folder, config in planned_runs(args, scale):
        sizes = [args.mid_samples, scale.num_samples] if config["batch_size"] is not None else []
        if config["part"] == "adam":
            sizes = []  # Adam's runs measure the plain and preconditioned lambda_1 of every example
        runs.append((folder, config, {"sample_sizes": sizes, "num_batches": args.num_batches,
                                      "measure_every": args.measure_every}))
    return runs


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    scale = scale_from(args, DEFAULT) if not args.smoke else dataclasses.replace(
        SMOKE, **{f.name: getattr(args, f.name) for f in dataclasses.fields(Scale)
                  if getattr(args, f.name) is not None})
    print(f"{STUDY}: parts {','.join(args.parts)}; {scale.describe()}; full-batch runs on {args.gd_examples:,} "
          f"examples", flush=True)
    results = []
    for folder, config, measure in planned(args, scale):
        print(f"{folder}:", flush=True)
        result = run_one(os.path.join(args.out, folder), scale, config, force=args.force, **measure)
        print(f"{folder}: {result['steps']} steps, {'diverged, ' if result['diverged'] else ''}"
              f"{result['seconds']:.0f} s", flush=True)
        results.append(result)
    return results


if __name__ == "__main__":
    main()
