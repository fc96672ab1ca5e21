"""Datasets of the paper: CIFAR-10 and Fashion-MNIST, split, preprocessed and augmented.

```python
from tf_sharpest import data

d = data.load("fashion_mnist")   # or data.load("cifar10", data_dir="~/datasets")
x_train, y_train, x_valid, y_valid, x_test, y_test = d
train = data.train_dataset(d.x_train, d.y_train, batch_size=128, seed=0)
model.fit(train, validation_data=data.eval_dataset(d.x_valid, d.y_valid), epochs=10)
```

Labels are integers: pair with ``tf_sharpest.models.default_loss()``
(sparse categorical cross-entropy on logits).

Everything public is importable from here: :func:`load` and its sources
(``SOURCES``, ``DATASETS``), the IDX and CIFAR-10 readers, :class:`Splits` with
its preprocessing, and the ``tf.data`` pipelines with augmentation.
"""

from tf_sharpest.data._augmentation import augment, eval_dataset, train_dataset
from tf_sharpest.data._cifar import read_cifar10, read_cifar10_batch
from tf_sharpest.data._errors import CorruptDataError, DataNotFoundError
from tf_sharpest.data._idx import read_fashion_mnist, read_idx
from tf_sharpest.data._loading import DATASETS, SOURCES, load
from tf_sharpest.data._splits import Splits, preprocess, split_train_valid

__all__ = [
    "DATASETS",
    "SOURCES",
    "CorruptDataError",
    "DataNotFoundError",
    "Splits",
    "augment",
    "eval_dataset",
    "load",
    "preprocess",
    "read_cifar10",
    "read_cifar10_batch",
    "read_fashion_mnist",
    "read_idx",
    "split_train_valid",
    "train_dataset",
]
