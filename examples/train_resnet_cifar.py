"""Train the paper's pre-activation ResNet on CIFAR-10 through model.fit.

    python examples/train_resnet_cifar.py CONFIG SAVE_DIR [flags]

CONFIG is a ResNet preset (cifar10_resnet32, cifar10_resnet32_nobn_nodrop, cifar10_resnet32_nobn_nodrop_3).
A SAVE_DIR that holds a complete run is left as it is (--overwrite trains it again); an interrupted run resumes.
--help lists the flags (see also examples/paper_training.py).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import paper_training  # noqa: E402

if __name__ == "__main__":
    paper_training.main("resnet")
