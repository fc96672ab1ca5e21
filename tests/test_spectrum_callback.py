"""SpectrumCallback against explicitly formed Hessians of a tiny CNN, with the weights frozen (learning rate 0)."""

import copy
import csv
import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_sharpest.callbacks import SpectrumCallback
from tf_sharpest.callbacks._spectrum_callback import histogram_buckets, load_density
from tf_sharpest.operators import Curvature

from references import (
    classification_data,
    explicit_ggn,
    explicit_hessian,
    softmax_ce_output_hessian,
    sparse_ce,
    tiny_cnn,
)

# Largest deviation, in standard errors, tolerated between an estimate and the exact value (the
# probes are seeded, so each check is deterministic; 4 standard errors keeps it meaningful).
SIGMAS = 4.0


def compiled_cnn(learning_rate=0.0, seed=0):
    model = tiny_cnn("float32", seed=seed)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss=sparse_ce("float32"))
    return model


@pytest.fixture
def data():
    return classification_data((6, 6, 1), n=40, dtype="float32", seed=3)


def exact_hessian(model, x, y):
    return explicit_hessian(model, x, y, sparse_ce("float32")).astype(np.float64)


def summaries(folder):
    """``{tag: [(step, plugin, value), ...]}`` from every event file in ``folder``."""
    found = {}
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append(
                    (event.step, value.metadata.plugin_data.plugin_name, tf.make_ndarray(value.tensor)))
    return found


def test_logged_trace_equals_the_trace_of_the_explicit_hessian(data):
    x, y = data
    model = compiled_cnn()
    exact = SpectrumCallback((x, y), num_samples=len(x), batch_size=20, trace_method="exact", density_every=0,
                             final_density=False, seed=0)
    hutch = SpectrumCallback((x, y), num_samples=len(x), batch_size=20, trace_method="hutch++", trace_matvecs=150,
                             density_every=0, final_density=False, seed=0, log_prefix="hpp_")
    history = model.fit(x, y, batch_size=20, epochs=2, verbose=0, callbacks=[exact, hutch])
    hessian = exact_hessian(model, x, y)
    reference = np.trace(hessian)
    np.testing.assert_allclose(history.history["hessian_trace"], [reference] * 2, rtol=2e-5)
    assert history.history["hessian_trace_stderr"] == [0.0, 0.0]
    assert history.history["spectrum_matvecs"] == [hessian.shape[0]] * 2
    # Hutch++ (50 sketch vectors of 177 dimensions) within its own standard error.
    estimates, errors = history.history["hpp_hessian_trace"], history.history["hpp_hessian_trace_stderr"]
    for estimate, error in zip(estimates, errors):
        assert 0 < error < 0.05 * abs(reference)
        assert abs(estimate - reference) <= SIGMAS * error
    assert [m.epoch for m in exact.history] == [0, 1, 2]  # two epochs and one after training
    assert exact.history[-1].values["trace"] == pytest.approx(reference, rel=2e-5)
    assert exact.densities == {}


def test_density_files_have_the_moments_of_the_explicit_hessian(data, tmp_path):
    x, y = data
    model = compiled_cnn()
    callback = SpectrumCallback((x, y), num_samples=len(x), batch_size=20, trace_matvecs=30, density_every=2,
                                num_probes=10, num_steps=20, seed=0, save_dir=str(tmp_path), tensorboard_dir=None)
    history = model.fit(x, y, batch_size=20, epochs=3, verbose=0, callbacks=[callback])
    hessian = exact_hessian(model, x, y)
    dim = hessian.shape[0]
    # Densities at the start of epochs 0 and 2, and after training (epoch 3), each in its files.
    assert sorted(callback.densities) == [0, 2, 3]
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("density")) == [
        f"density_epoch{e:04d}.{ext}" for e in (0, 2, 3) for ext in ("npz", "png")]
    for epoch in (0, 2, 3):
        density = load_density(tmp_path / f"density_epoch{epoch:04d}.npz")
        np.testing.assert_array_equal(density.nodes, callback.densities[epoch].nodes)
        assert density.dim == dim and density.nodes.shape == (10, 20) and density.num_matvecs == 200
        for p, exact in ((1, np.trace(hessian) / dim), (2, np.trace(hessian @ hessian) / dim)):
            moment = density.moment(p)
            assert moment.stderr > 0
            assert abs(moment.value - exact) <= SIGMAS * moment.stderr, (epoch, p, moment, exact)
        with open(tmp_path / f"density_epoch{epoch:04d}.png", "rb") as f:
            image = tf.image.decode_png(f.read()).numpy()
        assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 0  # a drawn plot, not blank
    saved = np.load(tmp_path / "density_epoch0002.npz")
    assert int(saved["epoch"]) == 2 and int(saved["step"]) == 4 and int(saved["num_examples"]) == len(x)
    assert str(saved["curvature"]) == "hessian"
    # spectrum.npz/.csv: every measurement, with the trace and the products the density took.
    log = np.load(tmp_path / "spectrum.npz")
    assert list(log["epoch"]) == [0, 1, 2, 3]
    np.testing.assert_allclose(log["values.trace"][:3], history.history["hessian_trace"])
    assert list(log["values.density_matvecs"]) == [200, 0, 200, 200]
    assert list(log["matvecs"]) == [230, 30, 230, 230]
    with open(tmp_path / "spectrum.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and float(rows[1]["trace"]) == pytest.approx(history.history["hessian_trace"][1])
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_a_tensorboard_callback_given_as_tensorboard_dir_gets_the_density(data, tmp_path):
    x, y = data
    model = compiled_cnn()
    board = keras.callbacks.TensorBoard(str(tmp_path / "logs"))
    callback = SpectrumCallback((x, y), num_samples=len(x), batch_size=20, trace_matvecs=30, density_every=1,
                                num_probes=6, num_steps=15, seed=0, tensorboard_dir=board)
    history = model.fit(x, y, batch_size=20, epochs=2, verbose=0, callbacks=[callback, board])
    found = summaries(tmp_path / "logs" / "spectrum")
    dim = callback.operator.dim

    images = found["spectral_density"]
    assert [step for step, _, _ in images] == [0, 1, 2] and {plugin for _, plugin, _ in images} == {"images"}
    width, height, png = images[-1][2]  # the image plugin stores width, height and the encoded image
    decoded = tf.image.decode_png(png).numpy()
    assert decoded.shape[:2] == (int(height), int(width)) and decoded.std() > 0

    histograms = found["eigenvalue_histogram"]
    assert [step for step, _, _ in histograms] == [0, 1, 2] and {p for _, p, _ in histograms} == {"histograms"}
    for step, _, buckets in histograms:
        density = callback.densities[step]
        np.testing.assert_allclose(buckets, histogram_buckets(density))
        assert buckets.shape == (60, 3) and np.all(buckets[:, 2] >= 0)
        assert buckets[:, 2].sum() == pytest.approx(dim)  # eigenvalues counted: the dimension
        # The bucket-centre mean is the density's first moment up to half a bucket.
        centres = (buckets[:, 0] + buckets[:, 1]) / 2
        width = buckets[0, 1] - buckets[0, 0]
        assert abs(np.sum(centres * buckets[:, 2]) / dim - density.moment(1).value) <= width / 2
        assert buckets[0, 0] == pytest.approx(density.nodes[density.weights > 0].min())
        assert buckets[-1, 1] == pytest.approx(density.nodes[density.weights > 0].max())

    traces = found["hessian_trace"]
    assert [step for step, _, _ in traces] == [0, 1, 2] and {p for _, p, _ in traces} == {"scalars"}
    np.testing.assert_allclose([float(v) for _, _, v in traces[:2]], history.history["hessian_trace"], rtol=1e-6)
    # Keras' own TensorBoard run got the trace too, from the epoch logs.
    assert "epoch_hessian_trace" in summaries(tmp_path / "logs" / "train")


def test_tensorboard_dir_given_or_none(data, tmp_path):
    x, y = data
    model = compiled_cnn()
    given = SpectrumCallback((x, y), num_samples=20, batch_size=20, trace_matvecs=6, density_every=0,
                             num_probes=2, num_steps=5, seed=0, tensorboard_dir=str(tmp_path / "mine"))
    silent = SpectrumCallback((x, y), num_samples=20, batch_size=20, trace_matvecs=6, density_every=0,
                              num_probes=2, num_steps=5, seed=0, tensorboard_dir=None, log_prefix="b_")
    model.fit(x, y, batch_size=20, epochs=1, verbose=0,
              callbacks=[given, silent, keras.callbacks.TensorBoard(str(tmp_path / "board"))])
    found = summaries(tmp_path / "mine" / "spectrum")
    assert [step for step, _, _ in found["spectral_density"]] == [1]  # only the final density
    assert len(found["hessian_trace"]) == 2
    assert not os.path.exists(tmp_path / "board" / "spectrum")  # the explicit dir wins; None writes nothing


def test_without_tensorboard_dir_the_default_summary_writer_gets_the_summaries(data, tmp_path):
    """Issue 26: no stack walk into Keras's CallbackList; a default tf.summary writer set around fit is public."""
    x, y = data
    model = compiled_cnn()
    callback = SpectrumCallback((x, y), num_samples=20, batch_size=20, trace_matvecs=6, density_every=1,
                                num_probes=2, num_steps=5, seed=0)
    with tf.summary.create_file_writer(str(tmp_path / "default")).as_default():
        history = model.fit(x, y, batch_size=20, epochs=2, verbose=0, callbacks=[callback])
    found = summaries(tmp_path / "default")
    assert [step for step, _, _ in found["spectral_density"]] == [0, 1, 2]
    assert [step for step, _, _ in found["eigenvalue_histogram"]] == [0, 1, 2]
    np.testing.assert_allclose(found["eigenvalue_histogram"][1][2], histogram_buckets(callback.densities[1]))
    np.testing.assert_allclose([float(v) for _, _, v in found["hessian_trace"][:2]], history.history["hessian_trace"],
                               rtol=1e-6)


def test_tensorboard_dir_auto_is_deprecated_and_walks_no_stack(data, tmp_path):
    x, y = data
    with pytest.warns(DeprecationWarning, match="tensorboard_dir=board"):
        callback = SpectrumCallback((x, y), num_samples=20, batch_size=20, trace_matvecs=6, density_every=0,
                                    final_density=False, seed=0, tensorboard_dir="auto")
    board = keras.callbacks.TensorBoard(str(tmp_path / "board"))
    compiled_cnn().fit(x, y, batch_size=20, epochs=1, verbose=0, callbacks=[callback, board])
    assert callback.tensorboard_dir is None and not os.path.exists(tmp_path / "board" / "spectrum")
    import tf_sharpest.callbacks._spectrum_callback as module

    assert not hasattr(module, "_fit_callbacks") and not hasattr(module, "_CALLER_DEPTH")


def test_one_trace_per_run_and_the_last_sample_measured_exactly(data):
    x, y = data
    model = compiled_cnn(learning_rate=0.05)
    callback = SpectrumCallback((x, y), num_samples=20, batch_size=10, trace_method="exact", density_every=1,
                                num_probes=3, num_steps=8, seed=0)
    history = model.fit(x, y, batch_size=10, epochs=3, verbose=0, callbacks=[callback])
    assert len(callback.history) == 4 and sorted(callback.densities) == [0, 1, 2, 3]
    # Four samples, one graph per kind of product, traced once: the exact trace multiplies blocks (matmat), the
    # density single vectors (matvec).
    assert [callback.operator.traced_functions[name].experimental_get_tracing_count()
            for name in ("matmat", "matvec")] == [1, 1]
    assert len(set(history.history["hessian_trace"])) == 3  # new weights and a new sample each epoch
    # The reused operator measured the last sample as an explicitly formed Hessian of it does.
    sample = callback.operator.sample
    x_last = np.concatenate([b[0].numpy() for b in sample.batches])
    y_last = np.concatenate([b[1].numpy() for b in sample.batches])
    assert not np.array_equal(x_last, x[:20])
    hessian = exact_hessian(model, x_last, y_last)
    assert callback.history[-1].values["trace"] == pytest.approx(np.trace(hessian), rel=2e-5)
    clone = copy.deepcopy(callback)  # keras-tuner deep-copies callbacks; a used one too
    assert clone.operator is None and clone.data is callback.data and clone.densities.keys() == {0, 1, 2, 3}


def test_ggn_trace_is_logged_under_its_own_name(data):
    x, y = data[0][:16], data[1][:16]  # the explicit GGN takes one Jacobian per example
    model = compiled_cnn()
    callback = SpectrumCallback((x, y), num_samples=len(x), batch_size=16, trace_method="exact", curvature="ggn",
                                density_every=0, final_density=False)
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    reference = np.trace(explicit_ggn(model, x, y, softmax_ce_output_hessian))
    assert history.history["ggn_trace"][0] == pytest.approx(reference, rel=2e-5)
    assert "hessian_trace" not in history.history


def test_a_block_with_fewer_parameters_than_trace_matvecs_is_measured_exactly(data):
    x, y = data
    model = compiled_cnn()
    bias = model.layers[-1].bias  # the last 3 of the 177 parameters, in model order
    callback = SpectrumCallback((x, y), num_samples=len(x), batch_size=20, trace_matvecs=30,
                                curvature=Curvature(variables=bias), density_every=0, final_density=False, seed=0)
    history = model.fit(x, y, batch_size=20, epochs=1, verbose=0, callbacks=[callback])
    hessian = exact_hessian(model, x, y)
    assert callback.operator.dim == 3
    assert history.history["hessian_trace"][0] == pytest.approx(np.trace(hessian[-3:, -3:]), rel=2e-5)
    assert history.history["hessian_trace_stderr"] == [0.0] and history.history["spectrum_matvecs"] == [3.0]


def test_frequency_in_batches(data):
    x, y = data
    model = compiled_cnn(learning_rate=0.01)
    callback = SpectrumCallback((x, y), num_samples=16, batch_size=16, frequency=3, trace_matvecs=6,
                                density_every=1, final_density=False, num_probes=2, num_steps=4, seed=0)
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])  # 5 batches per epoch
    assert [m.step for m in callback.history] == [0, 3, 6, 9, 10]
    assert [m.epoch for m in callback.history] == [0, 0, 1, 1, 2]
    # A density with the first measurement of each epoch.
    assert [m.values["density_matvecs"] for m in callback.history] == [8, 0, 8, 0, 0]
    assert sorted(callback.densities) == [0, 1]
    assert history.history["hessian_trace"][1] == pytest.approx(callback.history[3].values["trace"])


def test_frequency_none_measures_once_after_training(data, tmp_path):
    x, y = data
    model = compiled_cnn(learning_rate=0.05)
    callback = SpectrumCallback((x, y), num_samples=len(x), batch_size=20, frequency=None, trace_method="exact",
                                num_probes=4, num_steps=10, seed=0, save_dir=str(tmp_path))
    history = model.fit(x, y, batch_size=20, epochs=2, verbose=0, callbacks=[callback])
    assert "hessian_trace" not in history.history
    assert [(m.epoch, m.step) for m in callback.history] == [(2, 4)] and list(callback.densities) == [2]
    hessian = exact_hessian(model, x, y)  # the trained weights
    assert callback.history[0].values["trace"] == pytest.approx(np.trace(hessian), rel=2e-5)
    assert sorted(os.listdir(tmp_path)) == ["density_epoch0002.npz", "density_epoch0002.png", "spectrum.csv",
                                            "spectrum.npz"]


def test_failed_measurement_logs_nan_warns_once_and_training_goes_on(data, tmp_path):
    x, y = data
    bad_x = x.copy()
    bad_x[:, 0, 0, 0] = np.nan  # every sample the callback draws has a NaN loss
    model = compiled_cnn(learning_rate=0.01)
    callback = SpectrumCallback((bad_x, y), num_samples=8, batch_size=8, trace_matvecs=6, density_every=1,
                                num_probes=2, num_steps=4, save_dir=str(tmp_path))
    with pytest.warns(RuntimeWarning, match="failed.*not finite") as warned:
        history = model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[callback])
    assert len([w for w in warned if "SpectrumCallback" in str(w.message)]) == 1
    assert len(history.history["loss"]) == 3 and np.all(np.isfinite(history.history["loss"]))
    assert np.all(np.isnan(history.history["hessian_trace"]))
    assert np.all(np.isnan(history.history["hessian_trace_stderr"]))
    assert all("not finite" in m.error for m in callback.history) and len(callback.history) == 4
    assert callback.densities == {} and not glob.glob(str(tmp_path / "density_*"))
    assert list(np.load(tmp_path / "spectrum.npz")["error"]) == [m.error for m in callback.history]


def test_failed_density_keeps_the_trace(data, tmp_path):
    x, y = data
    model = compiled_cnn()
    # A folder where a file should go: the density files cannot be written; the rest goes on.
    os.makedirs(tmp_path / "density_epoch0000.npz")
    callback = SpectrumCallback((x, y), num_samples=20, batch_size=20, trace_matvecs=6, density_every=1,
                                final_density=False, num_probes=2, num_steps=4, save_dir=str(tmp_path))
    with pytest.warns(RuntimeWarning, match="could not write .*density_epoch0000"):
        history = model.fit(x, y, batch_size=20, epochs=2, verbose=0, callbacks=[callback])
    assert np.all(np.isfinite(history.history["hessian_trace"]))
    assert os.path.exists(tmp_path / "density_epoch0001.npz")


def test_verbose_auto_follows_fit(data, capsys):
    x, y = data
    callback = SpectrumCallback((x, y), num_samples=8, batch_size=8, trace_matvecs=6, density_every=0,
                                final_density=False, seed=0)
    compiled_cnn().fit(x, y, batch_size=20, epochs=1, verbose=0, callbacks=[callback])
    assert "SpectrumCallback" not in capsys.readouterr().out
    compiled_cnn().fit(x, y, batch_size=20, epochs=1, verbose=2, callbacks=[callback])
    assert "SpectrumCallback at epoch 0, step 0: hessian trace" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_samples=0), "num_samples"),
    (dict(batch_size=-1), "batch_size"),
    (dict(frequency="batch"), "frequency"),
    (dict(frequency=0), "frequency"),
    (dict(frequency=2.5), "frequency"),
    (dict(trace_method="slq"), "trace_method"),
    (dict(trace_method="hutch++", trace_matvecs=2), r"trace_matvecs must be an integer >= 3"),
    (dict(trace_method="xtrace", trace_matvecs=3), r"trace_matvecs must be an integer >= 4"),
    (dict(trace_matvecs=30.0), "trace_matvecs"),
    (dict(density_every=-1), "density_every"),
    (dict(density_every=True), "density_every"),
    (dict(num_probes=0), "num_probes"),
    (dict(num_steps=0), "num_steps"),
    (dict(verbose=3), "verbose"),
    (dict(curvature="fisher"), "curvature"),
    (dict(tensorboard_dir=""), "tensorboard_dir"),
    (dict(save_dir=""), "save_dir"),
])
def test_bad_arguments(data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpectrumCallback(data, **kwargs)


def test_bad_data():
    with pytest.raises(ValueError, match="data"):
        SpectrumCallback("x.npy")


def test_exact_trace_ignores_trace_matvecs(data):
    assert SpectrumCallback(data, trace_method="exact", trace_matvecs=0).trace_method == "exact"
