"""Trace and spectral density of a Hessian: tf_sharpest against PyHessian and hessian-eigenthings, equal matvecs.

The network, weights and data are those of ``peers.py`` (SimpleCNN-root on
real Fashion-MNIST, trained with SGD, cached in ``~/.cache/tf_sharpest_bench``),
and its PyTorch twin (``torch_simple_cnn.py``) must reproduce the Keras
model's logits and loss (to ``--match_tol``) before anything is compared.
Every tool then works on the Hessian of the mean cross-entropy over the same
``--n_examples`` training examples, in batches of ``--batch_size``:

* trace, ``--trace_matvecs`` HVPs each: tf_sharpest ``trace(method="hutch++")``
  and ``trace(method="hutchinson")``; PyHessian ``hessian.trace`` (Hutchinson;
  its relative-change stopping test is turned off with ``tol=-1`` so that it
  spends exactly the budget); hessian-eigenthings ``hutch_plus_plus`` (and
  ``hutchinson`` with ``--tools``: given PyHessian's seed, it draws the very
  probes PyHessian draws, so it only repeats PyHessian's estimate);
* spectral density, ``--num_probes`` x ``--num_steps`` HVPs each:
  tf_sharpest ``spectral_density``; PyHessian ``hessian.density`` (SLQ);
  hessian-eigenthings ``spectral_density`` (SLQ).

Each repeat uses a new seed for every tool; the tools take turns inside every
repeat and the order rotates between repeats. Agreement is judged within the
estimators' own standard errors: trace estimates are pooled over repeats
(mean, standard error ``sqrt(sum se_i^2) / R``) and compared with
tf_sharpest's Hutch++ as a z-score; the densities are compared through their
moments ``tr(H)/dim`` and ``tr(H^2)/dim`` (per-probe quadrature sums, pooled
over all probes of all repeats) and their largest Ritz value. Wall time runs
from building the tool's operator to having its result (tf_sharpest's
includes tracing its ``tf.function``); the ratios are of medians. The
figure overlays the three densities, pooled over all probes, smoothed by the
same Gaussian kernel on the same grid, on a log scale.

    python benchmarks/spectrum_peers.py                      # defaults (15-20 minutes on 2 busy cores)
    python benchmarks/spectrum_peers.py --n_examples 256 --trace_matvecs 9 --num_probes 1 --num_steps 5 \\
        --repeats 1                                           # smoke test

Needs the ``bench`` extra (CPU PyTorch 2.13.0, pyhessian, hessian-eigenthings, scipy) and matplotlib.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

# PyTorch's OpenMP threads busy-wait between parallel regions; on a shared machine with more runnable
# threads than cores that spinning made one PyTorch HVP 3-6x slower (measured here: 8-17 s against
# 1.4-4 s with PASSIVE), while TensorFlow's own thread pool is unaffected. PASSIVE (set before torch
# loads OpenMP) gives the peers their best case.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from _common import markdown_table, median  # noqa: E402
from peers import CountingBatches, PeerTools, add_network_arguments, missing_tools, prepare

TOOLS = {  # name -> (task, label)
    "tf_hutchpp": ("trace", "tf_sharpest `trace(method=\"hutch++\")`"),
    "tf_hutchinson": ("trace", "tf_sharpest `trace(method=\"hutchinson\")`"),
    "pyhessian_trace": ("trace", "PyHessian `hessian.trace` (Hutchinson)"),
    "he_hutchpp": ("trace", "hessian-eigenthings `hutch_plus_plus`"),
    "he_hutchinson": ("trace", "hessian-eigenthings `hutchinson`"),
    "tf_density": ("density", "tf_sharpest `spectral_density`"),
    "pyhessian_density": ("density", "PyHessian `hessian.density`"),
    "he_density": ("density", "hessian-eigenthings `spectral_density`"),
}
# Whose time each tool's is divided by in the ratio column (same estimator, same budget).
BASELINE = {"tf_hutchpp": "tf_hutchpp", "he_hutchpp": "tf_hutchpp", "tf_hutchinson": "tf_hutchinson",
            "pyhessian_trace": "tf_hutchinson", "he_hutchinson": "tf_hutchinson", "tf_density": "tf_density",
            "pyhessian_density": "tf_density", "he_density": "tf_density"}
# Added to PyHessian's seed (see Tools._pyhessian); larger than any run's probe count.
PYHESSIAN_SEED_OFFSET = 500
PACKAGES = {"pyhessian_trace": "pyhessian", "pyhessian_density": "pyhessian", "he_hutchpp": "hessian_eigenthings",
            "he_hutchinson": "hessian_eigenthings", "he_density": "hessian_eigenthings"}


@contextlib.contextmanager
def torch_eig_for_pyhessian():
    """Gives PyHessian 0.1's ``density()`` the ``torch.eig`` it calls, which PyTorch 2.0 removed.

    ``torch.eig`` now raises. PyHessian calls it once per probe, on its
    symmetric tridiagonal Lanczos matrix ``T``, reading the real parts of the
    eigenvalues (column 0 of an ``[n, 2]`` real/imaginary tensor) and the
    eigenvectors as columns. For a symmetric matrix ``torch.linalg.eigh``
    returns the same eigenpairs (ascending, where ``torch.eig`` left them
    unordered: the nodes and weights are the same sets), so only this one call
    is replaced, only while ``density()`` runs; PyHessian's Lanczos is its own.
    """
    import torch

    def eig(matrix, eigenvectors=False):
        values, vectors = torch.linalg.eigh(matrix)
        return torch.stack([values, torch.zeros_like(values)], dim=1), vectors

    had, previous = hasattr(torch, "eig"), getattr(torch, "eig", None)
    torch.eig = eig
    try:
        yield
    finally:
        if had:
            torch.eig = previous
        else:
            del torch.eig


def pyhessian_density_needs_the_shim() -> str:
    """The error PyHessian's density() meets on this PyTorch without the shim (empty if none)."""
    import torch

    try:
        torch.eig(torch.eye(2), eigenvectors=True)
    except Exception as error:  # the removal message names torch.linalg.eig as its replacement
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
    return ""


class Tools(PeerTools):
    """Every tool as ``name -> run(seed) -> result dict``, all on the same examples and batches."""

    # tf_sharpest -------------------------------------------------------------
    def _tf_operator(self):
        from tf_sharpest import models
        from tf_sharpest.operators import HessianOperator

        return HessianOperator(self.model, (self.x, self.y), loss=models.default_loss(),
                               batch_size=self.args.batch_size)

    def tf_trace(self, seed, method):
        from tf_sharpest.linalg import trace

        operator = self._tf_operator()
        result = trace(operator, method=method, num_matvecs=self.args.trace_matvecs, seed=seed)
        stderr = float("nan") if result.stderr is None else result.stderr  # None: a single probe
        return {"value": result.value, "stderr": stderr, "hvps": operator.num_matvecs}

    def tf_hutchpp(self, seed):
        return self.tf_trace(seed, "hutch++")

    def tf_hutchinson(self, seed):
        return self.tf_trace(seed, "hutchinson")

    def tf_density(self, seed):
        from tf_sharpest.linalg import spectral_density

        operator = self._tf_operator()
        result = spectral_density(operator, num_probes=self.args.num_probes, num_steps=self.args.num_steps, seed=seed)
        return {"nodes": result.nodes, "weights": result.weights, "hvps": operator.num_matvecs}

    # PyHessian -----------------------------------------------------------------
    def _pyhessian(self, seed):
        import torch
        from pyhessian import hessian

        # Its probes come from torch's global generator, in the order hessian-eigenthings draws its own from
        # a generator seeded alike: with the same seed both would use the very same probes. Offset, so the
        # three tools' estimates are independent.
        torch.manual_seed(seed + PYHESSIAN_SEED_OFFSET)
        loader = CountingBatches(self.torch_batches)
        return hessian(self.twin, torch.nn.CrossEntropyLoss(), dataloader=loader, cuda=False), loader

    def pyhessian_trace(self, seed):
        computer, loader = self._pyhessian(seed)
        # tol=-1: its test (relative change of the running mean below tol) never stops it early.
        samples = np.asarray(computer.trace(maxIter=self.args.trace_matvecs, tol=-1.0), dtype=np.float64)
        self.twin.zero_grad(set_to_none=True)
        return {"value": float(samples.mean()), "stderr": float(samples.std(ddof=1) / np.sqrt(len(samples))),
                "hvps": self._hvps(loader)}

    def pyhessian_density(self, seed):
        computer, loader = self._pyhessian(seed)
        with torch_eig_for_pyhessian():
            nodes, weights = computer.density(iter=self.args.num_steps, n_v=self.args.num_probes)
        self.twin.zero_grad(set_to_none=True)
        return {"nodes": np.asarray(nodes, dtype=np.float64), "weights": np.asarray(weights, dtype=np.float64),
                "hvps": self._hvps(loader)}

    # hessian-eigenthings ----------------------------------------------------------
    def he_hutchpp(self, seed):
        import hessian_eigenthings as he

        operator, loader = self._he_operator()
        result = he.hutch_plus_plus(operator, num_matvecs=self.args.trace_matvecs, seed=seed)
        return {"value": result.estimate, "stderr": result.stderr, "hvps": self._hvps(loader)}

    def he_hutchinson(self, seed):
        import hessian_eigenthings as he

        operator, loader = self._he_operator()
        result = he.hutchinson(operator, num_samples=self.args.trace_matvecs, seed=seed)
        return {"value": result.estimate, "stderr": result.stderr, "hvps": self._hvps(loader)}

    def he_density(self, seed):
        import hessian_eigenthings as he

        operator, loader = self._he_operator()
        result = he.spectral_density(operator, num_runs=self.args.num_probes, lanczos_steps=self.args.num_steps,
                                     seed=seed)
        weights = result.raw_weights.double().numpy()
        nodes = np.nan_to_num(result.raw_eigenvalues.double().numpy(), nan=0.0)  # padding carries weight 0
        return {"nodes": nodes, "weights": weights, "hvps": self._hvps(loader)}


# --------------------------------------------------------------------------- statistics


def pooled_trace(runs) -> tuple[float, float]:
    """Mean of the repeats' estimates and its standard error from their own: ``sqrt(sum se^2) / R``."""
    values = np.array([r["value"] for r in runs])
    errors = np.array([r["stderr"] for r in runs])
    return float(values.mean()), float(np.sqrt(np.sum(errors ** 2)) / len(runs))


def pooled_density(runs, dim):
    """All probes of all repeats as one :class:`~tf_sharpest.linalg.SpectralDensity`."""
    from tf_sharpest.linalg import SpectralDensity

    nodes = np.concatenate([r["nodes"] for r in runs])
    weights = np.concatenate([r["weights"] for r in runs])
    return SpectralDensity(nodes=nodes, weights=weights, dim=dim, num_matvecs=int(sum(r["hvps"] for r in runs)))


def per_hvp(seconds, runs) -> str:
    """Median over repeats of wall time per HVP (tf_sharpest's includes tracing its graph once per run)."""
    return f"{median([s / r['hvps'] for s, r in zip(seconds, runs)]):.2f}"


def z_score(a, b) -> float:
    """``(a - b)`` in combined standard errors; NaN where an error is unknown (a single probe has none)."""
    (va, ea), (vb, eb) = a, b
    if ea is None or eb is None:
        return float("nan")
    return (va - vb) / float(np.hypot(ea, eb))


def plus_minus(value: float, stderr: float | None, value_format: str, error_format: str) -> str:
    """``value +- stderr``, or ``value +- n/a`` where a single probe leaves the error unknown."""
    error = "n/a" if stderr is None else format(stderr, error_format)
    return f"{format(value, value_format)} +- {error}"


def plot(densities, path, args, loss):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    used = np.concatenate([d.nodes[d.weights > 0] for d in densities.values()])
    low, high = float(used.min()), float(used.max())
    sigma = 0.01 * (high - low)  # one kernel for all three: differences are the estimators', not the smoothing's
    grid = np.linspace(low - 0.05 * (high - low), high + 0.05 * (high - low), 3000)
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    styles = {"tf_sharpest": dict(linewidth=2.2), "PyHessian": dict(linestyle="--"),
              "hessian-eigenthings": dict(linestyle=":", linewidth=2)}
    for label, density in densities.items():
        density.plot(ax=ax, log=True, grid=grid, sigma=sigma, label=f"{label} ({density.num_probes} probes)",
                     **styles.get(label, {}))
    peak = max(float(d.density(grid, sigma).max()) for d in densities.values())
    ax.set_ylim(bottom=1e-9 * peak)
    ax.set_xlabel("Hessian eigenvalue")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(f"SLQ density of the Hessian, SimpleCNN-root on {args.n_examples} Fashion-MNIST examples "
                 f"(loss {loss:.3f})\n{args.num_steps} Lanczos steps per probe, all probes of {args.repeats} "
                 f"repeat(s), Gaussian kernel sigma={sigma:.3g}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# --------------------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_network_arguments(parser, n_examples=256)  # the network of peers.py (same defaults, same weight cache)
    parser.add_argument("--trace_matvecs", type=int, default=15,
                        help="HVPs per trace estimate (a multiple of 3: hessian-eigenthings' Hutch++ spends "
                             "3 * (m // 3))")
    parser.add_argument("--num_probes", type=int, default=2, help="SLQ probes per density")
    parser.add_argument("--num_steps", type=int, default=20, help="Lanczos steps per SLQ probe")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats, a new seed each")
    parser.add_argument("--tools", nargs="+", default=[t for t in TOOLS if t != "he_hutchinson"],
                        choices=list(TOOLS))
    parser.add_argument("--figure", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                         "spectrum_peers.png"))
    args = parser.parse_args()
    if args.trace_matvecs < 3 or args.trace_matvecs % 3:
        parser.error("--trace_matvecs must be a positive multiple of 3 (equal budgets for both Hutch++)")

    model, _, twin, x, y, loss_value = prepare(
        parser, args, "spectrum_peers.py", ("pyhessian", "hessian-eigenthings", "keras", "matplotlib"))
    dim = int(model.count_params())
    shim_reason = pyhessian_density_needs_the_shim()
    if shim_reason:
        print(f"PyHessian density(): torch.eig fails on this PyTorch ({shim_reason}); it runs with "
              "torch.linalg.eigh in its place (see torch_eig_for_pyhessian).", flush=True)

    tools = Tools(model, twin, x, y, args)
    names = list(args.tools)
    skipped = missing_tools(names, PACKAGES)
    names = [n for n in names if n not in skipped]
    runs = {name: [] for name in names}
    seconds = {name: [] for name in names}
    for repeat in range(args.repeats):
        shift = repeat % len(names)
        order = names[shift:] + names[:shift]
        seed = args.seed + 1000 * (repeat + 1)
        for name in order:
            start = time.perf_counter()
            result = getattr(tools, name)(seed)
            seconds[name].append(time.perf_counter() - start)
            runs[name].append(result)
            if "value" in result:
                what = f"trace {result['value']:.2f} +- {result['stderr']:.2f}"
            else:
                what = f"largest node {np.max(result['nodes']):.3f}"
            print(f"  repeat {repeat + 1}/{args.repeats} {name}: {seconds[name][-1]:.1f} s, {result['hvps']:g} HVPs, "
                  f"{what}", flush=True)

    # Traces ------------------------------------------------------------------------
    traces = {name: pooled_trace(runs[name]) for name in names if TOOLS[name][0] == "trace"}
    densities = {name: pooled_density(runs[name], dim) for name in names if TOOLS[name][0] == "density"}
    reference = traces.get("tf_hutchpp")
    header = ["tool", "HVPs", "wall s (median)", "each repeat", "s / HVP", "time / tf_sharpest", "estimate per repeat",
              "pooled estimate +- se", "z vs tf_sharpest Hutch++"]
    rows = []
    for name in [n for n in names if TOOLS[n][0] == "trace"]:
        value, error = traces[name]
        base = BASELINE[name]
        ratio = f"{median(seconds[name]) / median(seconds[base]):.2f}" if base in seconds else "-"
        z = f"{z_score(traces[name], reference):+.2f}" if reference and name != "tf_hutchpp" else "-"
        rows.append([TOOLS[name][1], f"{median([r['hvps'] for r in runs[name]]):g}", f"{median(seconds[name]):.1f}",
                     ", ".join(f"{s:.1f}" for s in seconds[name]), per_hvp(seconds[name], runs[name]), ratio,
                     ", ".join(f"{r['value']:.1f} +- {r['stderr']:.1f}" for r in runs[name]),
                     f"{value:.2f} +- {error:.2f}", z])
    for name, reason in skipped.items():
        if TOOLS[name][0] == "trace":
            rows.append([TOOLS[name][1], "-", "-", "-", "-", "-", "-", "-", reason])
    print(f"\nTrace of the Hessian of SimpleCNN-root (28x28x1, {dim:,} parameters) on {args.n_examples} Fashion-MNIST "
          f"training examples (loss {loss_value:.4f}), {args.trace_matvecs} HVPs per estimate, {args.repeats} "
          f"interleaved repeats (seeds differ per repeat). Time ratios: Hutch++ against tf_sharpest Hutch++, "
          f"Hutchinson against tf_sharpest Hutchinson.\n")
    print(markdown_table(header, rows))

    # Densities ---------------------------------------------------------------------
    header = ["tool", "HVPs", "wall s (median)", "each repeat", "s / HVP", "time / tf_sharpest", "tr(H)/dim +- se",
              "z vs tf_sharpest", "tr(H^2)/dim +- se", "z vs tf_sharpest", "largest node (median of probes)"]
    rows = []
    tf_moments = None
    if "tf_density" in densities:
        tf_moments = [densities["tf_density"].moment(p) for p in (1, 2)]
    for name, density in densities.items():
        moments = [density.moment(p) for p in (1, 2)]
        cells = []
        for p, moment in enumerate(moments):
            cells.append(plus_minus(moment.value, moment.stderr, ".4g", ".2g"))
            if tf_moments is None or name == "tf_density":
                cells.append("-")
            else:
                z = z_score((moment.value, moment.stderr), (tf_moments[p].value, tf_moments[p].stderr))
                cells.append(f"{z:+.2f}")
        top = np.median([np.max(row[w > 0]) for row, w in zip(density.nodes, density.weights)])
        ratio = f"{median(seconds[name]) / median(seconds['tf_density']):.2f}" if "tf_density" in seconds else "-"
        rows.append([TOOLS[name][1], f"{median([r['hvps'] for r in runs[name]]):g}", f"{median(seconds[name]):.1f}",
                     ", ".join(f"{s:.1f}" for s in seconds[name]), per_hvp(seconds[name], runs[name]), ratio,
                     *cells, f"{top:.3f}"])
    for name, reason in skipped.items():
        if TOOLS[name][0] == "density":
            rows.append([TOOLS[name][1], "-", "-", "-", "-", "-", "-", "-", "-", "-", reason])
    print(f"\nSpectral density (SLQ), {args.num_probes} probes x {args.num_steps} Lanczos steps per run, "
          f"{args.repeats} interleaved repeats; moments pooled over all {args.num_probes * args.repeats} probes.\n")
    print(markdown_table(header, rows))
    if "tf_density" in densities and reference:
        trace_from_density = densities["tf_density"].moment(1, normalized=False)
        print("\nCross-check: tf_sharpest's SLQ trace dim * tr(H)/dim = "
              f"{plus_minus(trace_from_density.value, trace_from_density.stderr, '.2f', '.2f')} "
              f"against its Hutch++ {reference[0]:.2f} +- {reference[1]:.2f} "
              f"(z {z_score((trace_from_density.value, trace_from_density.stderr), reference):+.2f}).")

    labels = {"tf_density": "tf_sharpest", "pyhessian_density": "PyHessian", "he_density": "hessian-eigenthings"}
    if densities:
        plot({labels[name]: density for name, density in densities.items()}, args.figure, args, loss_value)
        print(f"\nFigure: {args.figure}")


if __name__ == "__main__":
    main()
