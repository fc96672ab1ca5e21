#!/usr/bin/env bash
# CI: a focused part of the suite on the OLDEST TensorFlow/Keras pair that setup.cfg admits.
#
# The floors are read from setup.cfg (`tensorflow>=A`, `keras>=B`), so they live in one place. The venv goes
# to build/oldest-venv (gitignored) and is reused when it already holds that pair. TensorFlow comes as
# `tensorflow-cpu` (about 215 MB instead of about 590 MB for `tensorflow`); the package's other requirements
# and the test extras are read from setup.cfg and resolved together with the pinned pair, and the package
# itself is installed without dependencies (pip cannot see that tensorflow-cpu provides `tensorflow`).
#
# Override the pair to try another one: TF_VERSION=2.18.1 KERAS_VERSION=3.8.0 bash .ci/oldest.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2
start=$(date +%s)

PYTHON=${PYTHON:-python}
read -r floor_tf floor_keras < <("$PYTHON" - <<'EOF'
import configparser, re
config = configparser.ConfigParser()
config.read("setup.cfg")
requires = config["options"]["install_requires"].split()
floors = {}
for line in requires:
    match = re.fullmatch(r"(tensorflow|keras)>=([0-9.]+)(,.*)?", line)
    if match:
        floors[match.group(1)] = match.group(2)
print(floors["tensorflow"], floors["keras"])
EOF
)
TF_VERSION=${TF_VERSION:-$floor_tf}
KERAS_VERSION=${KERAS_VERSION:-$floor_keras}
VENV=${OLDEST_VENV:-build/oldest-venv}
echo "oldest.sh: tensorflow-cpu==$TF_VERSION keras==$KERAS_VERSION in $VENV"

# Everything setup.cfg requires (install_requires without tensorflow/keras, plus the test extra).
mapfile -t requirements < <("$PYTHON" - <<'EOF'
import configparser, re
config = configparser.ConfigParser()
config.read("setup.cfg")
lines = config["options"]["install_requires"].split() + config["options.extras_require"]["test"].split()
for line in lines:
    if not re.match(r"(tensorflow|keras)([<>=!~ ,]|$)", line):
        print(line)
EOF
)

stamp="$VENV/.pair"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$TF_VERSION $KERAS_VERSION" ]; then
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet "tensorflow-cpu==$TF_VERSION" "keras==$KERAS_VERSION" "${requirements[@]}"
  "$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .
  echo "$TF_VERSION $KERAS_VERSION" > "$stamp"
fi
"$VENV/bin/python" -c "import tensorflow as tf, keras; print('oldest.sh: TensorFlow', tf.__version__, 'Keras', keras.__version__)"
echo "oldest.sh: set-up took $(( $(date +%s) - start )) s"

# NSGD, the Keras contract, operators (block products too), Lanczos and the callback; the ARPACK comparison (44 s, no Keras) is left
# to the main run.
"$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  tests/test_keras_contract.py tests/test_nsgd.py tests/test_operators.py tests/test_lanczos.py \
  tests/test_lanczos_callback.py tests/test_block_products.py -k "not no_more_matvecs_than_arpack"
echo "oldest.sh: took $(( $(date +%s) - start )) s"
