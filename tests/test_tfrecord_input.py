"""TFRecord beat files as `--data`: framing, Example decoding, bad records, column options and the Beam read."""

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from models.ecg import BEAT_LENGTH, UNKNOWN_LABEL, sources, tfrecords
from pipeline import ecg_steps


def beat(seed: int, length: int = BEAT_LENGTH) -> list[float]:
    """A reproducible beat as Python floats."""
    return np.random.default_rng(seed).normal(size=length).astype(np.float32).tolist()


def example(values=None, label=None, beat_name: str = "beat", label_name: str = "label") -> bytes:
    """A serialised Example: float ``values`` under ``beat_name``, ``label`` (int, float, str or list)."""
    feature = {}
    if values is not None:
        feature[beat_name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
    labels = label if isinstance(label, list) else [] if label is None else [label]
    if labels and isinstance(labels[0], str):
        feature[label_name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[item.encode() for item in labels]))
    elif labels and isinstance(labels[0], float):
        feature[label_name] = tf.train.Feature(float_list=tf.train.FloatList(value=labels))
    elif labels:
        feature[label_name] = tf.train.Feature(int64_list=tf.train.Int64List(value=labels))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_records(path, payloads) -> str:
    """Write ``payloads`` with TensorFlow's own writer; returns the path."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for payload in payloads:
            writer.write(payload)
    return str(path)


def records_and_errors(spec: sources.DatasetSpec) -> tuple[list[dict], list[dict]]:
    items = list(sources.iter_records(spec))
    return [item for kind, item in items if kind == "record"], [item for kind, item in items if kind == "error"]


def test_frame_writes_what_tensorflow_writes(tmp_path):
    payloads = [b"", b"x", example(beat(0), 1)]
    path = write_records(tmp_path / "tf.tfrecord", payloads)
    with open(path, "rb") as handle:
        written = handle.read()
    assert written == b"".join(tfrecords.frame(payload) for payload in payloads)
    with open(path, "rb") as handle:
        assert list(tfrecords.record_payloads(handle)) == payloads


def test_labels_of_every_type_and_auto_format(tmp_path):
    path = write_records(tmp_path / "beats.tfrecord", [example(beat(0), 1), example(beat(1), 2), example(beat(2), 1.0),
                                                       example(beat(3), "pvc"), example(beat(4), "1")])
    spec = sources.DatasetSpec(path)
    assert spec.resolved_format() == "tfrecord"
    records, errors = records_and_errors(spec)
    assert errors == []
    assert [(item["row_number"], item["is_anomaly"], item["source_class"]) for item in records] == [
        (1, 0, "1"), (2, 1, "2"), (3, 0, "1"), (4, 1, "pvc"), (5, 0, "1")]
    np.testing.assert_array_equal(records[1]["beat"], np.asarray(beat(1), np.float32))
    for suffix in (".tfrecords", ".tfr"):
        assert sources.detect_format(f"gs://bucket/beats-00001{suffix}") == "tfrecord"


def test_unlabelled_file_and_named_features(tmp_path):
    bare = write_records(tmp_path / "bare.tfrecord", [example(beat(0)), example(beat(1))])
    records, errors = records_and_errors(sources.DatasetSpec(bare))
    assert errors == [] and [item["is_anomaly"] for item in records] == [UNKNOWN_LABEL] * 2
    named = write_records(tmp_path / "named.tfrecord", [example(beat(0), "n", "samples", "kind"),
                                                        example(beat(1), "af", "samples", "kind"),
                                                        example(beat(2), None, "samples", "kind")])
    spec = sources.DatasetSpec(named, feature_columns=("samples",), label_column="kind", normal_label="n")
    records, errors = records_and_errors(spec)
    assert [(item["row_number"], item["is_anomaly"], item["source_class"]) for item in records] == [
        (1, 0, "n"), (2, 1, "af")]
    assert [(item["row_number"], item["reason"]) for item in errors] == [(3, "missing label")]
    with pytest.raises(ValueError, match="one name"):
        sources.read_tasks(sources.DatasetSpec(named, feature_columns=("a", "b")))


def test_bad_records_keep_their_row_and_reason_and_good_ones_survive(tmp_path):
    nan_beat = beat(5)
    nan_beat[7] = float("nan")
    path = write_records(tmp_path / "bad.tfrecord", [
        example(beat(0), 1),
        b"\xff\xfe not a protobuf",
        example(None, 1),
        example(beat(1, length=139), 1),
        example(beat(2), [1, 2]),
        example(nan_beat, 1),
        example(beat(3), 9),
    ])
    records, errors = records_and_errors(sources.DatasetSpec(path))
    assert [(item["row_number"], item["source_class"]) for item in records] == [(1, "1"), (7, "9")]
    reasons = {item["row_number"]: item["reason"] for item in errors}
    assert sorted(reasons) == [2, 3, 4, 5, 6]
    assert reasons[2].startswith("record is not a tf.train.Example")
    assert reasons[3] == "no numeric feature 'beat' in the record (features: label)"
    assert reasons[4] == f"wrong length: expected {BEAT_LENGTH} samples, got 139"
    assert reasons[5] == "label feature 'label' holds 2 values, expected one"
    assert reasons[6] == "non-finite value at sample 7"
    assert all(item["source"] == path for item in errors)


@pytest.mark.parametrize("damage, reason", [
    (lambda data: data[:-3], "file ends inside a record"),
    (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "record payload fails its CRC"),
    (lambda data: data + b"\x01\x02", "file ends inside a record header"),
])
def test_broken_framing_ends_the_file_with_one_error(tmp_path, damage, reason):
    good = b"".join(tfrecords.frame(example(beat(seed), 1)) for seed in range(3))
    last = tfrecords.frame(example(beat(9), 1))
    path = tmp_path / "cut.tfrecord"
    path.write_bytes(damage(good + last))
    records, errors = records_and_errors(sources.DatasetSpec(str(path)))
    expected_good = 4 if "header" in reason else 3
    assert [item["row_number"] for item in records] == list(range(1, expected_good + 1))
    assert len(errors) == 1 and errors[0]["row_number"] == expected_good + 1
    assert errors[0]["reason"].startswith(reason) and errors[0]["reason"].endswith("the rest of the file is not read")


def test_a_text_file_named_tfrecord_is_one_clear_bad_row(tmp_path):
    path = tmp_path / "wrong.tfrecord"
    path.write_text("1.0 2.0 3.0\n" * 10)
    records, errors = records_and_errors(sources.DatasetSpec(str(path)))
    assert records == [] and len(errors) == 1
    assert errors[0]["reason"].startswith("record length fails its CRC (not a TFRecord file")


def test_beam_reads_a_pattern_of_tfrecord_shards_like_the_sequential_path(tmp_path):
    for shard in range(3):
        payloads = [example(beat(10 * shard + row), 1 + row % 2) for row in range(4)]
        payloads.insert(2, b"garbage")
        write_records(tmp_path / f"beats-{shard:05d}-of-00003.tfrecord", payloads)
    spec = ecg_steps.resolve_spec(sources.DatasetSpec(path=str(tmp_path / "beats-*.tfrecord")))
    assert spec.format == "tfrecord"
    records, errors = records_and_errors(spec)
    expected_records = sorted((item["source"], item["row_number"], item["source_class"]) for item in records)
    assert len(expected_records) == 12 and len(errors) == 3
    with TestPipeline(runner="FnApiRunner") as pipeline:
        valid, bad = pipeline | ecg_steps.ReadValidRows(spec)
        assert_that(valid | beam.FlatMap(lambda chunk: [(record["source"], record["row_number"],
                                                          record["source_class"]) for record in chunk.records()]),
                    equal_to(expected_records), label="records")
        assert_that(bad | beam.Map(lambda error: (error["source"], error["row_number"])),
                    equal_to([(str(tmp_path / f"beats-{shard:05d}-of-00003.tfrecord"), 3) for shard in range(3)]),
                    label="errors")
