#!/usr/bin/env bash
# CI: build the sdist and the wheel, install the WHEEL (not editable) into a clean virtual environment, and run
# .ci/wheel_smoke.py there from a folder outside the repository, so that nothing is imported from the source tree.
#
# The wheel is built from the sdist (`python -m build`), so a file missing from either fails here: a module left out
# of the package list fails to import (the smoke test imports every module the source tree has), and LICENSE,
# CHANGELOG.md and CITATION.cff must be in the sdist. The venv installs the wheel with its dependencies from the
# index (pip's cache makes a second run quick); nothing of the machine's site-packages is visible in it.
#
#   bash .ci/wheel.sh                  # about 3-6 minutes the first time (TensorFlow is downloaded into the venv)
#   WHEEL_WORK=/tmp/w bash .ci/wheel.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python}
WORK=${WHEEL_WORK:-$(mktemp -d)}
mkdir -p "$WORK"
case "$(cd "$WORK" && pwd)/" in "$ROOT"/*) echo "wheel.sh: WHEEL_WORK must be outside the repository" >&2; exit 2;; esac
export TF_CPP_MIN_LOG_LEVEL=2
start=$(date +%s)

echo "wheel.sh: building the sdist and the wheel into $WORK/dist ..."
"$PYTHON" -m pip install --quiet build
rm -rf "$WORK/dist"
"$PYTHON" -m build --outdir "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; exit 1; }
sdist=$(ls "$WORK"/dist/*.tar.gz)
wheel=$(ls "$WORK"/dist/*.whl)
echo "wheel.sh: built $(basename "$sdist") and $(basename "$wheel")"

echo "wheel.sh: checking the sdist holds LICENSE, CHANGELOG.md and CITATION.cff ..."
"$PYTHON" - "$sdist" <<'EOF'
import sys, tarfile
names = {name.split("/", 1)[1] for name in tarfile.open(sys.argv[1]).getnames() if "/" in name}
missing = sorted({"LICENSE", "CHANGELOG.md", "CITATION.cff", "README.md", "setup.cfg"} - names)
if missing:
    sys.exit(f"wheel.sh: the sdist lacks {missing}")
EOF

# Every module of the source tree, by name, for the smoke test to import from the installed wheel.
modules=$(cd "$ROOT" && find tf_sharpest -name "*.py" | sed -e 's/\.py$//' -e 's/\/__init__$//' -e 's/\//./g' | sort \
  | paste -sd, -)

echo "wheel.sh: installing the wheel into a clean venv ($WORK/venv) ..."
rm -rf "$WORK/venv"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install --quiet --upgrade pip
"$WORK/venv/bin/python" -m pip install --quiet "$wheel"

echo "wheel.sh: running the smoke test from $WORK/smoke (outside the repository) ..."
mkdir -p "$WORK/smoke"
cp "$ROOT/.ci/wheel_smoke.py" "$WORK/smoke/"
(cd "$WORK/smoke" && "$WORK/venv/bin/python" wheel_smoke.py --modules "$modules")
echo "wheel.sh: took $(( $(date +%s) - start )) s"
