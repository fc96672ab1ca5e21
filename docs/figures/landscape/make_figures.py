"""Draws the pictures of docs/landscape.md from a short real Fashion-MNIST run (a few minutes on 2 CPU cores).

SimpleCNN (8 filters) trained with SGD (lr 0.05) on 2,000 real Fashion-MNIST
examples for 6 epochs; a LanczosCallback (top 3) and a SpectrumCallback (a
density every epoch) measure along the way, a LandscapeCallback draws the
loss along e1, e2 and on their plane every 3 epochs, and after training the
loss on the plane of two filter-normalized random directions and the
spectrogram are drawn. The PNGs land next to this script.

    nice python docs/figures/landscape/make_figures.py
"""

from __future__ import annotations

import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tf_sharpest import data, models  # noqa: E402
from tf_sharpest.analysis import loss_landscape, plot_loss_surface, plot_spectrogram, random_directions  # noqa: E402
from tf_sharpest.callbacks import LanczosCallback, LandscapeCallback, MeasurementLog, SpectrumCallback  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
LR, EPOCHS, EXAMPLES, SAMPLE = 0.05, 6, 2000, 512


def main():
    splits = data.load("fashion_mnist")
    x, y = splits.x_train[:EXAMPLES], splits.y_train[:EXAMPLES]
    keras.utils.set_random_seed(0)
    model = models.simple_cnn("root", input_shape=x.shape[1:], n_filters=8)
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=models.default_loss(), metrics=["accuracy"])
    run = tempfile.mkdtemp(prefix="landscape_docs_")
    lanczos = LanczosCallback((x, y), top_k=3, num_samples=SAMPLE, batch_size=256, seed=0, save_dir=run)
    spectrum = SpectrumCallback((x, y), num_samples=SAMPLE, batch_size=256, trace_matvecs=6, density_every=1,
                                num_probes=2, num_steps=30, seed=0, save_dir=run, tensorboard_dir=None)
    pictures = LandscapeCallback((x, y), every=3, num_samples=SAMPLE, steps=np.linspace(-0.6, 0.6, 25),
                                 save_dir=run, seed=0)
    model.fit(x, y, batch_size=64, epochs=EPOCHS, verbose=2, callbacks=[lanczos, spectrum, pictures])
    for epoch, name in ((3, "lines"), (EPOCHS, "lines"), (EPOCHS, "surface")):
        shutil.copy(os.path.join(run, f"landscape_epoch{epoch:04d}_{name}.png"),
                    os.path.join(HERE, f"{name}_epoch{epoch}.png"))
    sample = (x[:SAMPLE], y[:SAMPLE])
    plane = loss_landscape(model, sample, random_directions(model, 2, seed=0), steps=np.linspace(-1, 1, 25),
                           batch_size=256)
    plot_loss_surface(plane, log=True, labels=("random direction 1", "random direction 2"),
                      title=f"Loss on two filter-normalized random directions, after {EPOCHS} epochs"
                      ).savefig(os.path.join(HERE, "surface_random.png"))
    plot_spectrogram(run, eigenvalues=MeasurementLog(run, "lanczos"), learning_rate=LR,
                     title="Hessian spectral density (SLQ) along SGD training, with the top 3 eigenvalues"
                     ).savefig(os.path.join(HERE, "spectrogram.png"))
    print("lambda_1 per measurement:", [round(float(m.eigenvalues[0]), 2) for m in lanczos.history])
    print("2/eta:", 2 / LR)
    print("wrote", sorted(f for f in os.listdir(HERE) if f.endswith(".png")))


if __name__ == "__main__":
    main()
