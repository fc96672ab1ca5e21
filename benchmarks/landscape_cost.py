"""What one point of a loss landscape costs, against ``model.evaluate`` on the same data.

``tf_sharpest.analysis.loss_landscape`` evaluates the loss (and the compiled
metrics) at every point of a 1-D or 2-D grid statelessly, looping over the
grid inside one traced per-batch graph. One point is one forward pass over
the sample, as ``model.evaluate`` does once; this measures the landscape's
seconds per grid point divided by the seconds of one ``model.evaluate`` on
the same examples and batch size, side by side (medians over interleaved
repeats, after an untimed warm-up of each that traces its graphs), for a line
and for a plane. A ratio near 1 means the landscape adds nothing to a plain
evaluation per point; below 1, it saves the per-call overhead of ``evaluate``.

SimpleCNN (``--preset``) on Fashion-MNIST's shape (28x28x1), random inputs and
labels (the cost does not depend on their values).

    python benchmarks/landscape_cost.py --smoke          # seconds: tiny sizes, checks the script runs
    nice python benchmarks/landscape_cost.py             # SimpleCNN root, 1024 examples, 21 points / 7x7 grid
    nice python benchmarks/landscape_cost.py --examples 2048 --line_points 41 --plane_points 11 --repeats 5
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np

from tf_sharpest import models
from tf_sharpest.analysis import LandscapeEvaluator, random_directions

from _common import interleaved_medians, machine, markdown_table, positive_int


def build(preset: str, examples: int, seed: int = 0):
    keras.utils.set_random_seed(seed)
    model = models.simple_cnn(preset, input_shape=(28, 28, 1))
    model.compile(loss=models.default_loss(), metrics=["accuracy"])
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((examples, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, examples)
    return model, x, y


def measure(preset: str, examples: int, batch_size: int, line_points: int, plane_points: int, repeats: int) -> dict:
    model, x, y = build(preset, examples)
    start = time.perf_counter()
    evaluator = LandscapeEvaluator(model, (x, y), batch_size=batch_size)
    directions = random_directions(model, 2)
    line_steps = np.linspace(-1.0, 1.0, line_points)
    plane_steps = np.linspace(-1.0, 1.0, plane_points)
    calls = {
        "evaluate": lambda: model.evaluate(x, y, batch_size=batch_size, verbose=0),
        "line": lambda: evaluator.landscape(directions[0], line_steps).losses,
        "plane": lambda: evaluator.landscape(directions, plane_steps).losses,
    }
    seconds = interleaved_medians(calls, repeats)
    # The landscape's centre is model.evaluate's loss: the two measure the same thing.
    centre = evaluator.landscape(directions[0], [0.0]).losses[0]
    keras_loss = model.evaluate(x, y, batch_size=batch_size, verbose=0)[0]
    return {
        "preset": preset, "params": model.count_params(), "examples": examples, "batch_size": batch_size,
        "evaluate_s": seconds["evaluate"],
        "line_points": line_points, "line_s": seconds["line"],
        "line_ratio": seconds["line"] / line_points / seconds["evaluate"],
        "plane_points": plane_points**2, "plane_s": seconds["plane"],
        "plane_ratio": seconds["plane"] / plane_points**2 / seconds["evaluate"],
        "traces": evaluator.num_traces, "centre_gap": abs(centre - keras_loss),
        "total_s": time.perf_counter() - start,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="root")
    parser.add_argument("--examples", type=positive_int, default=1024)
    parser.add_argument("--batch_size", type=positive_int, default=256)
    parser.add_argument("--line_points", type=positive_int, default=21)
    parser.add_argument("--plane_points", type=positive_int, default=7, help="points per axis of the plane")
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script runs (seconds)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.examples, args.batch_size, args.line_points, args.plane_points, args.repeats = 64, 32, 3, 2, 1
    row = measure(args.preset, args.examples, args.batch_size, args.line_points, args.plane_points, args.repeats)
    print(machine())
    print(f"SimpleCNN {row['preset']} ({row['params']:,} parameters) on 28x28x1, {row['examples']} examples in "
          f"batches of {row['batch_size']}; medians of {args.repeats} interleaved repeats; per-batch graph traced "
          f"{row['traces']} time(s) for every grid; |landscape centre - evaluate loss| = {row['centre_gap']:.1e}")
    print(markdown_table(
        ["call", "points", "seconds (median)", "seconds per point", "per point / model.evaluate"],
        [["model.evaluate", 1, f"{row['evaluate_s']:.3f}", f"{row['evaluate_s']:.3f}", "1.00"],
         ["line", row["line_points"], f"{row['line_s']:.3f}", f"{row['line_s'] / row['line_points']:.3f}",
          f"{row['line_ratio']:.2f}"],
         ["plane", row["plane_points"], f"{row['plane_s']:.3f}", f"{row['plane_s'] / row['plane_points']:.3f}",
          f"{row['plane_ratio']:.2f}"]]))
    print(f"total {row['total_s']:.1f}s")
    return row


if __name__ == "__main__":
    main()
