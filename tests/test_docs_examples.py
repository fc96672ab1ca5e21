"""Every code example of the documentation runs: the ```python blocks of the docs pages and of the docstrings.

* Docstrings: every module of ``tf_sharpest`` (private ones excepted) and every
  public function, class, method and property defined in it. Each block runs
  on its own, with the names of its module in scope (as the docstring reads
  them), the public API of every package, and a small shared namespace of the
  names the examples use (``model``, ``x``, ``y``, ``x_train``, ``hessian``,
  ...): a compiled CNN with 750 parameters on 28x28x1 inputs that outputs
  logits, and 64 to 128 random images, so the examples' sizes (2,250
  examples) shrink to what is there and each example runs in seconds.
* Docs pages: the blocks of a page run in order in one namespace, as a reader
  runs them; a page's examples use the same shared names.

``tf_sharpest.data.load`` reads a small Fashion-MNIST copy in IDX files written
here (72 training and 18 test images): the real loading code runs, on small
data, and no example depends on the real data set being installed.

An example marked in ``EXPECTED_TO_FAIL`` is one that cannot run as written and
whose file its owner is changing; the mark is strict, so the test says when it
runs again.
"""

from __future__ import annotations

import ast
import gzip
import importlib
import inspect
import os
import pkgutil
import re
import struct
import textwrap

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")  # examples that plot need no display

import tf_sharpest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
PACKAGES = ("operators", "linalg", "hessian", "analysis", "callbacks", "optimizers", "models", "data", "utils")
FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.DOTALL | re.MULTILINE)
# Rows of the shared arrays: small, so that every example runs in seconds.
NUM_EXAMPLES = 64
NUM_TRAIN = 128
# The Fashion-MNIST copy data.load reads here: (training, test) images.
FMNIST_COUNTS = (72, 18)

#: Example id -> why it cannot run as written (none now; an entry marks a strict expected failure).
EXPECTED_TO_FAIL: dict[str, str] = {}


# ------------------------------------------------------------------------------------------- collection

def code_blocks(text: str) -> list[tuple[int, str]]:
    """The ```python blocks of ``text`` as (1-based line of the fence, dedented code)."""
    return [(text.count("\n", 0, match.start()) + 1, textwrap.dedent(match.group("code")))
            for match in FENCE.finditer(text)]


def public_modules() -> list:
    """Every module of tf_sharpest whose dotted name has no private part: the top level, its packages and
    ``tf_sharpest.hessian``."""
    modules = [tf_sharpest]
    for info in pkgutil.walk_packages(tf_sharpest.__path__, prefix="tf_sharpest."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            modules.append(importlib.import_module(info.name))
    return modules


def documented_objects(module) -> list[tuple[str, object]]:
    """``(qualified name, object)`` for the module and the public objects it exports (with class members).

    A package's public names are its ``__all__``, wherever they are defined (its modules are private), and each
    is named by its one public home, ``tf_sharpest.<package>.<name>``."""
    found = [(module.__name__, module)]
    for name in sorted(getattr(module, "__all__", [])):
        value = getattr(module, name)
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        found.append((f"{module.__name__}.{name}", value))
        if inspect.isclass(value):
            for member_name, member in vars(value).items():
                if member_name.startswith("_"):
                    continue
                member = getattr(member, "__func__", member)  # classmethod, staticmethod
                if inspect.isfunction(member) or isinstance(member, property):
                    found.append((f"{module.__name__}.{name}.{member_name}", member))
    return found


def docstring_examples() -> list[tuple[str, object, str]]:
    """``(example id, module, code)`` for every ```python block of a public docstring."""
    examples = []
    for module in public_modules():
        for qualified, value in documented_objects(module):
            doc = inspect.getdoc(value) if value is not module else inspect.cleandoc(module.__doc__ or "")
            for index, (_, code) in enumerate(code_blocks(doc or "")):
                examples.append((f"{qualified}[{index}]", module, code))
    return examples


def docs_pages() -> list[str]:
    """The docs pages with Python examples, relative to docs/."""
    pages = []
    for folder, _, names in os.walk(DOCS):
        for name in names:
            path = os.path.join(folder, name)
            if name.endswith(".md") and code_blocks(open(path, encoding="utf-8").read()):
                pages.append(os.path.relpath(path, DOCS))
    return sorted(pages)


def free_names(code: str) -> set:
    """The names the code reads before (or without) binding them: what it expects to be given."""
    first = {}
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name):
            position = (node.lineno, node.col_offset, isinstance(node.ctx, ast.Load))
            first[node.id] = min(first.get(node.id, position), position)
    # On one line ``x = f(x)`` reads x first; Python evaluates the right-hand side before it binds.
    return {name for name, (line, _, _) in first.items()
            if any(isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Load)
                   and node.lineno == line for node in ast.walk(ast.parse(code)))}


# ------------------------------------------------------------------------------------------- namespace

def write_idx(path: str, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with open(path, "wb") as handle:
        handle.write(gzip.compress(header + array.tobytes()))


def write_small_fashion_mnist(folder: str) -> None:
    """Fashion-MNIST in its IDX format, with ``FMNIST_COUNTS`` random images and labels."""
    from tf_sharpest.data import _idx as idx

    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    n_train, n_test = FMNIST_COUNTS
    arrays = {"x_train": rng.integers(0, 256, (n_train, 28, 28)), "y_train": rng.integers(0, 10, n_train),
              "x_test": rng.integers(0, 256, (n_test, 28, 28)), "y_test": rng.integers(0, 10, n_test)}
    for key, stem in idx.FASHION_MNIST_FILES.items():
        write_idx(os.path.join(folder, stem + ".gz"), arrays[key])


def tiny_model(optimizer="sgd"):
    """The shared ``model``: a small CNN on 28x28x1 inputs (750 parameters), compiled, that outputs logits."""
    import keras

    from tf_sharpest import models

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(2, 3, strides=2, activation="relu", name="conv"),
        keras.layers.MaxPooling2D(2, name="pool"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(10, name="logits"),
    ], name="tiny_cnn")
    optimizer = keras.optimizers.SGD(0.01) if optimizer == "sgd" else optimizer
    model.compile(optimizer=optimizer, loss=models.default_loss(), metrics=["accuracy"])
    return model


def images(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 28, 28, 1)).astype("float32"), rng.integers(0, 10, n).astype("int64")


def symmetric_matrix(n: int = 50, seed: int = 0) -> np.ndarray:
    """A symmetric ``n x n`` float32 matrix with eigenvalues ``1 / i`` (and ``-0.5``)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    eigenvalues = 1.0 / np.arange(1, n + 1)
    eigenvalues[-1] = -0.5
    return ((q * eigenvalues) @ q.T).astype("float32")


class Namespace:
    """The shared names, each built on first use from the others (so ``hessian`` is of this ``model``)."""

    def __init__(self, request, tmp_path, overrides=None):
        self.request = request
        self.tmp_path = tmp_path
        self.values = {}
        self.factories = dict(FACTORIES)
        self.factories.update(overrides or {})

    def __contains__(self, name):
        return name in self.values or name in self.factories

    def __getitem__(self, name):
        if name not in self.values:
            self.values[name] = self.factories[name](self)
        return self.values[name]


def _plt(ns):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _layout(ns):
    from tf_sharpest.utils import FlatLayout

    return FlatLayout.from_variables(ns["model"].trainable_variables)


def _flat_vector(ns):
    return np.random.default_rng(1).standard_normal(_layout(ns).dim).astype("float32")


def _eigenvectors(ns):
    from tf_sharpest.hessian import top_eigenpairs

    return top_eigenpairs(ns["model"], (ns["x"], ns["y"]), k=5, tol=1e-3).eigenvectors


def _fitted_lanczos_callback(ns):
    from tf_sharpest.callbacks import LanczosCallback

    model = tiny_model()
    callback = LanczosCallback((ns["x"], ns["y"]), top_k=2, num_samples=NUM_EXAMPLES, seed=0, verbose=0)
    model.fit(ns["x"], ns["y"], epochs=2, batch_size=32, verbose=0, callbacks=[callback])
    return callback


def _adam_model(ns):
    import keras

    model = tiny_model(keras.optimizers.Adam(1e-3))
    model.fit(ns["x"], ns["y"], epochs=1, batch_size=32, verbose=0)  # Adam's second moments exist after a step
    return model


def _density(ns):
    from tf_sharpest.linalg import spectral_density

    return spectral_density(symmetric_matrix(), num_probes=4, num_steps=20)


def _splits(ns):
    from tf_sharpest.data import Splits

    (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = images(48, 5), images(8, 6), images(8, 7)
    return Splits(x_train, y_train, x_valid, y_valid, x_test, y_test, name="fashion_mnist")


_SPECTRUM_RUN = {}


def fitted_spectrum_callback(tmp_path_factory):
    """A 2-epoch fit with a SpectrumCallback (a density at every epoch) and a LanczosCallback, both
    saving under <folder>/runs/sgd (the files load_density and plot_spectrogram read)."""
    if not _SPECTRUM_RUN:
        from tf_sharpest.callbacks import LanczosCallback, SpectrumCallback

        folder = tmp_path_factory.mktemp("spectrum")
        save_dir = str(folder / "runs" / "sgd")
        x, y = images(NUM_EXAMPLES, 1)
        model = tiny_model()
        callback = SpectrumCallback((x, y), num_samples=NUM_EXAMPLES, trace_matvecs=4, density_every=1,
                                    num_probes=3, num_steps=20, save_dir=save_dir, tensorboard_dir=None, seed=0,
                                    verbose=0)
        lanczos = LanczosCallback((x, y), top_k=2, num_samples=NUM_EXAMPLES, save_dir=save_dir, seed=0, verbose=0)
        model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[callback, lanczos])
        _SPECTRUM_RUN.update(folder=folder, callback=callback)
    return _SPECTRUM_RUN


FACTORIES = {
    "np": lambda ns: np,
    "tf": lambda ns: importlib.import_module("tensorflow"),
    "keras": lambda ns: importlib.import_module("keras"),
    "tf_sharpest": lambda ns: tf_sharpest,
    "plt": _plt,
    "model": lambda ns: tiny_model(),
    "x": lambda ns: images(NUM_EXAMPLES, 1)[0],
    "y": lambda ns: images(NUM_EXAMPLES, 1)[1],
    "x_train": lambda ns: images(NUM_TRAIN, 2)[0],
    "y_train": lambda ns: images(NUM_TRAIN, 2)[1],
    "x_sample": lambda ns: ns["x"],
    "y_sample": lambda ns: ns["y"],
    "sample": lambda ns: (ns["x"], ns["y"]),
    "hessian": lambda ns: importlib.import_module("tf_sharpest.operators").HessianOperator(ns["model"],
                                                                                           (ns["x"], ns["y"])),
    "v": _flat_vector,
    "vs": lambda ns: _layout(ns).unflatten(_flat_vector(ns)),
    "eigenvectors": _eigenvectors,
    "a": lambda ns: symmetric_matrix(),
    "n": lambda ns: ns["a"].shape[0],
    "fn": lambda ns: (lambda vector: ns["a"] @ np.asarray(vector)),
    "small_operator": lambda ns: importlib.import_module("tf_sharpest.operators").MatrixOperator(ns["a"]),
    "strategy": lambda ns: ns.request.getfixturevalue("mirrored_strategy"),
    "lr": lambda ns: float(ns["model"].optimizer.learning_rate.numpy()),  # the learning rate of model's run
}
# Every public name of every package, as ``from tf_sharpest.<package> import *`` would give it.
for _package in PACKAGES:
    _module = importlib.import_module(f"tf_sharpest.{_package}")
    for _name in _module.__all__:
        FACTORIES.setdefault(_name, lambda ns, module=_module, name=_name: getattr(module, name))

#: Names an example needs that differ from the shared ones, by the id of the object it documents.
OVERRIDES = {
    # The preconditioner is read from an adaptive optimizer that has taken a step.
    "tf_sharpest.operators.PreconditionedOperator": {"model": _adam_model},
    # ``result`` there is a spectral density.
    "tf_sharpest.linalg.SpectralDensity.density": {"result": _density},
    "tf_sharpest.linalg.SpectralDensity.moment": {"result": _density},
    "tf_sharpest.linalg.SpectralDensity.plot": {"result": _density},
    # ``callback`` is a LanczosCallback after a fit; ``splits`` a Splits.
    "tf_sharpest.callbacks.MeasurementLog": {"callback": _fitted_lanczos_callback},
    "tf_sharpest.data.Splits": {"splits": _splits},
    # Batches of 128 need more than the shared 64 examples.
    "tf_sharpest.analysis.BatchSharpnessMeter": {"x": lambda ns: ns["x_train"],
                                                           "y": lambda ns: ns["y_train"]},
}
#: Examples that read files written by an earlier run: the folder to run them in.
RUN_IN = {
    owner: lambda request: fitted_spectrum_callback(request.getfixturevalue("tmp_path_factory"))["folder"]
    for owner in ("tf_sharpest.callbacks.load_density", "tf_sharpest.analysis.plot_spectrogram")
}


@pytest.fixture
def small_fashion_mnist(tmp_path_factory, monkeypatch):
    """``data.load("fashion_mnist")`` reads a small copy written here, never the installed data set."""
    from tf_sharpest.data import _idx as idx

    folder = str(tmp_path_factory.getbasetemp() / "fashion-mnist")
    if not os.path.isdir(folder):
        write_small_fashion_mnist(folder)
    monkeypatch.setattr(idx, "FASHION_MNIST_DIRS", [folder])
    monkeypatch.setattr(idx, "FASHION_MNIST_COUNTS", FMNIST_COUNTS)
    return folder


def run_example(code: str, namespace: dict, where: str) -> None:
    try:
        exec(compile(code, where, "exec"), namespace)
    except Exception as error:  # name the example and the line in the message
        raise AssertionError(f"The example {where} failed: {type(error).__name__}: {error}\n{code}") from error


# ------------------------------------------------------------------------------------------- tests

DOCSTRING_EXAMPLES = docstring_examples()


def _param(example_id, *values):
    marks = [pytest.mark.xfail(reason=EXPECTED_TO_FAIL[example_id], strict=True)] \
        if example_id in EXPECTED_TO_FAIL else []
    return pytest.param(*values, id=example_id, marks=marks)


@pytest.mark.parametrize("example_id, module, code",
                         [_param(example_id, example_id, module, code)
                          for example_id, module, code in DOCSTRING_EXAMPLES])
def test_docstring_example_runs(example_id, module, code, request, tmp_path, monkeypatch, small_fashion_mnist):
    import keras

    owner = example_id.rsplit("[", 1)[0]
    monkeypatch.chdir(RUN_IN[owner](request) if owner in RUN_IN else tmp_path)
    keras.utils.set_random_seed(0)
    shared = Namespace(request, tmp_path, OVERRIDES.get(owner))
    namespace = dict(vars(module))  # the names of the module the docstring is in, as it reads them
    for name in sorted(free_names(code)):
        if name in shared and (name not in namespace or name in (OVERRIDES.get(owner) or {})):
            namespace[name] = shared[name]
    run_example(code, namespace, example_id)


# ------------------------------------------------------------------------------------------- page results
#
# A docs page runs as a reader runs it: the quickstart of docs/index.md first (the model, x_train and y_train the
# guides go on with: NSGD with top_k=5), then the page's blocks in order in one namespace. After a block, its
# results are checked against references computed here without tf_sharpest (a Hessian-vector product by
# GradientTape twice, eigenvalues by SciPy's ARPACK) or against the values the page states.

QUICKSTART_PAGE = "index.md"


def reference_hvp(model, x, y, variables=None):
    """``v -> H v`` of the model's mean compiled loss on ``(x, y)`` (over ``variables``, all trainable ones by
    default), written with GradientTape alone (float64 out)."""
    import tensorflow as tf

    variables = list(variables or model.trainable_variables)
    shapes = [tuple(v.shape) for v in variables]
    sizes = [int(np.prod(shape)) for shape in shapes]
    loss_fn = model.loss

    @tf.function
    def product(flat):
        parts = [tf.reshape(part, shape) for part, shape in zip(tf.split(flat, sizes), shapes)]
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                loss = loss_fn(y, model(x, training=False)) + tf.add_n([0.0] + list(model.losses))
            grads = inner.gradient(loss, variables)
            directional = tf.add_n([tf.reduce_sum(g * p) for g, p in zip(grads, parts)])
        return tf.concat([tf.reshape(h, [-1]) for h in outer.gradient(directional, variables)], axis=0)

    return lambda v: product(tf.constant(np.asarray(v, dtype="float32").ravel())).numpy().astype("float64")


def reference_top_eigenvalues(model, x, y, k, variables=None):
    """The ``k`` largest Hessian eigenvalues by ARPACK on :func:`reference_hvp`, descending."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    dim = sum(int(np.prod(v.shape)) for v in (variables or model.trainable_variables))
    operator = LinearOperator((dim, dim), matvec=reference_hvp(model, x, y, variables), dtype="float64")
    return np.sort(eigsh(operator, k=k, which="LA", tol=1e-6, v0=np.ones(dim))[0])[::-1]


def assert_logged_like_measured(history, callback, key="lambda_1"):
    """``History`` holds, for each epoch, the first eigenvalue measured at that epoch's start."""
    measured = [m.eigenvalues[0] for m in callback.history]
    np.testing.assert_allclose(history.history[key], measured[: len(history.history[key])], rtol=1e-6)


def check_index_quickstart(ns):
    assert_logged_like_measured(ns["history"], ns["lanczos"])
    assert len(ns["lanczos"].history) == 3  # the start of both epochs and after training


def check_index_eigenpairs(ns):
    model, result = ns["model"], ns["result"]
    x, y = ns["x_train"][:512], ns["y_train"][:512]
    np.testing.assert_allclose(result.eigenvalues, reference_top_eigenvalues(model, x, y, 5), rtol=2e-3)
    hvp = reference_hvp(model, x, y)
    vectors = np.asarray(result.eigenvectors, "float64")
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(5), atol=1e-4)
    for value, vector in zip(result.eigenvalues, vectors.T):
        assert np.linalg.norm(hvp(vector) - value * vector) < 1e-2 * abs(result.eigenvalues[0])


def check_index_layout(ns):
    model, first, layout = ns["model"], ns["first"], ns["layout"]
    assert layout.dim == model.count_params() == ns["result"].eigenvectors.shape[0]
    assert [tuple(p.shape) for p in first] == [tuple(v.shape) for v in model.trainable_variables]
    np.testing.assert_array_equal(np.concatenate([np.ravel(p) for p in first]), ns["result"].eigenvectors[:, 0])


def check_callback_lanczos(ns):
    assert_logged_like_measured(ns["history"], ns["lanczos"])
    # num_samples=256 is more than the 60 training images here, so the sample is all of x_train: the measurement after
    # training is the top-K of the Hessian on x_train at the final weights.
    final = ns["lanczos"].history[-1].eigenvalues
    np.testing.assert_allclose(final, reference_top_eigenvalues(ns["model"], ns["x_train"], ns["y_train"],
                                                                len(final)), rtol=1e-2)
    if hasattr(ns.get("logits"), "history"):  # the block of the last layer, under its own prefix
        assert_logged_like_measured(ns["history"], ns["logits"], key="logits_lambda_1")
        block = ns["logits"].history[-1].eigenvalues
        variables = ns["model"].get_layer("logits").trainable_variables
        np.testing.assert_allclose(block, reference_top_eigenvalues(ns["model"], ns["x_train"], ns["y_train"],
                                                                    len(block), variables), rtol=1e-2)


def check_callback_saved(ns):
    saved = ns["saved"]
    assert len(saved) == len(ns["lanczos"].history)
    for read, kept in zip(saved, ns["lanczos"].history):
        np.testing.assert_allclose(read.eigenvalues, kept.eigenvalues, rtol=1e-6)


def check_nsgd_training(ns):
    assert_logged_like_measured(ns["history"], ns["lanczos"])
    ratios = np.asarray(ns["history"].history["nsgd_alpha_ratio_1"])
    assert np.all((ratios >= 0) & (ratios <= 1))  # |e1 . g| / ||g|| of a unit e1


def check_nsgd_by_hand(ns):
    optimizer = ns["optimizer"]
    assert optimizer.gamma == pytest.approx(0.1)  # the schedule's value from the second epoch on
    assert not optimizer.has_directions  # clear_directions()


def check_nsgd_saved(ns):
    assert type(ns["restored"].optimizer).__name__ == "NSGD"
    assert ns["restored"].optimizer.gamma == pytest.approx(ns["model"].optimizer.gamma)


def check_eigenvalues_first(ns):
    np.testing.assert_allclose(ns["result"].eigenvalues,
                               reference_top_eigenvalues(ns["model"], ns["x"], ns["y"], 5), rtol=2e-3)


def check_eigenvalues_small_operators(ns):
    from tf_sharpest.linalg import lanczos

    np.testing.assert_allclose(lanczos(ns["matrix"], k=2).eigenvalues, [10.0, 9.0], rtol=1e-5)  # as stated


def check_spectrum_matrix_trace(ns):
    matrix = ns["matrix"]
    exact = float(np.sum(1.0 / np.arange(1, 201) ** 2))  # the stated eigenvalues 1, 1/4, 1/9, ...
    assert np.trace(matrix) == pytest.approx(exact, rel=1e-9)
    assert ns["trace"](matrix, method="exact").value == pytest.approx(exact, rel=1e-5)


def check_experiments_loss_along(ns):
    import tensorflow as tf

    model, x, y = ns["model"], ns["x"], ns["y"]
    own = float(model.loss(y, model(x, training=False)) + tf.add_n([0.0] + list(model.losses)))
    values = np.asarray(ns["loss_along"](ns["objective"], ns["pairs"].eigenvectors[:, 0], [-0.5, 0.0, 0.5]))
    assert values[1] == pytest.approx(own, rel=1e-5)  # at offset 0: the loss at the weights, which are restored
    assert float(model.loss(y, model(x, training=False))) == pytest.approx(own, rel=1e-6)


def reference_loss_along(model, x, y, direction, step):
    """The compiled loss (with regularization) at ``weights + step * direction``, by assigning and restoring the
    weights here, without tf_sharpest."""
    import tensorflow as tf

    variables = model.trainable_variables
    saved = [v.numpy() for v in variables]
    offset = 0
    for variable, value in zip(variables, saved):
        size = value.size
        variable.assign(value + step * np.asarray(direction[offset:offset + size], value.dtype).reshape(value.shape))
        offset += size
    try:
        return float(model.loss(y, model(x, training=False)) + tf.add_n([0.0] + list(model.losses)))
    finally:
        for variable, value in zip(variables, saved):
            variable.assign(value)


def check_landscape_slices(ns):
    model, x, y, steps = ns["model"], ns["x"], ns["y"], ns["steps"]
    line, plane, e1 = ns["line"], ns["plane"], ns["pairs"].eigenvectors[:, 0]
    for index in (0, 5, 8):  # the ends, the weights themselves (step 0) and a step between
        assert float(line.losses[index]) == pytest.approx(reference_loss_along(model, x, y, e1, steps[index]),
                                                          rel=1e-4, abs=1e-6)
    np.testing.assert_allclose(plane.losses[:, 5], line.losses, rtol=1e-5)  # axis 0 along e1, e2's step 0


def check_distributed(ns):
    np.testing.assert_allclose(ns["lanczos"](ns["hessian"], k=2).eigenvalues,
                               reference_top_eigenvalues(ns["model"], ns["x"], ns["y"], 2), rtol=2e-3)


#: (page, 0-based block) -> the check run right after that block.
PAGE_CHECKS = {
    ("index.md", 0): check_index_quickstart,
    ("index.md", 1): check_index_eigenpairs,
    ("index.md", 2): check_index_layout,
    ("callback.md", 0): check_callback_lanczos,
    ("callback.md", 1): check_callback_saved,
    ("nsgd.md", 0): check_nsgd_training,
    ("nsgd.md", 1): check_nsgd_by_hand,
    ("nsgd.md", 2): check_nsgd_saved,
    ("eigenvalues.md", 0): check_eigenvalues_first,
    ("eigenvalues.md", 7): check_eigenvalues_small_operators,
    ("spectrum.md", 1): check_spectrum_matrix_trace,
    ("experiments.md", 0): check_experiments_loss_along,
    ("distributed.md", 0): check_distributed,
    ("landscape.md", 0): check_landscape_slices,
}


def run_page(page, blocks, namespace, shared, checks=True, start=0):
    """Runs ``blocks`` (the page's blocks from the ``start``-th on) in order in ``namespace``, each followed by its
    check in ``PAGE_CHECKS``."""
    for index, (line, code) in enumerate(blocks, start):
        for name in sorted(free_names(code)):
            if name not in namespace and name in shared:
                namespace[name] = shared[name]
        run_example(code, namespace, f"{page}:{line}")
        check = PAGE_CHECKS.get((os.path.basename(page), index)) if checks else None
        if check is not None:
            try:
                check(namespace)
            except AssertionError as error:
                raise AssertionError(f"The example {page}:{line} ran, but its result is wrong: {error}") from error


def page_blocks(path):
    with open(path, encoding="utf-8") as handle:
        return code_blocks(handle.read())


@pytest.mark.parametrize("page", [_param(page, page) for page in docs_pages()])
def test_docs_page_examples_run_and_check_their_results(page, request, tmp_path, monkeypatch, small_fashion_mnist):
    import keras

    monkeypatch.chdir(tmp_path)
    keras.utils.set_random_seed(0)
    shared = Namespace(request, tmp_path)
    namespace = {"__name__": "__docs__"}
    blocks = page_blocks(os.path.join(DOCS, page))
    if page == QUICKSTART_PAGE:  # its first block is the quickstart, run once per session: checked here
        namespace.update(the_quickstart(request, tmp_path))
        run_page(f"docs/{page}", blocks[1:], namespace, shared, start=1)
    else:  # a guide goes on from the quickstart's model and data, as its reader does
        namespace.update(after_the_quickstart(request, tmp_path))
        run_page(f"docs/{page}", blocks, namespace, shared)


_QUICKSTART = {}


def the_quickstart(request, tmp_path) -> dict:
    """The names of the quickstart of docs/index.md (its first block), run once per session as its reader runs
    it (a fresh namespace, seed 0) and checked: the index page goes on in a copy of them, each guide from a copy of
    its model (``after_the_quickstart``)."""
    import keras

    if not _QUICKSTART:
        keras.utils.set_random_seed(0)
        namespace = {"__name__": "__docs__"}
        run_page(f"docs/{QUICKSTART_PAGE}", page_blocks(os.path.join(DOCS, QUICKSTART_PAGE))[:1], namespace,
                 Namespace(request, tmp_path))
        _QUICKSTART.update(namespace)
    return dict(_QUICKSTART)


def after_the_quickstart(request, tmp_path) -> dict:
    """The names a reader has after the quickstart of docs/index.md, which runs once per session: its data, and
    a copy of its trained model (same weights, compiled again with the same NSGD configuration and loss)."""
    import keras

    quickstart = the_quickstart(request, tmp_path)
    trained = quickstart["model"]
    model = keras.models.clone_model(trained)
    model.set_weights(trained.get_weights())
    model.compile(optimizer=type(trained.optimizer).from_config(trained.optimizer.get_config()),
                  loss=trained.loss, metrics=["accuracy"])
    return {**{k: v for k, v in quickstart.items() if k not in ("history", "lanczos")}, "model": model}


def test_every_page_has_its_results_checked():
    """A page with examples and no check would only be run (issue 26: the docs examples assert their results)."""
    unchecked = [page for page in docs_pages() if not any(key[0] == page for key in PAGE_CHECKS)]
    assert not unchecked, f"add a PAGE_CHECKS entry for {unchecked}"
    for (page, index), _ in PAGE_CHECKS.items():
        assert index < len(page_blocks(os.path.join(DOCS, page))), (page, index)


def test_readme_quickstart_runs_and_checks_its_results(request, tmp_path, monkeypatch, small_fashion_mnist):
    import keras

    monkeypatch.chdir(tmp_path)
    keras.utils.set_random_seed(0)
    namespace = {"__name__": "__docs__"}
    blocks = page_blocks(os.path.join(ROOT, "README.md"))
    quickstart = [block for block in blocks if "LanczosCallback(" in block[1]][:1]
    assert quickstart, "README.md has no quickstart block"
    run_page("README.md", quickstart, namespace, Namespace(request, tmp_path), checks=False)
    assert_logged_like_measured(namespace["history"], namespace["lanczos"])
    x, y = namespace["x_train"][:512], namespace["y_train"][:512]
    np.testing.assert_allclose(namespace["result"].eigenvalues,
                               reference_top_eigenvalues(namespace["model"], x, y, 5), rtol=2e-3)


def test_readme_quickstart_is_small_or_says_what_it_costs():
    """Issue 22: the README quickstart trained on all 45,000 images with a 2,250-example measurement (520 s an
    epoch, 180 s for the first measurement, nothing on screen) and said nothing about it. Its code now trains on
    a slice of at most 5,000 images, measures at most 1,024 examples, and the text gives the full scale's cost."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    quickstart = next(code for _, code in code_blocks(text) if "LanczosCallback(" in code)
    tree = ast.parse(quickstart)
    slices = [node.slice.upper.value for node in ast.walk(tree)
              if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice)
              and isinstance(node.slice.upper, ast.Constant)]
    assert slices and max(slices) <= 5000, slices
    fits = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr == "fit"]
    assert fits and all(not (isinstance(fit.args[0], ast.Attribute) and fit.args[0].attr == "x_train")
                        for fit in fits), "the quickstart fits the whole training split"
    samples = [kw.value.value for node in ast.walk(tree) if isinstance(node, ast.Call)
               for kw in node.keywords if kw.arg == "num_samples"]
    assert samples and max(samples) <= 1024, samples
    assert "one epoch took 520 s" in " ".join(text.split())


# ------------------------------------------------------------------------------------------- the demo's figures

DEMO_FIGURES = os.path.join(ROOT, "examples", "demo_figures.json")
#: The pages that quote the demo's figures.
DEMO_PAGES = ("README.md", "docs/index.md", "docs/nsgd.md")


def demo_quotes(text):
    """The demo's figures quoted in ``text`` (its paragraphs that speak of the demo): λ1 of NSGD and SGD, test
    accuracies, seconds."""
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if "fashion_mnist_demo" in p or "The main job" in p]
    flat = " ".join(" ".join(paragraphs).split())
    found = {}
    for nsgd, sgd in re.findall(r"λ1 ≈ (\d+(?:\.\d+)?) for NSGD against ≈ (\d+(?:\.\d+)?) for SGD", flat):
        found.setdefault("lambda_1_nsgd", set()).add(float(nsgd))
        found.setdefault("lambda_1_sgd", set()).add(float(sgd))
    for nsgd, sgd in re.findall(r"test accuracy[^0-9]{0,12}(0\.\d+) against (0\.\d+)", flat):
        found.setdefault("test_accuracy_nsgd", set()).add(float(nsgd))
        found.setdefault("test_accuracy_sgd", set()).add(float(sgd))
    for seconds in re.findall(r"(?:took|Measured here:) (\d+) s\b", flat):
        found.setdefault("seconds", set()).add(float(seconds))
    for seconds in re.findall(r"\((\d+) s on a quiet machine before the density", flat):
        found.setdefault("seconds_quiet_before_density", set()).add(float(seconds))
    for peak, epoch in re.findall(r"reached (\d+\.\d+)(?:, [\d.]+ times 2/η,)? at epoch (\d+)", flat):
        found.setdefault("lambda_1_sgd_peak", set()).add(float(peak))
        found.setdefault("lambda_1_sgd_peak_epoch", set()).add(float(epoch))
    for last in re.findall(r"at epoch \d+ and was (\d+\.\d+)", flat):
        found.setdefault("lambda_1_sgd_before_last", set()).add(float(last))
    return found


def test_the_demos_figures_are_quoted_alike_everywhere():
    """Issue 22: docs/index.md and docs/nsgd.md quoted 237 s, λ1 ≈ 101 and 0.781 while the README said 103 and
    0.794. Every quote must be the figure in examples/demo_figures.json."""
    import json

    figures = json.load(open(DEMO_FIGURES, encoding="utf-8"))
    wrong, quoted = [], set()
    for page in DEMO_PAGES:
        for key, values in demo_quotes(open(os.path.join(ROOT, page), encoding="utf-8").read()).items():
            quoted.add(key)
            wrong += [f"{page}: {key} = {value:g}, not {figures[key]}" for value in values if value != figures[key]]
    assert not wrong, "\n".join(wrong)
    assert {"lambda_1_nsgd", "lambda_1_sgd", "test_accuracy_nsgd", "test_accuracy_sgd", "seconds",
            "lambda_1_sgd_peak"} <= quoted


def test_the_figures_check_catches_an_old_quote():
    old = ("`python examples/fashion_mnist_demo.py` is the larger version. On 2 CPU cores it took 237 s and "
           "ended with λ1 ≈ 101 for NSGD against ≈ 40 for SGD: ... reached a "
           "higher test accuracy (0.781 against 0.752).")
    assert demo_quotes(old) == {"lambda_1_nsgd": {101.0}, "lambda_1_sgd": {40.0}, "test_accuracy_nsgd": {0.781},
                                "test_accuracy_sgd": {0.752}, "seconds": {237.0}}
    peak = "`python examples/fashion_mnist_demo.py`: SGD's λ1 reached 74.8, 1.8 times 2/η, at epoch 4 and was 39.6."
    assert demo_quotes(peak) == {"lambda_1_sgd_peak": {74.8}, "lambda_1_sgd_peak_epoch": {4.0},
                                 "lambda_1_sgd_before_last": {39.6}}


def test_examples_are_found():
    """The collection sees the docstring examples (a broken pattern would pass vacuously)."""
    ids = {example_id for example_id, _, _ in DOCSTRING_EXAMPLES}
    assert "tf_sharpest.hessian.top_eigenpairs[0]" in ids and "tf_sharpest.optimizers.NSGD[0]" in ids
    assert len(ids) >= 25
    assert {"index.md", "eigenvalues.md", "callback.md", "nsgd.md", "spectrum.md"} <= set(docs_pages())


def test_no_doctest_prompts_in_public_docstrings():
    """Examples are ```python blocks (which this file runs), not ``>>>`` lines (which nothing would run)."""
    prompts = [qualified for module in public_modules() for qualified, value in documented_objects(module)
               if ">>> " in ((inspect.getdoc(value) if value is not module else module.__doc__) or "")]
    assert not prompts, f"Write these examples as ```python blocks: {prompts}"
