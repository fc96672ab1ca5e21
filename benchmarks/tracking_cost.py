"""What it costs to track the top Hessian eigenvalues along training, per method and schedule.

One real SGD run (SimpleCNN-root on real Fashion-MNIST, lr 0.05, batch 128,
``model.fit``) is paused at every measurement point of every schedule
(``epoch``: at the start of each epoch and after the last; an integer ``N``:
every ``N`` training steps). Measuring starts after ``--measure_from_epoch``
epochs of plain training (SGD's first steps from initialization are atypical)
and each schedule takes at most ``--max_measurements`` measurements, which is
what keeps the default run near 20 minutes on 2 idle cores: every measurement
point costs about 110 products of about 1.6 s each (2,250 examples). At each point a fresh sample of ``--num_samples``
training examples is drawn (as ``LanczosCallback`` does with
``resample=True``), cut into equal batches, and every method measures the
top-5 Hessian eigenvalues on that same sample and weights:

- the matvecs and seconds it spent, and its **epoch-equivalents**: its seconds
  divided by the seconds the same run spends training 45,000 examples
  (training speed measured in this run, measurement time excluded);
- the largest relative error of its λ1..λ5 against a tight Lanczos
  (tol 1e-6) on the same sample and weights.

Warm-started methods carry their own eigenvectors from one measurement of a
schedule to the next. At a schedule's first point they have nothing to start
from: they take the cold Lanczos result there (as a callback's first
measurement would) and are not timed; the summary covers the later points.

The tight reference reuses the cold Lanczos's products: both start from the
same seeded vector and Lanczos is deterministic, so the reference repeats the
cold run's Krylov sequence (served from a cache of the products) and only
pays for its extra steps. A cache miss would only cost time, never accuracy.

Methods are a registry (``METHODS``, ``register``): a new lever (another
operator such as the GGN, a block product) is one decorated function that
returns an ``EigenResult`` for a :class:`Context`. ``HessianOperator.matmat`` is
a block product (one forward and first backward pass per batch for the whole
block), which ``lobpcg`` uses by itself; ``lobpcg_warm_columns`` runs the same
solver with the block multiplied column by column, for comparison.

    python benchmarks/tracking_cost.py --smoke          # about 3 minutes, tiny scale
    python benchmarks/tracking_cost.py                  # about 20 minutes on 2 idle cores
    python benchmarks/tracking_cost.py --methods lanczos_cold lobpcg_warm --schedule 100
    python benchmarks/tracking_cost.py --methods lanczos_warm lobpcg_warm lobpcg_warm_columns ggn_lanczos_warm
    python benchmarks/tracking_cost.py --methods lanczos_warm lanczos_sampling --full_reference 22500

Every row also gives its largest solver error (against the tight reference) in units of the eigenvalue's
sampling error (``sampling_stderr`` at the reference's eigenvectors): at most 0.66 keeps the total error
``sqrt(solver^2 + sample^2)`` within 1.2 times the sampling error alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from tf_sharpest import data, models
from tf_sharpest.linalg import EigenResult, LanczosSolver, lanczos, lobpcg, sampling_stderr
from tf_sharpest.operators import GGNOperator, HessianOperator, LinearOperator
from tf_sharpest.utils import even_batch_size, materialize

from _common import machine, markdown_table, median

EPOCH_EXAMPLES = 45_000  # the paper's CIFAR-10 training split: the unit of "epoch-equivalents"
TOP_K = 5
CALLBACK_TOL = 1e-3  # LanczosCallback's default tolerance
REFERENCE_TOL = 1e-6
BATCH_SIZE = 128


@dataclasses.dataclass
class Context:
    """What a method gets at one measurement point.

    Attributes:
      hessian: the Hessian operator on this point's sample (traced once per run;
        ``num_matvecs`` counts every product).
      model, sample, loss, batch_size: the ingredients, for methods that build
        another operator (e.g. a GGN) on the same sample.
      k: eigenpairs wanted.
      previous: this method's eigenvectors from the schedule's previous point
        (``None`` for cold methods).
      previous_reference: the tight reference eigenvectors at the schedule's previous point.
      seed: seed for the method's random start vectors at this point.
      state: a dict the method keeps across the run (per schedule), e.g. its own
        traced operator, moved to each new sample with ``set_data``.
    """

    hessian: HessianOperator
    model: keras.Model
    sample: tuple
    loss: keras.losses.Loss
    batch_size: int
    k: int
    previous: np.ndarray | None
    previous_reference: np.ndarray | None
    seed: int
    state: dict


@dataclasses.dataclass
class Method:
    name: str
    description: str
    warm: bool
    solve: Callable[[Context], EigenResult]
    prepare: Callable[[Context], None] | None = None  # runs before ``solve``, untimed


# The registry. A lever that needs another operator keeps it in ``ctx.state`` (traced
# once per run, outside the timing, by its ``prepare``) and moves it to each sample:
# see the GGN methods below. Errors are always against the Hessian reference, so a GGN
# row also shows how far the GGN's top eigenvalues are from the Hessian's.
METHODS: dict[str, Method] = {}


def register(name: str, description: str, *, warm: bool = True, prepare=None):
    """Adds ``solve(context) -> EigenResult`` to the registry under ``name``.

    ``prepare(context)``, if given, runs before ``solve`` at every point and is not
    timed (building or moving another operator to the point's sample, and tracing it).
    """

    def decorate(solve):
        METHODS[name] = Method(name, description, warm, solve, prepare)
        return solve

    return decorate


@register("lanczos_cold", f"Lanczos, random start, tol {CALLBACK_TOL:g}", warm=False)
def _lanczos_cold(ctx: Context) -> EigenResult:
    return lanczos(ctx.hessian, k=ctx.k, tol=CALLBACK_TOL, seed=ctx.seed)


@register("lanczos_warm", f"Lanczos from the previous eigenvectors, tol {CALLBACK_TOL:g} (today's callback)")
def _lanczos_warm(ctx: Context) -> EigenResult:
    return lanczos(ctx.hessian, k=ctx.k, tol=CALLBACK_TOL, seed=ctx.seed, initial_vectors=ctx.previous)


@register("lobpcg_warm", f"lobpcg from the previous eigenvectors, residual stop, tol {CALLBACK_TOL:g}")
def _lobpcg_warm(ctx: Context) -> EigenResult:
    return lobpcg(ctx.hessian, ctx.k, tol=CALLBACK_TOL, initial_vectors=ctx.previous, seed=ctx.seed)


class ColumnProducts(LinearOperator):
    """An operator whose ``matmat`` multiplies column by column (the base class's loop), whatever ``inner`` does."""

    def __init__(self, inner: LinearOperator):
        super().__init__(inner.dim, inner.dtype)
        self.inner = inner

    def _matvec(self, vector):
        return self.inner.matvec(vector)


@register("lobpcg_warm_columns", f"lobpcg warm, residual stop, tol {CALLBACK_TOL:g}, block multiplied column by "
          "column (no block product)")
def _lobpcg_warm_columns(ctx: Context) -> EigenResult:
    return lobpcg(ColumnProducts(ctx.hessian), ctx.k, tol=CALLBACK_TOL, initial_vectors=ctx.previous, seed=ctx.seed)


def _ggn_on_sample(ctx: Context) -> None:
    """The GGN on this point's sample in ``ctx.state["ggn"]``: built and traced once, then moved."""
    ggn = ctx.state.get("ggn")
    if ggn is None:
        ggn = ctx.state["ggn"] = GGNOperator(ctx.model, ctx.sample, loss=ctx.loss, batch_size=ctx.batch_size)
        ggn.matvec(tf.zeros([ggn.dim], ggn.dtype))  # trace now, outside the timing
    else:
        ggn.set_data(ctx.sample)


@register("ggn_lanczos_warm", f"Lanczos on the GGN from its previous eigenvectors, tol {CALLBACK_TOL:g}",
          prepare=_ggn_on_sample)
def _ggn_lanczos_warm(ctx: Context) -> EigenResult:
    return lanczos(ctx.state["ggn"], k=ctx.k, tol=CALLBACK_TOL, seed=ctx.seed, initial_vectors=ctx.previous)


@register("lobpcg_warm_eig", f"lobpcg from the previous eigenvectors, eigenvalue stop, tol {CALLBACK_TOL:g}")
def _lobpcg_warm_eig(ctx: Context) -> EigenResult:
    return lobpcg(ctx.hessian, ctx.k, tol=CALLBACK_TOL, initial_vectors=ctx.previous, seed=ctx.seed,
                  stop_on="eigenvalues")


@register("lobpcg_warm_eig_loose", "lobpcg from the previous eigenvectors, eigenvalue stop, tol 1e-2")
def _lobpcg_warm_eig_loose(ctx: Context) -> EigenResult:
    return lobpcg(ctx.hessian, ctx.k, tol=1e-2, initial_vectors=ctx.previous, seed=ctx.seed, stop_on="eigenvalues")


@register("lobpcg_warm_loose", "lobpcg from the previous eigenvectors, residual stop, tol 1e-2")
def _lobpcg_warm_loose(ctx: Context) -> EigenResult:
    return lobpcg(ctx.hessian, ctx.k, tol=1e-2, initial_vectors=ctx.previous, seed=ctx.seed)


@register("lobpcg_warm_3m", f"classic LOBPCG ([X, W, P] only), warm, residual stop, tol {CALLBACK_TOL:g}")
def _lobpcg_warm_3m(ctx: Context) -> EigenResult:
    block = ctx.k + 2
    return lobpcg(ctx.hessian, ctx.k, tol=CALLBACK_TOL, initial_vectors=ctx.previous, seed=ctx.seed,
                  max_basis_size=3 * block)


@register("lobpcg_warm_nofresh", f"lobpcg warm without fresh random directions, residual stop, tol {CALLBACK_TOL:g}")
def _lobpcg_warm_nofresh(ctx: Context) -> EigenResult:
    return lobpcg(ctx.hessian, ctx.k, tol=CALLBACK_TOL, initial_vectors=ctx.previous, seed=ctx.seed,
                  block_size=ctx.k)


@register("lobpcg_cold", f"lobpcg from random vectors, residual stop, tol {CALLBACK_TOL:g}", warm=False)
def _lobpcg_cold(ctx: Context) -> EigenResult:
    return lobpcg(ctx.hessian, ctx.k, tol=CALLBACK_TOL, seed=ctx.seed)


@register("lanczos_warm_eig", "Lanczos from the previous eigenvectors, eigenvalue stop (emulated), tol 1e-3")
def _lanczos_warm_eig(ctx: Context) -> EigenResult:
    return lanczos_eigenvalue_stop(ctx.hessian, ctx.k, 1e-3, ctx.seed, ctx.previous)


def lanczos_eigenvalue_stop(operator, k, tol, seed, initial_vectors=None, max_matvecs=300) -> EigenResult:
    """Lanczos stopped when λ1..λk change by at most ``tol`` (relative) from one matvec to the next.

    ``lanczos`` has no such stop, so it is emulated: Lanczos is deterministic, so a run
    with a budget of ``b`` products followed by one with ``b + 1`` repeats the first ``b``
    (served from a product cache) and pays for one product. Its residual stop (tol 1e-3)
    still ends it early when that comes first. The replays add only the small dense work.
    """
    cached = CachedProducts(operator)
    previous = None
    for budget in range(k, max_matvecs + 1):
        result = lanczos(cached, k=k, tol=CALLBACK_TOL, seed=seed, initial_vectors=initial_vectors,
                         max_matvecs=budget)
        values = result.eigenvalues
        settled = previous is not None and bool(np.all(np.abs(values - previous) <= tol * np.abs(values)))
        if result.converged or settled:
            result.converged = True
            result.num_matvecs = operator.num_matvecs - cached.first_inner_matvec
            return result
        previous = values
    result.num_matvecs = operator.num_matvecs - cached.first_inner_matvec
    return result


@register("rayleigh_ritz_previous", "Rayleigh-Ritz on the previous eigenvectors only (k products, no iteration)")
def _rayleigh_ritz_previous(ctx: Context) -> EigenResult:
    # The floor of any warm start: what the previous eigenvectors alone say about the new Hessian.
    return lobpcg(ctx.hessian, ctx.k, tol=CALLBACK_TOL, initial_vectors=ctx.previous_reference, seed=ctx.seed,
                  block_size=ctx.k, max_iterations=ctx.k)


@register("lanczos_sampling", "Lanczos, warm, stopped at 0.66 of the sampling error (the callback's new default; "
                              "its sampling error's products included)")
def _lanczos_sampling(ctx: Context) -> EigenResult:
    return LanczosSolver(eigenvalue_tol="sampling").solve(ctx.hessian, ctx.k, initial_vectors=ctx.previous,
                                                          seed=ctx.seed)


def _register_sampling_fraction(fraction: float) -> None:
    """``lanczos_sampling_x<fraction>``: the accuracy-aware stop asked for ``fraction`` of each sampling error.

    The stop's bound ``min(||r||, ||r||^2 / gap)`` overstates the solver's real error (0.02-0.14 of the sampling
    error when the bound reached 0.66 of it, issue 24), so looser fractions may still keep the real total error
    within 1.2 times the sampling error at fewer products: these rows measure that along the run.
    """
    @register(f"lanczos_sampling_x{fraction:g}", f"Lanczos, warm, stopped when the bound is {fraction:g} of the "
                                                  "sampling error")
    def solve(ctx: Context) -> EigenResult:
        return LanczosSolver(eigenvalue_tol="sampling", stderr_fraction=fraction).solve(
            ctx.hessian, ctx.k, initial_vectors=ctx.previous, seed=ctx.seed)


for _fraction in (1.0, 2.0, 4.0, 8.0):
    _register_sampling_fraction(_fraction)

DEFAULT_METHODS = ["lanczos_cold", "lanczos_warm", "lanczos_sampling", "lobpcg_warm", "lobpcg_warm_eig"]


class CachedProducts(LinearOperator):
    """An operator that remembers its products by input vector, so a repeated Krylov sequence is free.

    ``num_matvecs`` counts calls; ``inner.num_matvecs`` counts real products.
    """

    def __init__(self, inner: LinearOperator):
        super().__init__(inner.dim, inner.dtype)
        self.inner = inner
        self.first_inner_matvec = inner.num_matvecs
        self._cache: dict[bytes, tf.Tensor] = {}

    def _matvec(self, vector):
        key = hashlib.sha1(vector.numpy().tobytes()).digest()
        if key not in self._cache:
            self._cache[key] = self.inner.matvec(vector)
        return self._cache[key]


@dataclasses.dataclass
class Row:
    schedule: str
    step: int
    epoch: float
    method: str
    matvecs: int
    seconds: float
    error: float
    converged: bool
    eigenvalues: list
    reference: list
    epoch_equivalents: float = float("nan")  # training speed of the steps around this point
    epoch_equivalents_global: float = float("nan")  # training speed of the whole run
    stderr: list = dataclasses.field(default_factory=list)  # sampling errors of the reference's λ1..λk
    solver_error_in_stderr: float = float("nan")  # max_i |λi - reference_i| / stderr_i
    full_lambda1: float = float("nan")  # λ1 on --full_reference examples at the same weights


def parse_schedule(text: str) -> str:
    if text == "epoch":
        return text
    if text.isdigit() and int(text) > 0:
        return text
    raise argparse.ArgumentTypeError(f"a schedule is 'epoch' or a positive number of steps, got {text!r}")


def schedule_points(schedule: str, steps_per_epoch: int, total_steps: int, first_step: int = 0,
                    max_measurements: int | None = None) -> list[int]:
    """Training steps at which ``schedule`` measures: from ``first_step`` on, the end of training included.

    Step 0 is before the first training step. ``max_measurements`` keeps the first that many points.
    """
    every = steps_per_epoch if schedule == "epoch" else int(schedule)
    points = list(range(first_step, total_steps + 1, every))
    if schedule == "epoch" and points[-1] != total_steps:
        points.append(total_steps)
    return points[:max_measurements] if max_measurements else points


class Tracker(keras.callbacks.Callback):
    """Pauses ``model.fit`` at the measurement points and times training apart from measuring."""

    def __init__(self, args, x, y, schedules, methods, steps_per_epoch, total_steps):
        super().__init__()
        self.args, self.x, self.y = args, x, y
        self.methods = methods
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps
        first = args.measure_from_epoch * steps_per_epoch
        self.points = {s: set(schedule_points(s, steps_per_epoch, total_steps, first, args.max_measurements))
                       for s in schedules}
        self.previous = {(s, m.name): None for s in schedules for m in methods if m.warm}
        self.previous_reference = {s: None for s in schedules}
        self.states = {(s, m.name): {} for s in schedules for m in methods}
        self.rows: list[Row] = []
        self.loss = models.default_loss()
        self.operator = None
        self.step = 0
        self.measure_seconds = 0.0
        self.timing_start = None  # (wall time, measure seconds so far, step) once training is warmed up
        self.timing_end = None
        self.step_times: list[tuple[int, float]] = []  # (step, seconds per example), measuring excluded
        self._step_start = None
        self.reference_extra_matvecs = []
        self.full_operator = None

    def on_train_batch_begin(self, batch, logs=None):
        self._maybe_measure()
        if self.step == self.args.warmup_steps:
            self.timing_start = (time.perf_counter(), self.measure_seconds, self.step)
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.step >= self.args.warmup_steps:
            seconds = time.perf_counter() - self._step_start
            self.step_times.append((self.step, seconds / self.examples_between(self.step, self.step + 1)))
        self.step += 1

    def on_train_end(self, logs=None):
        self.timing_end = (time.perf_counter(), self.measure_seconds, self.step)
        self._maybe_measure()

    def examples_between(self, first: int, last: int) -> int:
        """Training examples in steps ``first`` .. ``last - 1`` (the last batch of an epoch is smaller)."""
        n, per_epoch = len(self.y), self.steps_per_epoch
        sizes = [min(BATCH_SIZE, n - (s % per_epoch) * BATCH_SIZE) for s in range(first, last)]
        return int(sum(sizes))

    def training_seconds_per_example(self) -> float:
        """Over the whole run: wall time of ``fit`` less the time spent measuring, per example."""
        (t0, m0, s0), (t1, m1, s1) = self.timing_start, self.timing_end
        return ((t1 - t0) - (m1 - m0)) / self.examples_between(s0, s1)

    def local_seconds_per_example(self, step: int) -> float:
        """Median over the training steps within ``--speed_window`` steps of ``step``.

        The machine is shared and its load drifts over a long run, so a measurement is
        compared with the training speed around it rather than the run's average.
        """
        near = [t for s, t in self.step_times if abs(s - step) <= self.args.speed_window]
        return median(near) if near else self.training_seconds_per_example()

    def _maybe_measure(self):
        due = [s for s, points in self.points.items() if self.step in points]
        if not due:
            return
        start = time.perf_counter()
        self._measure(due)
        self.measure_seconds += time.perf_counter() - start

    def _hessian_on(self, sample) -> HessianOperator:
        if self.operator is None:
            batch_size = even_batch_size(len(sample[1]), self.args.product_batch_size)
            self.operator = HessianOperator(self.model, sample, loss=self.loss, batch_size=batch_size)
            self.operator.matvec(tf.zeros([self.operator.dim]))  # trace now, outside every timed method
            self.operator.matmat(tf.zeros([self.operator.dim, 1]))  # and the block product (one trace for every k)
        else:
            self.operator.set_data(sample)
        return self.operator

    def _full_lambda1(self, seed: int) -> float:
        """λ1 on ``--full_reference`` training examples at the current weights (tol 1e-4, untimed)."""
        examples = materialize((self.x, self.y), self.args.full_reference, seed=seed + 1)
        batch_size = even_batch_size(len(examples[1]), self.args.product_batch_size)
        if self.full_operator is None:
            self.full_operator = HessianOperator(self.model, examples, loss=self.loss, batch_size=batch_size)
        else:
            self.full_operator.set_data(examples, batch_size)
        return float(lanczos(self.full_operator, k=1, tol=1e-4, seed=seed).eigenvalues[0])

    def _measure(self, due: list[str]):
        step = self.step
        seed = 1000 + step
        sample = materialize((self.x, self.y), self.args.num_samples, seed=seed)
        hessian = self._hessian_on(sample)
        batch_size = even_batch_size(len(sample[1]), self.args.product_batch_size)

        def context(schedule, method):
            return Context(hessian=hessian, model=self.model, sample=sample, loss=self.loss, batch_size=batch_size,
                           k=TOP_K, previous=self.previous.get((schedule, method.name)),
                           previous_reference=self.previous_reference[schedule], seed=seed,
                           state=self.states[(schedule, method.name)])

        # Cold Lanczos first, through the product cache, then the tight reference that replays it.
        cached = CachedProducts(hessian)
        first = hessian.num_matvecs
        t = time.perf_counter()
        cold = lanczos(cached, k=TOP_K, tol=CALLBACK_TOL, seed=seed)
        cold_seconds = time.perf_counter() - t
        cold_matvecs = hessian.num_matvecs - first
        first = hessian.num_matvecs
        reference = lanczos(cached, k=TOP_K, tol=REFERENCE_TOL, seed=seed, max_matvecs=400)
        self.reference_extra_matvecs.append(hessian.num_matvecs - first)
        if not reference.converged:
            print(f"warning: the reference at step {step} did not converge (residuals {reference.residual_norms})")
        ref = reference.eigenvalues

        def error(values):
            return float(np.max(np.abs(np.asarray(values) - ref) / np.abs(ref)))

        # The sampling error of this point's eigenvalues (at the reference's eigenvectors) and, with
        # --full_reference, λ1 on many more examples: neither is timed.
        stderr = sampling_stderr(hessian, reference)
        full_lambda1 = self._full_lambda1(seed) if self.args.full_reference else float("nan")

        print(f"step {step}: reference λ1..λ5 = {np.array2string(ref, precision=3)} "
              f"({cold_matvecs} + {self.reference_extra_matvecs[-1]} products)", flush=True)
        for schedule in due:
            first_point = all(self.previous[(schedule, m.name)] is None for m in self.methods if m.warm)
            for method in self.methods:
                if method.name == "lanczos_cold":
                    result, seconds, matvecs = cold, cold_seconds, cold_matvecs
                elif method.warm and first_point:
                    # Nothing to start from: a callback's first measurement is a cold one.
                    self.previous[(schedule, method.name)] = cold.eigenvectors
                    continue
                else:
                    ctx = context(schedule, method)
                    if method.prepare is not None:
                        method.prepare(ctx)
                    before = hessian.num_matvecs
                    t = time.perf_counter()
                    result = method.solve(ctx)
                    seconds = time.perf_counter() - t
                    matvecs = max(result.num_matvecs, hessian.num_matvecs - before)
                if method.warm:
                    self.previous[(schedule, method.name)] = result.eigenvectors
                self.rows.append(Row(schedule, step, step / self.steps_per_epoch, method.name, matvecs, seconds,
                                     error(result.eigenvalues), bool(result.converged),
                                     [float(v) for v in result.eigenvalues], [float(v) for v in ref],
                                     stderr=[float(v) for v in stderr],
                                     solver_error_in_stderr=float(np.max(np.abs(result.eigenvalues - ref) / stderr)),
                                     full_lambda1=full_lambda1))
                print(f"  [{schedule}] {method.name:>22}: {matvecs:3d} matvecs {seconds:6.1f} s "
                      f"error {self.rows[-1].error:.1e} ({self.rows[-1].solver_error_in_stderr:.2f} of the sampling "
                      f"error)", flush=True)
            self.previous_reference[schedule] = reference.eigenvectors


def summarize(rows: list[Row], schedules, methods) -> tuple[list, list]:
    header = ["schedule", "method", "measurements", "matvecs (median)", "seconds (median)",
              "seconds per matvec (median)", "epoch-equivalents (median)", "max rel. error λ1..λ5 (median / worst)",
              "max solver error / sampling error λ1..λ5 (median / worst)", "matvecs vs cold Lanczos", "all converged"]
    table = []
    for schedule in schedules:
        cold = {r.step: r for r in rows if r.schedule == schedule and r.method == "lanczos_cold"}
        first_step = min(cold) if cold else 0
        for method in methods:
            chosen = [r for r in rows if r.schedule == schedule and r.method == method.name and r.step != first_step]
            if not chosen:
                continue
            ratios = [r.matvecs / cold[r.step].matvecs for r in chosen if r.step in cold]
            label = "every epoch" if schedule == "epoch" else f"every {schedule} steps"
            table.append([label, method.name, len(chosen), f"{median([r.matvecs for r in chosen]):g}",
                          f"{median([r.seconds for r in chosen]):.1f}",
                          f"{median([r.seconds / r.matvecs for r in chosen]):.2f}",
                          f"{median([r.epoch_equivalents for r in chosen]):.2f}",
                          f"{median([r.error for r in chosen]):.1e} / {max(r.error for r in chosen):.1e}",
                          f"{median([r.solver_error_in_stderr for r in chosen]):.2f} / "
                          f"{max(r.solver_error_in_stderr for r in chosen):.2f}",
                          f"{median(ratios):.2f}" if ratios else "-",
                          "yes" if all(r.converged for r in chosen) else "no"])
    return header, table


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_examples", type=int, default=45_000,
                        help="training examples per epoch (45,000: an epoch is the paper's 352 steps)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--measure_from_epoch", type=int, default=1,
                        help="train this many epochs before the first measurement (the first epoch of SGD from "
                             "initialization is atypical: λ1 grows 20-fold in its first 20 steps)")
    parser.add_argument("--max_measurements", type=int, default=4,
                        help="measurements per schedule, the first (cold) one included; 0 for no limit")
    parser.add_argument("--num_samples", type=int, default=2250, help="examples per measurement (the paper: 2,250)")
    parser.add_argument("--schedule", type=parse_schedule, nargs="+", default=["epoch", "100"],
                        help="'epoch' and/or a number of steps between measurements")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=sorted(METHODS),
                        help="methods to compare (lanczos_cold always runs: it feeds the reference)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--warmup_steps", type=int, default=5,
                        help="training steps left out of the training-speed timing (tracing)")
    parser.add_argument("--speed_window", type=int, default=50,
                        help="epoch-equivalents use the training steps within this many steps of the measurement")
    parser.add_argument("--full_reference", type=int, default=0,
                        help="also compute λ1 on this many training examples at each point (untimed), to compare "
                             "the sample's λ1 and its sampling error with (0: off)")
    parser.add_argument("--product_batch_size", type=int, default=BATCH_SIZE,
                        help="largest batch of the curvature products (2,250 examples: 18 batches of 125); the "
                             "sampling error comes from the spread over the batches")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="write every row and the summary as JSON here")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny scale: 2,560 examples, 3 epochs, 256 samples, schedules 'epoch' and 10")
    args = parser.parse_args()
    if args.smoke:
        args.n_examples, args.epochs, args.num_samples, args.schedule = 2560, 3, 256, ["epoch", "10"]
        args.measure_from_epoch, args.max_measurements = 1, 3
    if not 0 <= args.measure_from_epoch < args.epochs:
        parser.error("--measure_from_epoch must be below --epochs")
    names = ["lanczos_cold"] + [m for m in args.methods if m != "lanczos_cold"]
    methods = [METHODS[m] for m in names]

    print(f"Machine: {machine()}")
    splits = data.load("fashion_mnist")
    x, y = splits.x_train[: args.n_examples], splits.y_train[: args.n_examples]
    keras.utils.set_random_seed(args.seed)
    model = models.simple_cnn("root", input_shape=(28, 28, 1))
    model.compile(optimizer=keras.optimizers.SGD(args.lr), loss=models.default_loss(), metrics=["accuracy"])
    steps_per_epoch = -(-len(y) // BATCH_SIZE)
    total_steps = steps_per_epoch * args.epochs
    tracker = Tracker(args, x, y, args.schedule, methods, steps_per_epoch, total_steps)
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=args.epochs, verbose=2, callbacks=[tracker])
    wall = time.perf_counter() - start

    per_example = tracker.training_seconds_per_example()
    epoch_seconds = per_example * EPOCH_EXAMPLES
    for row in tracker.rows:
        row.epoch_equivalents = row.seconds / (tracker.local_seconds_per_example(row.step) * EPOCH_EXAMPLES)
        row.epoch_equivalents_global = row.seconds / epoch_seconds
    local_epoch = {r.step: tracker.local_seconds_per_example(r.step) * EPOCH_EXAMPLES for r in tracker.rows}
    hvp = [r.seconds / r.matvecs for r in tracker.rows if r.method == "lanczos_cold" and r.step > 0]
    print(f"\nSimpleCNN-root ({model.count_params():,} parameters), {len(y):,} Fashion-MNIST training examples, "
          f"SGD lr={args.lr}, batch {BATCH_SIZE}, {args.epochs} epochs ({steps_per_epoch} steps each); top-{TOP_K} on "
          f"{args.num_samples} samples per measurement (batches of "
          f"{even_batch_size(args.num_samples, args.product_batch_size)}).")
    product_cost = [r.seconds / r.matvecs / local_epoch[r.step] for r in tracker.rows
                    if r.method == "lanczos_cold" and r.step > 0]
    print(f"Training: {per_example * 1e3:.3f} ms per example over the run, so one epoch-equivalent "
          f"({EPOCH_EXAMPLES:,} examples) = {epoch_seconds:.1f} s; around the measurement points one epoch-equivalent "
          f"took {', '.join(f'{local_epoch[s]:.0f}' for s in sorted(local_epoch))} s. One product on the sample takes "
          f"{median(hvp) if hvp else float('nan'):.2f} s (median over cold Lanczos), i.e. "
          f"{median(product_cost) if product_cost else float('nan'):.3f} epoch-equivalents (median of the points, "
          f"local speed). Whole run: {wall:.0f} s, of which measuring {tracker.measure_seconds:.0f} s. "
          f"The tight reference cost {median(tracker.reference_extra_matvecs)} products (median) on top of the "
          f"cold Lanczos it replays.\n")
    print("Every measurement:\n")
    print(markdown_table(["schedule", "step", "method", "matvecs", "seconds", "epoch-eq. (local)", "epoch-eq. (run)",
                          "max rel. error", "converged", "λ1"],
                         [[r.schedule, r.step, r.method, r.matvecs, f"{r.seconds:.1f}", f"{r.epoch_equivalents:.2f}",
                           f"{r.epoch_equivalents_global:.2f}", f"{r.error:.1e}", r.converged,
                           f"{r.eigenvalues[0]:.3f}"] for r in tracker.rows]))
    points = {r.step: r for r in tracker.rows if r.method == "lanczos_cold"}
    if args.full_reference:
        print(f"\nThe sample's λ1 (tight solve on {args.num_samples} examples) against λ1 on {args.full_reference:,} "
              "examples at the same weights, in sampling errors:\n")
        print(markdown_table(["step", "λ1 (sample)", "sampling error", f"λ1 ({args.full_reference} examples)",
                              "(sample - full) / sampling error"],
                             [[s, f"{r.reference[0]:.3f}", f"{r.stderr[0]:.3f}", f"{r.full_lambda1:.3f}",
                               f"{(r.reference[0] - r.full_lambda1) / r.stderr[0]:+.2f}"]
                              for s, r in sorted(points.items())]))
    header, table = summarize(tracker.rows, args.schedule, methods)
    print("\nMedians after each schedule's first measurement (where every method starts cold):\n")
    print(markdown_table(header, table))
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"args": vars(args), "seconds_per_example": per_example, "epoch_seconds": epoch_seconds,
                       "rows": [dataclasses.asdict(r) for r in tracker.rows], "summary": [header] + table}, f,
                      indent=1)


if __name__ == "__main__":
    main()
