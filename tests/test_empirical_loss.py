import numpy as np
import tensorflow as tf

from tf_sharpest.operators import EmpiricalLoss

from references import classification_data, sparse_ce, tiny_cnn


def test_value_and_gradient_match_one_full_batch_with_uneven_batches():
    model = tiny_cnn("float64")
    x, y = classification_data((6, 6, 1), n=23, seed=5)
    objective = EmpiricalLoss(model, (x, y), loss=sparse_ce(), batch_size=5)
    with tf.GradientTape() as tape:
        reference = sparse_ce()(y, model(x)) + tf.add_n(model.losses)
    grads = tape.gradient(reference, model.trainable_variables)
    np.testing.assert_allclose(objective.value, float(reference), rtol=1e-12)
    np.testing.assert_allclose(objective.gradient().numpy(), objective.layout.flatten(grads).numpy(), rtol=1e-10)
    assert (objective.num_examples, objective.num_batches) == (23, 5)


def reference_loss(model, x, y):
    """Mean cross-entropy plus L2 terms, by hand in NumPy from the model's logits and kernels."""
    shifted = model(x).numpy()
    shifted = shifted - shifted.max(1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    l2 = sum(1e-2 * np.sum(layer.kernel.numpy() ** 2) for layer in model.layers if hasattr(layer, "kernel"))
    return -np.mean(log_softmax[np.arange(len(y)), y]) + l2


def test_evaluate_follows_the_weights():
    model = tiny_cnn("float64")  # L2 1e-2 on both kernels
    x, y = classification_data((6, 6, 1), n=12, seed=6)
    objective = EmpiricalLoss(model, (x, y), loss=sparse_ce(), batch_size=5)
    before = reference_loss(model, x, y)
    np.testing.assert_allclose(objective.value, before, rtol=1e-8)
    bias = model.trainable_variables[-1]
    bias.assign(bias + np.array([1.0, 0.0, 0.0]))  # favour class 0: the cross-entropy changes
    kernel = model.trainable_variables[0]
    kernel.assign(2.0 * kernel)  # and the regularization with it
    after = reference_loss(model, x, y)
    assert abs(after - before) > 1e-3
    np.testing.assert_allclose(objective.evaluate(), after, rtol=1e-8)
    np.testing.assert_allclose(objective.value, before, rtol=1e-8)  # the value at construction is kept


def test_loss_and_gradient_graphs_are_traced_once_across_samples():
    model = tiny_cnn("float64")
    x, y = classification_data((6, 6, 1), n=30, seed=7)
    objective = EmpiricalLoss(model, (x[:13], y[:13]), loss=sparse_ce(), batch_size=5)  # 5, 5, 3
    first = objective.gradient().numpy()
    objective.set_data((x[13:], y[13:]))  # 5, 5, 5, 2: the same open signature
    second = objective.gradient().numpy()
    with tf.GradientTape() as tape:
        reference = sparse_ce()(y[13:], model(x[13:])) + tf.add_n(model.losses)
    expected = objective.layout.flatten(tape.gradient(reference, model.trainable_variables)).numpy()
    np.testing.assert_allclose(second, expected, rtol=1e-10)
    assert np.linalg.norm(first - second) > 1e-3 * np.linalg.norm(second)  # a new sample, a new gradient
    counts = {name: f.experimental_get_tracing_count() for name, f in objective.traced_functions.items()}
    assert counts == {"loss": 1, "gradient": 1}
