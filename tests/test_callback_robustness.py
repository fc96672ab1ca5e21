"""LanczosCallback: curvature options (issue 12) and the faults a new user hit (issue 16)."""

import os
import stat
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_sharpest.callbacks import LanczosCallback, MeasurementLog
from tf_sharpest.callbacks._lanczos_callback import describe_error
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
    from tf_sharpest.callbacks._progress import fit_verbosity

    assert [fit_verbosity({"verbose": v}) for v in ("auto", 0, 1, 2, None)] == [1, 0, 1, 2, 0]
    x, y = data
    lanczos = LanczosCallback((x, y), top_k=1, num_samples=8, batch_size=8)
    spectrum = SpectrumCallback((x, y), num_samples=8, batch_size=8)
    history = frozen_cnn().fit(x, y, epochs=1, callbacks=[lanczos, spectrum])  # verbose left at "auto"
    assert np.isfinite(history.history["lambda_1"][0]) and "hessian_trace" in history.history
    assert "LanczosCallback at epoch 0" in capsys.readouterr().out


def test_a_multi_worker_strategy_gets_one_shared_seed(mirrored_strategy):
    from tf_sharpest.callbacks._sampling import shared_seed

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


# -- issue 26: the composed API (what, how, when) and its deprecated keywords ---------------------------------------

def test_lanczos_callback_has_at_most_14_parameters():
    import inspect

    assert len(inspect.signature(LanczosCallback).parameters) <= 14  # 22 before issue 26


def history_of(data, model=None, **kwargs):
    x, y = data
    model = model or frozen_cnn()
    callback = LanczosCallback((x, y), top_k=2, num_samples=16, batch_size=16, seed=0, verbose=0, **kwargs)
    return model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[callback]).history


@pytest.mark.parametrize("old, new, suggestion", [
    ({"tol": 1e-6}, {"solver": LanczosSolver(tol=1e-6)}, r"solver=tf_sharpest\.linalg\.LanczosSolver\(tol=1e-06\)"),
    ({"max_iterations": 6}, {"solver": LanczosSolver(max_matvecs=6)}, r"LanczosSolver\(max_matvecs=6\)"),
    ({"warm_start": False}, {"solver": LanczosSolver(warm_start=False)}, r"LanczosSolver\(warm_start=False\)"),
    ({"method": "lobpcg"}, {"solver": LOBPCGSolver()}, r"solver=tf_sharpest\.linalg\.LOBPCGSolver\(\)"),
    ({"method": "auto"}, {"solver": LanczosSolver()}, r"solver=tf_sharpest\.linalg\.LanczosSolver\(\)"),
    ({"training": True}, {"curvature": Curvature(training=True)}, r"curvature=Curvature\('hessian', training=True"),
    ({"loss": "sparse"}, {"curvature": "sparse"}, r"curvature=Curvature\('hessian', loss="),
    ({"variables": "dense"}, {"curvature": "dense"}, r"curvature=Curvature\('hessian', variables=\.\.\.\)"),
])
def test_each_deprecated_keyword_still_works_with_the_same_numbers_and_warns(data, old, new, suggestion):
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    models = [frozen_cnn(), frozen_cnn()]
    layer = {id(m): m.layers[-1] for m in models}
    resolved = []
    for model, kwargs in zip(models, (old, new)):
        kwargs = dict(kwargs)
        if kwargs.get("loss") == "sparse":
            kwargs["loss"] = loss
        if kwargs.get("curvature") == "sparse":
            kwargs["curvature"] = Curvature(loss=loss)
        if kwargs.get("variables") == "dense":
            kwargs["variables"] = layer[id(model)]
        if kwargs.get("curvature") == "dense":
            kwargs["curvature"] = Curvature(variables=layer[id(model)])
        resolved.append((model, kwargs))
    (old_model, old_kwargs), (new_model, new_kwargs) = resolved
    with pytest.warns(DeprecationWarning, match=suggestion) as warned:
        old_history = history_of(data, old_model, **old_kwargs)
    assert any(w.filename == __file__ for w in warned if w.category is DeprecationWarning)  # points at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        new_history = history_of(data, new_model, **new_kwargs)
    for key in ("lambda_1", "lambda_2", "lanczos_matvecs", "lanczos_converged"):
        np.testing.assert_allclose(old_history[key], new_history[key], rtol=1e-6)


def test_deprecated_preconditioned_and_blocks_still_work_with_the_same_numbers_and_warn(data):
    x, y = data
    xs = x.reshape(len(x), -1)[:, :4]
    histories = []
    for kwargs in ({"preconditioned": True}, {"curvature": Curvature(preconditioned=True)}):
        model = tiny_mlp("float32")
        model.compile(optimizer=keras.optimizers.Adam(0.0), loss=sparse_ce("float32"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            histories.append(history_of((xs, y), model, **kwargs) | {"_": [str(w.message) for w in caught]})
    assert any("write curvature=Curvature('hessian', preconditioned=True)" in m for m in histories[0]["_"])
    assert not any("deprecated" in m for m in histories[1]["_"])
    np.testing.assert_allclose(histories[0]["lambda_1"], histories[1]["lambda_1"], rtol=1e-6)  # [nan] unbuilt Adam

    model = frozen_cnn()
    with pytest.warns(DeprecationWarning, match=r"one more LanczosCallback per block.*Curvature\(variables=layer\), "
                                                r"log_prefix=f\"\{name\}_\"\)"):
        old = LanczosCallback((x, y), top_k=2, num_samples=16, batch_size=16, seed=0, verbose=0,
                              blocks={"dense": model.layers[-1]}, solver=LanczosSolver(tol=1e-6))
    old_history = model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[old]).history
    # The block's own solve draws its start vector after the main one's: the new form's seed
    # sequence differs, so the eigenvalues agree to the solver's tolerance, not bit for bit.
    new = LanczosCallback((x, y), top_k=2, num_samples=16, batch_size=16, seed=0, verbose=0,
                          curvature=Curvature(variables=model.layers[-1]), log_prefix="dense_",
                          solver=LanczosSolver(tol=1e-6))
    new_history = model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[new]).history
    for key in ("dense_lambda_1", "dense_lambda_2"):
        np.testing.assert_allclose(old_history[key], new_history[key], rtol=1e-4)
    with pytest.raises(TypeError, match="pass them to tf_sharpest.operators.Curvature"):
        LanczosCallback((x, y), curvature=Curvature("ggn"), training=True)
    with pytest.raises(TypeError, match="give them to the solver"):
        LanczosCallback((x, y), solver=LanczosSolver(), tol=1e-4)
    with pytest.raises(TypeError, match="unexpected keyword argument 'tolerance'"):
        LanczosCallback((x, y), tolerance=1e-4)


def test_spectrum_callback_deprecated_variables_still_work_and_warn(data):
    from tf_sharpest.callbacks import SpectrumCallback

    x, y = data
    traces = []
    for use_old in (True, False):
        model = frozen_cnn()
        bias = model.layers[-1].bias
        kwargs = {"variables": bias} if use_old else {"curvature": Curvature(variables=bias)}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            callback = SpectrumCallback((x, y), num_samples=16, batch_size=16, trace_method="exact", density_every=0,
                                        final_density=False, seed=0, verbose=0, **kwargs)
        assert any("variables= is deprecated" in str(w.message) for w in caught) == use_old
        traces.append(model.fit(x, y, epochs=1, verbose=0, callbacks=[callback]).history["hessian_trace"])
    assert traces[0] == traces[1]


def test_a_callable_curvature_and_a_named_block(data):
    from tf_sharpest.operators import HessianOperator

    x, y = data
    model = frozen_cnn()
    hessian = explicit_hessian(model, x[:16], y[:16], sparse_ce("float32"))
    by_name = history_of((x[:16], y[:16]), model, curvature=Curvature(variables=model.layers[-1].name),
                         solver=LanczosSolver(tol=1e-6))
    start = hessian.shape[0] - sum(int(np.prod(v.shape)) for v in model.layers[-1].trainable_variables)
    np.testing.assert_allclose([by_name["lambda_1"][0], by_name["lambda_2"][0]], top(hessian[start:, start:], 2),
                               rtol=1e-4)
    built = []

    def my_curvature(model, sample):
        built.append(sample.num_examples)
        return HessianOperator(model, sample)

    callable_history = history_of((x[:16], y[:16]), model, curvature=my_curvature, solver=LanczosSolver(tol=1e-6))
    np.testing.assert_allclose([callable_history["lambda_1"][0], callable_history["lambda_2"][0]], top(hessian, 2),
                               rtol=1e-4)
    assert built == [16, 16]  # one epoch and the measurement after training


def test_curvature_and_solvers_serialize():
    spec = Curvature("ggn", variables=["dense", "conv2d/kernel"], loss=keras.losses.MeanSquaredError(),
                     training=True)
    config = spec.get_config()
    assert config["variables"] == ["dense", "conv2d/kernel"] and config["kind"] == "ggn"
    again = Curvature.from_config(config)
    assert again.get_config() == config and isinstance(again.loss, keras.losses.MeanSquaredError)
    for solver in (LanczosSolver(tol=1e-5, max_matvecs=50, warm_start=False), LOBPCGSolver(tol=1e-4)):
        assert type(solver).from_config(solver.get_config()) == solver
    with pytest.raises(ValueError, match="curvature must be one of"):
        Curvature("fisher")
    with pytest.raises(ValueError, match="max_matvecs must be a positive integer"):
        LOBPCGSolver(max_matvecs=0)


def test_the_lobpcg_fallback_returns_a_new_result_and_mutates_none(monkeypatch):
    """Issue 26: the fallback used to add the block solve's products to Lanczos's result in place."""
    import dataclasses

    from tf_sharpest.linalg import EigenResult, _solvers

    matrix = np.diag([5.0, 3.0, 1.0, 0.5]).astype(np.float32)
    unconverged = EigenResult(np.array([4.0]), np.eye(4, 1, dtype=np.float32), np.array([1.0]), 7, False)
    finished = EigenResult(np.array([5.0]), np.eye(4, 1, dtype=np.float32), np.array([0.0]), 5, True)
    monkeypatch.setattr(_solvers, "lobpcg", lambda *args, **kwargs: unconverged)
    monkeypatch.setattr(_solvers, "run_lanczos", lambda *args, **kwargs: finished)
    before = (dataclasses.asdict(unconverged), dataclasses.asdict(finished))
    result = LOBPCGSolver(tol=1e-3).solve(matrix, 1)
    assert result.num_matvecs == 12 and result.fallbacks == 1 and result.converged
    assert result is not finished and result is not unconverged
    after = (dataclasses.asdict(unconverged), dataclasses.asdict(finished))
    assert all(before[i]["num_matvecs"] == after[i]["num_matvecs"] for i in (0, 1))


# -- issue 26: steering is the DirectionConsumer protocol -------------------------------------------------------------

class RecordingSGD(keras.optimizers.SGD, DirectionConsumer):
    """A hand-written consumer: records what it is handed and reports one metric."""

    def __init__(self, learning_rate, directions=2):
        super().__init__(learning_rate)
        self._directions = directions
        self.received = []

    @property
    def num_directions(self):
        return self._directions

    def set_directions(self, eigenvalues, eigenvectors):
        self.received.append((np.array(eigenvalues), np.array(eigenvectors)))

    def direction_logs(self):
        return {"recorded": float(len(self.received))}


def test_a_direction_consumer_is_handed_each_whole_parameter_measurement(data):
    x, y = data
    consumer = RecordingSGD(0.01)
    model = frozen_cnn(keras.optimizers.LossScaleOptimizer(consumer))  # unwrapped, as under mixed precision
    callback = LanczosCallback((x, y), top_k=3, num_samples=16, batch_size=16, seed=0, log_prefix="h_")
    block = LanczosCallback((x, y), top_k=2, num_samples=16, batch_size=16, seed=0, log_prefix="dense_",
                            curvature=Curvature(variables=model.layers[-1]))
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[callback, block])
    assert len(consumer.received) == 3  # two epochs and after training; none from the block's measurements
    for measurement, (eigenvalues, eigenvectors) in zip(callback.history, consumer.received):
        np.testing.assert_array_equal(eigenvalues, measurement.eigenvalues)
        assert eigenvectors.shape == (callback.operator.dim, 3)
    np.testing.assert_array_equal(consumer.received[-1][1], callback.eigenvectors)
    assert history.history["h_recorded"] == [1.0, 2.0]


def test_steering_needs_the_protocol_not_a_method_name(data):
    x, y = data

    class DuckSGD(keras.optimizers.SGD):  # has set_directions and top_k, but is no DirectionConsumer
        top_k = 9
        calls = 0

        def set_directions(self, *args):
            DuckSGD.calls += 1

    history_of(data, frozen_cnn(DuckSGD(0.01)))  # not refused for top_k=9 > 2, and never called
    assert DuckSGD.calls == 0
    with pytest.raises(ValueError, match=r"RecordingSGD needs num_directions=3 .* only top_k=2; pass "
                                         r"LanczosCallback\(\.\.\., top_k=3\)"):
        history_of(data, frozen_cnn(RecordingSGD(0.01, directions=3)))
    model = frozen_cnn(RecordingSGD(0.01, directions=3))  # a block is never handed over: nothing to refuse
    assert np.isfinite(history_of(data, model, curvature=Curvature(variables=model.layers[-1]))["lambda_1"]).all()
    assert model.optimizer.received == []


# -- issue 22: duplicate measurements are refused when fit starts -----------------------------------------------------

def test_keras_hands_every_callback_of_one_fit_the_same_params_dict(data):
    """The Keras contract the duplicate check relies on: CallbackList.set_params shares one dict per fit."""
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append(self.params)

    x, y = data
    model = frozen_cnn()
    model.fit(x, y, epochs=1, verbose=0, callbacks=[Probe(), Probe()])
    model.fit(x, y, epochs=1, verbose=0, callbacks=[Probe()])
    assert isinstance(seen[0], dict) and seen[0] is seen[1], "Keras no longer shares params among a fit's callbacks"
    assert seen[2] is not seen[0], "Keras reuses one params dict across fits"


def test_two_callbacks_logging_the_same_keys_are_refused_at_the_start_of_fit(data, tmp_path):
    from tf_sharpest.callbacks import BatchSharpnessCallback, SpectrumCallback

    x, y = data
    model = frozen_cnn(keras.optimizers.SGD(0.1))
    before = [v.numpy().copy() for v in model.trainable_variables]
    hessian = LanczosCallback((x, y), top_k=2, num_samples=16)
    ggn = LanczosCallback((x, y), top_k=3, num_samples=16, curvature="ggn")
    with pytest.raises(ValueError, match=r"LanczosCallback and LanczosCallback .* both log the same keys "
                                         r"\['lambda_1', 'lambda_2', 'lambda_1_stderr', 'lambda_2_stderr', "
                                         r"'lanczos_matvecs'.*log_prefix="):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[hessian, ggn])
    assert hessian.history == []
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables))
    with pytest.raises(ValueError, match="The same LanczosCallback is listed twice"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[hessian, hessian])
    spectra = [SpectrumCallback((x, y), num_samples=16, curvature=kind, density_every=0, final_density=False)
               for kind in ("hessian", "ggn")]
    with pytest.raises(ValueError, match=r"both log the same keys \['spectrum_matvecs', 'spectrum_seconds'\]"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=spectra)
    with pytest.raises(ValueError, match=r"BatchSharpnessCallback and BatchSharpnessCallback .*batch_sharpness"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[BatchSharpnessCallback((x, y), batch_size=8),
                                                        BatchSharpnessCallback((x, y), batch_size=16)])
    same_dir = [LanczosCallback((x, y), top_k=1, num_samples=8, save_dir=str(tmp_path), log_prefix=p) for p in "ab"]
    with pytest.raises(ValueError, match=r"write the same file .*lanczos.npz.*own save_dir="):
        model.fit(x, y, epochs=1, verbose=0, callbacks=same_dir)
    # With their own prefixes they run side by side, the GGN's values under its prefix.
    ggn.log_prefix = "ggn_"
    history = model.fit(x, y, epochs=1, verbose=0, callbacks=[hessian, ggn])
    assert "lambda_1" in history.history and "ggn_lambda_3" in history.history


def test_a_fit_that_crashed_causes_no_false_refusal_later(data):
    x, y = data
    model = frozen_cnn()
    callback = LanczosCallback((x, y), top_k=1, num_samples=8)

    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            raise RuntimeError("crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[callback, Crash()])  # on_train_end never runs
    other = LanczosCallback((x, y), top_k=1, num_samples=8, curvature="ggn", log_prefix="ggn_")
    history = model.fit(x, y, epochs=1, verbose=0, callbacks=[callback, other])
    assert np.isfinite(history.history["lambda_1"][0]) and np.isfinite(history.history["ggn_lambda_1"][0])


# -- issue 22: unconverged eigenvalues are flagged --------------------------------------------------------------------

def test_an_unconverged_measurement_is_flagged_logged_saved_and_warned_once(data, tmp_path):
    x, y = data
    converged = history_of(data, solver=LanczosSolver(tol=1e-4))
    callback = LanczosCallback((x, y), top_k=2, num_samples=16, batch_size=16, seed=0, verbose=0,
                               solver=LanczosSolver(max_matvecs=3), save_dir=str(tmp_path))
    with pytest.warns(RuntimeWarning, match=r"used its 3 matvecs without converging \(largest residual .* above "
                                            r"tol=0\.001\).*Raise max_matvecs") as warned:
        history = frozen_cnn().fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[callback]).history
    assert len([w for w in warned if "without converging" in str(w.message)]) == 1
    assert history["lanczos_converged"] == [0.0, 0.0] and converged["lanczos_converged"] == [1.0]
    # A Ritz value from 3 products is a lower bound of the converged top eigenvalue, and here well below it.
    assert history["lambda_1"][0] < 0.99 * converged["lambda_1"][0]
    saved = MeasurementLog(str(tmp_path)).read()
    assert [m.values["converged"] for m in saved] == [0.0, 0.0, 0.0]
    with open(tmp_path / "lanczos.csv") as handle:
        assert "converged" in handle.readline().split(",")


# -- issue 22: files, empty data ----------------------------------------------------------------------------------

def test_an_eigenvector_file_that_cannot_be_written_warns_and_fit_goes_on(data, tmp_path, monkeypatch):
    import tf_sharpest.callbacks._lanczos_callback as module

    x, y = data
    os.makedirs(tmp_path / "eigenvectors_epoch0000.npz")  # the name is taken by a folder
    callback = LanczosCallback((x, y), top_k=1, num_samples=8, save_dir=str(tmp_path), save_eigenvectors_every=1)
    with pytest.warns(RuntimeWarning, match="could not write .*eigenvectors_epoch0000.npz.*training goes on"):
        history = frozen_cnn().fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    assert len(history.history["loss"]) == 2 and os.path.exists(tmp_path / "eigenvectors_epoch0001.npz")

    def refuse(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(module, "atomic_path", refuse)
    callback = LanczosCallback((x, y), top_k=1, num_samples=8, save_dir=str(tmp_path / "b"), save_eigenvectors_every=1)
    with pytest.warns(RuntimeWarning, match="Permission denied"):
        history = frozen_cnn().fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    assert len(history.history["loss"]) == 2


@pytest.mark.parametrize("make", [
    lambda x, y: (x[:0], y[:0]),
    lambda x, y: tf.data.Dataset.from_tensor_slices((x[:0], y[:0])).batch(4),
    lambda x, y: tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: b > 99).batch(4),
], ids=["arrays", "dataset", "filtered"])
def test_empty_data_is_refused_when_fit_starts_saying_what_to_pass(data, make):
    x, y = data
    model = frozen_cnn()
    with pytest.raises(ValueError, match="has no examples to measure on.*Pass data="):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[LanczosCallback(make(x, y), top_k=1, num_samples=8)])


def endless(x, y, first_full=False):
    """A generator dataset of empty batches forever (after one full batch with first_full)."""
    def generate():
        if first_full:
            yield x[:4], y[:4]
        while True:
            yield x[:0], y[:0]

    spec = (tf.TensorSpec((None, 6, 6, 1), tf.float32), tf.TensorSpec((None,), y.dtype))
    return tf.data.Dataset.from_generator(generate, output_signature=spec)


def test_an_endless_stream_of_empty_batches_is_refused_instead_of_hanging(data):
    x, y = data
    model = frozen_cnn()
    with pytest.raises(ValueError, match="yielded 1000 empty batches in a row"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[LanczosCallback(endless(x, y), top_k=1, num_samples=8)])
    # One real batch then empties: fit goes on, each measurement fails with the reason.
    for resample in (True, False):
        callback = LanczosCallback(endless(x, y, first_full=True), top_k=1, num_samples=8, resample=resample)
        with pytest.warns(RuntimeWarning, match="1000 empty batches in a row"):
            history = model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
        assert np.isnan(history.history["lambda_1"]).all()
