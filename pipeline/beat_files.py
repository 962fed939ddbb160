"""Beat records as sharded TFRecord files: how `heartwatch train` materialises its splits once.

The training job writes every valid beat of a split, raw, into ``<work>/beats/<split>/beats-*.tfrecord``
(``tf.train.Example``: ``beat`` as 140 little-endian float32 bytes, ``is_anomaly``, ``source_class``,
``source``, ``row_number``, ``sample_key``). Those files are what every later step streams:

- training (``training_dataset``): ``tf.data`` interleaves the shards, keeps the training beats
  (normal or unlabelled), shuffles through a bounded buffer, batches, applies the analysed
  tensorflow-transform graph to each batch and prefetches; memory is the buffer plus a few
  batches, whatever the split's size;
- scoring (``decode_record``): Beam reads the same files again (``ReadAllFromTFRecord``) and feeds
  the raw beats to ``RunInference``.

Raw beats are materialised, not transformed ones: the transform is applied inside the input pipeline
(and, for scoring, inside the exported detector), so the data is read and validated once, written
once, and the same files serve training and every scorer.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from models.ecg import ANOMALY, BEAT_KEY, BEAT_LENGTH, IS_ANOMALY_KEY, ROW_NUMBER_KEY, SOURCE_CLASS_KEY, SOURCE_KEY

SAMPLE_KEY = "sample_key"
FILE_SUFFIX = ".tfrecord"
INTERLEAVE_CYCLE = 4
FEATURES = {
    BEAT_KEY: tf.io.FixedLenFeature([], tf.string),
    IS_ANOMALY_KEY: tf.io.FixedLenFeature([], tf.int64),
}


def encode_record(record: dict) -> bytes:
    """A beat record as a serialised ``tf.train.Example``."""
    beat = np.asarray(record[BEAT_KEY], dtype="<f4")

    def integer(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    def text(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(value).encode()]))

    features = {BEAT_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[beat.tobytes()])),
                IS_ANOMALY_KEY: integer(record[IS_ANOMALY_KEY]), SOURCE_CLASS_KEY: text(record[SOURCE_CLASS_KEY]),
                SOURCE_KEY: text(record[SOURCE_KEY]), ROW_NUMBER_KEY: integer(record[ROW_NUMBER_KEY]),
                SAMPLE_KEY: integer(record[SAMPLE_KEY])}
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def decode_record(serialized: bytes) -> dict:
    """The record ``encode_record`` wrote (the beat as float32 ``[BEAT_LENGTH]``)."""
    feature = tf.train.Example.FromString(serialized).features.feature
    return {BEAT_KEY: np.frombuffer(feature[BEAT_KEY].bytes_list.value[0], dtype="<f4").astype(np.float32),
            IS_ANOMALY_KEY: int(feature[IS_ANOMALY_KEY].int64_list.value[0]),
            SOURCE_CLASS_KEY: feature[SOURCE_CLASS_KEY].bytes_list.value[0].decode(),
            SOURCE_KEY: feature[SOURCE_KEY].bytes_list.value[0].decode(),
            ROW_NUMBER_KEY: int(feature[ROW_NUMBER_KEY].int64_list.value[0]),
            SAMPLE_KEY: int(feature[SAMPLE_KEY].int64_list.value[0])}


def _parse(serialized):
    parsed = tf.io.parse_single_example(serialized, FEATURES)
    beat = tf.reshape(tf.io.decode_raw(parsed[BEAT_KEY], tf.float32, little_endian=True), [BEAT_LENGTH])
    return beat, parsed[IS_ANOMALY_KEY]


def batch_count(beats: int, batch_size: int) -> int:
    """Batches in one pass over ``beats`` beats."""
    return math.ceil(beats / batch_size)


def training_dataset(paths: list[str], transform, beats: int, batch_size: int, shuffle_buffer: int | None = None,
                     seed: int = 0) -> tf.data.Dataset:
    """``(normalised, normalised)`` batches of the training beats (normal or unlabelled) in the shards ``paths``.

    ``beats`` is how many such beats the shards hold (the job counts them), so Keras knows the epoch's
    length and shows its progress; ``transform`` maps raw beat batches to the model's space (the TFT
    graph). With ``shuffle_buffer`` the shard order and the beats are shuffled every epoch (seeded),
    through a buffer of at most that many beats; without it the order is the files' (validation).
    """
    if beats < 1:
        raise ValueError("no training beats in the materialised split: training needs normal or unlabelled beats")
    files = tf.data.Dataset.from_tensor_slices(sorted(paths))
    if shuffle_buffer:
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    records = files.interleave(tf.data.TFRecordDataset, cycle_length=min(INTERLEAVE_CYCLE, max(len(paths), 1)),
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    beats_only = (records.map(_parse, num_parallel_calls=tf.data.AUTOTUNE)
                  .filter(lambda beat, label: tf.not_equal(label, ANOMALY))
                  .map(lambda beat, label: beat))
    if shuffle_buffer:
        beats_only = beats_only.shuffle(min(shuffle_buffer, beats), seed=seed, reshuffle_each_iteration=True)
    batches = (beats_only.batch(batch_size)
               .map(lambda batch: tf.cast(transform(batch), tf.float32), num_parallel_calls=tf.data.AUTOTUNE)
               .map(lambda batch: (batch, batch)))
    return batches.apply(tf.data.experimental.assert_cardinality(batch_count(beats, batch_size))).prefetch(
        tf.data.AUTOTUNE)
