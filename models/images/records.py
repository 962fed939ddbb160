"""Training shards of `heartwatch denoise train`: one image per ``tf.train.Example``, read back by ``tf.data``.

A record holds the image's key, its shape and its float32 [0, 1] pixels as raw bytes (lossless, so
float inputs keep their precision): ``image/key``, ``image/height``, ``image/width``,
``image/channels`` and ``image/pixels``. ``encode_record`` writes one (numpy and protobufs only, for
Beam workers); ``parse_record`` is its ``tf.data`` reader, and ``key_seed`` turns a key tensor into
the stateless seed of the fixed noise on validation and test images.
"""

from __future__ import annotations

import numpy as np

KEY_FEATURE = "image/key"
HEIGHT_FEATURE = "image/height"
WIDTH_FEATURE = "image/width"
CHANNELS_FEATURE = "image/channels"
PIXELS_FEATURE = "image/pixels"


def encode_record(key: str, image: np.ndarray) -> bytes:
    """The serialized Example of one ``(H, W, C)`` float image in [0, 1]."""
    import tensorflow as tf

    image = np.ascontiguousarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"a record holds one (height, width, channels) image, got shape {image.shape}")
    height, width, channels = image.shape

    def integer(value: int):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    def raw(value: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    features = {KEY_FEATURE: raw(key.encode("utf-8")), HEIGHT_FEATURE: integer(height), WIDTH_FEATURE: integer(width),
                CHANNELS_FEATURE: integer(channels), PIXELS_FEATURE: raw(image.tobytes())}
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def parse_record(serialized):
    """``(key, image)`` tensors of one serialized record: a string and a float32 ``(H, W, C)`` image."""
    import tensorflow as tf

    spec = {KEY_FEATURE: tf.io.FixedLenFeature([], tf.string),
            HEIGHT_FEATURE: tf.io.FixedLenFeature([], tf.int64),
            WIDTH_FEATURE: tf.io.FixedLenFeature([], tf.int64),
            CHANNELS_FEATURE: tf.io.FixedLenFeature([], tf.int64),
            PIXELS_FEATURE: tf.io.FixedLenFeature([], tf.string)}
    parsed = tf.io.parse_single_example(serialized, spec)
    shape = tf.stack([parsed[HEIGHT_FEATURE], parsed[WIDTH_FEATURE], parsed[CHANNELS_FEATURE]])
    image = tf.reshape(tf.io.decode_raw(parsed[PIXELS_FEATURE], tf.float32), shape)
    return parsed[KEY_FEATURE], image


def decode_record(serialized: bytes) -> tuple[str, np.ndarray]:
    """``(key, image)`` of one serialized record in numpy (tests, tools)."""
    key, image = parse_record(serialized)
    return key.numpy().decode("utf-8"), image.numpy()


def key_seed(seed: int, key):
    """A stateless-random seed (shape ``[2]`` int64) from ``seed`` and a key string tensor."""
    import tensorflow as tf

    return tf.stack([tf.constant(seed, tf.int64), tf.strings.to_hash_bucket_fast(key, 2 ** 62)])
