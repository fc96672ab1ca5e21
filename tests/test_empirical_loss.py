import numpy as np
import tensorflow as tf

from references import classification_data, sparse_ce, tiny_cnn
from tf_sharpest.operators import EmpiricalLoss


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


def test_evaluate_follows_the_weights():
    model = tiny_cnn("float64")
    x, y = classification_data((6, 6, 1), n=12, seed=6)
    objective = EmpiricalLoss(model, (x, y), loss=sparse_ce())
    before = objective.value
    bias = model.trainable_variables[-1]
    bias.assign(bias + np.array([1.0, 0.0, 0.0]))  # favour class 0: the cross-entropy changes
    assert objective.evaluate() != before
