"""Property-based fuzzing of the stream's real decode -> score -> event/dead-letter path (``hypothesis``).

Arbitrary bytes, arbitrary JSON values (deeply nested, huge integers, lone surrogates, NaN), mutated
valid messages in both encodings and arbitrary headers go through ``BatchHandler.handle`` with a real
exported detector that flags every beat. Whatever comes in, handling never raises and every message
has exactly one outcome: a score record (and its anomaly event) or a dead letter holding its original
bytes and a known reason.
"""

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.consumer.fetcher import ConsumerRecord

from models.detection.detector import load_detector
from models.ecg import BEAT_LENGTH
from models.family import registry
from streaming import codec, events
from streaming.config import StreamConfig
from streaming.handler import HANDLER_REASONS, BatchHandler
from tests.streaming_fixtures import export_detector

FIELDS = ("id", "device_id", "ts", "beat")
VALID = {"id": "h1", "device_id": "device-1", "ts": 1790000000.5, "beat": [0.25] * BEAT_LENGTH}
CONFIG = StreamConfig(scores_topic="scores", alerts_topic="alerts", alert_count=3)


@pytest.fixture(scope="module")
def flagging_detector(tmp_path_factory):
    """A real exported detector around a small untrained dense autoencoder that flags every beat."""
    keras.utils.set_random_seed(0)
    autoencoder = registry.build("dense", {"hidden_units": [16], "latent_dim": 4})
    return load_detector(export_detector(str(tmp_path_factory.mktemp("fuzz-detector")), tf.identity, autoencoder,
                                         1e-9))


any_text = st.text(alphabet=st.characters(exclude_categories=[]) | st.characters(min_codepoint=0xD800,
                                                                                 max_codepoint=0xDFFF),
                   max_size=12)  # lone surrogates included
scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=2 ** 60, max_value=2 ** 200)
           | st.floats() | any_text)
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(any_text, children, max_size=4), max_leaves=12)


def dumps(document) -> bytes:
    """Python's JSON writer: lone surrogates become ``\\udxxx`` escapes, NaN and Infinity bare words."""
    return json.dumps(document).encode()


@st.composite
def mutated_messages(draw) -> bytes:
    """A valid JSON message with some fields replaced by arbitrary values (or removed), and extra fields."""
    document = dict(VALID)
    for name in draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=4)):
        if draw(st.booleans()):
            document[name] = draw(json_values)
        else:
            del document[name]
    if draw(st.booleans()):
        document["beat"] = draw(st.lists(json_values | st.floats(width=32), min_size=BEAT_LENGTH - 1,
                                         max_size=BEAT_LENGTH + 1))
    document.update(draw(st.dictionaries(any_text, json_values, max_size=2)))
    return dumps(document)


@st.composite
def deep_messages(draw) -> bytes:
    """JSON nested from a few to thousands of levels, at top level or inside a field."""
    depth = draw(st.integers(min_value=1, max_value=4000))
    opening, closing = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    inner = opening * depth + draw(st.sampled_from([b"0", b"[]", b'"x"'])) + closing * depth
    if draw(st.booleans()):
        return inner
    field = draw(st.sampled_from(FIELDS + ("extra",)))
    return dumps(VALID).replace(b'{"id"', b'{"' + field.encode() + b'": ' + inner + b', "id"', 1)


@st.composite
def huge_integer_messages(draw) -> bytes:
    """A valid message with an integer literal of up to 5000 digits in one field (even one Python refuses)."""
    digits = draw(st.integers(min_value=18, max_value=5000))
    literal = draw(st.sampled_from([b"", b"-"])) + b"9" * digits
    field = draw(st.sampled_from(FIELDS + ("extra",)))
    document = dict(VALID, **{field: "__HUGE__"})
    if field == "beat":
        document["beat"] = ["__HUGE__"] + [0.0] * (BEAT_LENGTH - 1)
    return dumps(document).replace(b'"__HUGE__"', literal)


@st.composite
def binary_messages(draw) -> bytes:
    """A binary-encoded beat, sometimes with bytes flipped, cut or appended."""
    beat = np.asarray(draw(st.lists(st.floats(width=32), min_size=BEAT_LENGTH, max_size=BEAT_LENGTH)),
                      dtype=np.float32)
    value = bytearray(codec.encode_binary(draw(st.text(max_size=8)), draw(st.text(max_size=8)) or "d",
                                          draw(st.floats()), beat))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        value[draw(st.integers(min_value=0, max_value=len(value) - 1))] = draw(st.integers(0, 255))
    return bytes(value[:draw(st.integers(min_value=0, max_value=len(value)))]) if draw(st.booleans()) else bytes(value)


message_values = st.one_of(
    st.binary(max_size=200), st.builds(dumps, json_values), mutated_messages(), deep_messages(),
    huge_integer_messages(), binary_messages(), st.just(dumps(VALID)))
header_values = st.one_of(
    st.binary(max_size=30), st.sampled_from([codec.JSON_CONTENT_TYPE.encode(), codec.BINARY_CONTENT_TYPE.encode(),
                                             b"text/csv", b"application/json; charset=utf-8", b"1", b"-1",
                                             b"9" * 30, b"-" + b"9" * 5000, b"\xed\xa0\x80"]))
headers = st.lists(st.tuples(st.sampled_from([codec.CONTENT_TYPE_HEADER, codec.LABEL_HEADER,
                                              codec.SOURCE_CLASS_HEADER]) | st.text(max_size=10), header_values),
                   max_size=3)
messages = st.lists(st.tuples(message_values, headers, st.binary(max_size=10) | st.none()), min_size=1, max_size=6)


def consumer_records(drawn) -> list:
    return [ConsumerRecord("in", 0, 0, offset, 1790000000000 + offset, 0, key, value, headers_, None,
                           len(key or b""), len(value), 0) for offset, (value, headers_, key) in enumerate(drawn)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=messages, input_encoding=st.sampled_from(["auto", "auto", "json", "binary"]))
def test_any_batch_gives_exactly_one_outcome_per_message(flagging_detector, drawn, input_encoding):
    records = consumer_records(drawn)
    config = dataclasses.replace(CONFIG, input_encoding=input_encoding)
    output = BatchHandler(config, "host:1").handle(records, flagging_detector)
    scored, dead = {}, {}
    for record in output.records:
        if record.topic == config.scores_topic:
            offset = codec.loads(record.value)["source_offset"]
            scored[offset] = scored.get(offset, 0) + 1
        elif record.topic == config.dead_letter_topic:
            headers_ = dict(record.headers)
            offset = int(headers_[events.DLQ_OFFSET_HEADER])
            dead[offset] = dead.get(offset, 0) + 1
            source = records[offset]
            assert record.value == source.value and record.key == source.key
            reason = headers_[events.DLQ_REASON_HEADER].decode()
            assert reason.split(":", 1)[0] in codec.REASONS + HANDLER_REASONS, reason
            assert not reason.startswith("internal error"), reason  # no unexpected exception on any input
        else:
            assert record.topic in (config.events_topic, config.alerts_topic)
            codec.loads(record.value)
    assert set(scored) | set(dead) == set(range(len(records))) and not set(scored) & set(dead)
    assert all(count == 1 for count in (*scored.values(), *dead.values()))
    assert output.scored == len(scored) == output.anomalies and len(output.dead_letters) == len(dead)
