"""Batch sharpness at the final weights of every mini-batch SGD run, on more batches and in both readings.

During training the study averages ``g_B^T H_B g_B / ||g_B||^2`` over a few
random batches per point. This re-measures it at each run's saved final
weights over ``--num_batches`` random batches (default 32), and reports both
the mean of the per-batch ratios (``batch_sharpness``, the issue's
definition) and the ratio of the means ``sum g^T H g / sum ||g||^2``
(``ratio_of_means``), so a verdict does not hang on which reading of
"expected directional curvature" is meant. Writes ``final_check.json`` next
to each run's ``result.json``; ``plot`` tabulates it.

    python -m experiments.edge_of_stability.final_check [--out RUNS] [--num_batches 32]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

from experiments.edge_of_stability.run import STUDY
from experiments.scale import Scale, default_out


def check_run(folder: str, num_batches: int) -> dict | None:
    """Measures one finished SGD run at its final weights; ``None`` for runs it does not apply to."""
    from experiments.training import load_data  # first: it imports TensorFlow quietly
    from tf_sharpest import models
    from tf_sharpest.analysis import batch_sharpness
    from tf_sharpest.utils import atomic_path

    with open(os.path.join(folder, "result.json")) as f:
        result = json.load(f)
    config = result["config"]
    weights = os.path.join(folder, "final.weights.h5")
    if config["optimizer"] != "sgd" or config["batch_size"] is None or not os.path.exists(weights):
        return None
    scale = Scale(**config["scale"])
    (x, y), _, _ = load_data(dataclasses.replace(scale, n_examples=config["n_train"]))
    model = models.simple_cnn("root", input_shape=x.shape[1:], n_filters=scale.n_filters)
    model.load_weights(weights)
    measured = batch_sharpness(model, (x, y), batch_size=config["batch_size"], num_batches=num_batches,
                               seed=config["seed"], loss=models.default_loss())
    check = {"num_batches": measured.num_batches, "batch_size": measured.batch_size,
             "batch_sharpness": measured.value, "batch_sharpness_stderr": measured.stderr,
             "ratio_of_means": measured.ratio_of_means, "lambda_full": result["records"][-1]["lambda_full"],
             "two_over_eta": 2 / config["lr"]}
    with atomic_path(os.path.join(folder, "final_check.json")) as temporary, open(temporary, "w") as f:
        json.dump(check, f, indent=1)
    return check


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=default_out(STUDY), help="folder of the runs")
    parser.add_argument("--num_batches", type=int, default=32, help="random batches per run")
    args = parser.parse_args(argv)
    if args.num_batches < 2:
        parser.error("--num_batches must be at least 2 (for a standard error)")
    checks = []
    for here, _, files in sorted(os.walk(args.out)):
        if "result.json" in files:
            check = check_run(here, args.num_batches)
            if check is not None:
                print(f"{os.path.relpath(here, args.out)}: batch sharpness {check['batch_sharpness']:.2f} "
                      f"± {check['batch_sharpness_stderr']:.2f}, ratio of means {check['ratio_of_means']:.2f}, "
                      f"final lambda_1 {check['lambda_full']:.2f}, 2/eta {check['two_over_eta']:g}", flush=True)
                checks.append(check)
    return checks


if __name__ == "__main__":
    main()
