"""Peak memory of a curvature product above the loaded model, against a gradient's, each in its own process.

For each network and computation a fresh Python process builds the model and
one batch of random inputs and labels, then records the baseline: the
resident memory (``VmRSS``) with the model loaded and nothing traced. It runs
the computation once (the first call traces: its peak is reported as "first
call"), resets the kernel's high-water mark (``/proc/self/clear_refs``), runs
it again and reports that call's peak (``VmHWM``) minus the baseline: the
memory a product costs a user who calls it repeatedly, as Lanczos does. With
a GPU, the device's peak (``tf.config.experimental.get_memory_info``, reset
the same way) minus its memory after the model was built is reported too.

The children run with ``MALLOC_MMAP_THRESHOLD_=131072``: glibc then maps every
large tensor separately and returns it on free, so resident memory follows the
tensors alive rather than what the allocator keeps cached from earlier calls.

Computations: ``gradient`` (of the batch's mean loss, ``EmpiricalLoss.gradient``),
``hvp`` (``HessianOperator.matvec``, forward-over-reverse), ``hvp_reverse`` (the
same product by double backprop, what the operator ran before), ``ggn``,
``empirical_fisher``, ``block5`` (``HessianOperator.matmat`` on 5 vectors) and
``hvp_micro64`` (``matvec`` with ``micro_batch_size=64``); on request the GGN
candidates of ``_ggn_variants.py``: ``ggn_forward_mode`` (``J v`` by a
``ForwardAccumulator`` inside the backward tape, what ``GGNOperator`` ran
before), ``ggn_two_pass`` (``J v`` in a tape-free forward-mode pass, then a
second recorded forward pass) and ``jvp_only`` (that forward-mode pass alone); and the Hessian block
candidates of ``_block_variants.py``: ``block5_in_flight10`` (10 columns in flight, as before issue 25; the
operator now runs one at a time), ``block5_columns`` (5 forward-over-reverse matvecs, sharing nothing), and
the GGN's block product ``ggn_block5`` (``GGNOperator.matmat``) beside ``ggn_block5_in_flight10``.
Each child also reports ``before_mb``: what the first call left resident.
Repeats are interleaved (every computation once per repeat, in turn); tables
give medians.

    python benchmarks/memory_cost.py --smoke                        # tiny, all computations, a minute
    python benchmarks/memory_cost.py --networks medium --repeats 3  # the issue's reference (batch 256)
    python benchmarks/memory_cost.py                                # root, medium and ResNet-32, 3 repeats
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from _common import machine, markdown_table, median, positive_int

COMPUTATIONS = ["gradient", "hvp", "hvp_reverse", "ggn", "empirical_fisher", "block5", "hvp_micro64"]
#: Candidate GGN products and diagnostics (benchmarks/_ggn_variants.py), measured on request (--computations).
CANDIDATES = ["ggn_forward_mode", "ggn_two_pass", "jvp_only", "ggn_value_seed", "block5_in_flight10", "block5_columns",
              "ggn_block5", "ggn_block5_in_flight10"]
NETWORKS = {"root": "SimpleCNN-root", "medium": "SimpleCNN-medium", "resnet32": "ResNet-32"}


def _status(field: str) -> float:
    """A ``/proc/self/status`` memory field in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current resident size (Linux >= 4.0)


def build(network: str, input_size: int):
    from tf_sharpest import models

    shape = (input_size, input_size, 3)
    if network == "resnet32":
        return models.resnet("cifar10_resnet32", input_shape=shape)
    return models.simple_cnn(network, input_shape=shape)


def computation(name: str, model, x, y, batch_size: int):
    """A zero-argument callable running ``name`` once and waiting for its result."""
    import numpy as np
    import tensorflow as tf
    from _block_variants import BlockGGNInFlight, BlockHessianInFlight, ColumnByColumnHessian
    from _double_backprop import ReverseOverReverseHessian
    from _ggn_variants import ForwardModeGGN, JVPOnly, TwoPassGGN, ValueSeedGGN

    from tf_sharpest import models
    from tf_sharpest.operators import EmpiricalFisherOperator, EmpiricalLoss, GGNOperator, HessianOperator

    loss = models.default_loss()
    data = (x, y)
    rng = np.random.default_rng(1)
    if name == "gradient":
        objective = EmpiricalLoss(model, data, loss=loss, batch_size=batch_size)
        return lambda: objective.gradient().numpy()
    kinds = {"hvp": HessianOperator, "hvp_reverse": ReverseOverReverseHessian, "ggn": GGNOperator,
             "empirical_fisher": EmpiricalFisherOperator, "block5": HessianOperator, "hvp_micro64": HessianOperator,
             "ggn_two_pass": TwoPassGGN, "ggn_forward_mode": ForwardModeGGN, "ggn_value_seed": ValueSeedGGN,
             "jvp_only": JVPOnly, "block5_in_flight10": BlockHessianInFlight,
             "block5_columns": ColumnByColumnHessian, "ggn_block5": GGNOperator,
             "ggn_block5_in_flight10": BlockGGNInFlight}
    options = {"micro_batch_size": 64} if name == "hvp_micro64" else {}
    operator = kinds[name](model, data, loss=loss, batch_size=batch_size, **options)
    if "block5" in name:
        block = tf.constant(rng.standard_normal((operator.dim, 5)).astype("float32"))
        return lambda: operator.matmat(block).numpy()
    vector = tf.constant(rng.standard_normal(operator.dim).astype("float32"))
    return lambda: operator.matvec(vector).numpy()


def child(args) -> None:
    """Measures one computation in this process and prints one JSON line."""
    import time

    import numpy as np
    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    model = build(args.network, args.input_size)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch_size,) + tuple(model.input_shape[1:])).astype("float32")
    y = rng.integers(0, 10, args.batch_size)
    baseline = _status("VmRSS")
    device_baseline = tf.config.experimental.get_memory_info("GPU:0")["current"] if gpu else 0
    run = computation(args.computation, model, x, y, args.batch_size)
    run()  # traces
    first = _status("VmHWM") - baseline
    before = _status("VmRSS") - baseline  # what the first call left resident (caches, kept buffers)
    _reset_peak()
    if gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    result = {"first_mb": first, "peak_mb": _status("VmHWM") - baseline, "seconds": seconds, "before_mb": before,
              "params": model.count_params(), "baseline_mb": baseline}
    if gpu:
        result["device_mb"] = (tf.config.experimental.get_memory_info("GPU:0")["peak"] - device_baseline) / 2**20
    print("RESULT " + json.dumps(result), flush=True)


def measure(network: str, name: str, batch_size: int, input_size: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, os.path.abspath(__file__), "--child", "--network", network, "--computation", name,
               "--batch_size", str(batch_size), "--input_size", str(input_size)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{network}/{name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--computations", nargs="+", default=COMPUTATIONS, choices=COMPUTATIONS + CANDIDATES)
    parser.add_argument("--batch_size", type=positive_int, default=256)
    parser.add_argument("--input_size", type=positive_int, default=32, help="inputs are input_size^2 x 3")
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--smoke", action="store_true", help="SimpleCNN-root, batch 16, 16x16 inputs, one repeat")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--network", help=argparse.SUPPRESS)
    parser.add_argument("--computation", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.smoke:
        args.networks, args.batch_size, args.input_size, args.repeats = ["root"], 16, 16, 1
    print(f"Machine: {machine()}")
    print(f"Batch {args.batch_size}, inputs {args.input_size}x{args.input_size}x3, medians of {args.repeats} "
          f"interleaved repeats, each computation in its own process.\n")
    for network in args.networks:
        runs = {name: [] for name in args.computations}
        for _ in range(args.repeats):
            for name in args.computations:
                runs[name].append(measure(network, name, args.batch_size, args.input_size))
                print(f"  {network}/{name}: {runs[name][-1]}", flush=True)
        peak = {name: median([r["peak_mb"] for r in values]) for name, values in runs.items()}
        gradient = peak.get("gradient")
        device = "device_mb" in runs[args.computations[0]][0]
        rows = []
        for name, values in runs.items():
            row = [name, f"{median([r['first_mb'] for r in values]):,.0f}", f"{peak[name]:,.0f}",
                   f"{peak[name] / gradient:.2f}" if gradient else "-",
                   f"{median([r['seconds'] for r in values]):.2f}"]
            if device:
                row.append(f"{median([r['device_mb'] for r in values]):,.0f}")
            rows.append(row)
        params = runs[args.computations[0]][0]["params"]
        print(f"\n{NETWORKS[network]} ({params:,} parameters), baseline (model loaded) "
              f"{median([r['baseline_mb'] for v in runs.values() for r in v]):,.0f} MB:\n")
        header = ["computation", "first call (traces), MB above model", "peak MB above model", "/ gradient",
                  "seconds"] + (["GPU peak MB"] if device else [])
        print(markdown_table(header, rows) + "\n", flush=True)


if __name__ == "__main__":
    main()
