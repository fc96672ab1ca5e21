"""Random-shift and horizontal-flip augmentation as vectorised ``tf.data`` pipelines.

The paper augmented CIFAR-10 and Fashion-MNIST alike with Keras'
``ImageDataGenerator(width_shift_range=0.125, height_shift_range=0.125,
horizontal_flip=True)``: each image is shifted by a uniform random fraction
of up to 0.125 of its width and height (sub-pixel shifts, bilinear
interpolation, the nearest edge pixel filling the border) and mirrored with
probability 1/2. :func:`augment` does the same for a whole batch in one
``ImageProjectiveTransformV3`` op, with stateless (seeded) randomness.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ["augment", "eval_dataset", "train_dataset"]

_INTERPOLATIONS = ("bilinear", "nearest")


def _check(shift, interpolation):
    if not 0.0 <= float(shift) < 1.0:
        raise ValueError(f"shift must be a fraction in [0, 1), got {shift!r}.")
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"Unknown interpolation {interpolation!r}; choose one of {list(_INTERPOLATIONS)}.")


def augment(images, seed, *, shift: float = 0.125, flip: bool = True,
            interpolation: str = "bilinear"):
    """Randomly shift and horizontally flip a batch of NHWC images.

    Args:
      images: ``(B, H, W, C)`` tensor (float or integer dtype; kept).
      seed: stateless seed, a shape ``(2,)`` integer tensor: the same seed
        gives the same augmentation.
      shift: largest shift as a fraction of the width and of the height; each
        image's shifts are uniform in ``[-shift, shift]`` times the size.
      flip: mirror each image left-right with probability 1/2.
      interpolation: ``"bilinear"`` (sub-pixel shifts, as Keras'
        ``ImageDataGenerator``) or ``"nearest"``. Pixels shifted in from
        outside take the value of the nearest edge pixel.

    Returns:
      The augmented batch, same shape and dtype.
    """
    _check(shift, interpolation)
    images = tf.convert_to_tensor(images)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 3)
    u = tf.random.stateless_uniform(tf.stack([b, 2]), seeds[0], minval=-1.0, maxval=1.0)
    dx = u[:, 0] * float(shift) * wf
    dy = u[:, 1] * float(shift) * hf
    if flip:
        f = tf.cast(tf.random.stateless_uniform(tf.reshape(b, [1]), seeds[1]) < 0.5, tf.float32)
    else:
        f = tf.zeros(tf.reshape(b, [1]), tf.float32)
    # Output pixel (x, y) reads input pixel (s * x + tx, y - dy): s = -1 mirrors.
    s = 1.0 - 2.0 * f
    tx = f * (wf - 1.0) - dx
    zeros, ones = tf.zeros_like(s), tf.ones_like(s)
    transforms = tf.stack([s, zeros, tx, zeros, ones, -dy, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.stack([h, w]),
        fill_value=tf.constant(0.0, tf.float32), interpolation=interpolation.upper(),
        fill_mode="NEAREST",
    )


_augment_batch = augment  # train_dataset's ``augment`` flag shadows the function's name


def _source(x, y):
    x = tf.convert_to_tensor(np.asarray(x) if not tf.is_tensor(x) else x)
    y = tf.convert_to_tensor(np.asarray(y) if not tf.is_tensor(y) else y)
    if x.shape.rank != 4:
        raise ValueError(f"x must be NHWC images of rank 4, got shape {x.shape}.")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y differ in length: {x.shape[0]} and {y.shape[0]}.")
    if x.shape[0] == 0:
        raise ValueError("x is empty.")
    return x, y


def train_dataset(x, y, batch_size: int = 128, *, augment: bool = True, seed: int | None = 0,
                  shuffle: bool = True, drop_remainder: bool = False, shift: float = 0.125,
                  flip: bool = True, interpolation: str = "bilinear") -> tf.data.Dataset:
    """A training ``tf.data.Dataset`` of ``(images, labels)`` batches, augmented on the fly.

    One pass is one epoch. The pipeline shuffles example indices, batches
    them, gathers each batch from ``x``/``y`` held once in memory, augments
    the whole batch (:func:`augment`, after batching) and prefetches. Each new
    pass (each Keras epoch) reshuffles and draws new augmentations; with an
    integer ``seed`` the sequence of passes is reproducible, and different
    seeds give different shuffles and augmentations.

    Args:
      x, y: images ``(N, H, W, C)`` and labels ``(N, ...)`` (arrays or tensors).
      batch_size: examples per batch.
      augment: apply random shifts and flips (see :func:`augment`).
      seed: integer seed, or ``None`` for unseeded randomness.
      shuffle: shuffle the examples each pass.
      drop_remainder: drop the last, smaller batch.
      shift, flip, interpolation: passed to :func:`augment`.
    """
    _check(shift, interpolation)
    x, y = _source(x, y)
    n = int(x.shape[0])
    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(int(batch_size), drop_remainder=drop_remainder)
    if augment:
        rseed = None if seed is None else int(seed) + 1
        ds = tf.data.Dataset.zip(
            ds, tf.data.Dataset.random(seed=rseed, rerandomize_each_iteration=True))

        def gather_augment(idx, r):
            key = tf.stack([r, tf.constant(0, tf.int64)])
            xb = _augment_batch(tf.gather(x, idx), key, shift=shift, flip=flip,
                                interpolation=interpolation)
            return xb, tf.gather(y, idx)

        ds = ds.map(gather_augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(lambda idx: (tf.gather(x, idx), tf.gather(y, idx)),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(x, y, batch_size: int = 500) -> tf.data.Dataset:
    """An evaluation ``tf.data.Dataset``: batches in order, no augmentation, prefetched."""
    return train_dataset(x, y, batch_size, augment=False, shuffle=False)
