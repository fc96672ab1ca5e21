#!/usr/bin/env bash
# The GPU figures in one short run (under 8 minutes on one GPU): HVP/GGN cost against a gradient,
# tf_sharpest against the PyTorch peers, and one replica against two (the GPU split into two
# logical GPUs). Run from the repository root on a machine with a GPU and the project installed
# (pip install -e ".[test,bench]" with a CUDA build of TensorFlow and of PyTorch); each part is
# bounded by `timeout`, and its output goes to ${OUT:-benchmarks/gpu_results}/.
set -uo pipefail
cd "$(dirname "$0")"
out="${OUT:-gpu_results}"
mkdir -p "$out"
export TF_CPP_MIN_LOG_LEVEL=2

python - <<'PY' | tee "$out/devices.txt"
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
print("TensorFlow", tf.__version__, "GPUs:", gpus)
if not gpus:
    raise SystemExit("No GPU visible to TensorFlow: this script measures GPU figures only.")
PY
[ "${PIPESTATUS[0]}" = 0 ] || exit 1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$out/devices.txt"

run() {  # name, seconds, command...
  local name=$1 seconds=$2; shift 2
  echo "== $name (at most ${seconds}s): $*"
  timeout "$seconds" "$@" > "$out/$name.txt" 2>&1
  echo "   exit $? -> $out/$name.txt"; tail -n 12 "$out/$name.txt"
}

run hvp_cost 150 python hvp_cost.py --skip_eigsh --repeats 9 --batch_size 256
run distributed_cost 90 python distributed_cost.py --n_examples 2048 --batch_size 256 --repeats 7
run peers 200 python peers.py --n_examples 2048 --epochs 1 --train_steps 20 --repeats 1 --profile_repeats 3 \
  --tools tf_sharpest_cold tf_sharpest_warm he_lanczos curvlinops_eigsh
