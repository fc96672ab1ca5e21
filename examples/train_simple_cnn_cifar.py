"""Train the paper's SimpleCNN (CIFAR-10 or, with --dataset=fmnist, Fashion-MNIST) through model.fit.

    python examples/train_simple_cnn_cifar.py CONFIG SAVE_DIR [flags]

CONFIG is a SimpleCNN preset (root, medium, medium_fmnist). A SAVE_DIR that
holds a complete run is left as it is (--overwrite trains it again); an
interrupted run resumes. --help lists the flags (see also
examples/paper_training.py).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import paper_training  # noqa: E402

if __name__ == "__main__":
    paper_training.main("simple_cnn")
