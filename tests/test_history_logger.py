"""examples/paper_training.history_logger: a resumed run's rows stay under their own columns."""

from __future__ import annotations

import csv
import os
import sys

import keras

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))

import paper_training  # noqa: E402


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _log_one_epoch(logger, epoch, logs):
    logger.on_train_begin()
    logger.on_epoch_end(epoch, logs)
    logger.on_train_end()


def _earlier_run(path):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["epoch", "loss", "val_loss"], ["0", "0.9", "1.0"], ["1", "0.7", "0.8"]])


def test_a_new_logged_key_gets_its_own_column_and_earlier_rows_stay_aligned(tmp_path):
    path = str(tmp_path / "history.csv")
    _earlier_run(path)
    _log_one_epoch(paper_training.history_logger(path), 2, {"val_loss": 0.6, "loss": 0.5, "lanczos_converged": 1.0})
    assert _rows(path) == [["epoch", "loss", "val_loss", "lanczos_converged"], ["0", "0.9", "1.0", ""],
                           ["1", "0.7", "0.8", ""], ["2", "0.5", "0.6", "1.0"]]
    # Keras's own logger, resumed the same way, writes that row one column off under the old header.
    _earlier_run(path)
    _log_one_epoch(keras.callbacks.CSVLogger(path, append=True), 2,
                   {"val_loss": 0.6, "loss": 0.5, "lanczos_converged": 1.0})
    assert _rows(path)[0] == ["epoch", "loss", "val_loss"] and _rows(path)[-1] == ["2", "1.0", "0.5", "0.6"]


def test_the_files_column_order_is_kept_and_a_missing_key_is_marked(tmp_path):
    path = str(tmp_path / "history.csv")
    _earlier_run(path)
    _log_one_epoch(paper_training.history_logger(path), 2, {"val_loss": 0.6})
    assert _rows(path)[0] == ["epoch", "loss", "val_loss"] and _rows(path)[-1] == ["2", "NA", "0.6"]


def test_a_new_file_gets_a_header(tmp_path):
    path = str(tmp_path / "history.csv")
    _log_one_epoch(paper_training.history_logger(path), 0, {"loss": 0.5, "accuracy": 0.25})
    # As Keras's own logger does it (with validation columns even before validation has run).
    assert _rows(path) == [["epoch", "accuracy", "loss", "val_accuracy", "val_loss"], ["0", "0.25", "0.5", "NA", "NA"]]
