"""Module paths of tf_sharpest 0.1, which still import until 0.3 with a ``DeprecationWarning``.

Since 0.2 every module inside a package is private (``_name.py``), and each
public name has one home: its package (``from tf_sharpest.linalg import
lanczos``, ``from tf_sharpest.operators import Sample``). Code written for
0.1 that imports a module path, say ``from tf_sharpest.operators.sample import
Sample``, keeps working for one more release: :class:`MovedModuleFinder`, one
entry of ``sys.meta_path``, gives the private module under its old name and
warns once per path, naming the package to import from instead.

A function that shares its name with its old module (``linalg.lanczos``,
``linalg.trace``, ``models.simple_cnn``, ...) stays the function after an old
path is imported: Python binds an imported submodule as an attribute of its
package, and this finder's packages decline that binding where a public name
already holds the attribute.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

from tf_sharpest.utils._deprecation import REMOVED_IN

__all__ = ["MOVED_MODULES", "MovedModuleFinder", "install"]


def _moved(package: str, *modules: str) -> dict[str, str]:
    return {f"tf_sharpest.{package}.{name}": f"tf_sharpest.{package}._{name}" for name in modules}


#: Old module path -> its private module (renamed in 0.2; the old path is removed in REMOVED_IN).
MOVED_MODULES: dict[str, str] = {
    **_moved("analysis", "sharpness", "steps"),
    **_moved("callbacks", "batch_sharpness_callback", "lanczos_callback", "measurement_log", "progress",
             "sampling", "spectrum_callback"),
    "tf_sharpest.callbacks.measuring_callback": "tf_sharpest.callbacks._measuring",
    **_moved("data", "augmentation", "cifar", "errors", "idx", "loading", "splits"),
    **_moved("linalg", "density", "lanczos", "lobpcg", "probes", "result", "trace", "tridiagonal"),
    **_moved("models", "resnet", "simple_cnn"),
    **_moved("operators", "base", "blocks", "curvature", "empirical_loss", "factory", "fisher", "ggn", "hessian",
             "model_loss", "output_curvature", "preconditioned", "sample", "strategy"),
    **_moved("optimizers", "nsgd"),
    **_moved("utils", "batches", "checks", "files", "flat"),
}


class _Package(types.ModuleType):
    """A package whose public names are not replaced by a module imported under an old path."""

    def __setattr__(self, name, value):
        if (isinstance(value, types.ModuleType) and f"{self.__name__}.{name}" in MOVED_MODULES
                and not isinstance(self.__dict__.get(name, value), types.ModuleType)):
            return  # e.g. ``import tf_sharpest.linalg.lanczos`` leaves ``tf_sharpest.linalg.lanczos`` the function
        super().__setattr__(name, value)


class _AliasLoader(importlib.abc.Loader):
    """Loads an old path as the very module object of its private home."""

    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._own_spec = module.__spec__
        return module

    def exec_module(self, module):
        # module_from_spec set the alias's spec on the shared module object; give the module back its own.
        module.__spec__ = self._own_spec


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old module paths of :data:`MOVED_MODULES` (after every real finder has missed them)."""

    def find_spec(self, fullname, path=None, target=None):
        home = MOVED_MODULES.get(fullname)
        if home is None:
            return None
        package = fullname.rpartition(".")[0]
        parent = sys.modules.get(package)
        if parent is not None and type(parent) is types.ModuleType:
            parent.__class__ = _Package
        warnings.warn(f"`{fullname}` is a private module since tf_sharpest 0.2, and importing it by this path stops "
                      f"working in {REMOVED_IN}: import its public names from `{package}` instead (e.g. `from "
                      f"{package} import ...`; the package's __all__ lists them).", DeprecationWarning,
                      stacklevel=2)  # warnings skips the import machinery's frames: this is the import's line
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(home))


def install() -> None:
    """Appends the finder to ``sys.meta_path`` once (tf_sharpest's ``__init__`` calls this)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
