"""Beat chunks as sharded TFRecord files: how `heartwatch train` materialises its splits once.

The training job writes every valid beat of a split, raw, into ``<work>/beats/<split>/beats-*.tfrecord``:
one ``tf.train.Example`` per ``BeatChunk`` (``beats``: the chunk's ``[n, 140]`` little-endian float32
bytes; ``is_anomaly``, ``row_number``, ``sample_key``: int64 lists; ``source_class``: bytes list;
``source``: its file). Those files are what every later step streams:

- training (``training_dataset``): ``tf.data`` interleaves the shards, keeps the training beats
  (normal or unlabelled), unbatches them, shuffles through a bounded buffer, batches, applies the
  analysed tensorflow-transform graph to each batch and prefetches; memory is the buffer plus a few
  batches, whatever the split's size. With anomaly exposure a second, repeating stream of the split's
  labelled anomalies joins every batch, and the targets carry the labels;
- scoring (``decode_chunk``): Beam reads the same files again (``ReadAllFromTFRecord``) and feeds the
  chunks' raw beats to ``RunInference``.

Raw beats are materialised, not transformed ones: the transform is applied inside the input pipeline
(and, for scoring, inside the exported detector), so the data is read and validated once, written
once, and the same files serve training and every scorer.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from models.ecg import ANOMALY, BEAT_LENGTH
from models.ecg.chunks import BeatChunk

FILE_SUFFIX = ".tfrecord"
INTERLEAVE_CYCLE = 4
BEATS_FEATURE = "beats"
LABELS_FEATURE = "is_anomaly"
FEATURES = {
    BEATS_FEATURE: tf.io.FixedLenFeature([], tf.string),
    LABELS_FEATURE: tf.io.VarLenFeature(tf.int64),
}


def _integers(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=np.asarray(values, np.int64).tolist()))


def _texts(values) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(value).encode() for value in values]))


def encode_chunk(chunk: BeatChunk) -> bytes:
    """A split's chunk (``sample_keys`` set) as a serialised ``tf.train.Example``."""
    features = {BEATS_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[np.ascontiguousarray(chunk.beats, dtype="<f4").tobytes()])),
                LABELS_FEATURE: _integers(chunk.is_anomaly), "row_number": _integers(chunk.row_numbers),
                "sample_key": _integers(chunk.sample_keys), "source_class": _texts(chunk.source_classes),
                "source": _texts([chunk.source]), "split": _texts([chunk.split or ""])}
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def decode_chunk(serialized: bytes) -> BeatChunk:
    """The chunk ``encode_chunk`` wrote."""
    feature = tf.train.Example.FromString(serialized).features.feature
    beats = np.frombuffer(feature[BEATS_FEATURE].bytes_list.value[0], dtype="<f4").astype(np.float32)
    return BeatChunk(source=feature["source"].bytes_list.value[0].decode(),
                     row_numbers=np.asarray(feature["row_number"].int64_list.value, np.int64),
                     beats=beats.reshape(-1, BEAT_LENGTH),
                     is_anomaly=np.asarray(feature[LABELS_FEATURE].int64_list.value, np.int64),
                     source_classes=np.asarray([value.decode() for value in feature["source_class"].bytes_list.value],
                                               dtype=object),
                     sample_keys=np.asarray(feature["sample_key"].int64_list.value, np.int64),
                     split=feature["split"].bytes_list.value[0].decode() or None)


def _split_beats(serialized, anomalies: bool):
    """A chunk record's training beats (normal or unlabelled; or its anomalies) as float32 ``[n, BEAT_LENGTH]``."""
    parsed = tf.io.parse_single_example(serialized, FEATURES)
    beats = tf.reshape(tf.io.decode_raw(parsed[BEATS_FEATURE], tf.float32, little_endian=True), [-1, BEAT_LENGTH])
    labels = tf.sparse.to_dense(parsed[LABELS_FEATURE])
    return tf.boolean_mask(beats, tf.equal(labels, ANOMALY) if anomalies else tf.not_equal(labels, ANOMALY))


def _beat_stream(paths: list[str], anomalies: bool, beats: int, shuffle_buffer: int | None, seed: int,
                 memory_beats: int | None):
    """The shards' training beats (or their anomalies) one by one, shuffled through a bounded buffer if asked.

    When the ``beats`` fit in ``memory_beats`` they are cached in memory after the first pass, so later
    epochs neither read nor parse the shards again.
    """
    files = tf.data.Dataset.from_tensor_slices(sorted(paths))
    if shuffle_buffer:
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    records = files.interleave(tf.data.TFRecordDataset, cycle_length=min(INTERLEAVE_CYCLE, max(len(paths), 1)),
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    stream = records.map(lambda record: _split_beats(record, anomalies), num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    if memory_beats and beats <= memory_beats:
        stream = stream.cache()
    if shuffle_buffer:
        stream = stream.shuffle(min(shuffle_buffer, beats), seed=seed, reshuffle_each_iteration=True)
    return stream


def batch_count(beats: int, batch_size: int) -> int:
    """Batches in one pass over ``beats`` beats."""
    return math.ceil(beats / batch_size)


def training_dataset(paths: list[str], transform, beats: int, batch_size: int, shuffle_buffer: int | None = None,
                     seed: int = 0, anomaly_beats: int | None = None,
                     memory_beats: int | None = None) -> tf.data.Dataset:
    """``(normalised, normalised)`` batches of the training beats (normal or unlabelled) in the shards ``paths``.

    ``beats`` is how many such beats the shards hold (the job counts them), so Keras knows the epoch's
    length and shows its progress; ``transform`` maps raw beat batches to the model's space (the TFT
    graph). With ``shuffle_buffer`` the shard order and the beats are shuffled every epoch (seeded),
    through a buffer of at most that many beats; without it the order is the files' (validation).
    A stream of at most ``memory_beats`` beats (default: ``shuffle_buffer``, which holds such a split
    whole anyway) is cached in memory after the first epoch; a larger one is read from the shards
    every epoch, so memory stays bounded whatever the split's size.

    With ``anomaly_beats`` (anomaly exposure, ``models.family.exposure``; the count of labelled
    anomalies in the shards) the targets carry each beat's label as a last column, and each batch of
    ``batch_size`` normal beats is joined by as many anomalies, drawn from a stream of the shards'
    anomalies that repeats (reshuffled each pass when shuffling); with 0 anomalies the batches hold
    normal beats alone, labelled 0. An epoch is still one pass over the normal beats.
    """
    if beats < 1:
        raise ValueError("no training beats in the materialised split: training needs normal or unlabelled beats")
    memory_beats = shuffle_buffer if memory_beats is None else memory_beats
    normal = _beat_stream(paths, False, beats, shuffle_buffer, seed, memory_beats).batch(batch_size)

    def normalised(batch):
        return tf.cast(transform(batch), tf.float32)

    if anomaly_beats is None:
        batches = normal.map(normalised, num_parallel_calls=tf.data.AUTOTUNE).map(lambda batch: (batch, batch))
    else:
        labelled = normal.map(lambda batch: (batch, tf.zeros([tf.shape(batch)[0]], tf.float32)))
        if anomaly_beats > 0:
            anomalies = _beat_stream(paths, True, anomaly_beats, shuffle_buffer, seed + 1, memory_beats)
            anomalies = anomalies.repeat().batch(batch_size)
            labelled = tf.data.Dataset.zip((labelled, anomalies)).map(
                lambda pair, anomaly: (tf.concat([pair[0], anomaly], 0),
                                       tf.concat([pair[1], tf.ones([tf.shape(anomaly)[0]], tf.float32)], 0)))
        batches = labelled.map(lambda batch, labels: _with_labels(normalised(batch), labels),
                               num_parallel_calls=tf.data.AUTOTUNE)
    return batches.apply(tf.data.experimental.assert_cardinality(batch_count(beats, batch_size))).prefetch(
        tf.data.AUTOTUNE)


def _with_labels(inputs, labels):
    """``(inputs, exposure targets)``: the targets are the inputs with the labels as a last column."""
    return inputs, tf.concat([inputs, labels[:, tf.newaxis]], axis=1)
