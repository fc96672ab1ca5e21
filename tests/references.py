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


# -- references for the Gauss-Newton and Fisher operators --------------------------------------------------

def _flat_jacobian(tape, target, variables):
    """``d target / d variables`` as a ``[target.size, dim]`` matrix (explicit, via tape.jacobian)."""
    jacobians = tape.jacobian(target, variables)
    size = int(np.prod(target.shape))
    return np.concatenate([np.zeros((size, int(np.prod(v.shape)))) if j is None else tf.reshape(j, [size, -1]).numpy()
                           for j, v in zip(jacobians, variables)], axis=1)


def _zeros_for_none(grads, variables):
    return [tf.zeros(v.shape, tf.as_dtype(v.dtype)) if g is None else g for g, v in zip(grads, variables)]


def regularization_hessian(model, variables=None):
    """The explicit Hessian of ``sum(model.losses)`` (weight regularizers) in ``variables``."""
    variables = list(variables or model.trainable_variables)
    dim = sum(int(np.prod(v.shape)) for v in variables)
    if not model.losses:
        return np.zeros((dim, dim))
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            regularization = tf.add_n(model.losses)
        grads = _zeros_for_none(inner.gradient(regularization, variables), variables)
        flat = tf.concat([tf.reshape(g, [-1]) for g in grads], axis=0)
    return _flat_jacobian(outer, flat, variables)


def explicit_ggn(model, x, y, output_hessian, sample_weight=None, variables=None):
    """``(1/N) sum_i w_i J_i^T H_i J_i`` + the regularizer's Hessian, with ``J_i`` formed explicitly.

    ``output_hessian(z_i, y_i)`` gives the per-example ``[C, C]`` Hessian of
    the unweighted loss in the output ``z_i`` (closed form, in NumPy).
    """
    variables = list(variables or model.trainable_variables)
    n = len(x)
    weights = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    with tf.GradientTape(persistent=True) as tape:
        outputs = model(x, training=False)
    jacobian = _flat_jacobian(tape, outputs, variables)  # [n * C, dim]
    classes = int(outputs.shape[-1])
    logits = outputs.numpy().astype(np.float64)
    total = np.zeros((jacobian.shape[1],) * 2)
    for i in range(n):
        block = jacobian[i * classes:(i + 1) * classes]
        total += weights[i] * block.T @ output_hessian(logits[i], y[i]) @ block
    return total / n + regularization_hessian(model, variables)


def explicit_fisher(model, x, y, example_loss, sample_weight=None, variables=None):
    """``(1/N) sum_i w_i g_i g_i^T`` + the regularizer's Hessian, with one tape per example."""
    variables = list(variables or model.trainable_variables)
    n = len(x)
    weights = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    dim = sum(int(np.prod(v.shape)) for v in variables)
    total = np.zeros((dim, dim))
    for i in range(n):
        with tf.GradientTape() as tape:
            loss = example_loss(y[i:i + 1], model(x[i:i + 1], training=False))
        grads = _zeros_for_none(tape.gradient(loss, variables), variables)
        g = np.concatenate([g.numpy().ravel() for g in grads]).astype(np.float64)
        total += weights[i] * np.outer(g, g)
    return total / n + regularization_hessian(model, variables)


def softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_ce_output_hessian(z, _label):
    p = softmax(z)
    return np.diag(p) - np.outer(p, p)


def linear_softmax_regression(x, y, kernel, bias, sample_weight=None, l2=0.0):
    """Closed forms, without autodiff, for ``z = x W + b`` with softmax cross-entropy on logits.

    Returns ``(hessian, fisher)`` of the mean (example-weighted) loss plus
    ``l2 * ||W||^2``, in the flat layout ``[W row-major, b]``. For a linear
    model the Hessian equals the Gauss-Newton matrix.
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    classes = kernel.shape[1]
    weights = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    p = softmax(x @ kernel + bias)
    dim = d * classes + classes
    hessian, fisher = np.zeros((dim, dim)), np.zeros((dim, dim))
    for i in range(n):
        jacobian = np.concatenate([np.kron(x[i][None, :], np.eye(classes)), np.eye(classes)], axis=1)
        curvature = np.diag(p[i]) - np.outer(p[i], p[i])
        hessian += weights[i] * jacobian.T @ curvature @ jacobian
        residual = p[i] - np.eye(classes)[y[i]]
        g = jacobian.T @ residual
        fisher += weights[i] * np.outer(g, g)
    regularizer = np.zeros((dim, dim))
    regularizer[np.arange(d * classes), np.arange(d * classes)] = 2.0 * l2
    return hessian / n + regularizer, fisher / n + regularizer


def linear_least_squares_hessian(x, sample_weight=None):
    """``(2/N) sum_i w_i a_i a_i^T`` with ``a_i = [x_i, 1]``: the Hessian of the mean squared error of ``x w + b``."""
    x = np.asarray(x, dtype=np.float64)
    weights = np.ones(len(x)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    a = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    return 2.0 * (a * weights[:, None]).T @ a / len(x)


def batchnorm_dropout_model():
    """A float64 MLP with BatchNormalization and Dropout: the layers whose state a measurement must not change."""
    keras.utils.set_random_seed(2)
    return keras.Sequential([
        keras.Input((5,), dtype="float64"),
        keras.layers.Dense(6, dtype="float64"),
        keras.layers.BatchNormalization(dtype="float64"),
        keras.layers.Activation("tanh", dtype="float64"),
        keras.layers.Dropout(0.3, dtype="float64"),
        keras.layers.Dense(3, dtype="float64"),
    ])


def twin_models(strategy, seed=0):
    """The same float32 tiny CNN with the same weights, once under ``strategy`` and once on one device."""
    single = tiny_cnn("float32", seed=seed)
    single.compile(loss=sparse_ce("float32"))
    with strategy.scope():
        mirrored = tiny_cnn("float32", seed=seed)
        mirrored.compile(loss=sparse_ce("float32"))
    mirrored.set_weights(single.get_weights())
    return single, mirrored
