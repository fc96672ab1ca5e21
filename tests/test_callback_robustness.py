"""LanczosCallback: curvature options (issue 12) and the faults a new user hit (issue 16)."""

import os
import stat
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_sharpest.callbacks import LanczosCallback, MeasurementLog
from tf_sharpest.callbacks.lanczos_callback import describe_error
from tf_sharpest.hessian import top_eigenpairs
from tf_sharpest.linalg import LanczosSolver, LOBPCGSolver
from tf_sharpest.operators import Curvature
from tf_sharpest.optimizers import NSGD, DirectionConsumer

from references import (
    classification_data,
    explicit_ggn,
    explicit_hessian,
    softmax_ce_output_hessian,
    sparse_ce,
    tiny_cnn,
    tiny_mlp,
)


@pytest.fixture
def data():
    return classification_data((6, 6, 1), n=32, dtype="float32", seed=3)


def frozen_cnn(optimizer=None, seed=0):
    model = tiny_cnn("float32", seed=seed)
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.0), loss=sparse_ce("float32"))
    return model


def top(matrix, k):
    return np.linalg.eigvalsh(matrix.astype(np.float64))[::-1][:k]


# -- issue 12: what the callback measures ------------------------------------------------------------

def test_ggn_block_and_per_block_logs_against_explicit_matrices(data):
    x, y = data
    model = frozen_cnn()
    common = dict(top_k=2, num_samples=len(x), batch_size=16, solver=LanczosSolver(tol=1e-6), seed=0)
    callback = LanczosCallback((x, y), curvature="ggn", **common)
    blocks = [LanczosCallback((x, y), curvature=Curvature("ggn", variables=layer), log_prefix=f"{name}_", **common)
              for name, layer in (("dense", model.layers[-1]), ("conv", model.layers[0]))]
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[callback, *blocks])
    ggn = explicit_ggn(model, x, y, softmax_ce_output_hessian)
    np.testing.assert_allclose([history.history[f"lambda_{i}"][0] for i in (1, 2)], top(ggn, 2), rtol=1e-4)
    conv_size = sum(int(np.prod(v.shape)) for v in model.layers[0].trainable_variables)
    np.testing.assert_allclose([history.history[f"dense_lambda_{i}"][0] for i in (1, 2)],
                               top(ggn[conv_size:, conv_size:], 2), rtol=1e-4)
    np.testing.assert_allclose([history.history[f"conv_lambda_{i}"][0] for i in (1, 2)],
                               top(ggn[:conv_size, :conv_size], 2), rtol=1e-4)
    assert blocks[0].history[0].eigenvalues.shape == (2,)


def test_variables_restricts_the_measured_hessian(data):
    x, y = data
    model = frozen_cnn()
    callback = LanczosCallback((x, y), top_k=2, num_samples=len(x), batch_size=16, solver=LanczosSolver(tol=1e-6),
                               curvature=Curvature(variables=model.layers[-1]))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    hessian = explicit_hessian(model, x, y, sparse_ce("float32"))
    start = hessian.shape[0] - callback.operator.dim
    np.testing.assert_allclose(callback.history[0].eigenvalues, top(hessian[start:, start:], 2), rtol=1e-4)
    assert callback.eigenvectors.shape == (callback.operator.dim, 2)


def test_preconditioned_sharpness_with_adam(data):
    x, y = data
    model = tiny_mlp("float32")
    xs = x.reshape(len(x), -1)[:, :4]
    model.compile(optimizer=keras.optimizers.Adam(0.0), loss=sparse_ce("float32"))  # lr 0: weights stay
    callback = LanczosCallback((xs, y), top_k=1, num_samples=len(x), batch_size=32, solver=LanczosSolver(tol=1e-6),
                               curvature=Curvature(preconditioned=True))
    with pytest.warns(RuntimeWarning, match="not built yet"):  # before Adam's first step there is no D
        model.fit(xs, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])
    assert np.isnan(callback.history[0].eigenvalues[0])
    from tf_sharpest.operators import optimizer_preconditioner

    diagonal = optimizer_preconditioner(model.optimizer, model.trainable_variables)
    scale = 1 / np.sqrt(diagonal)
    reference = top(scale[:, None] * explicit_hessian(model, xs, y, sparse_ce("float32")) * scale[None, :], 1)
    np.testing.assert_allclose(callback.history[-1].eigenvalues, reference, rtol=1e-3)


def test_preconditioned_with_sgd_is_refused_before_training(data):
    x, y = data
    model = frozen_cnn()
    with pytest.raises(ValueError, match="no second-moment slots"):
        model.fit(x, y, epochs=1, verbose=0,
                  callbacks=[LanczosCallback((x, y), curvature=Curvature(preconditioned=True))])


def test_top_eigenpairs_curvature_and_variables(data):
    x, y = data
    model = frozen_cnn()
    ggn = explicit_ggn(model, x, y, softmax_ce_output_hessian)
    result = top_eigenpairs(model, (x, y), k=2, curvature="ggn", tol=1e-6)
    np.testing.assert_allclose(result.eigenvalues, top(ggn, 2), rtol=1e-4)
    with pytest.raises(ValueError, match="curvature must be one of"):
        top_eigenpairs(model, (x, y), curvature="fisher")


# -- issue 16: wrong or silent results --------------------------------------------------------------

def test_one_callback_on_a_second_model_of_another_size_starts_cold(data):
    x, y = data
    callback = LanczosCallback((x, y), top_k=2, num_samples=16, batch_size=16, seed=0)
    frozen_cnn(NSGD(0.01, top_k=2)).fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    bigger = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(), keras.layers.Dense(5),
                               keras.layers.Dense(3)])
    bigger.compile(optimizer=NSGD(0.01, top_k=2), loss=sparse_ce("float32"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no failed measurement
        bigger.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    assert all(np.isfinite(m.eigenvalues).all() for m in callback.history)
    assert bigger.optimizer.has_directions
    np.testing.assert_array_equal(bigger.optimizer.get_directions(), callback.eigenvectors)


def test_freezing_layers_of_a_built_model_starts_cold(data):
    x, y = data
    model = frozen_cnn(keras.optimizers.SGD(0.01))
    callback = LanczosCallback((x, y), top_k=2, num_samples=16, batch_size=16, seed=0)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    model.layers[0].trainable = False
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=sparse_ce("float32"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    assert callback.eigenvectors.shape[0] == sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert np.isfinite(callback.history[-1].eigenvalues).all()


class RefusingSGD(keras.optimizers.SGD, DirectionConsumer):
    num_directions = 2

    def set_directions(self, eigenvalues, eigenvectors):
        raise ValueError("directions must have shape [999, 2]")


def test_a_refused_direction_hand_off_does_not_stop_fit(data):
    x, y = data
    callback = LanczosCallback((x, y), top_k=2, num_samples=16, batch_size=16, seed=0,
                               solver=LanczosSolver(warm_start=False))
    model = frozen_cnn(keras.optimizers.SGD(0.01))
    model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    model.compile(optimizer=RefusingSGD(0.01), loss=sparse_ce("float32"))
    with pytest.warns(RuntimeWarning, match="refused the measured eigenvectors.*999"):
        history = model.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["lambda_1"]).all()


def test_dict_inputs_of_a_multi_input_model(data):
    x, y = data
    image = keras.Input((6, 6, 1), name="image")
    extra = keras.Input((2,), name="extra")
    merged = keras.layers.Concatenate()([keras.layers.Flatten()(image), extra])
    model = keras.Model({"image": image, "extra": extra}, keras.layers.Dense(3)(merged))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=sparse_ce("float32"))
    inputs = {"image": x, "extra": np.random.default_rng(0).standard_normal((len(x), 2)).astype("float32")}
    callback = LanczosCallback((inputs, y), top_k=2, num_samples=len(x), batch_size=16, solver=LanczosSolver(tol=1e-6))
    model.fit(inputs, y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    reference = top_eigenpairs(model, (inputs, y), k=2, batch_size=16, tol=1e-6).eigenvalues
    np.testing.assert_allclose(callback.history[0].eigenvalues, reference, rtol=1e-4)


def test_resample_draws_new_seeded_samples_from_a_dataset_that_does_not_shuffle(data):
    x, y = data
    stream = tf.data.Dataset.from_tensor_slices((x, np.arange(len(x)))).batch(8)  # y = example index
    drawn = {}
    for name in ("a", "b"):
        callback = LanczosCallback(stream, top_k=1, num_samples=8, seed=7)
        callback._source.reset()
        drawn[name] = [sorted(callback._source.draw()[1].tolist()) for _ in range(3)]
    assert drawn["a"] == drawn["b"]  # the seed decides
    assert len({tuple(d) for d in drawn["a"]}) == 3  # three different samples
    assert drawn["a"][0] != list(range(8))  # not just the first examples
    other = LanczosCallback(stream, top_k=1, num_samples=8, seed=8)
    assert sorted(other._source.draw()[1].tolist()) != drawn["a"][0]


def test_batchnorm_warning_and_training_mode(data):
    x, y = data
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(3, 3), keras.layers.BatchNormalization(),
                              keras.layers.Flatten(), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=sparse_ce("float32"))
    with pytest.warns(RuntimeWarning, match="seen only 0 updates.*about 100.*training=True"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0,
                  callbacks=[LanczosCallback((x, y), top_k=1, num_samples=16, batch_size=16)])
    before = [v.numpy().copy() for v in model.non_trainable_variables]
    callback = LanczosCallback((x, y), top_k=1, num_samples=16, batch_size=16, curvature=Curvature(training=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        callback.set_model(model)
        callback.on_train_begin()
        callback._measure()
    for old, variable in zip(before, model.non_trainable_variables):
        np.testing.assert_array_equal(variable.numpy(), old)


def test_step_column_is_the_global_step_after_a_resumed_run(data, tmp_path):
    x, y = data
    model = frozen_cnn(keras.optimizers.SGD(0.01))
    backup = str(tmp_path / "backup")

    class StopAt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("interrupted")

    callback = LanczosCallback((x, y), top_k=1, num_samples=8, batch_size=8, save_dir=str(tmp_path), seed=0)
    with pytest.raises(RuntimeError):
        model.fit(x, y, batch_size=16, epochs=4, verbose=0,
                  callbacks=[callback, keras.callbacks.BackupAndRestore(backup), StopAt()])
    resumed = LanczosCallback((x, y), top_k=1, num_samples=8, batch_size=8, save_dir=str(tmp_path), seed=0)
    model.fit(x, y, batch_size=16, epochs=4, verbose=0, callbacks=[resumed, keras.callbacks.BackupAndRestore(backup)])
    saved = MeasurementLog(str(tmp_path)).read()
    assert [m.epoch for m in saved] == [0, 1, 2, 3, 4]
    assert [m.step for m in saved] == [0, 2, 4, 6, 8]  # 2 steps per epoch, counted across the resume


def test_top_k_beyond_the_parameters_pads_with_nan_and_saves(data, tmp_path):
    x, y = data
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])  # 12 parameters
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=sparse_ce("float32"))
    xs = x.reshape(len(x), -1)[:, :3]
    callback = LanczosCallback((xs, y), top_k=15, num_samples=16, save_dir=str(tmp_path),
                               solver=LanczosSolver(tol=1e-6))
    with pytest.warns(RuntimeWarning, match="top_k=15 exceeds the 12 parameters"):
        history = model.fit(xs, y, epochs=1, verbose=0, callbacks=[callback])
    assert np.isfinite([history.history[f"lambda_{i}"][0] for i in range(1, 13)]).all()
    assert np.isnan([history.history[f"lambda_{i}"][0] for i in range(13, 16)]).all()
    saved = np.load(tmp_path / "lanczos.npz")
    assert saved["eigenvalues"].shape == (2, 15)


def test_saved_files_get_ordinary_permissions(data, tmp_path):
    x, y = data
    previous = os.umask(0o022)
    try:
        frozen_cnn().fit(x, y, epochs=1, verbose=0, callbacks=[LanczosCallback((x, y), top_k=1, num_samples=8,
                                                                                save_dir=str(tmp_path))])
    finally:
        os.umask(previous)
    for name in ("lanczos.npz", "lanczos.csv"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644


# -- issue 16: bad arguments, messages, progress -----------------------------------------------------

@pytest.mark.parametrize("arguments, message", [
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"tol": -1}, "tol must be a positive finite number"),
    ({"tol": "a"}, "tol must be a positive finite number"),
    ({"max_iterations": 0}, "max_matvecs must be a positive integer"),
    ({"solver": "lanczos"}, "solver must be a tf_sharpest.linalg.LanczosSolver"),
    ({"curvature": 3}, "curvature must be 'hessian'"),
    ({"save_dir": ""}, "save_dir must be a folder"),  # issue 22: it silently saved nothing
    ({"num_samples": 0}, "num_samples must be a positive integer"),
    ({"verbose": 3}, "verbose must be one of"),
    ({"curvature": "fisher"}, "curvature must be one of"),
    ({"blocks": ["dense"]}, "blocks must be a dict"),
    ({"save_eigenvectors_every": -1}, "save_eigenvectors_every"),
])
def test_bad_arguments_are_refused_in_the_constructor(data, arguments, message):
    with pytest.raises(ValueError, match=message):
        LanczosCallback(data, **arguments)


def test_top_eigenpairs_refuses_a_bad_tol(data):
    with pytest.raises(ValueError, match="tol must be a positive finite number, got 'a'"):
        top_eigenpairs(frozen_cnn(), data, tol="a")


@tf.function
def assert_positive_in_a_graph(x):
    tf.debugging.assert_positive(x, message="sample has a NaN")
    return x


def test_failure_message_keeps_the_line_that_says_what_went_wrong():
    with pytest.raises(tf.errors.OpError) as raised:
        assert_positive_in_a_graph(tf.constant([-1.0, 2.0]))
    assert str(raised.value).startswith("Graph execution error:")
    assert describe_error(raised.value).startswith("assertion failed: [sample has a NaN.")
    assert describe_error(ValueError("in user code:\n\n  File x.py\n\n  ValueError: the real reason")) == \
        "ValueError: the real reason"
    assert describe_error(ValueError("plain message\nmore")) == "plain message"


@pytest.mark.parametrize("fit_verbose, expected", [(0, 0), (1, 1), (2, 2)])
def test_verbose_auto_follows_fit(data, capsys, fit_verbose, expected):
    x, y = data
    callback = LanczosCallback((x, y), top_k=1, num_samples=8, batch_size=8)
    frozen_cnn().fit(x, y, epochs=1, verbose=fit_verbose, callbacks=[callback])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "LanczosCallback at epoch" in line]
    assert len(lines) == (0 if expected == 0 else 2)  # epoch 0 and after training
    assert ("matvec" in out.replace("matvecs", "")) == (expected == 1)  # the progress bar's unit


# -- issue 15: the tracking method -----------------------------------------------------------------

def test_the_warm_block_solver_tracks_the_same_eigenvalues_as_lanczos(data):
    x, y = data
    results = {}
    for method, solver in (("lobpcg", LOBPCGSolver(tol=1e-4)), ("lanczos", LanczosSolver(tol=1e-4))):
        model = frozen_cnn(keras.optimizers.SGD(0.05))
        callback = LanczosCallback((x, y), top_k=2, num_samples=len(x), batch_size=16, solver=solver, seed=0)
        history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[callback], shuffle=False)
        results[method] = history.history
    np.testing.assert_allclose(results["lobpcg"]["lambda_1"], results["lanczos"]["lambda_1"], rtol=1e-3)
    np.testing.assert_allclose(results["lobpcg"]["lambda_2"], results["lanczos"]["lambda_2"], rtol=1e-3)
    assert results["lobpcg"]["lanczos_fallbacks"] == [0.0, 0.0, 0.0]


def test_a_block_solve_that_misses_tol_falls_back_to_lanczos_and_says_so(data):
    x, y = data
    model = frozen_cnn()
    callback = LanczosCallback((x, y), top_k=2, num_samples=16, batch_size=16, seed=0,
                               solver=LOBPCGSolver(tol=1e-9, max_matvecs=20))  # float32 cannot reach 1e-9
    with pytest.warns(RuntimeWarning, match="without converging"):  # nor can the Lanczos that finishes the job
        history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[callback])
    assert history.history["lanczos_fallbacks"] == [1.0, 1.0]
    assert all(m.values["fallbacks"] == 1.0 for m in callback.history)
    with pytest.raises(ValueError, match="method must be one of"):
        LanczosCallback((x, y), method="power")


def test_fit_with_its_default_verbose_auto(data, capsys):
    """Keras hands callbacks fit's verbose='auto' unresolved: the callback must read it as a progress bar."""
    from tf_sharpest.callbacks import SpectrumCallback
    from tf_sharpest.callbacks.progress import fit_verbosity

    assert [fit_verbosity({"verbose": v}) for v in ("auto", 0, 1, 2, None)] == [1, 0, 1, 2, 0]
    x, y = data
    lanczos = LanczosCallback((x, y), top_k=1, num_samples=8, batch_size=8)
    spectrum = SpectrumCallback((x, y), num_samples=8, batch_size=8)
    history = frozen_cnn().fit(x, y, epochs=1, callbacks=[lanczos, spectrum])  # verbose left at "auto"
    assert np.isfinite(history.history["lambda_1"][0]) and "hessian_trace" in history.history
    assert "LanczosCallback at epoch 0" in capsys.readouterr().out


def test_a_multi_worker_strategy_gets_one_shared_seed(mirrored_strategy):
    from tf_sharpest.callbacks.sampling import shared_seed

    class TwoWorkers:  # what MultiWorkerMirroredStrategy reports on each of two one-device workers
        num_replicas_in_sync = 2

        class extended:
            worker_devices = ("/job:worker/task:0/device:CPU:0",)

    assert shared_seed(None, TwoWorkers()) == 0 and shared_seed(7, TwoWorkers()) == 7
    assert shared_seed(None, mirrored_strategy) is None  # one process: a None seed stays free


def test_a_block_of_another_model_is_refused_before_training(data):
    x, y = data
    model = frozen_cnn()
    stranger = tiny_cnn("float32", seed=5).layers[-1]
    for arguments in ({"curvature": Curvature(variables=stranger)},
                      {"curvature": Curvature("ggn", variables=[stranger])}):
        with pytest.raises(ValueError, match="is not one of the model's trainable variables"):
            model.fit(x, y, epochs=1, verbose=0, callbacks=[LanczosCallback((x, y), top_k=1, **arguments)])
