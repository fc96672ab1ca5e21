"""Summaries of a measured curve that no single spike decides, and their spread over seeds.

An eigenvalue measured once per epoch can swing threefold from one epoch to
the next, so a study's verdict rests on the mean over the later half of a run
or on the peak of a running mean, reported over several seeds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def peak(values: Sequence[float]) -> tuple[int, float]:
    """Index and value of the largest finite entry (``(-1, nan)`` if none is finite)."""
    values = np.asarray(values, dtype=float)
    if not np.any(np.isfinite(values)):
        return -1, float("nan")
    i = int(np.nanargmax(values))
    return i, float(values[i])


def later_half_mean(steps, values) -> float:
    """Mean of the finite values measured at or after half of the last step."""
    steps, values = np.asarray(steps, float), np.asarray(values, float)
    keep = (steps >= steps.max() / 2) & np.isfinite(values)
    return float(np.mean(values[keep])) if keep.any() else float("nan")


def smoothed(values, window: int = 3) -> np.ndarray:
    """Running mean over ``window`` consecutive finite values (all of them averaged if fewer)."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if values.size < window:
        return np.array([np.mean(values)]) if values.size else np.array([])
    return np.convolve(values, np.ones(window) / window, mode="valid")


def smoothed_peak(values, window: int = 3) -> float:
    """Peak of the running mean over ``window`` consecutive measurements (a lone spike is divided by ``window``)."""
    curve = smoothed(values, window)
    return float(np.max(curve)) if curve.size else float("nan")


def smoothed_peak_index(values, window: int = 3) -> int:
    """Position, among the finite values, of the centre of the highest running-mean window (-1 if none)."""
    curve = smoothed(values, window)
    if not curve.size:
        return -1
    centre = window // 2 if np.isfinite(values).sum() >= window else 0  # fewer values: one mean of them all
    return int(np.argmax(curve)) + centre


def peak_in_last_window(values, window: int = 3) -> bool:
    """Whether the highest running-mean window is the last one: the curve was still rising (or flat) when the run
    ended, so its "smoothed peak" is where the run stopped, not a peak."""
    curve = smoothed(values, window)
    return bool(curve.size) and int(np.argmax(curve)) == curve.size - 1


def spread(values, fmt: str = ".1f") -> str:
    """``mean ± std`` over seeds (sample std; the value alone for one seed; ``n/a`` for none)."""
    values = np.asarray([v for v in values if np.isfinite(v)], float)
    if values.size == 0:
        return "n/a"
    if values.size == 1:
        return format(values[0], fmt)
    return f"{format(values.mean(), fmt)} ± {format(values.std(ddof=1), fmt)}"


def mean_and_runs(values, fmt: str) -> str:
    """The mean, then each run's value in brackets: ``0.76 (0.77 / 0.74 / 0.76)``."""
    values = [float(v) for v in values]
    text = format(np.mean(values), fmt)
    return text if len(values) == 1 else f"{text} ({' / '.join(format(v, fmt) for v in values)})"


def seed_mean(curves) -> tuple[np.ndarray, np.ndarray]:
    """``(x, arithmetic mean over seeds)`` of ``[(x, y), ...]`` curves, cut to the shortest one.

    The figures draw this line, so it is the same statistic as the tables' means (not a geometric mean).
    """
    curves = [(np.asarray(x, float), np.asarray(y, float)) for x, y in curves]
    n = min(len(y) for _, y in curves)
    return curves[0][0][:n], np.mean([y[:n] for _, y in curves], axis=0)


def paired_difference(first, second, confidence: float = 0.95) -> dict:
    """Mean of the per-seed differences ``first - second`` with a t-based confidence interval over seeds.

    ``first[i]`` and ``second[i]`` must come from the same seed. Returns ``n``, ``mean``, ``sd`` (sample standard
    deviation of the differences), ``t`` (mean / standard error), ``low`` and ``high`` (the interval; NaN with
    fewer than two seeds).
    """
    from scipy import stats

    first, second = np.asarray(first, float), np.asarray(second, float)
    if first.shape != second.shape:
        raise ValueError(f"paired values need one value per seed on both sides, got {first.size} and {second.size}")
    d = first - second
    d = d[np.isfinite(d)]
    n = d.size
    mean = float(np.mean(d)) if n else float("nan")
    if n < 2:
        return {"n": n, "mean": mean, "sd": float("nan"), "t": float("nan"), "low": float("nan"),
                "high": float("nan")}
    sd = float(np.std(d, ddof=1))
    stderr = sd / np.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * stderr
    if stderr > 0:
        t = mean / stderr
    else:  # every seed gave the same difference
        t = float(np.copysign(np.inf, mean)) if mean else float("nan")
    return {"n": n, "mean": mean, "sd": sd, "t": float(t), "low": float(mean - half), "high": float(mean + half)}


def paired_cell(first, second, fmt: str = "+.3f", scale: float = 1.0) -> str:
    """``+0.015 [-0.055, +0.085], t = 0.91`` : a paired difference (times ``scale``) with its 95% t-interval."""
    d = paired_difference(np.asarray(first, float) * scale, np.asarray(second, float) * scale)
    if d["n"] < 2:
        return "n/a" if d["n"] == 0 else format(d["mean"], fmt) + " (one seed)"
    return f"{format(d['mean'], fmt)} [{format(d['low'], fmt)}, {format(d['high'], fmt)}], t = {d['t']:.2f}"
