#!/usr/bin/env bash
# One-step set-up on a fresh machine: the package (with its test and zoo extras) and,
# where apt is available, real Fashion-MNIST from Debian's dataset-fashion-mnist.
#
# Each step says what it does before it starts (the whole set-up takes a few minutes on a fresh machine,
# most of it pip downloading TensorFlow) and how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."

step() {  # step "what it does" command...: one line before, one after with the seconds it took
  local what=$1 start
  shift
  start=$(date +%s)
  echo "setup.sh: $what ..."
  "$@"
  echo "setup.sh: $what: done in $(( $(date +%s) - start )) s"
}

install_fashion_mnist() {
  local sudo=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
  $sudo apt-get update -qq >/dev/null \
    && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null \
    || echo "setup.sh: could not install dataset-fashion-mnist; tf_sharpest.data will fall back to" \
            "tensorflow_datasets." >&2
}

step "upgrading pip" python -m pip install --quiet --upgrade pip
step "installing tf_sharpest with its test and zoo extras (TensorFlow, Keras, pytest, ...; the longest step)" \
  python -m pip install --quiet -e ".[test,zoo]"

if [ -d /usr/share/datasets/fashion-mnist ]; then
  echo "setup.sh: Fashion-MNIST is already in /usr/share/datasets/fashion-mnist"
elif command -v apt-get >/dev/null 2>&1; then
  step "installing Fashion-MNIST from Debian's dataset-fashion-mnist (apt-get)" install_fashion_mnist
else
  echo "setup.sh: no apt-get here; tf_sharpest.data will download Fashion-MNIST through tensorflow_datasets"
fi
echo "setup.sh: ready"
