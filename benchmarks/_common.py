"""Helpers shared by the benchmark scripts: timing, machine description, tables."""

from __future__ import annotations

import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402


def timed(fn, *args):
    """Seconds one call of ``fn(*args)`` takes, including waiting for its result."""
    start = time.perf_counter()
    result = fn(*args)
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, result)
    return time.perf_counter() - start


def median(values):
    return statistics.median(values)


def machine() -> str:
    devices = [d.device_type for d in tf.config.list_physical_devices()]
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
            f"TensorFlow {tf.__version__}, devices {sorted(set(devices))}")


def markdown_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
