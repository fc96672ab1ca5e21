"""What the example programs share: argparse value types, markdown tables and a quiet TensorFlow import.

The examples are self-contained: this file sits beside them, and the
experiments and benchmarks have their own copy of what they use
(``experiments/_cli.py``; ``tests/test_programs.py`` keeps the two alike).

A bad size or rate is a usage error before anything loads: only the standard
library is imported here, so that ``--help`` and usage errors come back at
once, without the seconds TensorFlow takes to import.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile
from collections.abc import Sequence


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the docstring's layout and adds each option's default to its help."""


def positive_int(text: str) -> int:
    """An integer > 0 (sizes, counts, epochs)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def finite_float(text: str) -> float:
    """A finite number (not nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def number_list(text: str, kind: type = float) -> list:
    """Comma-separated numbers, at least one: finite for ``float``, positive for ``int``.

    An argparse ``type`` (``type=number_list``, or ``type=lambda t: number_list(t, int)``); a bad list
    is a usage error naming what was expected.
    """
    kind_name = "positive integers" if kind is int else "finite numbers"
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {kind_name}, got {text!r}") from None
    if not values or any(v < 1 if kind is int else not math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated {kind_name}, got {text!r}")
    return values


def positive_int_list(text: str) -> list[int]:
    """Comma-separated positive integers (sizes, counts), at least one."""
    return number_list(text, int)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub-flavoured markdown table: one header row, then one row per entry of ``rows``."""
    lines = ["| " + " | ".join(str(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


#: What TensorFlow's C++ start-up writes to stderr whatever ``TF_CPP_MIN_LOG_LEVEL`` says (it logs before absl's
#: logging is initialised): CUDA probed on a machine without a GPU, CPU instruction notes, oneDNN notes, the
#: registration of CUDA libraries. Nothing else on stderr is dropped.
TENSORFLOW_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} [\d:.]+ +\d+ (cudart_stub|cuda_platform|cuda_executor|cuda_diagnostics|cuda_dnn|cuda_fft|cuda_blas"
    r"|cpu_feature_guard|cpu_utils|port|gpu_device|dso_loader)\.cc:\d+\] .*"
    r"|To enable the following instructions: .* in other operations, rebuild TensorFlow .*"
    r"|.*oneDNN custom operations are on.*|.*Unable to register cu(DNN|FFT|BLAS) factory.*")


def import_tensorflow_quietly():
    """Imports TensorFlow (and probes its devices) with its start-up noise filtered out of stderr; returns it.

    ``TF_CPP_MIN_LOG_LEVEL=2`` hides TensorFlow's info and warning logs, but the
    CUDA probe and its neighbours write to file descriptor 2 before logging is
    set up, so the environment cannot silence them. Here descriptor 2 goes to a
    temporary file while TensorFlow is imported and lists its devices (where
    CUDA is initialised); afterwards the lines that are not start-up noise
    (``TENSORFLOW_NOISE``) are written to stderr, so a real error still shows.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not TENSORFLOW_NOISE.fullmatch(line.rstrip("\n"))))
            sys.stderr.flush()
    return tf
