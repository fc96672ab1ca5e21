"""Curvature products on one replica against two, bytes all-reduced, and a scaling model for clusters.

Part 1 (measured): one Hessian-vector product of SimpleCNN-root over a
sample, on one device and under ``MirroredStrategy`` over two logical CPU
devices of this machine (medians over interleaved repeats, one run). Both
replicas share this machine's two cores, so two replicas cannot be twice as
fast here: the figure shows the overhead of sharding and the all-reduce, not
a speed-up. On two GPUs each replica has its own device.

Part 2 (computed): bytes moved by the one all-reduce per product, and a
worked scaling model for 8 GPUs and 8 hosts x 8 GPUs (see the printed
assumptions).

    python benchmarks/distributed_cost.py
    python benchmarks/distributed_cost.py --n_examples 256 --repeats 3     # quicker
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_parser() -> argparse.ArgumentParser:
    """The flags, built before TensorFlow is imported so that --help and usage errors answer at once."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_examples", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--gpu_examples_per_second", type=float, default=20000.0,
                        help="assumed HVP throughput of one GPU (examples/s) for the scaling model")
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # --help and usage errors answer here, before TensorFlow is imported


from _common import machine, markdown_table, median, timed  # noqa: E402  (first: it imports TensorFlow quietly)

# isort: split
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical devices must be configured before TensorFlow's runtime starts: the first GPU split in
# two where there is one (benchmarks/gpu_check.sh), else the CPU.
_gpus = tf.config.list_physical_devices("GPU")
DEVICE_TYPE = "GPU" if _gpus else "CPU"
if _gpus:
    tf.config.set_logical_device_configuration(_gpus[0], [tf.config.LogicalDeviceConfiguration(memory_limit=16384)] * 2)
else:
    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                               [tf.config.LogicalDeviceConfiguration()] * 2)

# Interconnects of the scaling model: effective all-reduce bandwidth per replica, bytes/s.
LINKS = {"NVLink (8 GPUs, one host)": 100e9, "100 Gb/s Ethernet (between hosts)": 10e9,
         "200 Gb/s InfiniBand (between hosts)": 22e9}


def ring_allreduce_bytes(dim: int, replicas: int, bytes_per_value: int = 4) -> float:
    """Bytes each replica sends (and receives) in a ring all-reduce of ``dim`` values."""
    return 2.0 * (replicas - 1) / replicas * bytes_per_value * dim


def measure(n_examples: int, batch_size: int, repeats: int, seed: int = 0):
    import keras

    from tf_sharpest import models
    from tf_sharpest.operators import HessianOperator

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_examples, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, n_examples)
    keras.utils.set_random_seed(seed)
    single = models.simple_cnn("root", input_shape=(28, 28, 1))
    single.compile(loss=models.default_loss())
    strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices(DEVICE_TYPE)][:2])
    with strategy.scope():
        mirrored = models.simple_cnn("root", input_shape=(28, 28, 1))
        mirrored.compile(loss=models.default_loss())
    mirrored.set_weights(single.get_weights())
    one = HessianOperator(single, (x, y), batch_size=batch_size)
    two = HessianOperator(mirrored, (x, y), batch_size=batch_size)
    v = tf.constant(rng.standard_normal(one.dim).astype("float32"))
    reference, shared = one.matvec(v).numpy(), two.matvec(v).numpy()  # also traces both
    agreement = float(np.linalg.norm(shared - reference) / np.linalg.norm(reference))
    times = {"one replica": [], "two replicas": []}
    for _ in range(repeats):
        times["one replica"].append(timed(one.matvec, v))
        times["two replicas"].append(timed(two.matvec, v))
    return one.dim, {k: median(t) for k, t in times.items()}, agreement, two.replica_plan.examples_per_replica


def parameter_counts():
    from tf_sharpest import models

    return {"SimpleCNN-medium": models.simple_cnn("medium", input_shape=(32, 32, 3)).count_params(),
            "ResNet-32": models.resnet("cifar10_resnet32").count_params()}


def main():
    parser = build_parser()
    args = parser.parse_args()
    for name in ("n_examples", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be positive")
    print(f"Machine: {machine()}\n")

    dim, t, agreement, plan = measure(args.n_examples, args.batch_size, args.repeats)
    print(f"Two logical {DEVICE_TYPE} devices. SimpleCNN-root, {dim:,} parameters, HVP over {args.n_examples} "
          f"random 28x28 examples in batches of "
          f"{args.batch_size}; two replicas take {plan} examples; relative difference of the products "
          f"{agreement:.1e}.\n")
    print(markdown_table(["replicas", "HVP ms (median)", "time / one replica", "bytes all-reduced per product"], [
        [1, f"{t['one replica'] * 1e3:.0f}", "1.00", 0],
        [2, f"{t['two replicas'] * 1e3:.0f}", f"{t['two replicas'] / t['one replica']:.2f}",
         f"{ring_allreduce_bytes(dim, 2):,.0f}"]]))

    print(f"\nScaling model: a product over N = 2,250 examples (the paper's sample) takes N / R / throughput of "
          f"compute per replica (throughput {args.gpu_examples_per_second:,.0f} examples/s per GPU, an "
          "assumption) plus one ring all-reduce of 2 (R - 1) / R x 4 x dim bytes at the link's bandwidth.\n")
    rows = []
    for network, params in parameter_counts().items():
        for replicas, link in ((8, "NVLink (8 GPUs, one host)"), (64, "100 Gb/s Ethernet (between hosts)"),
                               (64, "200 Gb/s InfiniBand (between hosts)")):
            compute = 2250 / replicas / args.gpu_examples_per_second
            communicate = ring_allreduce_bytes(params, replicas) / LINKS[link]
            # Communication reaches 10% of compute when examples per replica fall below this.
            threshold = 10 * communicate * args.gpu_examples_per_second
            rows.append([network, f"{params:,}", replicas, link, f"{ring_allreduce_bytes(params, replicas) / 1e6:.1f}",
                         f"{compute * 1e3:.2f}", f"{communicate * 1e3:.2f}",
                         f"{communicate / (compute + communicate):.0%}", f"{threshold:,.0f}"])
    print(markdown_table(["network", "parameters", "replicas", "link", "MB per all-reduce", "compute ms",
                          "all-reduce ms", "share of a product", "examples/replica where comm = 10%"], rows))


if __name__ == "__main__":
    main()
