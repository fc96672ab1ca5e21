"""Independent references for the tests: explicitly formed Hessians and tiny models."""

import keras
import numpy as np
import tensorflow as tf


def explicit_hessian(model, x, y, loss_fn, *, training=False):
    """The full Hessian of ``mean(loss_fn(y, model(x))) + sum(model.losses)`` by a nested-tape Jacobian.

    All examples go through the model in one call, so nothing here depends on
    how the code under test batches or weights the data.
    """
    variables = model.trainable_variables
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = tf.reduce_mean(loss_fn(y, model(x, training=training)))
            if model.losses:
                loss = loss + tf.add_n(model.losses)
        grads = inner.gradient(loss, variables)
        flat_grad = tf.concat([tf.reshape(g, [-1]) for g in grads], axis=0)
    jacobians = outer.jacobian(flat_grad, variables)
    dim = int(flat_grad.shape[0])
    return tf.concat([tf.reshape(j, [dim, -1]) for j in jacobians], axis=1).numpy()


def tiny_mlp(dtype="float64", seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((4,), dtype=dtype),
        keras.layers.Dense(6, activation="tanh", dtype=dtype),
        keras.layers.Dense(3, dtype=dtype),
    ])


def tiny_cnn(dtype="float64", seed=0, l2=1e-2):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((6, 6, 1), dtype=dtype),
        keras.layers.Conv2D(3, 3, activation="tanh", kernel_regularizer=keras.regularizers.L2(l2), dtype=dtype),
        keras.layers.Flatten(dtype=dtype),
        keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L2(l2), dtype=dtype),
    ])


def classification_data(shape, n=23, classes=3, dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n,) + tuple(shape)).astype(dtype)
    y = rng.integers(0, classes, size=n).astype("int64")
    return x, y


def sparse_ce(dtype="float64"):
    """Cross-entropy on logits, computed in ``dtype`` (Keras losses default to float32)."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=dtype)


def symmetric_matrix(eigenvalues, seed=0):
    """A random symmetric matrix with the given spectrum, and its eigenvalues sorted descending."""
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return (q * eigenvalues) @ q.T
