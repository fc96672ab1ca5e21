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
here (120 training and 30 test images): the real loading code runs, on small
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
FMNIST_COUNTS = (120, 30)

#: Example id -> why it cannot run as written (none now; an entry marks a strict expected failure).
EXPECTED_TO_FAIL: dict[str, str] = {}


# ------------------------------------------------------------------------------------------- collection

def code_blocks(text: str) -> list[tuple[int, str]]:
    """The ```python blocks of ``text`` as (1-based line of the fence, dedented code)."""
    return [(text.count("\n", 0, match.start()) + 1, textwrap.dedent(match.group("code")))
            for match in FENCE.finditer(text)]


def public_modules() -> list:
    """Every module of tf_sharpest whose dotted name has no private part."""
    modules = [tf_sharpest]
    for info in pkgutil.walk_packages(tf_sharpest.__path__, prefix="tf_sharpest."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            modules.append(importlib.import_module(info.name))
    return modules


def documented_objects(module) -> list[tuple[str, object]]:
    """``(qualified name, object)`` for the module and the public objects defined in it (with class members)."""
    found = [(module.__name__, module)]
    for name, value in sorted(vars(module).items()):
        if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
            continue
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
    from tf_sharpest.data import idx

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
    """A SpectrumCallback after a 10-epoch fit, measured only after training; saved under <folder>/runs/sgd."""
    if not _SPECTRUM_RUN:
        from tf_sharpest.callbacks import SpectrumCallback

        folder = tmp_path_factory.mktemp("spectrum")
        x, y = images(NUM_EXAMPLES, 1)
        model = tiny_model()
        callback = SpectrumCallback((x, y), num_samples=NUM_EXAMPLES, frequency=None, num_probes=3, num_steps=20,
                                    save_dir=str(folder / "runs" / "sgd"), tensorboard_dir=None, seed=0,
                                    verbose=0)
        model.fit(x, y, epochs=10, batch_size=32, verbose=0, callbacks=[callback])
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
    "tf_sharpest.operators.preconditioned.PreconditionedOperator": {"model": _adam_model},
    # ``result`` there is a spectral density.
    "tf_sharpest.linalg.density.SpectralDensity.density": {"result": _density},
    "tf_sharpest.linalg.density.SpectralDensity.moment": {"result": _density},
    "tf_sharpest.linalg.density.SpectralDensity.plot": {"result": _density},
    # ``callback`` is a LanczosCallback after a fit; ``splits`` a Splits.
    "tf_sharpest.callbacks.measurement_log.MeasurementLog": {"callback": _fitted_lanczos_callback},
    "tf_sharpest.data.splits.Splits": {"splits": _splits},
    # Batches of 128 need more than the shared 64 examples.
    "tf_sharpest.analysis.sharpness.BatchSharpnessMeter": {"x": lambda ns: ns["x_train"],
                                                           "y": lambda ns: ns["y_train"]},
    # ``spectrum`` is a SpectrumCallback after a fit (the same run load_density reads the files of).
    "tf_sharpest.callbacks.spectrum_callback.histogram_buckets": {
        "spectrum": lambda ns: fitted_spectrum_callback(ns.request.getfixturevalue("tmp_path_factory"))["callback"]},
}
#: Examples that read files written by an earlier run: the folder to run them in.
RUN_IN = {
    "tf_sharpest.callbacks.spectrum_callback.load_density":
        lambda request: fitted_spectrum_callback(request.getfixturevalue("tmp_path_factory"))["folder"],
}


@pytest.fixture
def small_fashion_mnist(tmp_path_factory, monkeypatch):
    """``data.load("fashion_mnist")`` reads a small copy written here, never the installed data set."""
    from tf_sharpest.data import idx

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


@pytest.mark.parametrize("page", [_param(page, page) for page in docs_pages()])
def test_docs_page_examples_run(page, request, tmp_path, monkeypatch, small_fashion_mnist):
    import keras

    monkeypatch.chdir(tmp_path)
    keras.utils.set_random_seed(0)
    with open(os.path.join(DOCS, page), encoding="utf-8") as handle:
        blocks = code_blocks(handle.read())
    shared = Namespace(request, tmp_path)
    namespace = {"__name__": "__docs__"}
    for line, code in blocks:
        for name in sorted(free_names(code)):
            if name not in namespace and name in shared:
                namespace[name] = shared[name]
        run_example(code, namespace, f"docs/{page}:{line}")


def test_examples_are_found():
    """The collection sees the docstring examples (a broken pattern would pass vacuously)."""
    ids = {example_id for example_id, _, _ in DOCSTRING_EXAMPLES}
    assert "tf_sharpest.hessian.top_eigenpairs[0]" in ids and "tf_sharpest.optimizers.nsgd.NSGD[0]" in ids
    assert len(ids) >= 25
    assert {"index.md", "eigenvalues.md", "callback.md", "nsgd.md", "spectrum.md"} <= set(docs_pages())


def test_no_doctest_prompts_in_public_docstrings():
    """Examples are ```python blocks (which this file runs), not ``>>>`` lines (which nothing would run)."""
    prompts = [qualified for module in public_modules() for qualified, value in documented_objects(module)
               if ">>> " in ((inspect.getdoc(value) if value is not module else module.__doc__) or "")]
    assert not prompts, f"Write these examples as ```python blocks: {prompts}"
