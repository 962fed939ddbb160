"""Pure parts of the stream: message codec and validation, output records, config, alerts, adaptive thresholds."""

import json
import math
import struct

import numpy as np
import pytest

from models.ecg import BEAT_LENGTH
from streaming import codec, events
from streaming.adaptive import DeviceThresholds
from streaming.alerts import BurstDetector
from streaming.config import StreamConfig, client_options, parse_config, parse_kafka_options
from streaming.kafka_clients import KNOWN_KEYS
from streaming.scoring import bucket_size

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
    cases = {b"XXXX" + good[4:]: "bad binary message", good[:-4]: "bad binary message", good + b"\0" * 4: "wrong length",
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
                (codec.encode_binary("b", "device-2", 2.0, BEAT * 2), binary_header), (MALFORMED["NaN sample"][0], None),
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
    score = events.score_record(heartbeat_id="h", device_id="d", error=0.3, threshold=0.1, threshold_kind="global",
                                is_anomaly=True, model_version="2", topic="in", partition=0, offset=9, event_time=1.0,
                                detection_time=2.0, processor="host:1", label=1)
    event = events.anomaly_event(score, events.worst_segments(np.ones((1, BEAT_LENGTH)), 3, 10)[0])
    assert set(event) == {"event_id", "heartbeat_id", "device_id", "reconstruction_error", "threshold",
                          "threshold_kind", "score", "worst_segments", "model_version", "source_topic",
                          "source_partition", "source_offset", "event_time", "detection_time", "processor", "label"}
    assert math.isclose(event["score"], 3.0) and len(event["worst_segments"]) == 3
    assert event["event_id"] == events.event_id("in", 0, 9)


def test_config_file_is_overridden_by_flags_and_kafka_options_are_parsed(tmp_path):
    path = tmp_path / "stream.json"
    path.write_text(json.dumps({"batch_size": 64, "group_id": "from-file",
                                "kafka_option": {"security_protocol": "SASL_SSL", "consumer.fetch_min_bytes": 1}}))
    config = parse_config(StreamConfig, ["--config", str(path), "--group_id", "from-flag", "--kafka_option",
                                         "sasl_mechanism=PLAIN", "--adaptive_thresholds", "true"])
    assert (config.batch_size, config.group_id, config.adaptive_thresholds) == (64, "from-flag", True)
    options = config.options()
    assert options == {"sasl_mechanism": "PLAIN"}  # the flag replaces the file's list, like every other field
    file_only = parse_config(StreamConfig, ["--config", str(path)])
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
        parse_config(StreamConfig, flags)


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


def test_device_thresholds_fall_back_until_enough_normal_beats():
    thresholds = DeviceThresholds(min_beats=50, sigma=3.0)
    rng = np.random.default_rng(0)
    errors = rng.normal(0.02, 0.002, 60)
    thresholds.update(["quiet"] * 49, errors[:49], global_threshold=0.05)
    assert thresholds.threshold_for("quiet", 0.05) == (0.05, "global")
    thresholds.update(["quiet"] * 11 + ["quiet"], list(errors[49:]) + [0.9], global_threshold=0.05)
    value, kind = thresholds.threshold_for("quiet", 0.05)
    assert kind == "device"
    assert math.isclose(value, errors.mean() + 3.0 * errors.std(ddof=1), rel_tol=1e-9)
    thresholds.reset()
    assert thresholds.device_count() == 0


def test_xla_buckets_are_powers_of_two():
    assert [bucket_size(count) for count in (1, 64, 65, 1000, 1024, 1025)] == [64, 64, 128, 1024, 1024, 2048]
