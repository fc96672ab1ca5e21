"""Recomputes every table of experiments/RESULTS.md that is marked for it, from the committed result files.

A table is marked by the line ``<!-- verify: NAME -->`` just above it; NAME is a key of some study's
``TABLES`` (a mapping of names to functions returning the table's markdown). The table in RESULTS.md (its
consecutive lines starting with ``|``) must equal the recomputed one exactly; a marker without a known name,
or a known name without a marker, is a failure too. Exit status 0 when every table matches, 1 otherwise, with
a line-by-line difference.

    python -m experiments.verify            # check
    python -m experiments.verify --write    # rewrite the marked tables from the data (then review the diff)
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_MD = os.path.join(ROOT, "experiments", "RESULTS.md")

#: Study modules with a ``TABLES`` mapping.
STUDIES = ("experiments.paper_scale.tables", "experiments.spectrum_shape.plot", "experiments.sgd_step.plot",
           "experiments.edge_of_stability.plot", "experiments.nudged_sgd.plot",
           "experiments.lr_batch_size.plot")

MARKER = re.compile(r"^<!-- verify: ([\w.\-]+) -->\s*$")


def all_tables() -> dict:
    tables = {}
    for module in STUDIES:
        tables.update(importlib.import_module(module).TABLES)
    return tables


def marked_tables(lines: list[str]) -> dict[str, tuple[int, int]]:
    """``name -> (first, end)`` line ranges of each marked table in ``lines``."""
    found = {}
    for i, line in enumerate(lines):
        match = MARKER.match(line)
        if not match:
            continue
        first = i + 1
        while first < len(lines) and not lines[first].strip():
            first += 1
        end = first
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        found[match.group(1)] = (first, end)
    return found


def verify(path: str = RESULTS_MD, write: bool = False, tables: dict | None = None) -> list[str]:
    """The problems found (empty when every marked table matches its data); with ``write``, fixes the tables.

    ``tables`` maps names to functions returning markdown (default: every study's ``TABLES``).
    """
    with open(path) as f:
        lines = f.read().splitlines()
    tables = all_tables() if tables is None else tables
    marked = marked_tables(lines)
    problems = [f"{name}: no '<!-- verify: {name} -->' table in {os.path.relpath(path, ROOT)}"
                for name in tables if name not in marked]
    problems += [f"{name}: marked in RESULTS.md but no study computes it" for name in marked if name not in tables]
    for name, (first, end) in sorted(marked.items(), key=lambda item: -item[1][0]):
        if name not in tables:
            continue
        expected = tables[name]().splitlines()
        if lines[first:end] != expected:
            diff = "\n".join(difflib.unified_diff(lines[first:end], expected, "RESULTS.md", "recomputed",
                                                  lineterm=""))
            problems.append(f"{name}: the table differs from its data:\n{diff}")
            if write:
                lines[first:end] = expected
    if write:
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite the marked tables from the data")
    parser.add_argument("--results_md", default=RESULTS_MD, help="the file to check")
    args = parser.parse_args(argv)
    problems = verify(args.results_md, write=args.write)
    for problem in problems:
        print(problem)
    if problems and not args.write:
        print(f"{len(problems)} table(s) do not match their data.")
        return 1
    print("every marked table matches its data." if not problems else f"rewrote {len(problems)} table(s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
