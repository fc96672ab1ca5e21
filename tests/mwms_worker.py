"""One worker of the MultiWorkerMirroredStrategy test (started by test_multi_worker.py with its TF_CONFIG).

It builds the shared tiny model under the strategy, counts the examples its
own replica processes in one product, solves the top eigenpairs, and writes
what it saw to ``OUT/worker_{index}.npz``.
"""

import json
import os
import sys

import numpy as np
import tensorflow as tf

from tf_sharpest.hessian import top_eigenpairs
from tf_sharpest.operators import GGNOperator, HessianOperator

from references import classification_data, sparse_ce

PROCESSED = []


def counting_model():
    """The tiny CNN of the test, with a layer that records how many examples pass through it."""
    import keras

    class Count(keras.layers.Layer):
        def call(self, inputs):
            def record(batch):
                PROCESSED.append(int(batch.shape[0]))
                return batch

            counted = tf.py_function(record, [inputs], inputs.dtype)
            counted.set_shape(inputs.shape)
            return counted

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6, 6, 1)), Count(), keras.layers.Conv2D(3, 3, activation="tanh"),
                             keras.layers.Flatten(), keras.layers.Dense(3)])


def main(out):
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    x, y = classification_data((6, 6, 1), n=23, dtype="float32", seed=5)
    with strategy.scope():
        model = counting_model()
        model.compile(loss=sparse_ce("float32"))
    operator = HessianOperator(model, (x, y), batch_size=4)
    PROCESSED.clear()  # construction evaluated the loss locally; count the products only
    vector = np.random.default_rng(0).standard_normal(operator.dim).astype("float32")
    product = operator.matvec(vector).numpy()
    processed = sum(PROCESSED)
    result = top_eigenpairs(model, (x, y), k=3, batch_size=4, tol=1e-6)
    ggn = GGNOperator(model, (x, y), batch_size=4).matvec(vector).numpy()
    np.savez(os.path.join(out, f"worker_{index}.npz"), processed=processed, product=product, ggn=ggn,
             eigenvalues=result.eigenvalues, eigenvectors=result.eigenvectors,
             plan=operator.replica_plan.examples_per_replica)


if __name__ == "__main__":
    main(sys.argv[1])
