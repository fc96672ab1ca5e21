"""Issue 26: the package's shape. Each public name has one home, its package; the modules inside the packages are
private, and the module paths of 0.1 still import, with a DeprecationWarning, until 0.3; no import runs back up
the layers that ``tf_sharpest/__init__.py`` states."""

import ast
import importlib.util
import json
import os
import subprocess
import sys

from tf_sharpest._moved import MOVED_MODULES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = os.path.join(ROOT, "tf_sharpest")
#: The public modules that are files rather than packages.
PUBLIC_FILES = {"tf_sharpest/hessian.py"}


def python_files(*folders):
    for folder in folders:
        for here, dirs, names in os.walk(os.path.join(ROOT, folder)):
            dirs[:] = [d for d in dirs if d not in ("__pycache__", "runs", "site")]
            yield from (os.path.join(here, name) for name in sorted(names) if name.endswith(".py"))


def test_every_module_inside_a_package_is_private():
    public = []
    for path in python_files("tf_sharpest"):
        relative = os.path.relpath(path, ROOT)
        name = os.path.basename(path)
        if name != "__init__.py" and not name.startswith("_") and relative not in PUBLIC_FILES:
            public.append(relative)
    assert not public, f"name these modules _name.py and export their public names from the package: {public}"


#: The layers of tf_sharpest/__init__.py's docstring, lowest first: a module imports only from its own layer or
#: lower ones.
LAYERS = {"utils": 0, "_keras_compat": 0, "_moved": 0, "operators": 1, "linalg": 2, "hessian": 3, "analysis": 3,
          "optimizers": 4, "callbacks": 4, "models": 5, "data": 5}


def upward_imports(path, own):
    """``(line, module)`` of each import in ``path`` from a higher layer than ``own``."""
    found = []
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                   else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        for module in modules:
            parts = module.split(".")
            if parts[0] == "tf_sharpest" and len(parts) > 1 and LAYERS[parts[1]] > LAYERS[own]:
                found.append((node.lineno, module))
    return found


def test_no_import_runs_back_up_the_layers():
    assert "``utils`` → ``operators``" in importlib.import_module("tf_sharpest").__doc__  # the order stated there
    upward = []
    for path in python_files("tf_sharpest"):
        relative = os.path.relpath(path, LIBRARY)
        if relative == "__init__.py":
            continue
        own = relative.split(os.sep)[0].removesuffix(".py")
        upward += [f"tf_sharpest/{relative}:{line} ({own}) imports {module}"
                   for line, module in upward_imports(path, own)]
    assert not upward, "\n".join(upward)


def test_the_layer_check_catches_an_upward_import(tmp_path):
    path = tmp_path / "module.py"
    path.write_text("import numpy\nfrom tf_sharpest.operators import Sample\n"
                    "from tf_sharpest.callbacks import LanczosCallback\n")
    assert upward_imports(str(path), "linalg") == [(3, "tf_sharpest.callbacks")]


def test_every_old_path_leads_to_an_existing_private_module():
    for old, new in MOVED_MODULES.items():
        package, _, name = new.rpartition(".")
        assert name.startswith("_") and old.rpartition(".")[0] == package, (old, new)
        assert importlib.util.find_spec(new) is not None, f"{old} points at {new}, which does not exist"


def test_nothing_here_imports_an_old_path():
    """The library, programs and tests use the new homes (an old path in them would warn at every user)."""
    found = []
    for path in python_files("tf_sharpest", "examples", "experiments", "benchmarks", "tests"):
        if path == os.path.abspath(__file__):
            continue
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                       else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            found += [f"{os.path.relpath(path, ROOT)}:{node.lineno}: {m}" for m in modules if m in MOVED_MODULES]
    assert not found, "\n".join(found)


# Run in a fresh interpreter: the first import of an old path is the one that warns.
OLD_PATHS_SCRIPT = r"""
import importlib, json, sys, warnings
warnings.filterwarnings("error", message=".*private module since tf_sharpest", category=DeprecationWarning)
import tf_sharpest                                   # the library's own imports use no old path (error filter)
from tf_sharpest import linalg, models
from tf_sharpest._moved import MOVED_MODULES

functions = {"lanczos": linalg.lanczos, "trace": linalg.trace, "lobpcg": linalg.lobpcg,
             "simple_cnn": models.simple_cnn, "resnet": models.resnet}
report = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from tf_sharpest.linalg.lanczos import lanczos as old_lanczos       # 0.1 code
    import tf_sharpest.operators.sample
    from tf_sharpest.callbacks.lanczos_callback import LanczosCallback
    for old in MOVED_MODULES:
        importlib.import_module(old)
report["messages"] = [str(w.message) for w in caught if w.category is DeprecationWarning]
report["lines"] = sorted({w.lineno for w in caught if w.filename == "<old paths>"})
report["same_module"] = all(sys.modules[old] is sys.modules[new] for old, new in MOVED_MODULES.items())
report["own_spec"] = all(sys.modules[new].__spec__.name == new for new in MOVED_MODULES.values())
report["functions_kept"] = all(getattr(linalg if name in ("lanczos", "trace", "lobpcg") else models, name) is f
                               for name, f in functions.items())
report["same_objects"] = (old_lanczos is linalg.lanczos and LanczosCallback is tf_sharpest.callbacks.LanczosCallback
                          and tf_sharpest.operators.sample.Sample is tf_sharpest.operators.Sample)
print(json.dumps(report))
"""


def test_old_paths_import_the_same_objects_with_a_warning_naming_the_package():
    result = subprocess.run([sys.executable, "-c", compile_note(OLD_PATHS_SCRIPT)], capture_output=True, text=True,
                            timeout=180, cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    messages = report["messages"]
    assert len(messages) == len(MOVED_MODULES), messages  # each old path warns once, however often imported
    for old in MOVED_MODULES:
        package = old.rpartition(".")[0]
        assert sum(f"`{old}` is a private module" in m and f"from `{package}`" in m and "0.3" in m
                   for m in messages) == 1, old
    # The warnings point at the import statements of the caller (lines 11 to 15 of the script), not at importlib.
    assert report["lines"] and set(report["lines"]) <= set(range(11, 16)), report["lines"]
    assert report["same_module"] and report["own_spec"] and report["functions_kept"] and report["same_objects"]


def compile_note(script):
    """The script, run with ``<old paths>`` as its file name (so the warnings' file can be told apart)."""
    return f"exec(compile({script!r}, '<old paths>', 'exec'))"
