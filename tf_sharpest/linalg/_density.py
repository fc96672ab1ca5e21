"""Spectral density of a symmetric operator by stochastic Lanczos quadrature (SLQ).

The spectral density of ``A`` puts mass ``1/dim`` on each eigenvalue. For a
random unit probe ``v``, ``v^T f(A) v = sum_i (v . u_i)^2 f(lambda_i)``
averages ``f`` over that density (exactly so in expectation, as
``E[(v . u_i)^2] = 1/dim``), and ``m`` Lanczos steps from ``v`` turn it into an
``m``-point Gauss quadrature: nodes are the Ritz values, weights the squared
first components of the tridiagonal matrix's eigenvectors (Golub and Meurant
2010; for Hessians Ghorbani, Krishnan, Xiao 2019 and Papyan 2020). Averaged
over probes, the nodes and weights are a discrete approximation of the
density that resolves the bulk and the outliers alike.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tf_sharpest.linalg._probes import as_symmetric_operator, check_symmetric, rademacher
from tf_sharpest.linalg._tridiagonal import tridiagonalize
from tf_sharpest.utils._checks import integer

# Most points of a default plotting grid (each one is a float64 and a row of the kernel sum).
MAX_PLOT_POINTS = 10**6


@dataclasses.dataclass(frozen=True)
class MomentEstimate:
    """An estimate and its standard error (None from a single probe)."""

    value: float
    stderr: float | None


@dataclasses.dataclass
class SpectralDensity:
    """Gauss quadrature nodes and weights from stochastic Lanczos quadrature, one row per probe.

    Attributes:
      nodes: ``[num_probes, min(num_steps, dim)]`` float64 Ritz values, ascending in each row.
      weights: ``[num_probes, min(num_steps, dim)]`` float64, each row sums to 1. A run
        that exhausted its Krylov space early is padded with weight 0 (and the
        row's largest node), so padding changes no sum.
      dim: the operator's dimension (``tr(A^p) = dim * moment(p)``).
      num_matvecs: operator products spent.
    """

    nodes: np.ndarray
    weights: np.ndarray
    dim: int
    num_matvecs: int

    @property
    def num_probes(self) -> int:
        return self.nodes.shape[0]

    def density(self, grid, sigma: float) -> np.ndarray:
        """The density smoothed by a Gaussian of width ``sigma``, evaluated at ``grid``.

        Each node becomes a normal density of standard deviation ``sigma``
        carrying its weight, averaged over probes, so the result integrates to 1
        over the real line.

        Example:

        ```python
        grid = np.linspace(-1, 50, 2000)
        plt.semilogy(grid, result.density(grid, sigma=0.1))
        ```

        Args:
          grid: points (any shape, non-empty, finite) at which to evaluate.
          sigma: kernel width, ``> 0``, in eigenvalue units.

        Returns:
          float64 array of ``grid``'s shape.
        """
        grid = np.asarray(grid, dtype=np.float64)
        if grid.size == 0 or not np.all(np.isfinite(grid)):
            raise ValueError("grid must be a non-empty array of finite points, e.g. np.linspace(low, high, 1000).")
        if not (np.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a positive width in eigenvalue units, got {sigma!r}.")
        nodes, weights = self.nodes.ravel(), self.weights.ravel() / self.num_probes
        flat = grid.ravel()
        values = np.zeros(flat.shape)
        # A few thousand grid points at a time keep the [points, nodes] kernel matrix small.
        for start in range(0, flat.size, 4096):
            offsets = (flat[start: start + 4096, None] - nodes[None, :]) / sigma
            values[start: start + 4096] = np.exp(-0.5 * offsets ** 2) @ weights
        return (values / (sigma * np.sqrt(2.0 * np.pi))).reshape(grid.shape)

    def moment(self, p: int, *, normalized: bool = True) -> MomentEstimate:
        """Estimates ``tr(A^p) / dim`` (or ``tr(A^p)`` with ``normalized=False``) and its standard error.

        Each probe's ``sum(weights * nodes**p)`` equals ``v^T A^p v`` for its
        probe ``v`` exactly when ``p < 2 * num_steps`` (Gauss quadrature), an
        unbiased estimate of ``tr(A^p) / dim``; the standard error is their
        spread across probes over ``sqrt(num_probes)``.

        Example:

        ```python
        result.moment(1, normalized=False).value   # the trace
        result.moment(2).value                      # mean squared eigenvalue
        ```
        """
        p = integer("p", p, low=0)
        per_probe = np.sum(self.weights * self.nodes ** p, axis=1)
        if not normalized:
            per_probe = per_probe * self.dim
        stderr = None if self.num_probes < 2 else float(np.std(per_probe, ddof=1) / np.sqrt(self.num_probes))
        return MomentEstimate(float(np.mean(per_probe)), stderr)

    def default_sigma(self) -> float:
        """A kernel width of 1% of the spread of the nodes (1% of their size when they coincide)."""
        low, high = self._node_range()
        spread = high - low
        return 0.01 * (spread if spread > 0 else max(abs(high), 1.0))

    def plot(self, ax=None, *, log: bool = False, grid=None, sigma: float | None = None, num_points: int = 1000,
             **line_kwargs):
        """Plots the smoothed density with matplotlib (the ``plot`` extra).

        ``log=True`` puts the density on a log scale, as PyHessian's plots do,
        which shows the outliers next to the bulk; the axis then reaches down
        to ``1e-10`` times the peak.

        Example:

        ```python
        ax = result.plot(log=True)
        ax.figure.savefig("density.png")
        ```

        Args:
          ax: a matplotlib ``Axes``; default the current one.
          log: log-scaled density axis.
          grid: eigenvalues at which to evaluate; default ``num_points`` points
            spanning the nodes with a margin of a few ``sigma``.
          sigma: kernel width; default :meth:`default_sigma`.
          num_points: size of the default grid, ``2 <= num_points <= 10**6``.
          **line_kwargs: passed to ``ax.plot`` (``label``, ``color``, ...).

        Returns:
          The ``Axes``; its line holds ``grid`` and ``density(grid, sigma)``.
        """
        import matplotlib.pyplot as plt  # matplotlib is an optional extra: imported only to plot

        sigma = self.default_sigma() if sigma is None else sigma
        if grid is None:
            # The grid is allocated at this size: a screen has no use for more than a million points.
            num_points = integer("num_points", num_points, low=2, high=MAX_PLOT_POINTS)
            low, high = self._node_range()
            margin = 5.0 * sigma + 0.02 * (high - low)
            grid = np.linspace(low - margin, high + margin, num_points)
        grid = np.asarray(grid, dtype=np.float64)
        values = self.density(grid, sigma)
        ax = plt.gca() if ax is None else ax
        ax.plot(grid, values, **line_kwargs)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density")
        if log:
            ax.set_yscale("log")
            if np.max(values) > 0:  # Gaussian tails underflow to 0, which a log axis cannot show
                ax.set_ylim(bottom=1e-10 * float(np.max(values)))
        return ax

    def _node_range(self) -> tuple[float, float]:
        used = self.nodes[self.weights > 0]
        return float(np.min(used)), float(np.max(used))


def spectral_density(operator, *, num_probes: int = 10, num_steps: int = 80, seed: int | None = 0) -> SpectralDensity:
    """The spectral density of a symmetric operator by stochastic Lanczos quadrature.

    Each probe is a normalized Rademacher vector, from which ``num_steps``
    fully reorthogonalized Lanczos steps run (the basis holds ``num_steps``
    vectors of length ``dim``); the cost is ``num_probes * num_steps`` matvecs.
    More steps resolve finer detail (the quadrature is exact for polynomials
    of degree below ``2 * num_steps``); more probes reduce the noise, which
    falls like ``1/sqrt(num_probes * dim)`` for the bulk.

    Example:

    ```python
    hessian = tf_sharpest.operators.HessianOperator(model, (x, y))
    result = spectral_density(hessian, num_probes=10, num_steps=80)
    result.plot(log=True)
    trace = result.moment(1, normalized=False)   # value, stderr
    ```

    Args:
      operator: a :class:`~tf_sharpest.operators.LinearOperator` or a
        symmetric square matrix.
      num_probes: independent probes, ``>= 1``.
      num_steps: Lanczos steps per probe, ``>= 1``. At most ``dim`` are ever
        taken (the Krylov space has no more dimensions), so the result has
        ``min(num_steps, dim)`` columns; rows that stop earlier are padded with
        zero weights.
      seed: seed of the probes; the result is deterministic for it.

    Returns:
      A :class:`SpectralDensity`.

    Raises:
      ValueError: for ``num_probes`` or ``num_steps`` below 1, a non-symmetric
        operator (compared between probes, at no extra matvec), or non-finite products.
    """
    operator = as_symmetric_operator(operator, "spectral_density")
    num_probes = integer("num_probes", num_probes, low=1)
    n, first_matvec = operator.dim, operator.num_matvecs
    # Sized by the steps that can run, not by the number asked for (num_steps=10**9 would
    # otherwise allocate gigabytes for a few hundred products); rows are added as probes
    # run, so memory follows the work done.
    num_steps = min(integer("num_steps", num_steps, low=1), n)
    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    previous = None  # the last probe and its product, to test symmetry between independent probes
    for _ in range(num_probes):
        probe = rademacher(rng, n, 1)[:, 0] / np.sqrt(n)
        tridiagonal = tridiagonalize(operator, probe.numpy(), num_steps)
        current = (probe, tf.cast(tridiagonal.start_product, tf.float64))
        if previous is not None:
            check_symmetric(tf.stack([previous[0], current[0]], axis=1), tf.stack([previous[1], current[1]], axis=1),
                            operator.dtype)
        previous = current
        row_nodes, row_weights = tridiagonal.gauss_quadrature()
        padding = num_steps - len(row_nodes)  # weight 0 at a node inside the range
        nodes.append(np.concatenate([row_nodes, np.full(padding, row_nodes[-1])]))
        weights.append(np.concatenate([row_weights, np.zeros(padding)]))
    return SpectralDensity(nodes=np.stack(nodes), weights=np.stack(weights), dim=n,
                           num_matvecs=operator.num_matvecs - first_matvec)
