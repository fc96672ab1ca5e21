"""The programs (examples, experiments, benchmarks) as a user meets them: public imports only, a fast TF-free
``--help``, and no TensorFlow start-up noise on stderr (issues 22 and 26)."""

import ast
import importlib
import os
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM_FOLDERS = ("examples", "experiments", "benchmarks")
#: The packages a user imports from (tf_sharpest's own __all__), each with its own __all__.
PACKAGES = ("analysis", "callbacks", "data", "hessian", "linalg", "models", "operators", "optimizers", "utils")
#: The lines TensorFlow's start-up writes whatever TF_CPP_MIN_LOG_LEVEL says (seen on this machine without a GPU).
NOISE = ("All log messages before absl::InitializeLog()", "cudart_stub.cc", "cuda_platform.cc", "cpu_feature_guard",
         "oneDNN custom operations", "failed call to cuInit")


def python_files(folder):
    for here, _, names in os.walk(os.path.join(ROOT, folder)):
        for name in sorted(names):
            if name.endswith(".py"):
                yield os.path.join(here, name)


def imports_of(path):
    """``(module, names)`` of every import statement in ``path`` (at any depth), ``names`` empty for ``import m``."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module, tuple(alias.name for alias in node.names)


def code_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def non_public_library_imports(module, names):
    """What of ``from module import names`` (or ``import module``) is not a documented public path."""
    if module == "tf_sharpest":
        return [n for n in names if n not in importlib.import_module("tf_sharpest").__all__]
    if not module.startswith("tf_sharpest."):
        return []
    package = module.split(".", 1)[1]
    if package not in PACKAGES:
        return [module]
    exported = importlib.import_module(module).__all__
    return [f"{module}.{n}" for n in names if n not in exported]


def test_programs_import_only_public_library_names_and_never_examples():
    """Programs use only what a package exports (``tf_sharpest.<package>.<name in __all__>``), and the
    experiments and benchmarks never import ``examples/`` (before: ``examples.cli``, ``utils.files.atomic_path``,
    ``utils.batches.materialize``, ``even_batch_size``)."""
    problems = []
    for folder in PROGRAM_FOLDERS:
        for path in python_files(folder):
            relative = os.path.relpath(path, ROOT)
            for module, names in imports_of(path):
                problems += [f"{relative}: {what}" for what in non_public_library_imports(module, names)]
                if folder != "examples" and (module.split(".")[0] in ("examples", "cli", "epoch_backup",
                                                                       "paper_training", "local_cluster")):
                    problems.append(f"{relative}: imports {module} from examples/")
    assert not problems, "\n".join(problems)


def test_readme_and_docs_examples_import_only_public_names():
    problems = []
    pages = [os.path.join(ROOT, "README.md")] + [os.path.join(ROOT, "docs", name)
                                                 for name in sorted(os.listdir(os.path.join(ROOT, "docs")))
                                                 if name.endswith(".md")]
    for page in pages:
        for code in code_blocks(open(page, encoding="utf-8").read()):
            for node in ast.walk(ast.parse(code)):
                if isinstance(node, ast.ImportFrom):
                    found = non_public_library_imports(node.module, tuple(a.name for a in node.names))
                elif isinstance(node, ast.Import):
                    found = [w for a in node.names for w in non_public_library_imports(a.name, ())]
                else:
                    continue
                problems += [f"{os.path.relpath(page, ROOT)}: {what}" for what in found]
    assert not problems, "\n".join(problems)


def test_readme_names_each_public_class_by_its_home():
    """The README's dotted names resolve, each to the package that exports it (``HessianOperator`` lives in
    ``tf_sharpest.operators``; the README once said ``tf_sharpest.hessian``)."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    wrong = []
    for dotted in sorted(set(re.findall(r"tf_sharpest\.([a-z_]+)\.([A-Za-z_]+)\b", text))):
        package, name = dotted
        if package not in PACKAGES:
            wrong.append(".".join(dotted))
            continue
        module = importlib.import_module(f"tf_sharpest.{package}")
        if name not in module.__all__:
            wrong.append(f"tf_sharpest.{package}.{name}")
    assert not wrong, f"the README names these by a path that is not their public home: {wrong}"
    # The table of packages: each row's first name is the package's own (the row once said tf_sharpest.hessian
    # holds HessianOperator).
    rows = re.findall(r"^\| `tf_sharpest\.([a-z_]+)` \| [^`|]*`([A-Za-z_]+)`", text, flags=re.M)
    assert len(rows) >= 7, rows
    misplaced = [f"{package}: {name}" for package, name in rows
                 if name not in importlib.import_module(f"tf_sharpest.{package}").__all__]
    assert not misplaced, f"README's package table lists names their package does not export: {misplaced}"


def test_the_two_copies_of_the_programs_helpers_agree():
    """examples/cli.py (the examples' own, so they stay self-contained) and experiments/_cli.py (the experiments'
    and benchmarks') share functions; a fix to one must reach the other."""
    sources = {}
    for path in ("examples/cli.py", "experiments/_cli.py"):
        tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
        sources[path] = {node.name: ast.dump(node) for node in tree.body
                         if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Assign))
                         and hasattr(node, "name")}
        sources[path].update({target.id: ast.dump(node) for node in tree.body if isinstance(node, ast.Assign)
                              for target in node.targets if isinstance(target, ast.Name)})
    examples, experiments = sources.values()
    shared = sorted(set(examples) & set(experiments))
    assert {"import_tensorflow_quietly", "TENSORFLOW_NOISE", "markdown_table", "positive_int"} <= set(shared)
    differ = [name for name in shared if examples[name] != experiments[name]]
    assert not differ, f"examples/cli.py and experiments/_cli.py differ in {differ}"


#: Benchmarks whose flags are built from what TensorFlow-importing modules define (their tools' and methods'
#: registries, ``_common``'s argument types): their ``--help`` still imports TensorFlow. Every other program's
#: does not; a new benchmark must be in one list or the other (test_every_benchmark_is_classified).
BENCHMARKS_HELP_IMPORTS_TENSORFLOW = {"hvp_cost.py", "peers.py", "spectrum_peers.py", "tracking_cost.py",
                                      "landscape_cost.py", "memory_cost.py", "stderr_calibration.py"}


def main_scripts(folder):
    return [path for path in python_files(folder)
            if 'if __name__ == "__main__":' in open(path, encoding="utf-8").read()]


def entry_points():
    """Every program with a ``__main__`` block under examples/, experiments/ and benchmarks/ (but those listed in
    ``BENCHMARKS_HELP_IMPORTS_TENSORFLOW``), as the argv that runs it."""
    found = []
    for folder in PROGRAM_FOLDERS:
        for path in main_scripts(folder):
            relative = os.path.relpath(path, ROOT)
            if folder == "experiments":
                module = relative[:-3].replace(os.sep, ".")
                found.append(pytest.param(["-m", module], id=module))
            elif os.path.basename(path) not in BENCHMARKS_HELP_IMPORTS_TENSORFLOW:
                found.append(pytest.param([relative], id=relative))
    return found


def test_every_benchmark_is_classified():
    scripts = {os.path.basename(path) for path in main_scripts("benchmarks")}
    assert BENCHMARKS_HELP_IMPORTS_TENSORFLOW <= scripts
    assert len(scripts - BENCHMARKS_HELP_IMPORTS_TENSORFLOW) >= 5  # the benchmarks whose --help is checked


@pytest.mark.parametrize("argv", entry_points())
def test_every_programs_help_is_tensorflow_free(argv):
    """``--help`` answers without importing TensorFlow (seconds, and its log lines, before the usage)."""
    code = textwrap.dedent(f"""
        import runpy, sys
        argv = {argv!r}
        sys.argv = [argv[-1], "--help"]
        if argv[0] == "-m":
            sys.path.insert(0, {ROOT!r})
            run = lambda: runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.path.insert(0, {ROOT!r} + "/" + argv[0].split("/")[0])  # the script's folder, as python puts it
            run = lambda: runpy.run_path(argv[0], run_name="__main__")
        try:
            run()
            status = 0
        except SystemExit as exit:
            status = exit.code or 0
        print("STATUS", status, "TENSORFLOW", "tensorflow" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.stdout.splitlines()[-1:] == ["STATUS 0 TENSORFLOW False"], result.stdout[-2000:] + result.stderr
    assert "usage:" in result.stdout or "\nflags:\n" in result.stdout, result.stdout[:500]  # argparse's or absl's
    assert not any(noise in result.stderr for noise in NOISE), result.stderr


def test_the_entry_points_are_found():
    ids = {param.id for param in entry_points()}
    assert {"experiments.edge_of_stability.run", "examples/fashion_mnist_demo.py", "examples/train_simple_cnn_cifar.py",
            "experiments.sgd_step.run", "experiments.nudged_sgd.plot"} <= ids


@pytest.mark.parametrize("helper", ["examples/cli.py", "experiments/_cli.py"])
def test_quiet_import_drops_the_start_up_noise_and_keeps_everything_else(tmp_path, helper):
    """A stand-in ``tensorflow`` writes TensorFlow's start-up lines and a real error straight to file descriptor
    2 (as the C++ runtime does): the noise goes, the error stays."""
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text(textwrap.dedent("""
        import os
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
        os.write(2, b"I0000 00:00:1796442255.163639    6555 cudart_stub.cc:31] Could not find cuda drivers on your "
                    b"machine, GPU will not be used.\\n")
        os.write(2, b"I0000 00:00:1796442359.147040    9184 cpu_feature_guard.cc:227] This TensorFlow binary is "
                    b"optimized to use available CPU instructions in performance-critical operations.\\n")
        os.write(2, b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with "
                    b"the appropriate compiler flags.\\n")
        os.write(2, b"a real error: libfoo.so not found\\n")

        class config:
            @staticmethod
            def list_physical_devices():
                os.write(2, b"E0000 00:00:1796442259.468474    6555 cuda_platform.cc:52] failed call to cuInit: "
                            b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\\n")
                return []
    """))
    folder, name = os.path.split(os.path.join(ROOT, helper))
    code = (f"import sys; sys.path[:0] = [{str(tmp_path)!r}, {folder!r}]\n"
            f"import {name[:-3]} as cli\n"
            "tf = cli.import_tensorflow_quietly()\n"
            "print('imported', tf.__name__, tf.__file__.startswith(sys.path[0]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert result.stdout.strip() == "imported tensorflow True", result.stdout + result.stderr
    assert result.stderr == "a real error: libfoo.so not found\n"


def test_a_program_that_trains_prints_no_start_up_noise(tmp_path):
    """A real program's stderr from start to end: an experiment at smoke scale (issue 22: 7 log lines before
    anything else)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-m", "experiments.sgd_step.run", "--smoke", "--out", str(tmp_path),
                             "--epochs=1", "--at_epochs=0"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    found = [line for line in result.stderr.splitlines() if any(noise in line for noise in NOISE)]
    assert not found, found
    assert "epoch 0: lambda" in result.stdout


def test_the_noise_is_real_on_this_machine_without_the_quiet_import():
    """The check above is not vacuous where TensorFlow is noisy: a plain import prints those lines here. Skipped
    where TensorFlow starts silently (then there is nothing to filter)."""
    result = subprocess.run([sys.executable, "-c", "import tensorflow as tf; tf.config.list_physical_devices()"],
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    if not any(noise in result.stderr for noise in NOISE):
        pytest.skip("TensorFlow starts silently on this machine")
    assert "All log messages before absl::InitializeLog()" in result.stderr



def test_setup_says_what_it_is_doing_before_each_step(tmp_path):
    """Issue 22: scripts/setup.sh was silent for about 2.5 minutes. Each step is announced before it runs and
    reported with its time after (pip is a stand-in here that only says it ran)."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "RAN python $*"\n')
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "setup.sh")], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    ran = [i for i, line in enumerate(lines) if line.startswith("RAN python")]
    assert [lines[i] for i in ran] == ["RAN python -m pip install --quiet --upgrade pip",
                                       'RAN python -m pip install --quiet -e .[test,zoo]']
    for i in ran:  # announced just before, and timed just after
        assert lines[i - 1].startswith("setup.sh: ") and lines[i - 1].endswith(" ..."), lines[i - 1]
        assert re.fullmatch(r"setup\.sh: .*: done in \d+ s", lines[i + 1]), lines[i + 1]
    assert "installing tf_sharpest" in lines[ran[1] - 1] and lines[-1] == "setup.sh: ready"
