"""The example programs at tiny scale: real Fashion-MNIST files, fake CIFAR-10 batches."""

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
FMNIST = "/usr/share/datasets/fashion-mnist"
needs_fmnist = pytest.mark.skipif(not os.path.isdir(FMNIST), reason="Debian's dataset-fashion-mnist not installed")
TINY = ["--n_filters=4", "--n_dense=16", "--batch_size=64", "--lanczos_top_K=2", "--lanczos_top_K_N=64",
        "--lanczos_batch_size=64", "--verbose=0"]


def run_script(script, *args, timeout=240, check=True):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *args], capture_output=True,
                            text=True, timeout=timeout, env=env, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def history_rows(save_dir):
    with open(os.path.join(save_dir, "history.csv")) as f:
        return list(csv.DictReader(f))


@needs_fmnist
def test_simple_cnn_fmnist_with_the_original_flags(tmp_path):
    save_dir = str(tmp_path / "gamma=01")
    run_script("train_simple_cnn_cifar.py", "medium_fmnist", save_dir, "--dataset=fmnist", "--augmentation",
               "--n_epochs=2", "--opt_kwargs={'overshoot':0.1,'KK':2}", "--optim=nsgd", "--lr=0.01", "--m=0",
               "--seed=800", "--data_seed=800", "--reduce_callback",
               "--reduce_callback_kwargs={'monitor': 'val_loss', 'patience':200}", "--early_stopping",
               "--early_stopping_patience=500", "--n_examples=256", "--kernel_size=3", *TINY)
    rows = history_rows(save_dir)
    assert [r["epoch"] for r in rows] == ["0", "1"]
    for column in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "lambda_1", "lambda_2",
                   "nsgd_alpha_1"):
        assert column in rows[0] and np.isfinite(float(rows[0][column])), column
    config = json.load(open(os.path.join(save_dir, "config.json")))
    assert config["optimizer_kwargs"] == {"gamma": 0.1, "top_k": 2}
    assert config["flags"]["lanczos_top_K_N"] == 64 and config["config"] == "medium_fmnist"
    for name in ("lanczos.npz", "lanczos.csv", "model_last.keras", "final.json"):
        assert os.path.exists(os.path.join(save_dir, name)), name


def test_injection_in_a_dict_flag_is_refused(tmp_path):
    marker = tmp_path / "x"
    result = run_script("train_simple_cnn_cifar.py", "root", str(tmp_path / "run"),
                        f"--opt_kwargs=__import__('os').system('touch {marker}')", "--optim=nsgd", check=False)
    assert result.returncode != 0
    assert "not a literal and was not run" in result.stderr + result.stdout
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_unknown_opt_kwargs_and_config_are_clear_errors(tmp_path):
    result = run_script("train_simple_cnn_cifar.py", "root", str(tmp_path), "--optim=nsgd",
                        "--opt_kwargs={'overshot': 0.1}", check=False)
    assert result.returncode != 0 and "Unknown --opt_kwargs key(s) ['overshot']" in result.stderr + result.stdout


def write_fake_cifar(directory, n=64):
    folder = os.path.join(directory, "cifar-10-batches-py")
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n)]}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f, protocol=2)


def test_resnet_on_cifar_files(tmp_path, monkeypatch):
    # Real CIFAR-10 batches hold 10,000 images each; the fake ones are smaller, so the
    # script runs in this process with the reader's size check relaxed.
    from absl import flags

    sys.path.insert(0, EXAMPLES)
    import paper_training
    from tf_sharpest.data import cifar

    monkeypatch.setattr(cifar, "CIFAR10_BATCH_EXAMPLES", None)
    write_fake_cifar(str(tmp_path / "data"))
    if "optim" not in flags.FLAGS:
        paper_training.define_flags("resnet")
    save_dir = str(tmp_path / "resnet")
    argv = ["train_resnet_cifar.py", "cifar10_resnet32_nobn_nodrop", save_dir, f"--data_dir={tmp_path / 'data'}",
            "--depth=8", "--n_epochs=1", "--batch_size=32", "--lanczos_top_K=1", "--lanczos_top_K_N=32",
            "--lanczos_batch_size=32", "--verbose=0", "--epoch_size=64"]
    flags.FLAGS.unparse_flags()
    remaining = flags.FLAGS(argv)
    try:
        final = paper_training.run(remaining, "resnet")
    finally:
        flags.FLAGS.unparse_flags()
    assert 0.0 <= final["test_accuracy"] <= 1.0
    rows = history_rows(save_dir)
    assert len(rows) == 1 and np.isfinite(float(rows[0]["lambda_1"]))


@needs_fmnist
def test_killed_run_resumes_without_duplicate_or_lost_rows(tmp_path):
    save_dir = str(tmp_path / "run")
    args = ["root", save_dir, "--dataset=fmnist", "--n_examples=1024", "--n_epochs=6", "--seed=1", *TINY]
    process = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, "train_simple_cnn_cifar.py"), *args],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = os.path.join(save_dir, "history.csv")
    deadline = time.time() + 200
    while time.time() < deadline:  # kill it once two epochs are logged: during the third
        if os.path.exists(path) and len(history_rows(save_dir)) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted = len(history_rows(save_dir))
    assert 2 <= interrupted < 6
    run_script("train_simple_cnn_cifar.py", *args)
    rows = history_rows(save_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(6))
    saved = np.load(os.path.join(save_dir, "lanczos.npz"))
    assert list(saved["epoch"]) == list(range(7))  # one per epoch and one after training, none twice


def test_backup_survives_a_kill_while_the_next_epoch_is_written(tmp_path):
    sys.path.insert(0, EXAMPLES)
    import keras
    from epoch_backup import EpochBackup, finished_epochs, restore_backup

    def compiled_model():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
        return model

    x, y = np.ones((8, 3), np.float32), np.zeros((8, 2), np.float32)
    model = compiled_model()
    backup_dir = str(tmp_path / "backup")
    model.fit(x, y, epochs=2, verbose=0)
    backup = EpochBackup(backup_dir)
    backup.set_model(model)
    backup.on_epoch_end(1)
    saved_weights = [w.copy() for w in model.get_weights()]
    saved_momentum = [v.numpy().copy() for v in model.optimizer.variables]
    # The next epoch: trained further, then killed while its weights file was half written.
    model.fit(x, y, epochs=1, verbose=0)
    with open(os.path.join(backup_dir, "epoch0003.weights.h5"), "wb") as f:
        f.write(b"\x89HDF\r\n\x1a\n" + bytes(88))

    resumed = compiled_model()
    assert finished_epochs(backup_dir) == 2 and restore_backup(resumed, backup_dir) == 2
    for restored, expected in zip(resumed.get_weights(), saved_weights):
        np.testing.assert_array_equal(restored, expected)
    for restored, expected in zip(resumed.optimizer.variables, saved_momentum):
        np.testing.assert_array_equal(restored.numpy(), expected)
    assert restore_backup(compiled_model(), str(tmp_path / "none")) == 0
    backup.on_epoch_end(2)  # rewrites the broken file and drops the older one
    assert sorted(os.listdir(backup_dir)) == ["epoch0003.weights.h5", "state.json"]
    backup.on_train_end()
    assert not os.path.exists(backup_dir)


@needs_fmnist
def test_tune_gamma_runs_two_trials(tmp_path):
    result = run_script("tune_gamma.py", f"--out={tmp_path}", "--max_trials=2", "--epochs=1", "--n_examples=256",
                        "--n_filters=4", "--num_samples=64", "--gammas=0.1,1", "--top_ks=2")
    assert "Best gamma:" in result.stdout
    table = [line for line in result.stdout.splitlines() if line.startswith("| 0.1 ") or line.startswith("| 1 ")]
    assert len(table) == 2


@needs_fmnist
def test_main_demo_at_tiny_scale(tmp_path):
    result = run_script("fashion_mnist_demo.py", f"--out={tmp_path}", "--n_examples=256", "--epochs=2",
                        "--n_filters=4", "--num_samples=64", "--top_k=2")
    assert "| NSGD gamma=0.1 |" in result.stdout and "| SGD |" in result.stdout
    assert os.path.getsize(tmp_path / "eigenvalues.png") > 10_000
    summary = json.load(open(tmp_path / "summary.json"))
    assert len(summary["SGD"]["eigenvalues"]) == 3
