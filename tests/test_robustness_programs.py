"""Robustness of the library's file writes and of the example programs' first use (issue 16)."""

import contextlib
import os
import stat
import sys

import numpy as np
import pytest

from tf_sharpest.utils import atomic_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


@contextlib.contextmanager
def umask(value):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)],
                         ids=["umask022", "umask002", "umask077"])
def test_atomic_writes_get_an_ordinary_files_permissions(tmp_path, mask, expected):
    with umask(mask):
        with atomic_path(tmp_path / "a.csv") as path, open(path, "w") as f:
            f.write("x\n")
        with atomic_path(str(tmp_path / "sub" / "b.npz")) as path:
            np.savez(path, x=np.arange(3))
        with open(tmp_path / "ordinary", "w") as f:
            f.write("x\n")
    assert mode(tmp_path / "ordinary") == expected
    assert mode(tmp_path / "a.csv") == expected and (tmp_path / "a.csv").read_text() == "x\n"
    assert mode(tmp_path / "sub" / "b.npz") == expected
    assert list(np.load(tmp_path / "sub" / "b.npz")["x"]) == [0, 1, 2]
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "ordinary", "sub"]  # no temporary left behind


def test_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "history.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as path, open(path, "w") as f:
            f.write("new\n")
            raise RuntimeError("boom")
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["history.csv"]


def test_backup_state_and_trimmed_history_get_an_ordinary_files_permissions(tmp_path):
    sys.path.insert(0, EXAMPLES)
    import keras

    import paper_training
    from epoch_backup import STATE_FILE, EpochBackup

    history = tmp_path / "history.csv"
    history.write_text("epoch,loss\n0,1.0\n1,0.5\n2,0.25\n")
    os.chmod(history, 0o644)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    backup = EpochBackup(str(tmp_path / "backup"))
    backup.set_model(model)
    with umask(0o022):
        paper_training.trim_history(str(history), 2)
        backup.on_epoch_end(0)
    assert history.read_text().splitlines() == ["epoch,loss", "0,1.0", "1,0.5"]
    assert mode(history) == 0o644
    assert mode(tmp_path / "backup" / STATE_FILE) == 0o644
    assert mode(tmp_path / "backup" / "epoch0001.weights.h5") == 0o644
