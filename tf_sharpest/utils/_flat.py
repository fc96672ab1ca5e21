"""The flat-vector convention that ties operators, eigensolvers and NSGD together.

Every curvature object in tf_sharpest acts on one flat vector: the model's
trainable variables concatenated in ``model.trainable_variables`` order, each
flattened row-major (``tf.reshape(v, [-1])``). Eigenvectors returned by the
eigensolvers, directions handed to ``NSGD`` and eigenvectors saved by the
callback all use this layout, so they can be passed between them unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf


class FlatLayout:
    """Maps between a list of variable-shaped tensors and one flat vector.

    Example:

    ```python
    layout = FlatLayout.from_variables(model.trainable_variables)
    flat = layout.flatten([tf.ones_like(v) for v in model.trainable_variables])   # [layout.dim]
    parts = layout.unflatten(flat)  # a list of tensors shaped like the variables
    matrix = layout.flatten_columns([tf.ones(list(v.shape) + [3]) for v in model.trainable_variables])  # [dim, 3]
    columns = layout.unflatten_columns(matrix)  # [*shape, 3] per variable
    ```
    """

    def __init__(self, shapes: Sequence[Sequence[int]], names: Sequence[str] | None = None):
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes, dtype=np.int64)]).tolist()
        self.names = list(names) if names is not None else [f"variable_{i}" for i in range(len(self.shapes))]
        if len(self.names) != len(self.shapes):
            raise ValueError(f"Got {len(self.names)} names for {len(self.shapes)} shapes.")

    @classmethod
    def from_variables(cls, variables: Sequence) -> FlatLayout:
        variables = list(variables)
        names = [getattr(v, "path", None) or getattr(v, "name", f"variable_{i}") for i, v in enumerate(variables)]
        return cls([tuple(v.shape) for v in variables], names)

    @property
    def dim(self) -> int:
        """Length of the flat vector."""
        return int(self.offsets[-1])

    def __len__(self) -> int:
        return len(self.shapes)

    def flatten(self, tensors: Sequence) -> tf.Tensor:
        """Concatenates variable-shaped tensors into one flat vector."""
        tensors = list(tensors)
        if len(tensors) != len(self.shapes):
            raise ValueError(f"Expected {len(self.shapes)} tensors (one per variable), got {len(tensors)}.")
        return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)

    def unflatten(self, flat) -> list[tf.Tensor]:
        """Splits a flat vector of length ``dim`` into variable-shaped tensors."""
        flat = tf.convert_to_tensor(flat)
        pieces = tf.split(flat, self.sizes, axis=0)
        return [tf.reshape(p, s) for p, s in zip(pieces, self.shapes)]

    def flatten_columns(self, tensors: Sequence) -> tf.Tensor:
        """Concatenates ``[*shape, k]`` tensors, one per variable, into one ``[dim, k]`` matrix.

        The inverse of :meth:`unflatten_columns`: column ``j`` of the result is
        the flat vector of the ``j``-th slices.

        Raises:
          ValueError: for the wrong number of tensors, a tensor whose leading
            dimensions are not its variable's shape, or tensors that disagree on ``k``.
        """
        tensors = list(tensors)
        if len(tensors) != len(self.shapes):
            raise ValueError(f"Expected {len(self.shapes)} per-variable arrays (one per variable), got {len(tensors)}.")
        pieces = []
        for tensor, shape, name in zip(tensors, self.shapes, self.names):
            tensor = tf.convert_to_tensor(tensor)
            if tensor.shape.rank != len(shape) + 1 or tuple(tensor.shape[:-1]) != shape:
                raise ValueError(f"The array for {name} has shape {tuple(tensor.shape)}; expected {shape + ('K',)}.")
            pieces.append(tf.reshape(tensor, [-1, tensor.shape[-1]]))
        if len({int(p.shape[1]) for p in pieces}) != 1:
            raise ValueError(f"The per-variable arrays disagree on K: {[int(p.shape[1]) for p in pieces]}.")
        return tf.concat(pieces, axis=0)

    def unflatten_columns(self, matrix) -> list[tf.Tensor]:
        """Splits a ``[dim, k]`` matrix row-wise into ``[*shape, k]`` tensors, one per variable."""
        matrix = tf.convert_to_tensor(matrix)
        if matrix.shape.rank != 2 or matrix.shape[0] != self.dim:
            raise ValueError(f"Expected a [dim={self.dim}, k] matrix (the variables concatenated, each flattened "
                             f"row-major); got shape {tuple(matrix.shape)}.")
        k = matrix.shape[-1]
        pieces = tf.split(matrix, self.sizes, axis=0)
        return [tf.reshape(p, list(s) + [k]) for p, s in zip(pieces, self.shapes)]

    def check_flat(self, vector, what: str = "vector") -> None:
        """Raises a ``ValueError`` unless ``vector`` is a flat vector of length ``dim``."""
        shape = tuple(getattr(vector, "shape", np.shape(vector)))
        if len(shape) != 1 or shape[0] != self.dim:
            raise ValueError(
                f"{what} must be a flat vector of length {self.dim} (the trainable variables "
                f"concatenated, each flattened row-major); got shape {shape}."
            )
