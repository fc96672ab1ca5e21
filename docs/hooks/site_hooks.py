"""MkDocs hooks of the documentation site (listed under ``hooks:`` in mkdocs.yml).

* The experiments' figures (``experiments/<study>/results/*.png``, kept next
  to ``experiments/RESULTS.md``) are added to the site under the same paths,
  so the experiments page shows them without a second copy in ``docs/``.
* The docstrings are written for Sphinx-style roles (``:class:`~a.b.C```),
  which Markdown renders as the role's name followed by inline code. The
  hook turns each into inline code that links to the object's reference
  entry where one exists (an optional cross-reference: an object that has no
  entry stays plain code, with no warning), and drops the reST ``::`` that
  introduces a literal block.
"""

from __future__ import annotations

import ast
import html
import os
import re

from mkdocs.structure.files import File

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPERIMENTS = os.path.join(ROOT, "experiments")

#: The packages that have a reference page, whose ``__all__`` names short references resolve to.
PACKAGES = ("operators", "linalg", "hessian", "analysis", "callbacks", "optimizers", "models", "data", "utils")

_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|obj|exc):<code>(~?)([^<]+)</code>")
_LITERAL_BLOCK = re.compile(r"::</p>")


def _public_names(package: str) -> list:
    """The ``__all__`` of ``tf_sharpest.<package>``, read from its source (no TensorFlow import)."""
    path = os.path.join(ROOT, "tf_sharpest", package, "__init__.py")
    if not os.path.exists(path):
        path = os.path.join(ROOT, "tf_sharpest", f"{package}.py")
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return []


def _short_names() -> dict:
    """Each public name of the packages with a reference page -> its identifier there."""
    names = {}
    for package in PACKAGES:
        for name in _public_names(package):
            names.setdefault(name, f"tf_sharpest.{package}.{name}")
    return names


_NAMES: dict | None = None


def _identifier(target: str) -> str | None:
    global _NAMES
    if target.startswith("tf_sharpest."):
        return target
    if _NAMES is None:
        _NAMES = _short_names()
    head, _, rest = target.partition(".")
    if head not in _NAMES:
        return None
    return _NAMES[head] + (f".{rest}" if rest else "")


def _replace_role(match: re.Match) -> str:
    tilde, target = match.group(1), html.unescape(match.group(2))
    shown = target.rsplit(".", 1)[-1] if tilde else target
    code = f"<code>{html.escape(shown)}</code>"
    identifier = _identifier(target)
    if identifier is None:
        return code
    return f'<autoref identifier="{html.escape(identifier)}" optional>{code}</autoref>'


def on_files(files, config):
    """Adds the experiments' result figures to the site."""
    for study in sorted(os.listdir(EXPERIMENTS)):
        results = os.path.join(EXPERIMENTS, study, "results")
        for folder, _, names in sorted(os.walk(results)):  # with subfolders (e.g. results/augmented)
            for name in sorted(names):
                if name.endswith(".png"):
                    path = os.path.relpath(os.path.join(folder, name), ROOT).replace(os.sep, "/")
                    files.append(File(path, src_dir=ROOT, dest_dir=config["site_dir"],
                                      use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_content(html_text, page, config, files):
    """Sphinx roles in rendered docstrings -> linked inline code; ``::`` before a literal block -> ``:``."""
    html_text = _ROLE.sub(_replace_role, html_text)
    return _LITERAL_BLOCK.sub(":</p>", html_text)
