import copy
import csv
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_sharpest.callbacks import LanczosCallback
from tf_sharpest.hessian import top_eigenpairs
from tf_sharpest.linalg import LanczosSolver
from tf_sharpest.utils import FlatLayout

from references import classification_data, explicit_hessian, sparse_ce, tiny_cnn


def compiled_cnn(learning_rate=0.0, optimizer=None, seed=0):
    model = tiny_cnn("float32", seed=seed)
    model.compile(optimizer=optimizer or keras.optimizers.SGD(learning_rate), loss=sparse_ce("float32"))
    return model


@pytest.fixture
def data():
    return classification_data((6, 6, 1), n=40, dtype="float32", seed=3)


def test_logged_eigenvalues_equal_top_eigenpairs_when_weights_are_frozen(data):
    x, y = data
    model = compiled_cnn(learning_rate=0.0)
    callback = LanczosCallback((x, y), top_k=3, num_samples=len(x), batch_size=16, solver=LanczosSolver(tol=1e-6),
                               seed=1)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[callback])
    reference = top_eigenpairs(model, (x, y), k=3, batch_size=16, tol=1e-6).eigenvalues
    for i in range(3):
        np.testing.assert_allclose(history.history[f"lambda_{i + 1}"], [reference[i]] * 2, rtol=1e-4)
    assert len(callback.history) == 3  # two epochs and one after training
    assert [m.epoch for m in callback.history] == [0, 1, 2]
    assert all(m.matvecs > 0 and m.seconds > 0 for m in callback.history)
    assert history.history["lanczos_matvecs"][0] == callback.history[0].matvecs


def test_one_trace_for_all_measurements_of_a_run(data):
    x, y = data
    model = compiled_cnn(learning_rate=0.01)
    callback = LanczosCallback((x, y), top_k=2, num_samples=20, batch_size=8, seed=0, solver=LanczosSolver(tol=1e-6))
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[callback])  # a new sample each time
    assert len(callback.history) == 4
    matvec = callback.operator.traced_functions["matvec"]
    assert matvec.experimental_get_tracing_count() == 1
    assert "shape=(5, " in matvec.pretty_printed_concrete_signatures()  # 20 examples in equal batches of 5
    assert copy.deepcopy(callback).operator is None  # a used callback still deep-copies (keras-tuner)
    # The reused operator measured the last sample as an explicitly formed Hessian of it does.
    sample = callback.operator.sample
    x_last = np.concatenate([b[0].numpy() for b in sample.batches])
    y_last = np.concatenate([b[1].numpy() for b in sample.batches])
    assert not np.array_equal(x_last, x[:20])  # not simply the first examples
    reference = np.linalg.eigvalsh(explicit_hessian(model, x_last, y_last, sparse_ce("float32")))[::-1][:2]
    np.testing.assert_allclose(callback.history[-1].eigenvalues, reference, rtol=1e-3)


def test_csv_logger_history_and_prefix(data, tmp_path):
    x, y = data
    model = compiled_cnn(learning_rate=0.05)
    log = tmp_path / "log.csv"
    callback = LanczosCallback((x, y), top_k=2, num_samples=24, batch_size=8, seed=0, log_prefix="train_")
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0,
                        callbacks=[callback, keras.callbacks.CSVLogger(str(log))])
    with open(log) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    for key in ("train_lambda_1", "train_lambda_2", "train_lanczos_matvecs", "train_lanczos_seconds"):
        assert key in rows[0] and key in history.history
    np.testing.assert_allclose([float(r["train_lambda_1"]) for r in rows], history.history["train_lambda_1"],
                               rtol=1e-6)
    assert history.history["train_lambda_1"][0] >= history.history["train_lambda_2"][0]
    # Training moved the weights, and each epoch drew a fresh sample: the values change.
    assert len(set(history.history["train_lambda_1"])) == 3


def test_frequency_in_batches(data):
    x, y = data
    model = compiled_cnn(learning_rate=0.01)
    callback = LanczosCallback((x, y), top_k=2, num_samples=16, batch_size=16, frequency=3, seed=0)
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])  # 5 batches per epoch
    assert [m.step for m in callback.history] == [0, 3, 6, 9, 10]
    assert [m.epoch for m in callback.history] == [0, 0, 1, 1, 2]  # steps 0-4 are epoch 0
    # Each epoch logs its latest measurement.
    assert history.history["lambda_1"][1] == pytest.approx(callback.history[3].eigenvalues[0])


def test_resample_false_reuses_one_sample(data):
    x, y = data
    model = compiled_cnn(learning_rate=0.0)
    common = dict(top_k=1, num_samples=10, batch_size=10, seed=0, solver=LanczosSolver(tol=1e-6))
    fixed = LanczosCallback((x, y), resample=False, **common)
    fresh = LanczosCallback((x, y), resample=True, log_prefix="fresh_", **common)
    model.fit(x, y, epochs=2, batch_size=20, verbose=0, callbacks=[fixed, fresh])
    fixed_values = [m.eigenvalues[0] for m in fixed.history]
    fresh_values = [m.eigenvalues[0] for m in fresh.history]
    np.testing.assert_allclose(fixed_values, fixed_values[0], rtol=1e-4)
    assert np.ptp(fresh_values) > 1e-3 * abs(fresh_values[0])


def test_dataset_input_and_deep_copy(data):
    x, y = data
    stream = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(40, seed=0).repeat().batch(8)
    callback = LanczosCallback(stream, top_k=2, num_samples=16, batch_size=8, seed=0, solver=LanczosSolver(tol=1e-6))
    clone = copy.deepcopy(callback)  # what keras-tuner does to every callback for each trial
    assert clone.data is stream and clone is not callback
    model = compiled_cnn(learning_rate=0.05)
    drawn, references = [], []

    def explicit_top_two(epoch, logs=None):  # after the clone's on_epoch_begin: on the sample it just measured
        batches = clone.operator.sample.batches
        xs, ys = (np.concatenate([b[i].numpy() for b in batches]) for i in (0, 1))
        rows = [int(np.flatnonzero((x == example).all(axis=(1, 2, 3)))[0]) for example in xs]
        np.testing.assert_array_equal(ys, y[rows])  # 16 examples of the stream, with their labels
        drawn.append(sorted(rows))
        hessian = explicit_hessian(model, xs, ys, sparse_ce("float32"))
        references.append(np.linalg.eigvalsh(hessian)[::-1][:2])

    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0,
                        callbacks=[clone, keras.callbacks.LambdaCallback(on_epoch_begin=explicit_top_two)])
    assert len(drawn) == 2 and all(len(rows) == 16 for rows in drawn) and drawn[0] != drawn[1]
    for epoch, reference in enumerate(references):
        np.testing.assert_allclose(clone.history[epoch].eigenvalues, reference, rtol=1e-3)
        assert history.history["lambda_1"][epoch] == pytest.approx(clone.history[epoch].eigenvalues[0])
    assert callback.history == [] and callback.operator is None  # the original is left as it was


def test_failed_measurement_logs_nan_warns_once_and_training_goes_on(data):
    x, y = data
    bad_x = x.copy()
    bad_x[:, 0, 0, 0] = np.nan  # every sample the callback draws has a NaN loss
    model = compiled_cnn(learning_rate=0.01)
    callback = LanczosCallback((bad_x, y), top_k=2, num_samples=8, batch_size=8)
    with pytest.warns(RuntimeWarning, match="failed.*not finite") as warned:
        history = model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[callback])
    assert len([w for w in warned if "LanczosCallback" in str(w.message)]) == 1
    assert len(history.history["loss"]) == 3 and np.all(np.isfinite(history.history["loss"]))
    assert np.all(np.isnan(history.history["lambda_1"]))
    assert all("not finite" in m.error for m in callback.history)


def test_save_dir_files_map_back_to_variables(data, tmp_path):
    x, y = data
    model = compiled_cnn(learning_rate=0.01)
    callback = LanczosCallback((x, y), top_k=2, num_samples=16, batch_size=16, save_dir=str(tmp_path),
                               save_eigenvectors_every=2, seed=0)
    model.fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=[callback])
    saved = np.load(tmp_path / "lanczos.npz")
    assert saved["eigenvalues"].shape == (5, 2) and list(saved["epoch"]) == [0, 1, 2, 3, 4]
    with open(tmp_path / "lanczos.csv") as f:
        assert len(list(csv.DictReader(f))) == 5
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("eigenvectors")) == [
        "eigenvectors_epoch0001.npz", "eigenvectors_epoch0003.npz"]
    vectors = np.load(tmp_path / "eigenvectors_epoch0003.npz")
    shapes = [tuple(int(d) for d in s.split(",") if d) for s in vectors["variable_shapes"]]
    assert shapes == [tuple(v.shape) for v in model.trainable_variables]
    assert list(vectors["variable_names"]) == [v.path for v in model.trainable_variables]
    parts = FlatLayout(shapes).unflatten(vectors["eigenvectors"][:, 0])
    assert [tuple(p.shape) for p in parts] == shapes
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_bad_arguments(data):
    with pytest.raises(ValueError, match="top_k"):
        LanczosCallback(data, top_k=0)
    with pytest.raises(ValueError, match="frequency"):
        LanczosCallback(data, frequency="batch")
    with pytest.raises(ValueError, match="data"):
        LanczosCallback("x.npy")


def nsgd_model(gamma=0.5, top_k=2, seed=0):
    from tf_sharpest.optimizers import NSGD

    return compiled_cnn(optimizer=NSGD(learning_rate=0.05, gamma=gamma, top_k=top_k), seed=seed)


def test_nsgd_receives_the_measured_eigenvectors_and_alpha_is_logged(data):
    x, y = data
    model = nsgd_model(top_k=2)
    seen = []
    probe = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(model.optimizer.get_directions().copy()))
    callback = LanczosCallback((x, y), top_k=3, num_samples=24, batch_size=24, seed=0)
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback, probe])
    assert not np.allclose(seen[0], seen[1])  # a new measurement, new directions
    np.testing.assert_array_equal(model.optimizer.get_directions(), callback.eigenvectors[:, :2])
    for key in ("nsgd_alpha_1", "nsgd_alpha_2", "nsgd_alpha_ratio_1"):
        assert key in history.history and np.all(np.isfinite(history.history[key]))
    assert 0 < history.history["nsgd_alpha_ratio_1"][-1] <= 1


def test_callback_needs_as_many_directions_as_nsgd(data):
    x, y = data
    model = nsgd_model(top_k=3)
    with pytest.raises(ValueError, match=r"num_directions=3 .* pass LanczosCallback\(\.\.\., top_k=3\)"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[LanczosCallback((x, y), top_k=2, num_samples=8)])


def test_failed_measurement_keeps_nsgd_directions(data):
    x, y = data
    sample_x = x.copy()
    model = nsgd_model(top_k=2)
    callback = LanczosCallback((sample_x, y), top_k=2, num_samples=16, batch_size=16, seed=0)
    directions = []

    def corrupt_after_first_epoch(epoch, logs):
        directions.append(model.optimizer.get_directions().copy())
        sample_x[:] = np.nan  # every later measurement now fails

    breaker = keras.callbacks.LambdaCallback(on_epoch_end=corrupt_after_first_epoch)
    with pytest.warns(RuntimeWarning, match="LanczosCallback"):
        history = model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[callback, breaker])
    assert np.isfinite(history.history["lambda_1"][0]) and np.all(np.isnan(history.history["lambda_1"][1:]))
    np.testing.assert_array_equal(model.optimizer.get_directions(), directions[0])
    assert model.optimizer.has_directions


class Interrupt(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise RuntimeError("simulated interruption")


def test_backup_and_restore_keeps_nsgd_directions(data, tmp_path):
    x, y = data
    backup = str(tmp_path / "backup")
    model = nsgd_model(top_k=2)
    callback = LanczosCallback((x, y), top_k=2, num_samples=16, batch_size=16, seed=0, frequency=1000)
    with pytest.raises(RuntimeError, match="simulated"):
        model.fit(x, y, batch_size=8, epochs=4, verbose=0,
                  callbacks=[callback, keras.callbacks.BackupAndRestore(backup), Interrupt(2)])
    saved_directions = model.optimizer.get_directions().copy()
    assert model.optimizer.has_directions

    resumed = nsgd_model(top_k=2, seed=1)  # a new process: fresh weights and optimizer
    restored = {}
    probe = keras.callbacks.LambdaCallback(on_train_begin=lambda logs: restored.update(
        directions=resumed.optimizer.get_directions().copy(), has=resumed.optimizer.has_directions))
    history = resumed.fit(x, y, batch_size=8, epochs=4, verbose=0,
                          callbacks=[keras.callbacks.BackupAndRestore(backup), probe])
    assert restored["has"]
    np.testing.assert_array_equal(restored["directions"], saved_directions)
    assert len(history.history["loss"]) == 2  # epochs 2 and 3 only


def test_keras_tuner_random_search_over_gamma(data, tmp_path):
    keras_tuner = pytest.importorskip("keras_tuner")
    from tf_sharpest.optimizers import NSGD

    x, y = data
    stream = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(8)  # not picklable: must be shared

    class Seen(keras.callbacks.Callback):
        """Each epoch of each trial: the optimizer's gamma, the logs, and what the trial's LanczosCallback measured."""

        def __init__(self, lanczos, records):
            super().__init__()
            self.lanczos, self.records = lanczos, records

        def __deepcopy__(self, memo):  # the tuner deep-copies the list per trial: this trial's LanczosCallback
            return Seen(copy.deepcopy(self.lanczos, memo), self.records)

        def on_epoch_end(self, epoch, logs=None):
            self.records.append({"gamma": self.model.optimizer.gamma, "epoch": epoch, "logs": dict(logs),
                                 "measured": self.lanczos.history[epoch].eigenvalues[0]})

    def build(hp):
        model = tiny_cnn("float32")
        model.compile(optimizer=NSGD(0.05, gamma=hp.Choice("gamma", [0.1, 1.0]), top_k=2),
                      loss=sparse_ce("float32"), metrics=["accuracy"])
        return model

    tuner = keras_tuner.RandomSearch(build, objective="val_accuracy", max_trials=2, seed=0,
                                     directory=str(tmp_path), project_name="gamma", overwrite=True)
    callback = LanczosCallback(stream, top_k=2, num_samples=16, batch_size=16, seed=0)
    records = []
    tuner.search(x, y, validation_data=(x, y), batch_size=8, epochs=2, verbose=0,
                 callbacks=[callback, Seen(callback, records)])
    trials = tuner.oracle.get_best_trials(2)
    assert len(trials) == 2
    assert sorted(t.hyperparameters.get("gamma") for t in trials) == [0.1, 1.0]
    for trial in trials:
        assert trial.status == "COMPLETED", trial.message
        gamma = trial.hyperparameters.get("gamma")
        epochs = [r for r in records if r["gamma"] == pytest.approx(gamma)]  # the optimizer had the trial's gamma
        assert [r["epoch"] for r in epochs] == [0, 1]
        for r in epochs:  # the logs carried what the callback measured
            assert r["logs"]["lambda_1"] == pytest.approx(r["measured"], rel=1e-6)
        # The tuner keeps each metric at the trial's best epoch (the first with the best val_accuracy).
        best = epochs[int(np.argmax([r["logs"]["val_accuracy"] for r in epochs]))]
        assert trial.score == pytest.approx(best["logs"]["val_accuracy"])
        assert trial.metrics.get_last_value("lambda_1") == pytest.approx(best["measured"], rel=1e-6)
    # Both trials start from the same weights and seeded sample: one first measurement, then gamma tells them apart.
    first = [r["measured"] for r in records if r["epoch"] == 0]
    assert first[0] == pytest.approx(first[1], rel=1e-5)
