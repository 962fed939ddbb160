"""Parts of the stream that need no broker: message codec and validation, output records, config, alerts,
adaptive thresholds, the batch handler on a real exported detector, and the hot-swap watcher."""

import collections
import json
import logging
import math
import platform
import struct
import subprocess
import sys
import uuid

import keras
import numpy as np
import pytest
import tensorflow as tf
from kafka.consumer.fetcher import ConsumerRecord

from models.common import files
from models.common.flags import parse_flags
from models.detection.detector import bucket_size, load_detector
from models.ecg import BEAT_LENGTH
from models.ecg.sources import DatasetSpec, load_dataset
from models.family import registry
from streaming import codec, events
from streaming.adaptive import DeviceThresholds
from streaming.alerts import BurstDetector
from streaming.allocator import retain_freed_memory
from streaming.config import StreamConfig, client_options, parse_kafka_options
from streaming.handler import BatchHandler, DeadLetterError
from streaming.hotswap import ModelWatcher
from streaming.kafka_clients import KNOWN_KEYS
from tests.streaming_fixtures import export_detector

BEAT = np.linspace(-1.0, 1.0, BEAT_LENGTH).astype(np.float32)


def json_message(**overrides) -> bytes:
    document = {"id": "h1", "device_id": "device-1", "ts": 1790000000.5, "beat": [float(x) for x in BEAT]}
    document.update(overrides)
    return json.dumps(document).encode()


def test_json_and_binary_round_trip_to_the_same_heartbeat():
    from_json = codec.decode_message(codec.encode_json("h1", "device-1", 1790000000.5, BEAT))
    binary = codec.encode_binary("h1", "device-1", 1790000000.5, BEAT)
    from_binary = codec.decode_message(binary, [(codec.CONTENT_TYPE_HEADER, codec.BINARY_CONTENT_TYPE.encode())])
    assert len(binary) == 576 + len("h1") + len("device-1")
    for heartbeat in (from_json, from_binary):
        assert (heartbeat.id, heartbeat.device_id, heartbeat.ts) == ("h1", "device-1", 1790000000.5)
        np.testing.assert_array_equal(heartbeat.beat, BEAT)
        assert heartbeat.beat.dtype == np.float32


def test_binary_layout_is_the_documented_little_endian_one():
    value = codec.encode_binary("7", "d", 2.0, BEAT)
    magic, ts, id_length, device_length = struct.unpack_from("<4sdHH", value)
    assert (magic, ts, id_length, device_length) == (b"HWB1", 2.0, 1, 1)
    np.testing.assert_array_equal(np.frombuffer(value[18:], "<f4"), BEAT)
    assert codec.decode_message(value, input_encoding="binary").id == "7"


def test_integer_ids_and_samples_are_accepted():
    heartbeat = codec.decode_message(json_message(id=17, beat=[1] * BEAT_LENGTH))
    assert heartbeat.id == "17" and heartbeat.beat.dtype == np.float32


NAN_BEAT = json.dumps({"id": "x", "device_id": "d", "ts": 1.0, "beat": [float("nan")] + [0.0] * 139}).encode()
MALFORMED = {
    "empty": (b"", "empty message"),
    "non-JSON": (b"{not json", "not JSON"),
    "JSON array": (b"[1, 2, 3]", "not an object"),
    "missing beat": (json.dumps({"id": "x", "device_id": "d", "ts": 1.0}).encode(), "missing field"),
    "missing device": (json.dumps({"id": "x", "ts": 1.0, "beat": [0.0] * 140}).encode(), "missing field"),
    "short beat": (json_message(beat=[0.0] * 139), "wrong length"),
    "long beat": (json_message(beat=[0.0] * 141), "wrong length"),
    "NaN sample": (NAN_BEAT, "non-finite value"),
    "Infinity sample": (NAN_BEAT.replace(b"NaN", b"Infinity"), "non-finite value"),
    "float32 overflow": (json_message(beat=[1e39] + [0.0] * 139), "non-finite value"),
    "string sample": (json_message(beat=["0.5"] + [0.0] * 139), "wrong type"),
    "null sample": (json_message(beat=[None] + [0.0] * 139), "wrong type"),
    "boolean sample": (json_message(beat=[True] + [0.0] * 139), "wrong type"),
    "nested sample": (json_message(beat=[[0.0]] * 140), "wrong type"),
    "beat as string": (json_message(beat="0,1,2"), "wrong type"),
    "numeric device": (json_message(device_id=5), "wrong type"),
    "object id": (json_message(id={"x": 1}), "wrong type: id must be a string or an integer, got dict"),
    "object device": (json_message(device_id={"y": 2}), "wrong type: device_id must be a non-empty string, got {"),
    "string ts": (json_message(ts="yesterday"), "wrong type"),
    "oversize": (json_message(padding="x" * 70000), "oversize"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_every_malformed_class_is_a_decode_error_with_its_reason(name):
    value, reason = MALFORMED[name]
    with pytest.raises(codec.DecodeError) as raised:
        codec.decode_message(value, max_message_bytes=65536)
    assert raised.value.reason.startswith(reason), raised.value.reason
    assert raised.value.reason.split(":", 1)[0] in codec.REASONS


def test_malformed_binary_messages_are_decode_errors():
    good = codec.encode_binary("h", "d", 1.0, BEAT)
    binary = [(codec.CONTENT_TYPE_HEADER, codec.BINARY_CONTENT_TYPE.encode())]
    cases = {b"XXXX" + good[4:]: "bad binary message", good[:-4]: "bad binary message",
             good + b"\0" * 4: "wrong length",
             codec.encode_binary("h", "d", 1.0, np.where(np.arange(140) == 3, np.inf, BEAT)): "non-finite value"}
    for value, reason in cases.items():
        with pytest.raises(codec.DecodeError) as raised:
            codec.decode_message(value, binary)
        assert raised.value.reason.startswith(reason)
    with pytest.raises(codec.DecodeError, match="unknown content type"):
        codec.decode_message(good, [(codec.CONTENT_TYPE_HEADER, b"text/csv")])



def test_a_batch_keeps_its_good_messages_in_order_and_names_every_bad_one():
    binary_header = [(codec.CONTENT_TYPE_HEADER, codec.BINARY_CONTENT_TYPE.encode())]
    messages = [(json_message(id="a"), None), (MALFORMED["string sample"][0], None),
                (codec.encode_binary("b", "device-2", 2.0, BEAT * 2), binary_header),
                (MALFORMED["NaN sample"][0], None),
                (json_message(id="c", beat=[1] * BEAT_LENGTH), None), (b"", None),
                (MALFORMED["float32 overflow"][0], None)]
    decoded = codec.decode_batch(messages)
    assert decoded.positions == [0, 2, 4] and decoded.ids == ["a", "b", "c"]
    assert decoded.device_ids == ["device-1", "device-2", "device-1"] and decoded.timestamps == [1790000000.5, 2.0,
                                                                                                  1790000000.5]
    assert decoded.beats.dtype == np.float32 and decoded.beats.shape == (3, BEAT_LENGTH)
    np.testing.assert_array_equal(decoded.beats, np.stack([BEAT, BEAT * 2, np.ones(BEAT_LENGTH)]))
    assert [position for position, _ in decoded.failures] == [1, 3, 5, 6]
    assert [reason.split(":", 1)[0] for _, reason in decoded.failures] == [
        "wrong type", "non-finite value", "empty message", "non-finite value"]
    for position, reason in decoded.failures:  # the batch gives the reason a message gets on its own
        with pytest.raises(codec.DecodeError) as raised:
            codec.decode_message(*messages[position])
        assert raised.value.reason == reason


def test_the_fast_and_the_general_json_parser_agree():
    plain = codec.decode_message(json_message(device_id="device-1"))
    general = codec.decode_message(json_message(device_id="device-[1]"))  # a second "[" takes the general parser
    np.testing.assert_array_equal(plain.beat, general.beat)
    assert (plain.id, plain.ts) == (general.id, general.ts) and general.device_id == "device-[1]"


def test_a_batch_of_only_bad_messages_has_an_empty_beat_matrix():
    decoded = codec.decode_batch([(b"{", None), (MALFORMED["nested sample"][0], None)])
    assert decoded.positions == [] and decoded.beats.shape == (0, BEAT_LENGTH)
    assert [reason.split(":", 1)[0] for _, reason in decoded.failures] == ["not JSON", "wrong type"]

def test_event_ids_are_deterministic_per_source_coordinates():
    assert events.event_id("in", 1, 5) == events.event_id("in", 1, 5)
    assert len({events.event_id("in", 1, 5), events.event_id("in", 1, 6), events.event_id("in", 2, 5),
                events.event_id("other", 1, 5)}) == 4
    for topic, partition, offset in (("in", 1, 5), ("tøpic", 0, 0), ("t" * 249, 1023, 2 ** 62)):
        expected = uuid.uuid5(events.EVENT_NAMESPACE, f"{topic}/{partition}/{offset}")
        assert events.event_id(topic, partition, offset) == str(expected)
        assert uuid.UUID(events.event_id(topic, partition, offset)).version == 5
    identifiers = [events.event_id("in", 3, offset) for offset in range(400)]  # every variant digit occurs
    assert identifiers == [str(uuid.uuid5(events.EVENT_NAMESPACE, f"in/3/{offset}")) for offset in range(400)]
    assert {identifier[19] for identifier in identifiers} == set("89ab")


def test_worst_segments_rank_segment_means_row_by_row():
    errors = np.zeros((2, BEAT_LENGTH))
    errors[0, 40:50] = 3.0
    errors[0, 130:140] = 2.0
    errors[0, 0:10] = 1.0
    errors[1, 60:70] = 5.0
    first, second = events.worst_segments(errors, 3, 10)
    assert [(segment["start"], segment["end"]) for segment in first] == [(40, 50), (130, 140), (0, 10)]
    assert first[0]["mean_error"] == 3.0 and second[0] == {"start": 60, "end": 70, "mean_error": 5.0}
    assert events.worst_segments(errors[:1], 2, 30) == [[{"start": 30, "end": 60, "mean_error": 1.0},
                                                         {"start": 120, "end": 140, "mean_error": 1.0}]]
    assert events.worst_segments(errors[:0], 3, 10) == []
    with pytest.raises(ValueError, match="beats, samples"):
        events.worst_segments(errors[0], 3, 10)


def test_anomaly_event_has_the_documented_fields():
    score = events.score_record(heartbeat_id="h", device_id="d", anomaly_score=0.3, error=0.3, threshold=0.1,
                                threshold_kind="global", is_anomaly=True, model_version="2", topic="in", partition=0,
                                offset=9, event_time=1.0, detection_time=2.0, processor="host:1", label=1)
    event = events.anomaly_event(score, events.worst_segments(np.ones((1, BEAT_LENGTH)), 3, 10)[0])
    assert set(event) == {"event_id", "heartbeat_id", "device_id", "anomaly_score", "reconstruction_error",
                          "threshold", "threshold_kind", "score", "worst_segments", "model_version", "source_topic",
                          "source_partition", "source_offset", "event_time", "detection_time", "processor", "label"}
    assert math.isclose(event["score"], 3.0) and len(event["worst_segments"]) == 3
    assert event["event_id"] == events.event_id("in", 0, 9)


def test_a_batch_of_score_records_matches_the_records_built_one_by_one():
    columns = {"heartbeat_ids": ["a", "b", "c"], "device_ids": ["d1", "d2", "d1"],
               "anomaly_scores": np.array([0.5, 0.25, 0.125], dtype=np.float32), "errors": [0.4, 0.2, 0.1],
               "thresholds": np.array([0.25, 0.5, 0.0]), "threshold_kinds": ["global", "device", "global"],
               "is_anomaly": np.array([True, False, True]), "topics": ["in", "in", "other"], "partitions": [0, 1, 0],
               "offsets": [7, 8, 9], "event_times": [1.0, 2.0, 3.0], "labels": [None, 1, -1]}
    batch = events.score_records(model_version="3", detection_time=9.0, processor="host:1", **columns)
    singles = [events.score_record(
        heartbeat_id=columns["heartbeat_ids"][row], device_id=columns["device_ids"][row],
        anomaly_score=float(columns["anomaly_scores"][row]), error=columns["errors"][row],
        threshold=float(columns["thresholds"][row]), threshold_kind=columns["threshold_kinds"][row],
        is_anomaly=bool(columns["is_anomaly"][row]), model_version="3", topic=columns["topics"][row],
        partition=columns["partitions"][row], offset=columns["offsets"][row], event_time=columns["event_times"][row],
        detection_time=9.0, processor="host:1", label=columns["labels"][row]) for row in range(3)]
    assert batch == singles
    assert [record["score"] for record in batch] == [2.0, 0.5, float("inf")]  # a zero threshold: infinitely far
    assert "label" not in batch[0] and batch[1]["label"] == 1 and batch[2]["label"] == -1
    assert [type(record["anomaly_score"]) for record in batch] == [float] * 3  # plain floats, not numpy scalars
    assert batch[2]["event_id"] == events.event_id("other", 0, 9) and batch[0]["is_anomaly"] is True


def test_config_file_is_overridden_by_flags_and_kafka_options_are_parsed(tmp_path):
    path = tmp_path / "stream.json"
    path.write_text(json.dumps({"batch_size": 64, "group_id": "from-file",
                                "kafka_option": {"security_protocol": "SASL_SSL", "consumer.fetch_min_bytes": 1}}))
    config = parse_flags(StreamConfig, ["--config", str(path), "--group_id", "from-flag", "--kafka_option",
                                         "sasl_mechanism=PLAIN", "--adaptive_thresholds", "true"])
    assert (config.batch_size, config.group_id, config.adaptive_thresholds) == (64, "from-flag", True)
    options = config.options()
    assert options == {"sasl_mechanism": "PLAIN"}  # the flag replaces the file's list, like every other field
    file_only = parse_flags(StreamConfig, ["--config", str(path)])
    consumer = client_options(file_only.options(), "consumer", KNOWN_KEYS["consumer"])
    producer = client_options(file_only.options(), "producer", KNOWN_KEYS["producer"])
    assert consumer == {"security_protocol": "SASL_SSL", "fetch_min_bytes": 1}
    assert producer == {"security_protocol": "SASL_SSL"}


@pytest.mark.parametrize("flags, message", [
    (["--batch_size", "0"], "batch_size"),
    (["--input_encoding", "xml"], "input_encoding"),
    (["--scores_topic", "heartbeats"], "input_topic"),
    (["--kafka_option", "novalue"], "key=value"),
    (["--max_poll_interval_ms", "1000"], "max_poll_interval_ms"),
    (["--alert_webhook_url", "ftp://x"], "alert_webhook_url"),
])
def test_invalid_stream_flags_raise_value_error(flags, message):
    with pytest.raises(ValueError, match=message):
        parse_flags(StreamConfig, flags)


def test_kafka_option_values_are_converted():
    assert parse_kafka_options(["a=1", "b=2.5", "c=true", "d=text=with=equals"]) == {
        "a": 1, "b": 2.5, "c": True, "d": "text=with=equals"}
    with pytest.raises(ValueError, match="no setting"):
        client_options({"consumer.not_a_setting": 1}, "consumer", KNOWN_KEYS["consumer"])


def _event(device, time_, index):
    return {"device_id": device, "event_time": time_, "event_id": f"e{index}", "score": 1.0 + index,
            "model_version": "1"}


def test_burst_detector_alerts_once_per_window_per_device():
    detector = BurstDetector(count=3, window_seconds=10)
    alerts = [detector.observe(_event("a", t, i)) for i, t in enumerate([0, 1, 20, 21, 22, 23, 24, 25])]
    raised = [alert for alert in alerts if alert]
    assert len(raised) == 1 and raised[0]["anomaly_count"] == 3 and raised[0]["event_ids"] == ["e2", "e3", "e4"]
    assert detector.observe(_event("b", 0, 9)) is None
    after_quiet = detector.observe(_event("a", 33, 10))
    assert after_quiet is not None and after_quiet["event_ids"] == ["e6", "e7", "e10"]


def detector_outputs(scores, threshold: float) -> dict:
    """What a detector with ``threshold`` returns for beats scoring ``scores`` (its own rule: score > threshold)."""
    scores = np.asarray(scores, dtype=np.float64)
    return {"anomaly_score": scores, "threshold": np.full(len(scores), threshold), "is_anomaly": scores > threshold}


def test_device_thresholds_fall_back_until_enough_normal_beats():
    thresholds = DeviceThresholds(min_beats=50, sigma=3.0)
    rng = np.random.default_rng(0)
    errors = rng.normal(0.02, 0.002, 60)
    thresholds.apply(["quiet"] * 49, detector_outputs(errors[:49], 0.05))
    assert thresholds.threshold_for("quiet", 0.05) == (0.05, "global")
    thresholds.apply(["quiet"] * 11 + ["quiet"], detector_outputs(list(errors[49:]) + [0.9], 0.05))
    value, kind = thresholds.threshold_for("quiet", 0.05)
    assert kind == "device"
    assert math.isclose(value, errors.mean() + 3.0 * errors.std(ddof=1), rel_tol=1e-9)
    thresholds.reset()
    assert thresholds.device_count() == 0


def test_xla_buckets_are_powers_of_two():
    assert [bucket_size(count) for count in (1, 64, 65, 1000, 1024, 1025)] == [64, 64, 128, 1024, 1024, 2048]


def test_adaptive_step_keeps_the_detectors_verdict_until_a_device_has_statistics():
    thresholds = DeviceThresholds(min_beats=3, sigma=2.0)
    first = thresholds.apply(["a", "a", "a", "b"], detector_outputs([0.01, 0.02, 0.03, 0.9], 0.5))
    np.testing.assert_array_equal(first[0], [0.5] * 4)
    assert first[1] == ["global"] * 4 and first[2].tolist() == [False, False, False, True]
    assert thresholds.device_count() == 1  # b's only beat was flagged by the detector: not in the statistics
    values, kinds, flags = thresholds.apply(["a", "a", "b"], detector_outputs([0.2, 0.6, 0.2], 0.5))
    device_threshold = 0.02 + 2.0 * np.std([0.01, 0.02, 0.03], ddof=1)
    assert kinds == ["device", "device", "global"]
    np.testing.assert_allclose(values, [device_threshold, device_threshold, 0.5])
    assert flags.tolist() == [True, True, False]  # 0.2 is above device a's threshold, normal for the detector
    assert thresholds.device_count() == 2


def consumer_records(values, topic: str = "in", device_id: str = "device-1") -> list:
    """Real kafka-python consumer records (partition 0, consecutive offsets) holding ``values``."""
    return [ConsumerRecord(topic, 0, 0, offset, 1790000000000 + offset, 0, device_id.encode(), value, [], None,
                           len(device_id), len(value), 0) for offset, value in enumerate(values)]


def beat_messages(beats, device_id: str = "device-1") -> list:
    return [codec.encode_json(f"h{index}", device_id, 1790000000.0 + index, beat) for index, beat in enumerate(beats)]


@pytest.fixture(scope="module")
def tiny_detectors(tmp_path_factory):
    """Two exported detectors around one small untrained dense autoencoder: one flags every beat, one none."""
    keras.utils.set_random_seed(0)
    autoencoder = registry.build("dense", {"hidden_units": [16], "latent_dim": 4})
    root = str(tmp_path_factory.mktemp("tiny-detectors"))
    return {name: load_detector(export_detector(root, tf.identity, autoencoder, threshold))
            for name, threshold in (("flags_every_beat", 1e-9), ("flags_no_beat", 1e9))}


def stream_config(**overrides) -> StreamConfig:
    return StreamConfig(**{"scores_topic": "scores", "alerts_topic": "", **overrides})


def test_the_streams_flags_are_the_detectors_is_anomaly(tiny_detectors):
    rng = np.random.default_rng(1)
    beats = rng.normal(0.0, 1.0, (12, BEAT_LENGTH)).astype(np.float32)
    records = consumer_records(beat_messages(beats) + [b"{not json"])
    config = stream_config()
    for name, expected_events in (("flags_every_beat", len(beats)), ("flags_no_beat", 0)):
        detector = tiny_detectors[name]
        output = BatchHandler(config, "host:1").handle(records, detector)
        by_topic = {topic: [codec.loads(record.value) for record in output.records if record.topic == topic]
                    for topic in (config.events_topic, config.scores_topic)}
        anomaly_events, scores = by_topic[config.events_topic], by_topic[config.scores_topic]
        assert len(anomaly_events) == output.anomalies == expected_events, name
        assert len(scores) == output.scored == len(beats)
        offline = detector.score(beats)
        assert [score["is_anomaly"] for score in scores] == offline["is_anomaly"].tolist()
        for score, anomaly_score in zip(scores, offline["anomaly_score"].tolist()):
            assert math.isclose(score["threshold"], detector.threshold, rel_tol=1e-6)
            assert score["threshold_kind"] == "global"
            assert math.isclose(score["anomaly_score"], anomaly_score, rel_tol=1e-5)
        assert [event["heartbeat_id"] for event in anomaly_events] == [f"h{index}" for index in range(expected_events)]
        dead_letters = [record for record in output.records if record.topic == config.dead_letter_topic]
        assert len(dead_letters) == 1 and dead_letters[0].value == b"{not json"


def test_adaptive_thresholds_are_applied_after_the_detector(tiny_detectors):
    detector = tiny_detectors["flags_no_beat"]
    rng = np.random.default_rng(2)
    base = np.sin(np.linspace(0, 2 * np.pi, BEAT_LENGTH)).astype(np.float32)
    steady = base + rng.normal(0.0, 0.01, (30, BEAT_LENGTH)).astype(np.float32)
    odd = base + 3.0
    config = stream_config(adaptive_thresholds=True, adaptive_min_beats=20, adaptive_sigma=4.0)
    handler = BatchHandler(config, "host:1")
    learning = handler.handle(consumer_records(beat_messages(steady)), detector)
    assert learning.anomalies == 0
    records = consumer_records(beat_messages([odd, steady[0]]) + beat_messages([odd], device_id="device-new"))
    records[2] = records[2]._replace(offset=2)
    output = handler.handle(records, detector)
    scores = [codec.loads(record.value) for record in output.records if record.topic == config.scores_topic]
    assert [(score["device_id"], score["threshold_kind"], score["is_anomaly"]) for score in scores] == [
        ("device-1", "device", True), ("device-1", "device", False), ("device-new", "global", False)]
    assert not detector.score(np.stack([odd]))["is_anomaly"][0], "the detector itself calls the odd beat normal"
    expected = DeviceThresholds(20, 4.0)
    expected.apply(["device-1"] * len(steady), detector.score(steady))
    device_threshold, _ = expected.threshold_for("device-1", detector.threshold)
    assert math.isclose(scores[0]["threshold"], device_threshold, rel_tol=1e-9)
    assert math.isclose(scores[2]["threshold"], detector.threshold, rel_tol=1e-6)
    assert output.anomalies == 1
    handler.model_changed()
    after_swap = handler.handle(consumer_records(beat_messages([odd])), detector)
    assert after_swap.anomalies == 0, "a new model version starts without device statistics"


def test_watcher_refuses_a_version_that_stays_incomplete_once(caplog):
    root = f"ram://{files.unique_name('models-')}"
    files.write_text(files.join(root, "2", "model_card.json"), "{}")
    refused = []
    watcher = ModelWatcher(root, "1", "off", 1.0, on_refused=refused.append)
    with caplog.at_level(logging.ERROR, logger="streaming.hotswap"):
        watcher.check_now()
        assert refused == [], "a folder may be incomplete for one poll"
        watcher.check_now()
        watcher.check_now()
    assert refused == ["2"]
    assert "refusing model version 2" in caplog.text and "incomplete" in caplog.text
    files.write_bytes(files.join(root, "2", "detector", "saved_model.pb"), b"this is not a SavedModel")
    watcher.check_now()
    assert refused == ["2", "2"] and watcher.take_ready() is None


def test_replay_reads_data_sets_through_the_file_layer():
    path = f"ram://{files.unique_name('replay-')}/sample.txt"
    rows = ["1.0 " + " ".join(["0.5"] * BEAT_LENGTH), "3.0 " + " ".join(["0.25"] * BEAT_LENGTH)]
    files.write_text(path, "\n".join(rows) + "\n")
    dataset = load_dataset(DatasetSpec(path=path))  # what replay and the demo call: the file layer's opener
    assert len(dataset) == 2 and dataset.is_anomaly.tolist() == [0, 1]
    np.testing.assert_allclose(dataset.beats[1], 0.25)


def outcomes(output, records, config) -> dict:
    """``{offset: [outcome, ...]}``: ``"scored"`` per score record, the reason per dead letter."""
    found = {record.offset: [] for record in records}
    for record in output.records:
        if record.topic == config.scores_topic:
            found[codec.loads(record.value)["source_offset"]].append("scored")
        elif record.topic == config.dead_letter_topic:
            headers = dict(record.headers)
            found[int(headers[events.DLQ_OFFSET_HEADER])].append(headers[events.DLQ_REASON_HEADER].decode())
    return found


def nested(depth: int) -> bytes:
    return b"[" * depth + b"0" + b"]" * depth


VALID = json_message().decode()
POISON = {  # the messages that crashed the stream before it committed: (value, headers, reason prefix)
    "nested top level": (nested(5000), None, "too deeply nested"),
    "nested objects": (b'{"a":' * 5000 + b"1" + b"}" * 5000, None, "too deeply nested"),
    "nested in beat": (VALID.replace('"beat": [', '"beat": ' + "[" * 3000 + "[", 1).encode() + b"]" * 3000, None,
                       "too deeply nested"),
    "nested beyond the limit": (json_message(extra=json.loads(nested(codec.MAX_JSON_DEPTH))), None,
                                "too deeply nested"),
    "huge integer id": (json_message(id=10 ** 400), None, "integer out of range"),
    "huge integer ts": (json_message(ts=10 ** 400), None, "integer out of range"),
    "huge integer sample": (json_message(beat=[10 ** 400] + [0] * 139), None, "integer out of range"),
    "huge integer extra field": (json_message(extra=-(10 ** 30)), None, "integer out of range"),
    "4301-digit integer": (VALID.replace('"ts": 1790000000.5', '"ts": ' + "9" * 4301).encode(), None,
                           "integer out of range"),
    "id beyond int64": (json_message(id=2 ** 63), None, "integer out of range"),
    "ts beyond int64": (json_message(ts=2 ** 64 - 1), None, "integer out of range"),
    "lone surrogate id": (VALID.replace('"h1"', '"\\ud800"').encode(), None, "invalid string: id"),
    "lone surrogate device": (VALID.replace('"device-1"', '"dev\\udfff"').encode(), None,
                              "invalid string: device_id"),
    "lone surrogate with NaN": (VALID.replace('"h1"', '"\\udc00"').replace("1790000000.5", "NaN").encode(), None,
                                "invalid string: id"),
}


@pytest.mark.parametrize("name", sorted(POISON))
def test_every_poison_class_is_one_dead_letter_and_the_batch_goes_on(tiny_detectors, name):
    value, headers, reason = POISON[name]
    records = consumer_records([json_message(id="before"), value, json_message(id="after")])
    records[1] = records[1]._replace(headers=headers or [])
    config = stream_config()
    output = BatchHandler(config, "host:1").handle(records, tiny_detectors["flags_every_beat"])
    found = outcomes(output, records, config)
    assert found[0] == ["scored"] and found[2] == ["scored"], found
    assert len(found[1]) == 1 and found[1][0].startswith(reason), found[1]
    assert found[1][0].split(":", 1)[0] in codec.REASONS
    dead_letter = next(record for record in output.records if record.topic == config.dead_letter_topic)
    assert dead_letter.value == value and output.scored == 2 and output.anomalies == 2
    assert output.dead_letters == [reason.split(":", 1)[0]]


def test_the_limits_themselves_are_accepted(tiny_detectors):
    deepest = json.loads(nested(codec.MAX_JSON_DEPTH - 2))  # the object and this field are two more levels
    values = [json_message(extra=deepest), json_message(id=2 ** 63 - 1, ts=-(2 ** 63)),
              json_message(extra="\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace")),
              VALID.replace('"beat"', '"note": "\\ud800 [[[[ 123456789012345678901234567890", "beat"').encode()]
    records = consumer_records(values)
    config = stream_config()
    output = BatchHandler(config, "host:1").handle(records, tiny_detectors["flags_no_beat"])
    assert outcomes(output, records, config) == {0: ["scored"], 1: ["scored"], 2: ["scored"], 3: ["scored"]}
    assert codec.nesting_depth(nested(codec.MAX_JSON_DEPTH)) == codec.MAX_JSON_DEPTH
    assert codec.nesting_depth(b'["[[[[", {"a": "]]]"}]') == 2


@pytest.mark.parametrize("label, expected", [(b"1", 1), (b"-1", -1), (b"9223372036854775807", 2 ** 63 - 1),
                                             (b"9223372036854775808", None), (b"9" * 5000, None),
                                             (b"-" + b"9" * 30, None), (b"abc", None), (b"\xff", None)])
def test_a_label_header_is_an_int64_or_none(tiny_detectors, label, expected):
    records = consumer_records([json_message()])
    records[0] = records[0]._replace(headers=[(codec.LABEL_HEADER, label)])
    config = stream_config()
    output = BatchHandler(config, "host:1").handle(records, tiny_detectors["flags_every_beat"])
    assert outcomes(output, records, config) == {0: ["scored"]}
    for record in output.records:
        assert codec.loads(record.value).get("label") == expected
    assert events.parse_label(label) == expected


def test_an_output_that_cannot_be_encoded_dead_letters_its_message(tiny_detectors):
    records = consumer_records(beat_messages([BEAT, BEAT]))
    config = stream_config()
    output = BatchHandler(config, "host:\ud800").handle(records, tiny_detectors["flags_every_beat"])
    found = outcomes(output, records, config)
    assert [len(reasons) for reasons in found.values()] == [1, 1]
    assert all(reasons[0].startswith("unencodable output") for reasons in found.values()), found
    assert output.scored == 0 and output.anomalies == 0 and output.dead_letters == ["unencodable output"] * 2
    assert all(record.topic == config.dead_letter_topic for record in output.records)


def test_an_unexpected_error_falls_back_to_one_message_at_a_time(tiny_detectors, caplog):
    records = consumer_records(beat_messages([BEAT, BEAT * 2]) + [b"{not json"])
    records.insert(1, records[0]._replace(offset=3, value="a str is not bytes"))  # decode_batch raises TypeError
    config = stream_config()
    with caplog.at_level(logging.WARNING, logger="streaming.handler"):
        output = BatchHandler(config, "host:1").handle(records, tiny_detectors["flags_every_beat"])
    assert "message by message" in caplog.text
    found = outcomes(output, records, config)
    assert found[0] == found[1] == ["scored"] and found[2][0].startswith("not JSON")
    assert len(found[3]) == 1 and found[3][0].startswith("internal error: TypeError"), found[3]
    assert output.scored == 2 and output.anomalies == 2
    assert output.dead_letters == ["internal error", "not JSON"]
    assert [codec.loads(record.value)["source_offset"] for record in output.records
            if record.topic == config.events_topic] == [0, 1]


def test_a_dead_letter_that_cannot_be_built_stops_the_handler(tiny_detectors):
    records = consumer_records([json_message(), b"{not json"])
    records[1] = records[1]._replace(headers=[(b"not-a-str-key", b"v")])
    with pytest.raises(DeadLetterError, match="in/0/1 .*could not be built"):
        BatchHandler(stream_config(), "host:1").handle(records, tiny_detectors["flags_every_beat"])


def test_the_handler_feeds_the_drift_watch_once_per_batch_and_emits_drift_records(tmp_path):
    """Clean beats like the reference's raise no drift record; beats of twice the amplitude raise one on the
    alerts topic (the same path the stream runs: BatchHandler -> DriftWatch -> OutputRecord)."""
    from prometheus_client import CollectorRegistry

    from models.detection import drift
    from streaming.drift import DriftWatch

    keras.utils.set_random_seed(0)
    autoencoder = registry.build("dense", {"hidden_units": [16], "latent_dim": 4})
    detector = load_detector(export_detector(str(tmp_path), tf.identity, autoencoder, 1e9))
    rng = np.random.default_rng(3)
    reference_scores = detector.score(rng.normal(0.0, 1.0, (4000, BEAT_LENGTH)).astype(np.float32))["anomaly_score"]
    drift.write_reference(detector.directory, np.quantile(reference_scores, (np.arange(1000) + 0.5) / 1000))
    metrics_registry = CollectorRegistry()
    handler = BatchHandler(stream_config(scores_topic="", alerts_topic="alerts"), "host:1",
                           DriftWatch(metrics_registry, "host:1", window=200, alpha=1e-4))

    def drift_records(scale: float, batches: int) -> list:
        found = []
        for _ in range(batches):
            beats = (scale * rng.normal(0.0, 1.0, (100, BEAT_LENGTH))).astype(np.float32)
            output = handler.handle(consumer_records(beat_messages(beats)), detector)
            found += [json.loads(record.value) for record in output.records if record.topic == "alerts"]
        return found

    assert drift_records(1.0, 20) == []
    shifted = drift_records(2.0, 10)
    assert len(shifted) == 1 and shifted[0]["record_type"] == "error_drift" and shifted[0]["topic"] == "in"
    assert metrics_registry.get_sample_value("heartwatch_drift_alarms_total", {"topic": "in"}) == 1.0
    assert metrics_registry.get_sample_value("heartwatch_error_drift_statistic", {"topic": "in"}) > 0.5


def test_offsets_to_commit_are_one_past_the_highest_offset_of_each_partition():
    from kafka import TopicPartition

    from streaming.commits import offsets_to_commit

    Record = collections.namedtuple("Record", "topic partition offset")
    records = [Record("beats", 1, 7), Record("beats", 0, 3), Record("beats", 1, 9), Record("beats", 1, 8),
               Record("other", 1, 0)]
    offsets = offsets_to_commit(records)
    assert {partition: meta.offset for partition, meta in offsets.items()} == {
        TopicPartition("beats", 1): 10, TopicPartition("beats", 0): 4, TopicPartition("other", 1): 1}
    assert offsets_to_commit([]) == {}


def test_librdkafka_config_translates_kafka_python_producer_options():
    from streaming.librdkafka_producer import librdkafka_config

    config = librdkafka_config({"bootstrap_servers": ["a:9092", "b:9093"], "acks": "all", "linger_ms": 5,
                                "max_request_size": 4 << 20, "security_protocol": "SSL", "ssl_cafile": "/ca.pem",
                                "ssl_check_hostname": False, "bootstrap_timeout_ms": 10000, "max_block_ms": 5,
                                "client_id": None})
    assert config == {"bootstrap.servers": "a:9092,b:9093", "acks": "all", "linger.ms": 5,
                      "message.max.bytes": 4 << 20, "security.protocol": "SSL", "ssl.ca.location": "/ca.pem",
                      "ssl.endpoint.identification.algorithm": "none"}
    with pytest.raises(ValueError, match="--kafka_option partitioner: no librdkafka equivalent.*kafka-python"):
        librdkafka_config({"partitioner": object()})


def test_a_batch_histogram_scrapes_like_prometheus_clients_histogram():
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from streaming.monitoring import LATENCY_BUCKETS, BatchHistogram

    values = np.concatenate([np.random.default_rng(3).exponential(0.2, 500), LATENCY_BUCKETS[:4], [0.0, 50.0]])
    batched_registry, plain_registry = CollectorRegistry(), CollectorRegistry()
    batched = BatchHistogram("latency_seconds", "help", LATENCY_BUCKETS, batched_registry)
    plain = Histogram("latency_seconds", "help", buckets=LATENCY_BUCKETS, registry=plain_registry)
    batched.observe_many(values[:300])
    batched.observe_many(values[300:])
    batched.observe_many([])
    for value in values:
        plain.observe(value)

    def series(registry, suffix):
        lines = generate_latest(registry).decode().splitlines()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in lines if line.startswith(f"latency_seconds_{suffix}")}
    for suffix in ("bucket", "count"):
        assert series(batched_registry, suffix) == series(plain_registry, suffix)
    assert series(batched_registry, "sum")["latency_seconds_sum"] == pytest.approx(values.sum())


FREED_AFTER_A_BLOCK = """
import ctypes, sys
from streaming.allocator import retain_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = retain_freed_memory(int(sys.argv[1]))
block = bytearray(8 << 20)  # above glibc's default mmap threshold: unmapped at once when freed, by default
del block
print(applied, libc.mallinfo2().fordblks)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_retained_memory_stays_in_the_heap_after_a_block_is_freed():
    def free_bytes_after_a_block(megabytes: int) -> tuple:
        output = subprocess.run([sys.executable, "-c", FREED_AFTER_A_BLOCK, str(megabytes)], check=True,
                                capture_output=True, text=True).stdout.split()
        return output[0] == "True", int(output[1])

    applied, kept = free_bytes_after_a_block(64)
    untouched, returned = free_bytes_after_a_block(0)
    assert applied and not untouched
    assert kept >= 8 << 20 > returned  # reused by the next batch instead of being faulted in again


def test_retain_freed_memory_refuses_a_negative_size():
    with pytest.raises(ValueError, match="megabytes must be >= 0"):
        retain_freed_memory(-1)
    with pytest.raises(ValueError, match="retain_freed_mb"):
        StreamConfig(retain_freed_mb=-1)
