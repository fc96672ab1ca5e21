#!/usr/bin/env bash
# One-step set-up on a fresh machine: the package (with its test and zoo extras) and,
# where apt is available, real Fashion-MNIST from Debian's dataset-fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e ".[test,zoo]"

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  echo "Installing Fashion-MNIST from Debian's dataset-fashion-mnist ..."
  $SUDO apt-get update -qq >/dev/null \
    && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null \
    || echo "Could not install dataset-fashion-mnist; tf_sharpest.data will fall back to tensorflow_datasets." >&2
fi
