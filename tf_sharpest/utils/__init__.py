"""Small helpers shared by every layer of tf_sharpest (no dependencies on it), and public for programs.

* :class:`FlatLayout`: the flat-vector view of a list of variables.
* :func:`atomic_path`: write a file so that an interrupted run never leaves it half written.
* :func:`materialize`: draw examples from arrays or a dataset into NumPy arrays.
* :func:`even_batch_size`: a batch size that cuts a sample into equal batches.

Example:

```python
import numpy as np
from tf_sharpest.utils import atomic_path, even_batch_size, materialize

with atomic_path("result.npz") as temporary:  # result.npz appears whole, or not at all
    np.savez(temporary, values=np.arange(3))
x_sample, y_sample = materialize((x, y), num_samples=32, seed=0)
assert len(y_sample) == 32
assert even_batch_size(2250, 128) == 125  # 18 equal batches
```
"""

from tf_sharpest.utils._batches import even_batch_size, materialize
from tf_sharpest.utils._files import atomic_path
from tf_sharpest.utils._flat import FlatLayout

__all__ = ["FlatLayout", "atomic_path", "even_batch_size", "materialize"]
