"""LandscapeCallback and the plots: the numbers drawn, the files and TensorBoard images written, failures survived."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_sharpest.analysis import (
    Landscape,
    loss_landscape,
    plot_loss_lines,
    plot_loss_surface,
    plot_spectrogram,
    read_densities,
)
from tf_sharpest.callbacks import LandscapeCallback, Measurement, MeasurementLog
from tf_sharpest.hessian import top_eigenpairs
from tf_sharpest.linalg import SpectralDensity

pytest.importorskip("matplotlib")


def small_problem(seed=0, n=48):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0.5)
    return model, x, y


def image_tags(folder):
    """``{tag: [steps]}`` of the images in the event files under ``folder``."""
    tags = {}
    for path in glob.glob(os.path.join(folder, "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    return tags


def test_draws_every_n_epochs_at_the_current_weights_to_files_and_tensorboard(tmp_path):
    model, x, y = small_problem()
    steps = np.linspace(-0.5, 0.5, 5)
    callback = LandscapeCallback((x, y), every=1, num_samples=32, batch_size=16, steps=steps,
                                 save_dir=str(tmp_path / "png"), tensorboard_dir=str(tmp_path / "tb"))
    model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0, callbacks=[callback])
    assert sorted(callback.landscapes) == [1, 2]
    record = callback.landscapes[2]   # drawn after the last epoch: at the final weights
    pairs = top_eigenpairs(model, callback._sample, k=2, tol=1e-6)
    np.testing.assert_allclose(record["eigenvalues"], pairs.eigenvalues, rtol=1e-2)
    assert record["learning_rate"] == pytest.approx(0.05)
    for label, direction in zip(("e1", "e2"), record["directions"]):
        expected = loss_landscape(model, callback._sample, direction, steps=steps)
        np.testing.assert_allclose(record["lines"][label].losses, expected.losses, rtol=1e-6)
        np.testing.assert_allclose(record["lines"][label].metrics["accuracy"], expected.metrics["accuracy"])
    plane = loss_landscape(model, callback._sample, record["directions"], steps=steps)
    np.testing.assert_allclose(record["surface"].losses, plane.losses, rtol=1e-6)
    # Files: one PNG per picture and drawing, readable images.
    names = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "png" / "*.png")))
    assert names == ["landscape_epoch0001_lines.png", "landscape_epoch0001_surface.png",
                     "landscape_epoch0002_lines.png", "landscape_epoch0002_surface.png"]
    image = tf.io.decode_png(tf.io.read_file(str(tmp_path / "png" / names[0])))
    assert image.shape[0] > 200 and image.shape[1] > 300
    assert image_tags(str(tmp_path / "tb")) == {"landscape/lines": [1, 2], "landscape/surface": [1, 2]}
    # Drawing again at the same weights never changes the model.
    before = [v.numpy().copy() for v in model.variables]
    callback.draw(99)
    for old, variable in zip(before, model.variables):
        np.testing.assert_array_equal(variable.numpy(), old)


def test_the_default_summary_writer_and_random_directions(tmp_path):
    model, x, y = small_problem(seed=1)
    callback = LandscapeCallback((x, y), every=2, num_samples=24, steps=[-1.0, 0.0, 1.0], directions="random",
                                 pictures="lines")
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[callback])
    writer.flush()
    assert sorted(callback.landscapes) == [2, 3]   # every 2 epochs, and once after the last
    assert image_tags(str(tmp_path)) == {"landscape/lines": [2, 3]}
    assert callback.landscapes[3]["eigenvalues"] is None


def test_a_failing_picture_warns_and_training_is_unchanged(tmp_path):
    model, x, y = small_problem(seed=2)
    twin, _, _ = small_problem(seed=2)
    bad_x = x.copy()
    bad_x[0, 0] = np.nan   # the landscape's own sample diverges; training data is fine
    callback = LandscapeCallback((bad_x, y), every=1, num_samples=48, save_dir=str(tmp_path))
    with pytest.warns(RuntimeWarning, match="LandscapeCallback: the landscape at epoch 1 was not drawn"):
        history = model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0, callbacks=[callback])
    twin.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 2
    for mine, reference in zip(model.variables, twin.variables):
        np.testing.assert_array_equal(mine.numpy(), reference.numpy())
    assert not glob.glob(str(tmp_path / "*.png"))


def test_bad_arguments_are_refused():
    data = (np.zeros((4, 4)), np.zeros(4))
    with pytest.raises(ValueError, match="every must be a positive integer"):
        LandscapeCallback(data, every=0)
    with pytest.raises(ValueError, match="directions must be 'hessian'"):
        LandscapeCallback(data, directions="pca")
    with pytest.raises(ValueError, match="pictures must be some of"):
        LandscapeCallback(data, pictures=("lines", "movie"))
    with pytest.raises(ValueError, match="spectrum_dir"):
        LandscapeCallback(data, pictures="spectrogram")
    with pytest.raises(ValueError, match="steps must be finite"):
        LandscapeCallback(data, steps=[0.0, np.nan])


def test_lines_draw_the_measured_losses_and_the_two_over_eta_parabola():
    steps = np.linspace(-1.0, 1.0, 5)
    line = Landscape(steps=steps, coordinates=(steps,), losses=1.0 + 2.0 * steps**2)
    figure = plot_loss_lines({"e1": line}, eigenvalues=[4.0], learning_rate=0.5)
    ax = figure.axes[0]
    measured, quadratic, critical = ax.lines
    np.testing.assert_array_equal(measured.get_ydata(), line.losses)
    grid = quadratic.get_xdata()
    np.testing.assert_allclose(quadratic.get_ydata(), 1.0 + 0.5 * 4.0 * grid**2)   # the quadratic model of lambda
    np.testing.assert_allclose(critical.get_ydata(), 1.0 + 0.5 * (2.0 / 0.5) * grid**2)  # curvature 2/eta = 4
    with pytest.raises(ValueError, match="1-D landscapes"):
        plot_loss_lines({"plane": Landscape(steps, (steps, steps), np.zeros((5, 5)))})


def test_surface_colours_span_the_losses():
    steps = np.linspace(-1.0, 1.0, 7)
    a, b = np.meshgrid(steps, steps, indexing="ij")
    plane = Landscape(steps=steps, coordinates=(steps, steps), losses=3.0 * a**2 + b**2)
    figure = plot_loss_surface(plane, levels=10)
    filled = figure.axes[0].collections[0]
    low, high = filled.get_clim()
    assert low <= 0.0 and high >= 4.0 and high < 4.0 + 1.0
    with pytest.raises(ValueError, match="2-D landscape"):
        plot_loss_surface(Landscape(steps, (steps,), steps**2))


def test_spectrogram_puts_each_density_at_its_epoch_with_the_eigenvalues_on_top(tmp_path):
    # Densities of all weight on one eigenvalue, moving from 1 to 5, written as SpectrumCallback writes them.
    for epoch, value in ((0, 1.0), (2, 3.0), (4, 5.0)):
        np.savez(tmp_path / f"density_epoch{epoch:04d}.npz", nodes=np.array([[value, value]]),
                 weights=np.array([[0.5, 0.5]]), dim=10, num_matvecs=2, epoch=epoch, step=epoch)
    densities = read_densities(tmp_path)
    assert sorted(densities) == [0, 2, 4] and isinstance(densities[2], SpectralDensity)
    log = MeasurementLog(str(tmp_path), "lanczos")
    log.write([Measurement(e, e, np.array([v, v / 2]), 10, 0.1, 1.0) for e, v in ((0, 1.5), (2, 3.5), (4, 6.0))])
    figure = plot_spectrogram(log, eigenvalues=log, learning_rate=0.25)
    ax = figure.axes[0]
    mesh = ax.collections[0]
    heat = np.asarray(mesh.get_array()).reshape(-1, 3)   # [eigenvalue grid, epochs]
    grid = np.linspace(*ax.get_ylim(), heat.shape[0] + 1)
    centres = 0.5 * (grid[1:] + grid[:-1])
    np.testing.assert_allclose(centres[np.argmax(heat, axis=0)], [1.0, 3.0, 5.0], atol=2 * (grid[1] - grid[0]))
    lambda_1, lambda_2, critical = ax.lines
    np.testing.assert_array_equal(lambda_1.get_xdata(), [0, 2, 4])
    np.testing.assert_array_equal(lambda_1.get_ydata(), [1.5, 3.5, 6.0])
    np.testing.assert_array_equal(lambda_2.get_ydata(), [0.75, 1.75, 3.0])
    assert critical.get_ydata()[0] == pytest.approx(8.0)   # 2 / eta
    assert ax.get_ylim()[1] > 8.0
    with pytest.raises(ValueError, match="No spectral density"):
        plot_spectrogram({})
