"""Crash-safe per-epoch backups, so that rerunning a killed training command resumes it.

Keras's ``BackupAndRestore`` writes its weights file in place and its epoch count
in a second file: a process killed while it writes leaves a truncated weights
file (the next run fails to start) or new weights next to an old epoch count
(the next run silently redoes an epoch from the wrong weights). Here every
epoch's state goes to a new file, and a small ``state.json``, replaced in one
``os.replace``, says which file and epoch are current: at any instant of a kill
the backup on disk is one whole, consistent epoch.

Usage::

    initial_epoch = restore_backup(model, "run/backup")
    model.fit(data, epochs=10, initial_epoch=initial_epoch,
              callbacks=[..., EpochBackup("run/backup")])
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import keras

from tf_sharpest.utils import atomic_path

STATE_FILE = "state.json"


def _read_state(backup_dir: str) -> dict | None:
    path = os.path.join(backup_dir, STATE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def finished_epochs(backup_dir: str) -> int:
    """The number of epochs the backup in ``backup_dir`` holds (0 when there is none)."""
    state = _read_state(backup_dir)
    return int(state["epoch"]) if state else 0


def training_finished(backup_dir: str) -> bool:
    """Whether the backup in ``backup_dir`` is of a ``fit`` that ended (``EpochBackup(delete_on_train_end=False)``)."""
    state = _read_state(backup_dir)
    return bool(state and state.get("finished"))


def restore_backup(model: keras.Model, backup_dir: str) -> int:
    """Loads the backed-up weights and optimizer state into ``model``; returns the epoch to start from."""
    state = _read_state(backup_dir)
    if state is None:
        return 0
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # its variables must exist to be loaded
    model.load_weights(os.path.join(backup_dir, state["weights"]))
    return int(state["epoch"])


class EpochBackup(keras.callbacks.Callback):
    """Backs up the model and optimizer after every epoch; deletes the backup when training ends.

    Put it last in the callback list, so that an epoch counts as done only once
    every other callback (e.g. ``CSVLogger``) has recorded it.

    Args:
      backup_dir: a folder for this run's backup only.
      delete_on_train_end: delete the backup when ``fit`` ends (a rerun then
        starts afresh, as with Keras's ``BackupAndRestore``). With ``False``
        the backup is kept and marked finished (see :func:`training_finished`),
        for a caller that still has work to do after ``fit`` and deletes the
        backup itself once that is done.
    """

    def __init__(self, backup_dir: str, delete_on_train_end: bool = True):
        super().__init__()
        self.backup_dir = backup_dir
        self.delete_on_train_end = delete_on_train_end

    def _write_state(self, state: dict) -> None:
        with atomic_path(os.path.join(self.backup_dir, STATE_FILE)) as path, open(path, "w") as f:
            json.dump(state, f)

    def on_epoch_end(self, epoch, logs=None):
        os.makedirs(self.backup_dir, exist_ok=True)
        name = f"epoch{epoch + 1:04d}.weights.h5"
        self.model.save_weights(os.path.join(self.backup_dir, name), overwrite=True)
        self._write_state({"epoch": epoch + 1, "weights": name})
        # Only now is the previous epoch's file no longer the current backup.
        for stale in glob.glob(os.path.join(self.backup_dir, "epoch*.weights.h5")):
            if os.path.basename(stale) != name:
                os.remove(stale)

    def on_train_end(self, logs=None):
        if self.delete_on_train_end:
            shutil.rmtree(self.backup_dir, ignore_errors=True)
            return
        state = _read_state(self.backup_dir)
        if state is not None:
            # fit ended (all epochs, or early stopping): a rerun must not train this run any further.
            self._write_state({**state, "finished": True})
