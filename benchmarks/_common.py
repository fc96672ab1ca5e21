"""Helpers shared by the benchmark scripts: timing, machine description, tables."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time

# The programs' own module (tables, number-list flags, the quiet TensorFlow import): experiments/_cli.py, standard
# library only. The benchmarks run as scripts, so the repository root goes on the path for it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments._cli import import_tensorflow_quietly, markdown_table, number_list, positive_int  # noqa: E402, F401

tf = import_tensorflow_quietly()  # without CUDA's and absl's start-up lines on stderr


def timed(fn, *args):
    """Seconds one call of ``fn(*args)`` takes, including waiting for its result."""
    start = time.perf_counter()
    result = fn(*args)
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, result)
    return time.perf_counter() - start


def median(values):
    return statistics.median(values)


def interleaved_medians(calls: dict, repeats: int) -> dict:
    """Median seconds of each call in ``calls``, after one warm-up call each (tracing), timed in turn per repeat.

    Interleaving the calls lets a drift in the machine's load hit all of them alike, so their ratios hold.
    """
    for call in calls.values():
        timed(call)
    times = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            times[key].append(timed(call))
    return {key: median(values) for key, values in times.items()}


def machine() -> str:
    devices = [d.device_type for d in tf.config.list_physical_devices()]
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
            f"TensorFlow {tf.__version__}, devices {sorted(set(devices))}")
