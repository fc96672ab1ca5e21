"""Pictures of the sharpest directions: loss lines with the 2/eta parabola, loss surfaces, spectrograms.

matplotlib is an optional extra (``pip install tf_sharpest[plot]``): it is
imported only when a picture is drawn, so the package imports without it.
Every function draws on a bare ``matplotlib.figure.Figure`` (no pyplot: no
global figure state, no GUI backend, safe inside a training callback) unless
it is handed an ``Axes``, and returns the ``Figure``; :func:`figure_png`
turns one into PNG bytes (for files and TensorBoard's image tab).
"""

from __future__ import annotations

import glob
import io
import os
import re
from collections.abc import Mapping

import numpy as np

from tf_sharpest.linalg._density import SpectralDensity

# SpectrumCallback's density files: density_epoch0010.npz.
_DENSITY_FILE = re.compile(r"density_epoch(\d+)\.npz$")


def _new_axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("Plotting needs matplotlib: pip install tf_sharpest[plot] (or pip install matplotlib).") \
            from error
    figure = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def figure_png(figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def plot_loss_lines(lines: Mapping, *, eigenvalues=None, learning_rate: float | None = None, ax=None,
                    title: str | None = None):
    """The loss along one or more directions, with the quadratic models of their curvatures and of ``2/eta``.

    The paper's picture of why a step of ``2/lambda`` fails: along a
    direction of curvature ``lambda``, gradient descent with learning rate
    ``eta`` is stable only where ``lambda < 2/eta``. Each line is drawn with
    the parabola ``L(0) + lambda a^2 / 2`` of its eigenvalue (dotted, where
    given), and the parabola of curvature ``2/eta`` (dashed black, where
    ``learning_rate`` is given): a line steeper than the dashed parabola is a
    direction the step overshoots.

    Example:

    ```python
    pairs = tf_sharpest.hessian.top_eigenpairs(model, (x, y), k=2)
    steps = np.linspace(-0.5, 0.5, 41)
    lines = {f"e{i + 1}": loss_landscape(model, (x, y), pairs.eigenvectors[:, i], steps=steps) for i in range(2)}
    figure = plot_loss_lines(lines, eigenvalues=pairs.eigenvalues, learning_rate=0.01)
    figure.savefig("lines.png")
    ```

    Args:
      lines: label -> 1-D :class:`~tf_sharpest.analysis.Landscape` (directions of unit norm
        make the parabolas' curvature the eigenvalue).
      eigenvalues: one curvature per line, in order (None or NaN: no parabola).
      learning_rate: ``eta`` for the ``2/eta`` parabola (None: not drawn).
      ax: a matplotlib ``Axes`` to draw on; default a new figure.
      title: the plot's title.

    Returns:
      The matplotlib ``Figure``.
    """
    lines = dict(lines)
    if not lines:
        raise ValueError("lines is empty: pass {label: landscape} with at least one 1-D landscape.")
    if any(line.num_directions != 1 for line in lines.values()):
        raise ValueError("plot_loss_lines takes 1-D landscapes (one direction each); plot a 2-D one with "
                         "plot_loss_surface.")
    eigenvalues = [np.nan] * len(lines) if eigenvalues is None else list(np.asarray(eigenvalues, dtype=float))
    figure, ax = _new_axes(ax, (6.4, 4.4))
    colors = [f"C{i}" for i in range(len(lines))]
    low = min(float(np.min(line.steps)) for line in lines.values())
    high = max(float(np.max(line.steps)) for line in lines.values())
    grid = np.linspace(low, high, 200)
    origins = []
    for (label, line), color, eigenvalue in zip(lines.items(), colors, eigenvalues + [np.nan] * len(lines)):
        ax.plot(line.steps, line.losses, "o-", color=color, markersize=3, label=f"loss along {label}")
        origin = line.at_origin()
        if origin is not None:
            origins.append(origin)
        if origin is not None and np.isfinite(eigenvalue):
            ax.plot(grid, origin + 0.5 * eigenvalue * grid**2, ":", color=color,
                    label=f"quadratic model, $\\lambda$ = {eigenvalue:.4g}")
    if learning_rate is not None and origins:
        critical = 2.0 / float(learning_rate)
        ax.plot(grid, origins[0] + 0.5 * critical * grid**2, "--", color="black",
                label=f"curvature 2/$\\eta$ = {critical:.4g}")
    finite = np.concatenate([line.losses[np.isfinite(line.losses)] for line in lines.values()])
    if finite.size:  # the parabolas climb fast: keep the measured losses in view
        spread = float(np.max(finite) - np.min(finite)) or 1.0
        ax.set_ylim(float(np.min(finite)) - 0.05 * spread, float(np.max(finite)) + 0.15 * spread)
    ax.set_xlabel("step along the direction")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def plot_loss_surface(landscape, *, ax=None, levels: int = 30, log: bool = False, title: str | None = None,
                      labels: tuple = ("direction 1", "direction 2")):
    """A 2-D landscape as a filled contour map, with its contour lines and the point ``theta`` marked.

    Example:

    ```python
    plane = loss_landscape(model, (x, y), random_directions(model, 2), steps=np.linspace(-1, 1, 25))
    plot_loss_surface(plane, log=True).savefig("surface.png")
    ```

    Args:
      landscape: a 2-D :class:`~tf_sharpest.analysis.Landscape`.
      ax: a matplotlib ``Axes``; default a new figure.
      levels: number of contour levels.
      log: colour by ``log10(loss)`` (the loss spans decades far from ``theta``).
      title: the plot's title.
      labels: the axes' names (first and second direction).

    Returns:
      The matplotlib ``Figure``.
    """
    if landscape.num_directions != 2:
        raise ValueError("plot_loss_surface takes a 2-D landscape (two directions); plot 1-D ones with "
                         "plot_loss_lines.")
    values = np.array(landscape.losses, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        raise ValueError("The landscape has no finite loss to draw.")
    # Diverged points take the largest finite loss, so the map stays drawable and shows them as the highest.
    values = np.where(finite, values, np.max(values[finite]))
    if log:
        values = np.log10(np.maximum(values, np.min(values[values > 0]) if np.any(values > 0) else 1e-12))
    figure, ax = _new_axes(ax, (5.6, 4.6))
    first, second = np.meshgrid(landscape.coordinates[0], landscape.coordinates[1], indexing="ij")
    filled = ax.contourf(first, second, values, levels=int(levels), cmap="viridis")
    ax.contour(first, second, values, levels=int(levels), colors="white", linewidths=0.4, alpha=0.5)
    figure.colorbar(filled, ax=ax, label="log10 loss" if log else "loss")
    ax.plot([0.0], [0.0], marker="*", color="red", markersize=10, linestyle="none", label=r"$\theta$")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.legend(fontsize=8, loc="upper right")
    if title:
        ax.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def read_densities(folder: str | os.PathLike) -> dict:
    """The spectral densities a :class:`~tf_sharpest.callbacks.SpectrumCallback` saved in ``folder``, by epoch.

    Reads every ``density_epoch{E:04d}.npz``; an empty dict when there is none.
    """
    densities = {}
    for path in glob.glob(os.path.join(os.fspath(folder), "density_epoch*.npz")):
        match = _DENSITY_FILE.search(os.path.basename(path))
        if match is None:
            continue
        with np.load(path) as saved:
            densities[int(match.group(1))] = SpectralDensity(
                nodes=np.array(saved["nodes"]), weights=np.array(saved["weights"]), dim=int(saved["dim"]),
                num_matvecs=int(saved["num_matvecs"]))
    return dict(sorted(densities.items()))


def plot_spectrogram(densities, *, eigenvalues=None, learning_rate: float | None = None, top_k: int | None = None,
                     num_points: int = 400, sigma: float | None = None, ax=None, title: str | None = None):
    """The spectral density of every measurement along training as a heat map, with ``lambda_1..K`` and ``2/eta``.

    Each column is one measurement's SLQ density (log colour scale), placed at
    its epoch; the top eigenvalues measured by the Lanczos callback are drawn
    on top as lines, and ``2/eta`` as a dashed line: the paper's picture of
    ``lambda_1`` rising to the edge of stability while the bulk stays near 0.

    Example:

    ```python
    figure = plot_spectrogram("runs/sgd",                                # SpectrumCallback's save_dir
                              eigenvalues=MeasurementLog("runs/sgd", "lanczos"), learning_rate=0.01)
    figure.savefig("spectrogram.png")
    ```

    Args:
      densities: ``{epoch: SpectralDensity}`` (e.g. ``SpectrumCallback.densities``),
        a folder holding a SpectrumCallback's ``density_epoch*.npz`` files, or an
        object with a ``folder`` attribute (a ``MeasurementLog`` of that folder).
      eigenvalues: the top eigenvalues along training: a ``MeasurementLog`` (or
        anything with ``read()``) or a list of ``Measurement`` (``epoch``,
        ``eigenvalues``); None draws none.
      learning_rate: ``eta``, for the ``2/eta`` line (None: not drawn).
      top_k: draw only ``lambda_1..top_k``.
      num_points: eigenvalue grid of each column.
      sigma: kernel width of the densities; default 1% of the eigenvalue range shown.
      ax: a matplotlib ``Axes``; default a new figure.
      title: the plot's title.

    Returns:
      The matplotlib ``Figure``.

    Raises:
      ValueError: if there is no density to draw.
    """
    if isinstance(densities, (str, os.PathLike)):
        densities = read_densities(densities)
    elif hasattr(densities, "folder") and not isinstance(densities, Mapping):
        densities = read_densities(densities.folder)
    densities = dict(sorted(dict(densities).items()))
    if not densities:
        raise ValueError("No spectral density to draw: pass {epoch: SpectralDensity}, or the save_dir of a "
                         "SpectrumCallback that saved density_epoch*.npz files (density_every > 0).")
    measurements = []
    if eigenvalues is not None:
        measurements = list(eigenvalues.read() if hasattr(eigenvalues, "read") else eigenvalues)
    epochs = np.array(sorted(densities), dtype=np.float64)
    # The eigenvalue axis spans every density's nodes, the eigenvalues drawn and 2/eta.
    used = [d.nodes[d.weights > 0] for d in densities.values()]
    low, high = min(float(np.min(u)) for u in used), max(float(np.max(u)) for u in used)
    tops = [np.asarray(m.eigenvalues, dtype=float)[:top_k] for m in measurements]
    finite_tops = np.concatenate([t[np.isfinite(t)] for t in tops]) if tops else np.zeros(0)
    if finite_tops.size:
        low, high = min(low, float(np.min(finite_tops))), max(high, float(np.max(finite_tops)))
    if learning_rate is not None:
        high = max(high, 2.0 / float(learning_rate))
    margin = 0.05 * (high - low if high > low else max(abs(high), 1.0))
    rows = np.linspace(low - margin, high + margin, int(num_points) + 1)  # the cells' edges
    grid = 0.5 * (rows[1:] + rows[:-1])  # the densities are evaluated at the cells' centres
    sigma = 0.01 * (rows[-1] - rows[0]) if sigma is None else float(sigma)
    heat = np.stack([d.density(grid, sigma) for d in densities.values()], axis=1)  # [points, measurements]
    peak = float(np.max(heat)) if np.max(heat) > 0 else 1.0
    heat = np.log10(np.maximum(heat, 1e-8 * peak))

    figure, ax = _new_axes(ax, (7.2, 4.6))
    # Column edges half way between measured epochs, so uneven schedules keep their spacing.
    if epochs.size > 1:
        middles = 0.5 * (epochs[1:] + epochs[:-1])
        edges = np.concatenate([[epochs[0] - (middles[0] - epochs[0])], middles,
                                [epochs[-1] + (epochs[-1] - middles[-1])]])
    else:
        edges = np.array([epochs[0] - 0.5, epochs[0] + 0.5])
    mesh = ax.pcolormesh(edges, rows, heat, cmap="magma", shading="flat")
    figure.colorbar(mesh, ax=ax, label="log10 density")
    if measurements:
        at = np.array([m.epoch for m in measurements], dtype=np.float64)
        width = max(len(t) for t in tops)
        table = np.full((len(tops), width), np.nan)
        for row, top in enumerate(tops):
            table[row, :len(top)] = top
        for k in range(width):
            ax.plot(at, table[:, k], "-", color=f"C{k % 10}", linewidth=1.2, marker=".", markersize=4,
                    label=f"$\\lambda_{{{k + 1}}}$")
    if learning_rate is not None:
        ax.axhline(2.0 / float(learning_rate), color="white", linestyle="--", linewidth=1.2,
                   label=f"2/$\\eta$ = {2.0 / float(learning_rate):.4g}")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(rows[0], rows[-1])
    ax.set_xlabel("epoch")
    ax.set_ylabel("eigenvalue")
    if measurements or learning_rate is not None:
        ax.legend(fontsize=7, loc="upper left", ncol=2, framealpha=0.6)
    if title:
        ax.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure
