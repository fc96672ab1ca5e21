"""Top-5 Hessian eigenvalues: tf_sharpest against the PyTorch peers, same network, weights and data.

SimpleCNN-root on 28x28x1 is trained with plain SGD on real Fashion-MNIST; a
PyTorch twin (``torch_simple_cnn.py``) receives the very same weights, and the
script stops with an error unless both give the same logits and loss (to
``--match_tol``) on the benchmark examples. Then every tool computes the top-5
eigenvalues of the Hessian of the mean cross-entropy over the same
``--n_examples`` training examples, in batches of ``--batch_size``:

* tf_sharpest ``top_eigenpairs`` (thick-restart Lanczos), cold (random start)
  and warm (started from the eigenvectors at the weights ``--warm_gap`` SGD steps earlier);
* hessian-eigenthings ``lanczos`` (fixed number of steps, see ``--he_lanczos_steps``)
  and ``deflated_power_iteration``;
* PyHessian ``hessian.eigenvalues`` (power iteration with deflation);
* curvlinops ``HessianLinearOperator(...).to_scipy()`` with scipy ``eigsh`` (ARPACK).

Each run is timed from building the operator to having the eigenvalues; the
tools take turns inside every repeat (the order rotates between repeats) so
drifts in machine load hit them alike. HVPs are counted by tf_sharpest's own
counter and, for the PyTorch tools, by counting the batches each one draws from
the (shared) list of batches. The error is the largest relative error of the
5 eigenvalues (sorted) against a tight tf_sharpest Lanczos reference
(``--ref_tol``), which the curvlinops/eigsh result cross-checks independently.

    python benchmarks/peers.py                       # default settings (about 15-20 minutes on 2 cores)
    python benchmarks/peers.py --repeats 3           # medians of 3
    python benchmarks/peers.py --n_examples 512 --epochs 0 --train_steps 50 --repeats 1   # smoke test

Needs the ``bench`` extra: ``pip install -e .[bench]`` (CPU PyTorch 2.13.0,
pyhessian, hessian-eigenthings, curvlinops-for-pytorch, scipy).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from _common import machine, markdown_table, median

# isort: split
import tensorflow as tf  # noqa: E402  (after _common, which quiets TF's logging)

THREADS = 2


def set_threads(n):
    tf.config.threading.set_intra_op_parallelism_threads(n)
    tf.config.threading.set_inter_op_parallelism_threads(n)
    import torch

    torch.set_num_threads(n)
    torch.set_num_interop_threads(n)


# --------------------------------------------------------------------------- data and weights


def benchmark_examples(splits, n, seed):
    index = np.sort(np.random.default_rng(seed).choice(len(splits.x_train), n, replace=False))
    return splits.x_train[index], splits.y_train[index].astype(np.int64)


def load_fashion_mnist():
    from tf_sharpest import data

    return data.load("fashion_mnist"), "tf_sharpest.data.load('fashion_mnist') (training split)"


def train(splits, epochs, extra_steps, warm_gap, lr, batch_size, seed, cache):
    """SimpleCNN-root after ``epochs`` epochs + ``extra_steps`` SGD steps, and its weights ``warm_gap`` steps
    earlier."""
    import keras

    from tf_sharpest import models

    keras.utils.set_random_seed(seed)
    model = models.simple_cnn("root", input_shape=splits.x_train.shape[1:])
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=models.default_loss(), metrics=["accuracy"])
    if cache and os.path.exists(cache):
        stored = np.load(cache)
        model.set_weights([stored[f"final_{i}"] for i in range(len(model.weights))])
        earlier = [stored[f"earlier_{i}"] for i in range(len(model.weights))]
        print(f"Weights loaded from {cache} (delete it to retrain).", flush=True)
        return model, earlier, 0.0
    start = time.perf_counter()
    x, y = splits.x_train, splits.y_train
    if epochs:
        model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=2)
    # Then single SGD steps on fixed batches (deterministic), the last warm_gap of them
    # after the snapshot used for the warm start.
    order = np.random.default_rng(seed + 1).permutation(len(x))
    earlier = None
    for step in range(extra_steps):
        if step == extra_steps - warm_gap:
            earlier = [w.copy() for w in model.get_weights()]
        batch = order[(step * batch_size) % len(x):][:batch_size]
        model.train_on_batch(x[batch], y[batch])
    if earlier is None:
        earlier = [w.copy() for w in model.get_weights()]
    seconds = time.perf_counter() - start
    if cache:
        os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
        np.savez(cache, **{f"final_{i}": w for i, w in enumerate(model.get_weights())},
                 **{f"earlier_{i}": w for i, w in enumerate(earlier)})
    return model, earlier, seconds


def print_setup(script: str, packages) -> None:
    """The machine, the packages' versions and the command line: what every peer benchmark prints first."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    versions = {"torch": torch.__version__}
    for package in packages:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    print(f"Machine: {machine()}; {THREADS} threads for TF (intra and inter op) and PyTorch")
    print("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)
    print(f"Command: python benchmarks/{script} " + " ".join(sys.argv[1:]), flush=True)


def cached_training(splits, args):
    """``train`` with the flags' weight cache (a file name that encodes the training flags; '' disables it)."""
    cache = args.cache
    if cache:
        stem, ext = os.path.splitext(cache)
        cache = f"{stem}_e{args.epochs}_s{args.train_steps}_g{args.warm_gap}_lr{args.lr:g}_seed{args.seed}{ext}"
    return train(splits, args.epochs, args.train_steps, args.warm_gap, args.lr, 128, args.seed, cache)


def check_twin(model, twin, x, y, tol):
    """Logits and loss of the Keras model and its PyTorch twin on the same examples; exits on a mismatch."""
    import torch

    from tf_sharpest import models

    from torch_simple_cnn import to_nchw

    logits_k = model(x, training=False).numpy()
    with torch.no_grad():
        logits_t = twin(to_nchw(x)).numpy()
    loss_k = float(models.default_loss()(y, logits_k))
    loss_t = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits_t), torch.from_numpy(y)))
    logit_gap = float(np.max(np.abs(logits_k - logits_t)))
    loss_gap = abs(loss_k - loss_t)
    print(f"Twin check on {len(x)} examples: max |logit difference| {logit_gap:.2e}, "
          f"loss Keras {loss_k:.6f} vs PyTorch {loss_t:.6f} (difference {loss_gap:.2e}).", flush=True)
    if not (logit_gap <= tol and loss_gap <= tol):
        raise SystemExit(f"ERROR: the PyTorch port does not reproduce the Keras model to {tol:g} "
                         f"(logits {logit_gap:.2e}, loss {loss_gap:.2e}); refusing to compare spectra.")
    return logit_gap, loss_gap, loss_k


def add_network_arguments(parser, n_examples: int) -> None:
    """The flags of the network, its weights and the examples: the same in every peer benchmark, which share
    the weight cache (its file name encodes the training flags)."""
    parser.add_argument("--n_examples", type=int, default=n_examples, help="examples in the Hessian's loss")
    parser.add_argument("--batch_size", type=int, default=256, help="HVP batch size, every tool")
    parser.add_argument("--epochs", type=int, default=2, help="SGD epochs over the 50,000 training images")
    parser.add_argument("--train_steps", type=int, default=20, help="single SGD steps after the epochs")
    parser.add_argument("--warm_gap", type=int, default=10,
                        help="peers.py's warm start uses the eigenvectors at the weights this many SGD steps "
                             "earlier (kept in the weight cache)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--match_tol", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/tf_sharpest_bench/peers_weights.npz"),
                        help="file for the trained weights (reused when present; '' to always train)")


def prepare(parser, args, script: str, packages):
    """What every peer benchmark does first: threads, versions, data, the trained network and its checked twin.

    Returns the Keras model, its weights ``--warm_gap`` steps earlier, the
    PyTorch twin (parameters requiring gradients), the examples and the loss.
    """
    if args.warm_gap > args.train_steps:
        parser.error("--warm_gap must not exceed --train_steps")
    set_threads(THREADS)
    from torch_simple_cnn import from_keras

    print_setup(script, packages)
    splits, source = load_fashion_mnist()
    model, earlier, train_seconds = cached_training(splits, args)
    x, y = benchmark_examples(splits, args.n_examples, args.seed)
    print(f"Data: {source}; {args.n_examples} training examples (seed {args.seed}), HVP batch {args.batch_size}. "
          f"Training took {train_seconds:.0f} s.", flush=True)
    twin = from_keras(model)
    _, _, loss_value = check_twin(model, twin, x, y, args.match_tol)
    for p in twin.parameters():
        p.requires_grad_(True)
    return model, earlier, twin, x, y, loss_value


# --------------------------------------------------------------------------- the tools


class CountingBatches:
    """A re-iterable list of ``(x, y)`` batches that counts the batches handed out."""

    def __init__(self, batches):
        self.batches = batches
        self.drawn = 0

    def __iter__(self):
        for batch in self.batches:
            self.drawn += 1
            yield batch

    def __len__(self):
        return len(self.batches)


class PeerTools:
    """What the tools of every peer benchmark work on: the model, its twin, the examples, the PyTorch batches.

    Subclasses add the tools; all of them see the same batches, so their HVPs are counted alike.
    """

    def __init__(self, model, twin, x, y, args):
        import torch

        from torch_simple_cnn import to_nchw

        self.model, self.twin, self.x, self.y, self.args = model, twin, x, y, args
        xt, yt = to_nchw(x), torch.from_numpy(y)
        bs = args.batch_size
        self.torch_batches = [(xt[i:i + bs], yt[i:i + bs]) for i in range(0, len(x), bs)]
        self.n_batches = len(self.torch_batches)

    def _hvps(self, loader, before=0):
        """HVPs a PyTorch tool made: the passes over the batches it drew (``before``: batches drawn outside them)."""
        passes = (loader.drawn - before) / self.n_batches
        return int(passes) if passes == int(passes) else round(passes, 2)

    def _he_operator(self):
        import hessian_eigenthings as he
        import torch

        loader = CountingBatches(self.torch_batches)
        operator = he.HessianOperator(self.twin, loader, he.supervised_loss(torch.nn.functional.cross_entropy))
        return operator, loader


class Tools(PeerTools):
    """Every tool as ``name -> run(repeat) -> (eigenvalues, hvps, note)``, all on the same data."""

    def __init__(self, model, twin, x, y, args, warm_vectors):
        super().__init__(model, twin, x, y, args)
        self.warm_vectors = warm_vectors
        self.cold_matvecs = None  # steps hessian-eigenthings' Lanczos gets when --he_lanczos_steps is 0

    # tf_sharpest ------------------------------------------------------------
    def tf_sharpest(self, repeat, warm):
        from tf_sharpest import models
        from tf_sharpest.hessian import top_eigenpairs

        result = top_eigenpairs(self.model, (self.x, self.y), k=5, loss=models.default_loss(),
                                batch_size=self.args.batch_size, tol=self.args.tol, seed=repeat,
                                initial_vectors=self.warm_vectors if warm else None)
        if not warm:
            self.cold_matvecs = result.num_matvecs
        note = f"converged={result.converged}, restarts={result.num_restarts}"
        return np.asarray(result.eigenvalues), result.num_matvecs, note

    # hessian-eigenthings -----------------------------------------------------
    def he_lanczos(self, repeat):
        import hessian_eigenthings as he

        steps = self.args.he_lanczos_steps or self.cold_matvecs or 20
        operator, loader = self._he_operator()
        result = he.lanczos(operator, k=5, max_iter=steps, tol=self.args.tol, which="LA",
                            reorthogonalize=True, seed=repeat)
        converged = int(result.converged.sum())
        return result.eigenvalues.numpy(), self._hvps(loader), f"max_iter={steps}, {converged}/5 converged"

    def he_power(self, repeat):
        import hessian_eigenthings as he

        operator, loader = self._he_operator()
        result = he.deflated_power_iteration(operator, k=5, max_iter=self.args.power_max_iter,
                                             tol=self.args.tol, seed=repeat)
        converged = int(result.converged.sum())
        return result.eigenvalues.numpy(), self._hvps(loader), (
            f"max_iter={self.args.power_max_iter}/pair, {converged}/5 converged")

    # PyHessian ---------------------------------------------------------------
    def pyhessian(self, repeat):
        import torch
        from pyhessian import hessian

        torch.manual_seed(repeat)
        loader = CountingBatches(self.torch_batches)
        computer = hessian(self.twin, torch.nn.CrossEntropyLoss(), dataloader=loader, cuda=False)
        values, _ = computer.eigenvalues(maxIter=self.args.power_max_iter, tol=self.args.tol, top_n=5)
        self.twin.zero_grad(set_to_none=True)
        return np.asarray(values), self._hvps(loader), f"maxIter={self.args.power_max_iter}/pair"

    # curvlinops + eigsh ------------------------------------------------------
    def curvlinops_eigsh(self, repeat, tol=None):
        import torch
        from curvlinops import HessianLinearOperator
        from scipy.sparse.linalg import eigsh

        loader = CountingBatches(self.torch_batches)
        params = [p for p in self.twin.parameters() if p.requires_grad]
        operator = HessianLinearOperator(self.twin, torch.nn.CrossEntropyLoss(), params, loader,
                                         check_deterministic=False, num_data=len(self.x)).to_scipy()
        before = loader.drawn  # the constructor peeks at one batch
        start = np.random.default_rng(repeat).standard_normal(operator.shape[0]).astype(np.float32)
        values = eigsh(operator, k=5, which="LA", tol=self.args.tol if tol is None else tol, v0=start,
                       return_eigenvectors=False)
        return np.sort(values)[::-1], self._hvps(loader, before), "which='LA', ncv=20 (default)"


TOOLS = {  # row label -> (package, method)
    "tf_sharpest_cold": ("tf_sharpest", "top_eigenpairs (Lanczos), random start"),
    "tf_sharpest_warm": ("tf_sharpest", "top_eigenpairs (Lanczos), warm start"),
    "he_lanczos": ("hessian-eigenthings", "lanczos"),
    "he_power": ("hessian-eigenthings", "deflated_power_iteration"),
    "pyhessian": ("PyHessian", "hessian.eigenvalues (power iteration)"),
    "curvlinops_eigsh": ("curvlinops", "HessianLinearOperator + scipy eigsh"),
}


def run_tool(tools, name, repeat):
    start = time.perf_counter()
    if name == "tf_sharpest_cold":
        out = tools.tf_sharpest(repeat, warm=False)
    elif name == "tf_sharpest_warm":
        out = tools.tf_sharpest(repeat, warm=True)
    else:
        out = getattr(tools, name)(repeat)
    seconds = time.perf_counter() - start
    return (seconds, np.asarray(out[0], dtype=np.float64), *out[1:])


PACKAGES = {"he_lanczos": "hessian_eigenthings", "he_power": "hessian_eigenthings", "pyhessian": "pyhessian",
            "curvlinops_eigsh": "curvlinops"}


def missing_tools(names, packages=PACKAGES) -> dict:
    """``name -> reason`` for the tools whose package (``packages[name]``) cannot be imported."""
    import importlib

    missing = {}
    for name in names:
        if name in packages:
            try:
                importlib.import_module(packages[name])
            except Exception as e:  # report, don't fail the whole benchmark
                missing[name] = f"not run: {type(e).__name__}: {e}"
    return missing


# --------------------------------------------------------------------------- per-batch profile


def profile_batch(model, twin, x, y, repeats):
    """Milliseconds of one gradient and one HVP on one batch: TF vs PyTorch autograd vs PyTorch functorch."""
    import torch
    from torch.func import functional_call, jacrev, jvp

    from tf_sharpest import models
    from tf_sharpest.operators import HessianOperator

    from torch_simple_cnn import keras_to_torch_vector, to_nchw

    loss_fn = models.default_loss()
    operator = HessianOperator(model, (x, y), loss=loss_fn, batch_size=len(x))
    v = np.random.default_rng(0).standard_normal(operator.dim).astype(np.float32)
    v_tf = tf.constant(v)

    @tf.function
    def tf_gradient(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=False))
        return tape.gradient(loss, model.trainable_variables)

    xt, yt = to_nchw(x), torch.from_numpy(y)
    params = list(twin.parameters())
    vt_flat = torch.from_numpy(keras_to_torch_vector(v, model, twin))
    vt = [t.reshape(p.shape) for t, p in zip(torch.split(vt_flat, [p.numel() for p in params]), params)]
    names = [n for n, _ in twin.named_parameters()]

    def torch_gradient():
        loss = torch.nn.functional.cross_entropy(twin(xt), yt)
        return torch.autograd.grad(loss, params)

    def torch_double_backward():  # what hessian-eigenthings and PyHessian do per batch
        loss = torch.nn.functional.cross_entropy(twin(xt), yt)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        return torch.autograd.grad(grads, params, grad_outputs=vt)

    def loss_of(*ps):
        return torch.nn.functional.cross_entropy(functional_call(twin, dict(zip(names, ps)), (xt,)), yt)

    def torch_forward_over_reverse():  # what curvlinops does per batch
        with torch.no_grad():
            return jvp(jacrev(loss_of, argnums=tuple(range(len(params)))), tuple(params), tuple(vt))[1]

    cases = {
        "TF gradient": lambda: [g.numpy() for g in tf_gradient(x, y)],
        "TF HVP (tf_sharpest HessianOperator.matvec)": lambda: operator.matvec(v_tf).numpy(),
        "PyTorch gradient": torch_gradient,
        "PyTorch HVP, double backward (hessian-eigenthings, PyHessian)": torch_double_backward,
        "PyTorch HVP, jvp of jacrev (curvlinops)": torch_forward_over_reverse,
    }
    times = {name: [] for name in cases}
    for fn in cases.values():  # warm up, trace
        fn()
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: median(t) for name, t in times.items()}


# --------------------------------------------------------------------------- main


def relative_error(values, reference):
    values = np.sort(np.asarray(values, dtype=np.float64))[::-1][: len(reference)]
    return float(np.max(np.abs(values - reference) / np.abs(reference)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_network_arguments(parser, n_examples=2048)
    parser.add_argument("--tol", type=float, default=1e-3, help="each tool's own tolerance argument")
    parser.add_argument("--ref_tol", type=float, default=1e-6, help="tolerance of the reference Lanczos run")
    parser.add_argument("--power_max_iter", type=int, default=10,
                        help="power-iteration steps per eigenpair at most (PyHessian maxIter, "
                             "hessian-eigenthings max_iter)")
    parser.add_argument("--he_lanczos_steps", type=int, default=0,
                        help="hessian-eigenthings lanczos max_iter; 0: as many as tf_sharpest cold used")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--profile_repeats", type=int, default=5)
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=list(TOOLS))
    args = parser.parse_args()
    model, earlier, twin, x, y, loss_value = prepare(
        parser, args, "peers.py", ("pyhessian", "hessian-eigenthings", "curvlinops-for-pytorch", "scipy", "keras"))
    from tf_sharpest import models
    from tf_sharpest.linalg import lanczos
    from tf_sharpest.operators import HessianOperator

    # Warm-start vectors: the top-5 eigenvectors at the weights warm_gap SGD steps earlier (not timed:
    # along a run they come from the previous measurement).
    final = model.get_weights()
    model.set_weights(earlier)
    earlier_op = HessianOperator(model, (x, y), loss=models.default_loss(), batch_size=args.batch_size)
    earlier_result = lanczos(earlier_op, k=5, tol=args.tol, seed=args.seed + 100)
    model.set_weights(final)
    print(f"Eigenvalues {args.warm_gap} SGD steps earlier: {np.round(earlier_result.eigenvalues, 3).tolist()} "
          f"({earlier_result.num_matvecs} HVPs, not timed)", flush=True)

    start = time.perf_counter()
    ref_op = HessianOperator(model, (x, y), loss=models.default_loss(), batch_size=args.batch_size)
    ref = lanczos(ref_op, k=5, tol=args.ref_tol, max_iterations=600, seed=args.seed + 200)
    reference = np.asarray(ref.eigenvalues)
    print(f"Reference (tf_sharpest lanczos tol {args.ref_tol:g}): {np.round(reference, 4).tolist()}, "
          f"{ref.num_matvecs} HVPs, converged={ref.converged}, {time.perf_counter() - start:.0f} s", flush=True)

    tools = Tools(model, twin, x, y, args, earlier_result.eigenvectors)
    names = list(args.tools)
    skipped = missing_tools(names)
    names = [n for n in names if n not in skipped]
    runs = {name: [] for name in names}
    for repeat in range(args.repeats):
        shift = repeat % len(names)
        order = names[shift:] + names[:shift]
        if "he_lanczos" in order and "tf_sharpest_cold" in order and not args.he_lanczos_steps:
            # he_lanczos takes as many steps as tf_sharpest cold used in the same repeat
            order.remove("he_lanczos")
            order.insert(order.index("tf_sharpest_cold") + 1, "he_lanczos")
        for name in order:
            seconds, values, hvps, note = run_tool(tools, name, args.seed + repeat)
            error = relative_error(values, reference)
            runs[name].append((seconds, values, hvps, note, error))
            print(f"  repeat {repeat + 1}/{args.repeats} {name}: {seconds:.1f} s, {hvps} HVPs, "
                  f"max rel. error {error:.1e}, {np.round(np.sort(values)[::-1], 3).tolist()} ({note})", flush=True)

    profile = profile_batch(model, twin, x[: args.batch_size], y[: args.batch_size], args.profile_repeats)

    rows = []
    for name in names:
        package, method = TOOLS[name]
        seconds = [r[0] for r in runs[name]]
        hvps = [r[2] for r in runs[name]]
        errors = [r[4] for r in runs[name]]
        last = runs[name][-1]
        values = ", ".join(f"{v:.3f}" for v in np.sort(last[1])[::-1])
        agree = "yes" if max(errors) <= 1e-3 else "**no**"
        rows.append([f"{package}: {method}", f"{median(seconds):.1f}", f"{median(hvps):g}",
                     f"{median(seconds) / median(hvps):.2f}" if median(hvps) else "n/a", values,
                     f"{max(errors):.1e}", agree, last[3]])
    for name, reason in skipped.items():
        package, method = TOOLS[name]
        rows.append([f"{package}: {method}", "-", "-", "-", "-", "-", "-", reason])
    print(f"\nTop-5 Hessian eigenvalues of SimpleCNN-root (28x28x1, {model.count_params():,} parameters) on "
          f"{args.n_examples} Fashion-MNIST training examples (loss {loss_value:.4f}), HVP batch {args.batch_size}, "
          f"tol {args.tol:g} for every tool; median of {args.repeats} interleaved repeat(s).")
    print(f"Reference: {', '.join(f'{v:.4f}' for v in reference)}\n")
    print(markdown_table(["tool", "wall s", "HVPs", "s / HVP", "eigenvalues (last repeat)",
                          "max rel. error", "agrees to 1e-3", "settings / status"], rows))
    print(f"\nOne batch of {args.batch_size} examples, median of {args.profile_repeats} interleaved repeats:\n")
    print(markdown_table(["computation", "ms"], [[k, f"{v * 1e3:.0f}"] for k, v in profile.items()]))


if __name__ == "__main__":
    main()
