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
TINY = ["--n_filters=4", "--n_dense=16", "--batch_size=64", "--lanczos_top_K=2", "--lanczos_top_K_N=64",
        "--lanczos_batch_size=64", "--verbose=0"]


def run_script(script, *args, timeout=240, check=True):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *args], capture_output=True,
                            text=True, timeout=timeout, env=env, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


def history_rows(save_dir):
    with open(os.path.join(save_dir, "history.csv")) as f:
        return list(csv.DictReader(f))


def lanczos_rows(save_dir):
    with open(os.path.join(save_dir, "lanczos.csv")) as f:
        return list(csv.DictReader(f))


def check_logged_eigenvalues(save_dir, top_k):
    """history.csv's lambda_i of each epoch is lanczos.csv's measurement at that epoch's start (one more after
    training), descending and positive; returns lanczos.csv's eigenvalues, ``[epochs + 1, top_k]``."""
    history, measured = history_rows(save_dir), lanczos_rows(save_dir)
    assert [int(r["epoch"]) for r in measured] == list(range(len(history) + 1))
    eigenvalues = np.array([[float(r[f"lambda_{i + 1}"]) for i in range(top_k)] for r in measured])
    assert np.all(eigenvalues[:, 0] > 0) and np.all(np.diff(eigenvalues, axis=1) <= 0)
    for i in range(top_k):
        np.testing.assert_allclose([float(r[f"lambda_{i + 1}"]) for r in history], eigenvalues[:-1, i], rtol=1e-6)
    np.testing.assert_array_equal(np.load(os.path.join(save_dir, "lanczos.npz"))["eigenvalues"], eigenvalues)
    return eigenvalues


#: TensorFlow's start-up lines, which the programs filter out of stderr (issue 22).
START_UP_NOISE = ("All log messages before absl::InitializeLog()", "cudart_stub.cc", "cuda_platform.cc",
                  "cpu_feature_guard", "failed call to cuInit")


def assert_no_start_up_noise(stderr):
    noise = [line for line in stderr.splitlines() if any(n in line for n in START_UP_NOISE)]
    assert not noise, noise


def markdown_rows(text, first_cell):
    """The cells of the markdown table rows in ``text`` that start with ``| first_cell |``."""
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith(f"| {first_cell} |")]


@pytest.mark.needs_fmnist
def test_simple_cnn_fmnist_with_the_original_flags(tmp_path):
    save_dir = str(tmp_path / "gamma=01")
    result = run_script("train_simple_cnn_cifar.py", "medium_fmnist", save_dir, "--dataset=fmnist", "--augmentation",
               "--n_epochs=2", "--opt_kwargs={'overshoot':0.1,'KK':2}", "--optim=nsgd", "--lr=0.01", "--m=0",
               "--seed=800", "--data_seed=800", "--reduce_callback",
               "--reduce_callback_kwargs={'monitor': 'val_loss', 'patience':200}", "--early_stopping",
               "--early_stopping_patience=500", "--n_examples=128", "--kernel_size=3", *TINY)
    assert_no_start_up_noise(result.stderr)
    rows = history_rows(save_dir)
    assert [r["epoch"] for r in rows] == ["0", "1"]
    for row in rows:
        assert float(row["learning_rate"]) == pytest.approx(0.01)  # the plateau callback's patience is 200
        assert 0 < float(row["loss"]) < 10 and 0 <= float(row["accuracy"]) <= 1
        assert 0 <= float(row["val_accuracy"]) <= 1
        # alpha_ratio_1 = |e_1^T g| / ||g|| for a unit eigenvector e_1: in [0, 1], and alpha_1 = |e_1^T g| > 0.
        assert 0 <= float(row["nsgd_alpha_ratio_1"]) <= 1 and float(row["nsgd_alpha_1"]) > 0
    check_logged_eigenvalues(save_dir, top_k=2)
    config = json.load(open(os.path.join(save_dir, "config.json")))
    assert config["optimizer_kwargs"] == {"gamma": 0.1, "top_k": 2}
    assert config["flags"]["lanczos_top_K_N"] == 64 and config["config"] == "medium_fmnist"
    # final.json holds the test metrics of the saved final model.
    import keras

    from tf_sharpest import data

    final = json.load(open(os.path.join(save_dir, "final.json")))
    model = keras.models.load_model(os.path.join(save_dir, "model_last.keras"))
    assert model.optimizer.get_config()["gamma"] == pytest.approx(0.1)
    splits = data.load("fashion_mnist", data_seed=800)
    test_loss, test_accuracy = model.evaluate(data.eval_dataset(splits.x_test, splits.y_test), verbose=0)
    assert final == pytest.approx({"test_loss": test_loss, "test_accuracy": test_accuracy}, rel=1e-5)


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


def test_model_and_callback_flags_are_refused_before_any_data_is_loaded(tmp_path):
    # Keras's ReduceLROnPlateau ignores unknown keywords, and the model refuses a depth only when built.
    result = run_script("train_simple_cnn_cifar.py", "root", str(tmp_path / "a"), "--dataset=fmnist",
                        "--reduce_callback", "--reduce_callback_kwargs={'patiance': 5}", check=False, timeout=120)
    assert result.returncode == 1
    assert "Unknown --reduce_callback_kwargs key(s) ['patiance']; ReduceLROnPlateau takes ['monitor'" in result.stderr
    assert not (tmp_path / "a").exists()
    result = run_script("train_resnet_cifar.py", "cifar10_resnet32", str(tmp_path / "b"), "--depth=7",
                        check=False, timeout=120)
    assert result.returncode == 1 and "The model flags do not fit CONFIG 'cifar10_resnet32': resnet depth must " \
        "be 6n+2" in result.stderr
    assert "Loaded " not in result.stderr + result.stdout and not (tmp_path / "b").exists()


def write_fake_cifar(directory, n=64):
    folder = os.path.join(directory, "cifar-10-batches-py")
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n)]}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f, protocol=2)


def resnet_argv(save_dir, data_dir):
    """The ResNet script's command line for a tiny run on the fake CIFAR-10 files in ``data_dir``."""
    return ["train_resnet_cifar.py", "cifar10_resnet32_nobn_nodrop", str(save_dir), f"--data_dir={data_dir}",
            "--depth=8", "--n_epochs=1", "--batch_size=32", "--lanczos_top_K=1", "--lanczos_top_K_N=32",
            "--lanczos_batch_size=32", "--verbose=0", "--epoch_size=64"]


@pytest.fixture(scope="module")
def killed_then_tested_resnet_run(tmp_path_factory):
    """A tiny ResNet run on fake CIFAR-10 files, in this process: killed after fit, while the test set was read,
    then run again with the same command, which tests it without training it again. What each step left is
    recorded for the tests; the finished run is shared (only read) by the tests that need one."""
    import contextlib
    import io

    from tf_sharpest import data
    from tf_sharpest.data import _cifar as cifar

    folder = tmp_path_factory.mktemp("resnet")
    write_fake_cifar(str(folder / "data"))
    save_dir = str(folder / "run")
    argv = resnet_argv(save_dir, folder / "data")
    eval_dataset = data.eval_dataset

    def killed_on_the_test_set(x, y, *args, **kwargs):
        if len(x) == 64:  # the test split; the validation split has 32 images
            raise KeyboardInterrupt
        return eval_dataset(x, y, *args, **kwargs)

    # Real CIFAR-10 batches hold 10,000 images each; the fake ones are smaller, so the script runs in this
    # process with the reader's size check relaxed.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cifar, "CIFAR10_BATCH_EXAMPLES", None)
        patch.setattr(data, "eval_dataset", killed_on_the_test_set)
        with pytest.raises(KeyboardInterrupt):
            run_in_process(argv)
        killed = {"epochs": [r["epoch"] for r in history_rows(save_dir)],
                  "final_json": os.path.exists(os.path.join(save_dir, "final.json"))}
        patch.setattr(data, "eval_dataset", eval_dataset)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            final = run_in_process(argv)
    return {"folder": folder, "save_dir": save_dir, "argv": argv, "killed": killed, "final": final,
            "printed": printed.getvalue()}


def test_resnet_on_cifar_files(killed_then_tested_resnet_run):
    run = killed_then_tested_resnet_run
    assert 0.0 <= run["final"]["test_accuracy"] <= 1.0
    assert json.load(open(os.path.join(run["save_dir"], "final.json"))) == run["final"]
    rows = history_rows(run["save_dir"])
    assert len(rows) == 1
    check_logged_eigenvalues(run["save_dir"], top_k=1)


@pytest.mark.needs_fmnist
def test_killed_run_resumes_without_duplicate_or_lost_rows(tmp_path):
    save_dir = str(tmp_path / "run")
    args = ["root", save_dir, "--dataset=fmnist", "--n_examples=512", "--n_epochs=4", "--seed=1", *TINY]
    process = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, "train_simple_cnn_cifar.py"), *args],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = os.path.join(save_dir, "history.csv")
    deadline = time.time() + 200
    while time.time() < deadline:  # kill it once two epochs of the four are logged: during the third
        if os.path.exists(path) and len(history_rows(save_dir)) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted = len(history_rows(save_dir))
    assert 2 <= interrupted < 4
    run_script("train_simple_cnn_cifar.py", *args)
    rows = history_rows(save_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(4))
    saved = np.load(os.path.join(save_dir, "lanczos.npz"))
    assert list(saved["epoch"]) == list(range(5))  # one per epoch and one after training, none twice


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


@pytest.mark.needs_fmnist
def test_tune_gamma_runs_two_trials(tmp_path):
    result = run_script("tune_gamma.py", f"--out={tmp_path}", "--max_trials=2", "--epochs=1", "--n_examples=128",
                        "--n_filters=4", "--num_samples=64", "--gammas=0.1,1", "--top_ks=2")
    # The printed table is what keras-tuner recorded for each trial (its trial.json files).
    trials = {}
    for name in os.listdir(tmp_path / "nsgd_gamma"):
        path = tmp_path / "nsgd_gamma" / name / "trial.json"
        if path.exists():
            trial = json.load(open(path))
            values, metrics = trial["hyperparameters"]["values"], trial["metrics"]["metrics"]
            trials[values["gamma"]] = {"top_k": values["top_k"], "score": trial["score"],
                                       "lambda_1": metrics["lambda_1"]["observations"][-1]["value"][0]}
    assert sorted(trials) == [0.1, 1.0]
    for gamma, trial in trials.items():
        (row,) = markdown_rows(result.stdout, f"{gamma:g}")
        assert row == [f"{gamma:g}", "2", f"{trial['score']:.4f}", f"{trial['lambda_1']:.3f}"]
        assert 0 <= trial["score"] <= 1 and trial["lambda_1"] > 0
    best = max(trials, key=lambda g: trials[g]["score"])
    assert f"Best gamma: {best:g} (K=2), val_accuracy {trials[best]['score']:.4f}" in result.stdout


@pytest.mark.needs_fmnist
def test_main_demo_at_tiny_scale(tmp_path, fmnist_dir):
    result = run_script("fashion_mnist_demo.py", f"--out={tmp_path}", "--n_examples=128", "--epochs=2",
                        "--n_filters=4", "--num_samples=64", "--top_k=2", "--density_probes=2",
                        "--density_steps=10")
    # The local files are read without asking TFDS first, and the demo says where its data came from.
    assert f"Data: Fashion-MNIST from files:{fmnist_dir}" in result.stdout
    assert "dataset_info.json" not in result.stderr and "Constructing tf.data.Dataset" not in result.stderr
    assert_no_start_up_noise(result.stderr)
    assert os.path.getsize(tmp_path / "eigenvalues.png") > 10_000
    summary = json.load(open(tmp_path / "summary.json"))
    eigenvalues = {}
    for name, folder in (("NSGD gamma=0.1", "NSGD_gamma0.1"), ("SGD", "SGD")):
        # Each run's CSVs, its summary and its printed row hold the same numbers.
        eigenvalues[name] = check_logged_eigenvalues(str(tmp_path / folder), top_k=2)
        np.testing.assert_array_equal(summary[name]["eigenvalues"], eigenvalues[name])
        history = history_rows(str(tmp_path / folder))
        np.testing.assert_allclose(summary[name]["val_accuracy"], [float(r["val_accuracy"]) for r in history],
                                   rtol=1e-6)
        (row,) = markdown_rows(result.stdout, name)
        assert row == [name, f"{summary[name]['val_accuracy'][-1]:.4f}", f"{summary[name]['test_accuracy']:.4f}",
                       *[f"{v:.2f}" for v in eigenvalues[name][:, 0]]]
        trace = summary[name]["trace"]
        assert f"{name}: Hessian trace after training {trace['trace']:.1f} +- {trace['trace_stderr']:.1f}" \
            in result.stdout
    # Same initial weights and the same seeded sample: the first measurement is the same in both runs,
    # before NSGD's nudge and SGD part ways.
    np.testing.assert_allclose(eigenvalues["NSGD gamma=0.1"][0], eigenvalues["SGD"][0], rtol=1e-5)


# --------------------------------------------------------------------------- first use and bad input (issue 16)

@pytest.mark.parametrize("flag, message", [
    ("--n_examples=-49900", "--n_examples must be a positive integer (training examples used); leave it unset"),
    ("--n_examples=0", "--n_examples must be a positive integer"),
    ("--epoch_size=-100", "--epoch_size must be a positive integer (examples per epoch); leave it unset"),
    ("--epoch_size=0", "--epoch_size must be a positive integer"),
    ("--lanczos_top_K=-1", "--lanczos_top_K must be 0 (no measurements) or a positive number"),
    ("--lanczos_top_K_N=-5", "--lanczos_top_K_N must be a positive integer"),
    ("--lanczos_batch_size=0", "--lanczos_batch_size must be a positive integer"),
    ("--n_filters=-4", "--n_filters must be a positive integer"),
    ("--lr=nan", "--lr must be a positive number"),
])
def test_bad_sizes_are_usage_errors_before_any_data_is_loaded(tmp_path, flag, message):
    save_dir = tmp_path / "run"
    result = run_script("train_simple_cnn_cifar.py", "root", str(save_dir), "--dataset=fmnist", flag,
                        check=False, timeout=60)
    assert result.returncode == 1
    assert f"FATAL Flags parsing error: flag {flag}: {message}" in result.stderr
    assert "Loaded fashion_mnist" not in result.stderr + result.stdout and not save_dir.exists()


def test_dict_flags_are_bounded_before_parsing_and_quoted_briefly(tmp_path, monkeypatch):
    sys.path.insert(0, EXAMPLES)
    from absl import app

    import paper_training

    huge = "[" + "0," * 5_000_000 + "]"  # took 39 s and 4.8 GB to parse before it was refused
    parsed = []  # what reached the parser: the bound must refuse the huge value before parsing it (no wall time)
    literal_eval = paper_training.ast.literal_eval
    monkeypatch.setattr(paper_training.ast, "literal_eval", lambda text: parsed.append(len(text)) or literal_eval(text))
    with pytest.raises(app.UsageError) as info:
        paper_training.parse_dict_flag("opt_kwargs", huge)
    assert parsed == []
    assert f"--opt_kwargs is {len(huge):,} characters long; at most 4,096 are accepted" in str(info.value)
    assert len(str(info.value)) < 400
    assert paper_training.MAX_DICT_FLAG_CHARS == 4096
    assert paper_training.parse_dict_flag("opt_kwargs", "{'a': [" + "0," * 2000 + "]}")["a"] == [0] * 2000

    nested = "[" * 4000  # under the bound, but too deep to parse: refused with its start only
    result = run_script("train_simple_cnn_cifar.py", "root", str(tmp_path / "run"), f"--opt_kwargs={nested}",
                        check=False, timeout=60)
    assert result.returncode == 1
    assert "--opt_kwargs must be a dict literal" in result.stderr
    assert "... (4,000 characters) is not a literal and was not run." in result.stderr
    assert len(result.stderr) < 2000 and not (tmp_path / "run").exists()
    result = run_script("train_simple_cnn_cifar.py", "root", str(tmp_path / "run"),
                        "--reduce_callback_kwargs=" + "{" * 5000, check=False, timeout=60)
    assert result.returncode == 1 and "--reduce_callback_kwargs is 5,000 characters long" in result.stderr
    assert len(result.stderr) < 2000


SIMPLE_CNN_ONLY = ("--n_filters", "--kernel_size", "--n_dense", "--use_bias", "--kernel_initializer")
RESNET_ONLY = ("--depth", "--init_scale", "--width")
SHARED = ("--lanczos_top_K_N", "--opt_kwargs", "--n_examples", "--overwrite", "--dropout", "--bn", "--l2")


@pytest.mark.parametrize("script, own, other", [
    ("train_simple_cnn_cifar.py", SIMPLE_CNN_ONLY, RESNET_ONLY),
    ("train_resnet_cifar.py", RESNET_ONLY, SIMPLE_CNN_ONLY),
])
def test_training_scripts_help_lists_their_own_flags_and_exits_0(script, own, other):
    for help_flag in ("--help", "-h", "--helpshort"):
        result = run_script(script, help_flag, check=False, timeout=60)
        assert result.returncode == 0, result.stderr
        listed = [line.split(":")[0].strip().replace("[no]", "") for line in result.stdout.splitlines()
                  if line.startswith("  --")]
        for name in own + SHARED:
            assert name in listed, name
        for name in other:
            assert name not in listed, name
        assert "CONFIG SAVE_DIR" in result.stdout
    full = run_script(script, "--helpfull", check=False, timeout=60)
    assert full.returncode == 0 and "--lanczos_top_K_N" in full.stdout


def imports_tensorflow_for(script, *args):
    """(exit status, stdout, whether TensorFlow was imported) of ``script`` run in a fresh interpreter."""
    code = ("import runpy, sys\n"
            f"sys.argv = {[script, *args]!r}\n"
            f"sys.path.insert(0, {EXAMPLES!r})\n"
            "try:\n"
            f"    runpy.run_path({os.path.join(EXAMPLES, script)!r}, run_name='__main__')\n"
            "    status = 0\n"
            "except SystemExit as e:\n"
            "    status = e.code\n"
            "print('STATUS', status, 'TF', 'tensorflow' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    return result.stdout.splitlines()[-1], result.stdout, result.stderr


@pytest.mark.parametrize("script", ["tune_gamma.py", "fashion_mnist_demo.py"])
def test_argparse_scripts_help_is_fast_and_shows_defaults(script):
    last, out, _ = imports_tensorflow_for(script, "--help")
    assert last == "STATUS 0 TF False"  # parsed before TensorFlow is imported
    assert "--num_samples NUM_SAMPLES" in out and "examples per Lanczos measurement (default:" in out
    if script == "tune_gamma.py":
        assert "(default: [0.01, 0.1, 1.0, 5.0])" in " ".join(out.split())
        assert "comma-separated NSGD gammas to choose from" in out


@pytest.mark.parametrize("script, flag, message", [
    ("fashion_mnist_demo.py", "--epochs=0", "argument --epochs: must be a positive integer, got 0"),
    ("fashion_mnist_demo.py", "--n_examples=-5", "argument --n_examples: must be a positive integer, got -5"),
    ("fashion_mnist_demo.py", "--lr=0", "argument --lr: must be a positive number, got '0'"),
    ("tune_gamma.py", "--epochs=0", "argument --epochs: must be a positive integer, got 0"),
    ("tune_gamma.py", "--top_ks=0,2", "argument --top_ks: expected comma-separated positive integers, got '0,2'"),
    ("tune_gamma.py", "--gammas=nan", "argument --gammas: expected comma-separated finite numbers, got 'nan'"),
])
def test_argparse_scripts_refuse_bad_sizes_before_loading(script, flag, message):
    last, _, err = imports_tensorflow_for(script, flag)
    assert last == "STATUS 2 TF False" and message in err


def run_in_process(argv):
    """``paper_training.run`` on ``argv`` in this process (ResNet flags), as the script's main would."""
    from absl import flags

    sys.path.insert(0, EXAMPLES)
    import paper_training

    if "optim" not in flags.FLAGS:
        paper_training.define_flags("resnet")
    flags.FLAGS.unparse_flags()
    remaining = flags.FLAGS(argv)
    try:
        return paper_training.run(remaining, "resnet")
    finally:
        flags.FLAGS.unparse_flags()


def test_rerunning_a_complete_run_leaves_it_unless_overwrite(killed_then_tested_resnet_run, tmp_path,
                                                             monkeypatch, capsys):
    import shutil

    from tf_sharpest.data import _cifar as cifar

    monkeypatch.setattr(cifar, "CIFAR10_BATCH_EXAMPLES", None)
    run = killed_then_tested_resnet_run
    # Killed after fit, while the test set was read: the rerun tests it without training it again.
    assert run["killed"] == {"epochs": ["0"], "final_json": False}
    final = run["final"]
    assert "had finished (1 of 1 epochs run); testing the backed-up model" in run["printed"]
    assert [r["epoch"] for r in history_rows(run["save_dir"])] == ["0"]
    assert list(np.load(os.path.join(run["save_dir"], "lanczos.npz"))["epoch"]) == [0, 1]
    assert json.load(open(os.path.join(run["save_dir"], "final.json"))) == final
    assert not os.path.exists(os.path.join(run["save_dir"], "backup"))

    # The rest changes the run: on a copy (its config.json names the shared data, not the folder).
    save_dir = str(tmp_path / "run")
    shutil.copytree(run["save_dir"], save_dir)
    argv = resnet_argv(save_dir, run["folder"] / "data")
    outputs = {name: open(os.path.join(save_dir, name), "rb").read()
               for name in ("history.csv", "lanczos.npz", "final.json", "config.json")}
    result = run_script("train_resnet_cifar.py", *argv[1:], check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (f"The run in {save_dir} is complete (test accuracy {final['test_accuracy']:.4f}, test loss "
            f"{final['test_loss']:.4f}); nothing to do. Pass --overwrite") in result.stdout
    result = run_script("train_resnet_cifar.py", *argv[1:], "--n_epochs=3", check=False, timeout=60)
    assert result.returncode == 0 and "This command differs from that run in: n_epochs." in result.stdout
    for name, content in outputs.items():
        assert open(os.path.join(save_dir, name), "rb").read() == content, name

    again = run_in_process(argv + ["--overwrite", "--seed=5"])
    assert "--overwrite: deleted the earlier run's config.json, history.csv, lanczos.npz" in capsys.readouterr().out
    assert [r["epoch"] for r in history_rows(save_dir)] == ["0"]  # started over, not appended
    assert list(np.load(os.path.join(save_dir, "lanczos.npz"))["epoch"]) == [0, 1]
    assert json.load(open(os.path.join(save_dir, "config.json")))["flags"]["seed"] == 5
    assert json.load(open(os.path.join(save_dir, "final.json"))) == again
