"""Model zoo: exact parameter counts, forward passes, options and errors."""

import keras
import numpy as np
import pytest

from tf_sharpest import models


def _trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


@pytest.mark.parametrize("preset, shape, total", [
    ("root", (32, 32, 3), 361_898),
    ("medium", (32, 32, 3), 2_399_518),
    ("medium_fmnist", (28, 28, 1), 2_164_118),
])
def test_simple_cnn_presets_count_and_forward(preset, shape, total):
    model = models.simple_cnn(preset)
    assert model.input_shape == (None, *shape)
    assert model.count_params() == total
    assert _trainable(model) == total
    x = np.random.default_rng(0).normal(size=(2, *shape)).astype("float32")
    out = model(x, training=False).numpy()
    assert out.shape == (2, 10)
    assert np.all(np.isfinite(out))
    # logits, not probabilities
    assert model.layers[-1].name == "logits"
    assert not np.allclose(out.sum(axis=1), 1.0)


@pytest.mark.parametrize("preset, total, trainable", [
    ("cifar10_resnet32", 470_218, 467_946),
    ("cifar10_resnet32_nobn_nodrop", 465_674, 465_674),
    ("cifar10_resnet32_nobn_nodrop_3", 465_674, 465_674),
])
def test_resnet_presets_count_and_forward(preset, total, trainable):
    model = models.resnet(preset)
    assert model.count_params() == total
    assert _trainable(model) == trainable
    out = model(np.zeros((2, 32, 32, 3), "float32"), training=False).numpy()
    assert out.shape == (2, 10)
    assert np.all(np.isfinite(out))
    assert model.layers[-1].name == "logits"
    # L2 on all 33 convolutions (31 + 2 shortcuts) and the dense layer
    assert len(model.losses) == 34


def test_resnet_structure_and_depth():
    for depth in (20, 32, 56):
        model = models.resnet(depth=depth, bn=False)
        main = [layer for layer in model.layers
                if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
                and not layer.name.endswith("shortcut")]
        shortcuts = [layer for layer in model.layers if layer.name.endswith("shortcut")]
        assert len(main) == depth  # "depth" counts weighted layers on the main path
        assert len(shortcuts) == 2
        assert all(layer.strides == (2, 2) and layer.kernel_size == (1, 1) for layer in shortcuts)
    bn = models.resnet()
    n_bn = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in bn.layers)
    assert n_bn == 2 * 15 + 1
    pool = bn.get_layer("post_avg")
    assert pool.pool_size == (8, 8)
    assert bn.get_layer("stage3_block5_conv2").output.shape[1:] == (8, 8, 64)


def test_resnet_init_scale():
    small = models.resnet("cifar10_resnet32_nobn_nodrop")  # init_scale 1/32
    w = small.get_layer("stage3_block2_conv1").kernel.numpy()
    fan_in = 3 * 3 * 64
    assert w.std() == pytest.approx(np.sqrt(2.0 / 32 / fan_in), rel=0.1)
    assert np.abs(w).max() <= 2 * np.sqrt(2.0 / 32 / fan_in) / 0.8796 + 1e-6  # truncated at 2 sigma
    third = models.resnet("cifar10_resnet32_nobn_nodrop_3")  # init_scale 1/15
    w3 = third.get_layer("stage3_block2_conv1").kernel.numpy()
    assert w3.std() == pytest.approx(np.sqrt(2.0 / 15 / fan_in), rel=0.1)
    assert all(np.all(layer.bias.numpy() == 0) for layer in small.layers if isinstance(layer, keras.layers.Conv2D))


def test_options_change_the_network():
    assert models.simple_cnn(use_bias=False).count_params() == 361_898 - (32 + 32 + 64 + 64 + 128 + 10)
    m = models.simple_cnn(bn=True, dropout=0.5, l2=1e-3, n_dense=64, activation="tanh")
    names = [layer.name for layer in m.layers]
    assert {"bn1", "bn2", "bn3", "bn4", "bn5", "dropout"} <= set(names)
    assert len(names) == len(set(names))
    assert len(m.losses) == 5  # four convs and the hidden dense layer
    assert m.get_layer("dense").units == 64
    assert m.get_layer("act1").activation is keras.activations.tanh
    assert models.simple_cnn(n_filters=8, kernel_size=3, input_shape=(28, 28, 1)).input_shape == (None, 28, 28, 1)
    r = models.resnet(dropout=0.3, l2=0.0, width=2)
    assert any(isinstance(layer, keras.layers.Dropout) and layer.rate == 0.3 for layer in r.layers)
    assert r.losses == []
    assert r.get_layer("first_conv").filters == 32
    assert models.resnet(input_shape=(28, 28, 1), num_classes=7).output_shape == (None, 7)


def test_unknown_preset_and_option_list_choices():
    with pytest.raises(ValueError, match="medium_fmnist"):
        models.simple_cnn("huge")
    with pytest.raises(ValueError, match="n_filters"):
        models.simple_cnn(filters=3)
    with pytest.raises(ValueError, match="cifar10_resnet32_nobn_nodrop"):
        models.resnet("resnet50")
    with pytest.raises(ValueError, match="init_scale"):
        models.resnet(scale=2)
    with pytest.raises(ValueError, match="6n\\+2"):
        models.resnet(depth=33)
    with pytest.raises(ValueError, match="too small"):
        models.simple_cnn("medium", input_shape=(12, 12, 1))


def test_default_loss_matches_logit_outputs():
    loss = models.default_loss()
    assert isinstance(loss, keras.losses.SparseCategoricalCrossentropy)
    assert loss.get_config()["from_logits"] is True
    with pytest.raises(ValueError):
        models.default_loss(from_logits=False)
    model = models.simple_cnn("root", n_filters=4, n_dense=8)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=models.default_loss())
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    y = np.array([0, 1, 2, 3])
    # The model outputs logits; the loss is their cross-entropy, by hand in float64:
    logits = model(x).numpy().astype(np.float64)
    shifted = logits - logits.max(1, keepdims=True)
    expected = -np.mean((shifted - np.log(np.exp(shifted).sum(1, keepdims=True)))[np.arange(4), y])
    assert float(loss(y, logits)) == pytest.approx(expected, rel=1e-6)
    regularization = sum(float(r) for r in model.losses)
    assert model.evaluate(x, y, verbose=0) == pytest.approx(expected + regularization, rel=1e-5)
