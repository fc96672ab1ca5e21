#!/usr/bin/env bash
# Runs the five studies one after another at the default (reduced) scale, and studies 2 and 3 again with
# augmentation, then plots them.
# Any extra flags (e.g. --epochs 20 --n_examples 50000 --num_samples 2250) go to every run script.
# Finished runs are kept in runs/experiments/ and skipped on a rerun, so an interrupted
# batch resumes where it stopped. About three hours on 2 CPU cores, an hour of it for edge_of_stability
# (see experiments/RESULTS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
for study in nudged_sgd sgd_step spectrum_shape lr_batch_size edge_of_stability; do
  python -m "experiments.${study}.run" "$@"
done
for study in lr_batch_size nudged_sgd; do  # the nearby setting: the same with augmentation
  python -m "experiments.${study}.run" --augment --out "runs/experiments/${study}_augmented" "$@"
done
python -m experiments.edge_of_stability.final_check  # batch sharpness at the final weights, on more batches
# The runs' small files (no weights) into experiments/<study>/results/runs*, to be committed: the tables are then
# recomputable by a reader (each study's plot --out reads them; experiments.verify checks marked tables).
for study in nudged_sgd sgd_step spectrum_shape lr_batch_size edge_of_stability; do
  python -m experiments.keep_runs "${study}"
done
for study in lr_batch_size nudged_sgd; do
  python -m experiments.keep_runs "${study}" --src "runs/experiments/${study}_augmented" \
    --dest "experiments/${study}/results/runs_augmented"
done
for study in nudged_sgd sgd_step spectrum_shape lr_batch_size edge_of_stability; do
  python -m "experiments.${study}.plot"
done
for study in lr_batch_size nudged_sgd; do
  python -m "experiments.${study}.plot" --out "runs/experiments/${study}_augmented" \
    --figures "experiments/${study}/results/augmented"
done
