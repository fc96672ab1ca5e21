"""NSGD and LanczosCallback in a multi-worker model.fit, on N local worker processes.

The launcher starts ``--workers`` processes on this machine, each with the
``TF_CONFIG`` of one worker of a loopback cluster (127.0.0.1 ports), and each
runs the same short real Fashion-MNIST training under
``tf.distribute.MultiWorkerMirroredStrategy`` with a ``LanczosCallback`` and
NSGD (a custom loop that drives the callbacks as ``model.fit`` does: Keras
3.15's ``fit`` itself cannot run under this strategy, see
``fit_multi_worker``). Every curvature product is shared by all replicas of
all workers (one shard of the sample each, one all-reduce per product);
every worker logs the
same eigenvalues and hands NSGD the same directions, and only the chief
(worker 0) writes ``lanczos.npz``/``lanczos.csv`` (each worker is given its
own ``save_dir`` here, to show that the others write nothing). The launcher then checks
that the workers agree and prints their logs.

    python examples/multi_worker.py --workers 2
    python examples/multi_worker.py --workers 2 --n_examples 1024 --epochs 2   # quicker

On a real cluster, run the worker part (``--worker_index`` is then ignored
in favour of TF_CONFIG) on every host with that host's TF_CONFIG; see the
README's "Scaling out".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cli import HelpFormatter, import_tensorflow_quietly, positive_float, positive_int  # noqa: E402
from local_cluster import python_command, run_workers  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--workers", type=positive_int, default=2, help="local worker processes")
    parser.add_argument("--out", default="runs/multi_worker", help="output folder")
    parser.add_argument("--n_examples", type=positive_int, default=4096, help="training examples")
    parser.add_argument("--epochs", type=positive_int, default=3, help="training epochs")
    parser.add_argument("--batch_size", type=positive_int, default=128, help="global training batch size")
    parser.add_argument("--lr", type=positive_float, default=0.05, help="learning rate")
    parser.add_argument("--gamma", type=float, default=0.1, help="NSGD's factor inside the top-K subspace")
    parser.add_argument("--top_k", type=positive_int, default=3, help="eigenvalues measured, directions nudged")
    parser.add_argument("--num_samples", type=positive_int, default=512, help="examples per measurement")
    parser.add_argument("--n_filters", type=positive_int, default=8, help="SimpleCNN filters")
    parser.add_argument("--timeout", type=positive_float, default=900, help="seconds before the workers are ended")
    parser.add_argument("--worker_index", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def worker(args) -> None:
    """One worker of the cluster: TF_CONFIG tells it who it is."""
    import_tensorflow_quietly()  # without CUDA's and absl's start-up lines on stderr
    import keras
    import tensorflow as tf

    from tf_sharpest import data, models
    from tf_sharpest.callbacks import LanczosCallback
    from tf_sharpest.optimizers import NSGD

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    splits = data.load("fashion_mnist")
    x, y = splits.x_train[: args.n_examples], splits.y_train[: args.n_examples]
    keras.utils.set_random_seed(0)  # every worker starts from the same weights
    with strategy.scope():
        model = models.simple_cnn("root", input_shape=x.shape[1:], n_filters=args.n_filters)
        model.compile(optimizer=NSGD(args.lr, gamma=args.gamma, top_k=args.top_k), loss=models.default_loss())
    callback = LanczosCallback((x, y), top_k=args.top_k, num_samples=args.num_samples, batch_size=128, seed=0,
                               save_dir=os.path.join(args.out, f"lanczos_worker{args.worker_index}"), verbose=0)
    history = fit_multi_worker(model, strategy, x, y, args.batch_size, args.epochs, [callback])
    result = {
        "worker": args.worker_index,
        "replicas": strategy.num_replicas_in_sync,
        "examples_per_replica": callback.operator.replica_plan.examples_per_replica,
        "history": history,
        "eigenvalues": [m.eigenvalues.tolist() for m in callback.history],
        "directions": model.optimizer.get_directions().tolist(),
    }
    with open(os.path.join(args.out, f"worker_{args.worker_index}.json"), "w") as handle:
        json.dump(result, handle)


def fit_multi_worker(model, strategy, x, y, batch_size: int, epochs: int, callbacks: list) -> dict:
    """``model.fit`` as a custom loop: the same train step, with Keras callbacks driven by a ``CallbackList``.

    Keras 3.15's ``model.fit`` cannot run under MultiWorkerMirroredStrategy:
    its per-step metric reduction calls ``strategy.reduce("MEAN", scalar,
    axis=0)``, which TensorFlow refuses for a scalar, whatever the model. The
    loop below is what ``fit`` does (a replicated train step, the optimizer's
    all-reduce, the callbacks at every hook), so a callback behaves as in
    ``fit``. Under MirroredStrategy, ``model.fit`` itself works (tested).
    """
    import keras
    import numpy as np
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0).batch(batch_size)
    steps = int(dataset.cardinality())
    distributed = strategy.experimental_distribute_dataset(dataset)

    @tf.function
    def train_step(batch):
        def replica_step(features, labels):
            with tf.GradientTape() as tape:
                logits = model(features, training=True)
                # Keras's loss is already divided by the number of replicas; summed
                # replica gradients (the optimizer's all-reduce) then average.
                loss = model.compute_loss(x=features, y=labels, y_pred=logits, training=True)
            gradients = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            return loss

        return strategy.reduce("SUM", strategy.run(replica_step, args=batch), axis=None)

    record = keras.callbacks.History()  # last, so it sees the logs every callback added
    callback_list = keras.callbacks.CallbackList(list(callbacks) + [record], model=model, epochs=epochs,
                                                 steps=steps, verbose=0)
    callback_list.on_train_begin()
    for epoch in range(epochs):
        callback_list.on_epoch_begin(epoch)
        losses = []
        for step, batch in enumerate(distributed):
            callback_list.on_train_batch_begin(step)
            losses.append(float(train_step(batch)))
            callback_list.on_train_batch_end(step, {"loss": losses[-1]})
        callback_list.on_epoch_end(epoch, {"loss": float(np.mean(losses))})
    callback_list.on_train_end()
    return {key: [float(v) for v in values] for key, values in record.history.items()}


def launch(args) -> int:
    """Starts the workers, waits for them, compares what they logged."""
    import numpy as np

    os.makedirs(args.out, exist_ok=True)
    for name in os.listdir(args.out):
        path = os.path.join(args.out, name)
        if name.startswith("worker_") and name.endswith(".json"):
            os.remove(path)
        elif name.startswith("lanczos_worker") and os.path.isdir(path):
            shutil.rmtree(path)
    forwarded = [arg for arg in sys.argv[1:] if not arg.startswith("--worker_index")]
    codes = run_workers(args.workers, python_command(os.path.abspath(__file__), *forwarded),
                        timeout=args.timeout, log_dir=args.out)
    if any(code != 0 for code in codes):
        print(f"Workers exited with {codes}; see {args.out}/worker_*.log", file=sys.stderr)
        return 1
    results = []
    for index in range(args.workers):
        with open(os.path.join(args.out, f"worker_{index}.json")) as handle:
            results.append(json.load(handle))
    chief = results[0]
    for other in results[1:]:
        same_logs = all(np.allclose(chief["history"][k], other["history"][k], rtol=1e-6, equal_nan=True)
                        for k in chief["history"] if k.startswith("lambda_"))
        same_directions = np.array_equal(chief["directions"], other["directions"])
        print(f"worker {other['worker']} vs chief: eigenvalue logs {'agree' if same_logs else 'DIFFER'}, "
              f"NSGD directions {'identical' if same_directions else 'DIFFER'}")
        if not (same_logs and same_directions):
            return 1
    print(f"{args.workers} workers, {chief['replicas']} replicas; examples per replica in each product: "
          f"{chief['examples_per_replica']}")
    for epoch, values in enumerate(zip(*[chief["history"][f"lambda_{i + 1}"] for i in range(args.top_k)])):
        print(f"epoch {epoch}: loss {chief['history']['loss'][epoch]:.4f}, "
              f"top-{args.top_k} eigenvalues {np.round(values, 3).tolist()}")
    for index in range(args.workers):
        folder = os.path.join(args.out, f"lanczos_worker{index}")
        files = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        print(f"worker {index} save_dir: {files or 'nothing written'}")
    return 0


def main() -> int:
    args = build_parser().parse_args()
    if args.worker_index is not None:
        worker(args)
        return 0
    return launch(args)


if __name__ == "__main__":
    sys.exit(main())
