"""The ``tf.data`` input pipelines of the denoisers: clean images in, ``(noisy, clean)`` batches out.

Images come from record shards (``models.images.records``, written by `heartwatch denoise train`'s
Beam step) or from an in-memory array (tests, benchmarks); either way they stream through the same
steps, so memory does not depend on the number of images:

* ``training_batches``: shard files interleaved in a shuffled order, a bounded shuffle buffer, optional
  random patches (``patch_size``), horizontal flips and small random shifts (``shift``: translations
  by up to that many pixels, the uncovered border filled by reflection), batching, padding to the
  model's size multiple, then noise drawn afresh for every batch, and prefetching.
* ``fixed_noisy_batches``: validation and held-out images with fixed noise: each image's noise comes
  from ``models.images.noise.noise_rng(seed, key)``, so it is the same every epoch and the same as
  `heartwatch denoise run --noise ... --seed ...` gives that key. Patches are centre crops.

Noise is ``models.images.noise.add_noise`` (the one definition, run through ``tf.numpy_function``).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from models.images.io import pad_to_multiple
from models.images.noise import NoiseSpec, add_noise, noise_rng
from models.images.records import parse_record

AUTOTUNE = tf.data.AUTOTUNE
INTERLEAVE_FILES = 4


def record_images(paths: list[str], channels: int, shuffle: bool = False, seed: int = 0) -> tf.data.Dataset:
    """``(key, image)`` pairs of record shard files of ``channels``-channel images, interleaved; in a seeded
    shuffled file order when asked."""
    if not paths:
        raise ValueError("no record shards to read")
    files = tf.data.Dataset.from_tensor_slices(sorted(paths))
    if shuffle:
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    records = files.interleave(tf.data.TFRecordDataset, cycle_length=min(INTERLEAVE_FILES, len(paths)),
                               num_parallel_calls=AUTOTUNE, deterministic=not shuffle)

    def parse(serialized):
        key, image = parse_record(serialized)
        return key, tf.ensure_shape(image, [None, None, channels])

    return records.map(parse, num_parallel_calls=AUTOTUNE, deterministic=not shuffle)


def array_images(images: np.ndarray) -> tf.data.Dataset:
    """``(key, image)`` pairs of an in-memory ``(N, H, W, C)`` array; keys are the row numbers."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be (count, height, width, channels), got {images.shape}")
    keys = np.array([str(index) for index in range(len(images))])
    return tf.data.Dataset.from_tensor_slices((keys, images))


def _numpy_map(function, tensor: tf.Tensor, *extra, same_size: bool = True) -> tf.Tensor:
    """``function`` applied in numpy to a float32 tensor; the result keeps its static shape (or its channels)."""
    result = tf.numpy_function(function, [tensor, *extra], tf.float32, stateful=True)
    shape = tensor.shape if same_size else tensor.shape[:-3] + [None, None] + tensor.shape[-1:]
    result.set_shape(shape)
    return result


def _padder(multiple: int):
    def pad(images):
        return pad_to_multiple(np.asarray(images, np.float32), multiple)[0]
    return pad


def random_shift(image: tf.Tensor, shift: int, seed: int) -> tf.Tensor:
    """``image`` translated by up to ``shift`` pixels each way (uniform, independent per axis); the border
    uncovered is the reflection of the image's edge, so the output keeps the input's shape."""
    shape = tf.shape(image)
    padded = tf.pad(image, [[shift, shift], [shift, shift], [0, 0]], mode="REFLECT")
    return tf.image.random_crop(padded, shape, seed=seed)


def training_batches(images: tf.data.Dataset, noise: NoiseSpec, batch_size: int, seed: int, size_multiple: int = 1,
                     shuffle_buffer: int = 4096, patch_size: int = 0, flip: bool = True,
                     count: int | None = None, shift: int = 0) -> tf.data.Dataset:
    """``(noisy, clean)`` batches of shuffled clean images with fresh ``noise`` every time a batch is drawn.

    ``images`` yields ``(key, image)``; one epoch is one pass (``count`` images, when known, tells
    Keras how many batches that is). Images of one batch must share a size (or set ``patch_size`` to
    train on random square patches of larger images). ``shift`` > 0 adds random translations
    (``random_shift``; images must be larger than ``shift`` on each side).
    """
    if batch_size < 1 or shuffle_buffer < 1 or patch_size < 0 or shift < 0:
        raise ValueError(f"need batch_size >= 1, shuffle_buffer >= 1, patch_size >= 0 and shift >= 0; got "
                         f"{batch_size}, {shuffle_buffer}, {patch_size}, {shift}")
    rng = np.random.default_rng(seed)
    clean = images.map(lambda key, image: image).shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if patch_size:
        clean = clean.map(lambda image: tf.image.random_crop(image, [patch_size, patch_size, tf.shape(image)[-1]],
                                                             seed=seed), num_parallel_calls=AUTOTUNE)
    if flip:
        clean = clean.map(lambda image: tf.image.random_flip_left_right(image, seed=seed), num_parallel_calls=AUTOTUNE)
    if shift:
        clean = clean.map(lambda image: random_shift(image, shift, seed), num_parallel_calls=AUTOTUNE)
    batches = clean.batch(batch_size)
    if count is not None:
        batches = batches.apply(tf.data.experimental.assert_cardinality(-(-count // batch_size)))
    if size_multiple > 1:
        batches = batches.map(lambda batch: _numpy_map(_padder(size_multiple), batch, same_size=False))

    def noisy(batch):
        return add_noise(batch, noise, rng)

    return batches.map(lambda batch: (_numpy_map(noisy, batch), batch)).prefetch(AUTOTUNE)


def fixed_noisy_images(images: tf.data.Dataset, noise: NoiseSpec, seed: int, patch_size: int = 0) -> tf.data.Dataset:
    """``(key, noisy, clean)`` with each image's fixed noise from ``noise_rng(seed, key)`` (centre patches if asked)."""
    if patch_size:
        images = images.map(lambda key, image: (key, _centre_crop(image, patch_size)))

    def noisy(image, key):
        return add_noise(image, noise, noise_rng(seed, key.decode("utf-8")))

    return images.map(lambda key, image: (key, _numpy_map(noisy, image, key), image))


def fixed_noisy_batches(images: tf.data.Dataset, noise: NoiseSpec, seed: int, batch_size: int,
                        size_multiple: int = 1, patch_size: int = 0, count: int | None = None) -> tf.data.Dataset:
    """``(noisy, clean)`` batches with fixed noise (validation data for Keras; ``count`` images when known)."""
    batches = fixed_noisy_images(images, noise, seed, patch_size).map(lambda key, noisy, clean: (noisy, clean))
    batches = batches.batch(batch_size)
    if count is not None:
        batches = batches.apply(tf.data.experimental.assert_cardinality(-(-count // batch_size)))
    if size_multiple > 1:
        pad = _padder(size_multiple)
        batches = batches.map(lambda noisy, clean: (_numpy_map(pad, noisy, same_size=False),
                                                           _numpy_map(pad, clean, same_size=False)))
    return batches.prefetch(AUTOTUNE)


def _centre_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    shape = tf.shape(image)
    top, left = (shape[0] - size) // 2, (shape[1] - size) // 2
    return image[top:top + size, left:left + size, :]
