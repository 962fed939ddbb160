"""Heartbeat messages on Kafka: the JSON and binary encodings, and validation that never raises past a reason.

JSON encoding (content type ``application/json``, the default)::

    {"id": "rec-17", "device_id": "device-003", "ts": 1790000000.125, "beat": [140 numbers]}

``id`` is a string or an integer, ``device_id`` a non-empty string, ``ts`` the event time in epoch
seconds (a number), ``beat`` exactly ``BEAT_LENGTH`` finite numbers (booleans are not numbers).
Unknown extra fields are ignored. The message key should be the device id (per-device ordering).

Binary encoding (content type ``application/x-heartwatch-beat``), little-endian throughout::

    offset      size   field
    0           4      magic b"HWB1"
    4           8      ts, float64 epoch seconds
    12          2      I = byte length of id, uint16
    14          2      D = byte length of device_id, uint16
    16          I      id, UTF-8
    16+I        D      device_id, UTF-8
    16+I+D      560    beat, 140 x float32

so a message is exactly ``576 + I + D`` bytes. A consumer picks the decoder from the
``content-type`` header (``input_encoding=auto``), or is forced to one with ``input_encoding``.

Limits, checked before any parser can get into trouble (each refusal is a dead letter with its reason):
arrays and objects may nest at most ``MAX_JSON_DEPTH`` levels (``too deeply nested``); an integer
literal may have at most ``MAX_INTEGER_DIGITS`` digits and ``id`` and ``ts`` integers must fit int64
(``integer out of range``); ``id`` and ``device_id`` must be valid Unicode, so a lone UTF-16 surrogate
escape such as ``"\\ud800"`` is refused (``invalid string``) rather than reaching an output encoder.

``decode_batch`` decodes a micro-batch at once: the good messages as columns with one float32 beat
matrix, and for every other message a reason that starts with one of ``REASONS``, which the consumer
turns into a dead-letter record. ``decode_message`` does the same for one message and raises
``DecodeError`` with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import struct

import numpy as np
import orjson
import simdjson

from models.ecg import BEAT_LENGTH

CONTENT_TYPE_HEADER = "content-type"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/x-heartwatch-beat"
LABEL_HEADER = "heartwatch-label"
SOURCE_CLASS_HEADER = "heartwatch-source-class"

BINARY_MAGIC = b"HWB1"
_BINARY_HEADER = struct.Struct("<4sdHH")
BINARY_BEAT_BYTES = BEAT_LENGTH * 4
BINARY_BEAT_DTYPE = np.dtype("<f4")

REASONS = ("empty message", "oversize", "not JSON", "not an object", "missing field", "wrong type",
           "wrong length", "non-finite value", "bad binary message", "unknown content type", "too deeply nested",
           "integer out of range", "invalid string")
MAX_JSON_DEPTH = 32
MAX_INTEGER_DIGITS = 19  # int64 has at most 19 digits
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_LONG_INTEGER = re.compile(rb"(?<![0-9.eE+-])-?[0-9]{%d,}(?![0-9.eE])" % (MAX_INTEGER_DIGITS + 1))
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
REQUIRED_FIELDS = ("id", "device_id", "ts", "beat")
_KNOWN_CONTENT_TYPES = {JSON_CONTENT_TYPE.encode(): "json", BINARY_CONTENT_TYPE.encode(): "binary"}


class DecodeError(ValueError):
    """A message that cannot be scored; ``reason`` says why (it starts with one of ``REASONS``)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class Heartbeat:
    """A decoded, validated heartbeat."""

    id: str
    device_id: str
    ts: float
    beat: np.ndarray  # float32 [BEAT_LENGTH], finite


@dataclasses.dataclass(frozen=True, slots=True)
class DecodedBatch:
    """A batch of messages decoded together: the good ones as columns, the refused ones with their reasons."""

    positions: list  # index in the input of each good message, in input order
    ids: list
    device_ids: list
    timestamps: list
    beats: np.ndarray  # float32 [len(positions), BEAT_LENGTH], finite
    failures: list  # (index in the input, reason), in input order


def nesting_depth(value: bytes) -> int:
    """How deeply arrays and objects nest in JSON bytes (brackets inside strings do not count).

    Unbalanced or invalid input still gets a number (the deepest open bracket count), so this can run
    before any parser.
    """
    depth = deepest = 0
    for bracket in _JSON_STRING.sub(b'""', value).translate(None, _NOT_BRACKETS):
        if bracket in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth = max(0, depth - 1)
    return deepest


def check_limits(value: bytes) -> None:
    """Raises ``DecodeError`` for JSON nested deeper than ``MAX_JSON_DEPTH`` or an integer literal longer
    than ``MAX_INTEGER_DIGITS`` digits (outside strings): what would exhaust a recursive parser or overflow."""
    brackets = value.count(b"[") + value.count(b"{")
    depth = nesting_depth(value) if brackets > MAX_JSON_DEPTH else brackets
    if depth > MAX_JSON_DEPTH:
        raise DecodeError(f"too deeply nested: arrays and objects nest {depth} levels, at most {MAX_JSON_DEPTH}")
    long_integer = _LONG_INTEGER.search(_JSON_STRING.sub(b'""', value))
    if long_integer is not None:
        raise DecodeError(f"integer out of range: an integer of {len(long_integer.group().lstrip(b'-'))} digits, "
                          f"at most {MAX_INTEGER_DIGITS}")


def _json_loads(value: bytes):
    check_limits(value)
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        pass  # NaN and Infinity are not JSON, but Python writes them: the lenient parser gives a better reason
    try:
        return json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise DecodeError(f"not JSON: {error}") from None


def header_value(headers, name: str) -> bytes | None:
    """The value of the first header called ``name`` (kafka-python headers are (str, bytes) pairs)."""
    for key, value in headers or ():
        if key == name:
            return value
    return None


def encoding_of(headers, input_encoding: str) -> str:
    """``json`` or ``binary`` for a message, from ``input_encoding`` or (``auto``) its content-type header."""
    if input_encoding != "auto":
        return input_encoding
    content_type = header_value(headers, CONTENT_TYPE_HEADER)
    if content_type is None:
        return "json"
    known = _KNOWN_CONTENT_TYPES.get(content_type)
    if known is not None:
        return known
    content_type = content_type.split(b";", 1)[0].strip().decode("ascii", "replace").lower()
    if content_type == BINARY_CONTENT_TYPE:
        return "binary"
    if content_type in (JSON_CONTENT_TYPE, "text/json", ""):
        return "json"
    raise DecodeError(f"unknown content type: {content_type!r}")


def decode_message(value: bytes | None, headers=None, input_encoding: str = "auto",
                   max_message_bytes: int = 65536) -> Heartbeat:
    """Decodes and validates one message value; raises ``DecodeError`` with the reason otherwise."""
    decoded = decode_batch([(value, headers)], input_encoding, max_message_bytes)
    if decoded.failures:
        raise DecodeError(decoded.failures[0][1])
    return Heartbeat(decoded.ids[0], decoded.device_ids[0], decoded.timestamps[0], decoded.beats[0])


def decode_batch(messages, input_encoding: str = "auto", max_message_bytes: int = 65536) -> DecodedBatch:
    """Decodes and validates ``(value, headers)`` pairs; never raises for bad input, it lists reasons instead.

    Each message is parsed on its own (simdjson for plain JSON, so no Python object is made per
    sample), then the samples of all of them become one float32 matrix in a single conversion and one
    finiteness check; only when that fails are the rows converted one by one to find the culprits.
    """
    good, failures = [], []
    parser = simdjson.Parser()
    for position, (value, headers) in enumerate(messages):
        try:
            good.append((position, *_parse(value, headers, input_encoding, max_message_bytes, parser)))
        except DecodeError as error:
            failures.append((position, error.reason))
    beats, refused = _beat_matrix([fields[4] for fields in good])
    if refused:
        failures += [(good[row][0], reason) for row, reason in refused.items()]
        failures.sort()
        good = [fields for row, fields in enumerate(good) if row not in refused]
    return DecodedBatch(positions=[fields[0] for fields in good], ids=[fields[1] for fields in good],
                        device_ids=[fields[2] for fields in good], timestamps=[fields[3] for fields in good],
                        beats=beats, failures=failures)


def _parse(value: bytes | None, headers, input_encoding: str, max_message_bytes: int, parser) -> tuple:
    """``(id, device_id, ts, samples)`` of one message; samples are not yet checked to be finite numbers."""
    if not value:
        raise DecodeError("empty message")
    if len(value) > max_message_bytes:
        raise DecodeError(f"oversize: {len(value)} bytes > {max_message_bytes}")
    if encoding_of(headers, input_encoding) == "binary":
        return _parse_binary(value)
    return _parse_json(value, parser)


def _plain_json_fields(value: bytes, parser) -> tuple | None:
    """The four fields, the samples as float64, read by simdjson without a Python float per sample.

    None for anything but a plain message (invalid JSON, a missing field, an object where a scalar
    belongs, nested, boolean, null or string samples...): the general parser then names the reason in
    the same words for both paths. Nesting is ruled out by requiring a single ``[`` (simdjson would
    flatten nested arrays) and a single ``{`` (so the general parser checks the depth of anything nested).
    """
    opening = value.find(b"[")  # find scans with memchr, several times faster than count
    if opening == -1 or value.find(b"[", opening + 1) != -1 or value.find(b"{", 1) != -1:
        return None
    try:
        document = parser.parse(value)
        heartbeat_id, device_id, ts = document["id"], document["device_id"], document["ts"]
        samples = np.frombuffer(document["beat"].as_buffer(of_type="d"), dtype=np.float64)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError):
        return None
    if not (isinstance(heartbeat_id, (str, int)) and isinstance(device_id, str) and isinstance(ts, (int, float))):
        return None
    return heartbeat_id, device_id, ts, samples


def _parse_json(value: bytes, parser) -> tuple:
    fields = _plain_json_fields(value, parser)
    general = fields is None
    if general:
        document = _json_loads(value)
        if not isinstance(document, dict):
            raise DecodeError(f"not an object: got a JSON {type(document).__name__}")
        missing = [name for name in REQUIRED_FIELDS if name not in document]
        if missing:
            raise DecodeError(f"missing field: {', '.join(missing)}")
        fields = tuple(document[name] for name in REQUIRED_FIELDS)
    heartbeat_id, device_id, ts, beat = fields
    if isinstance(heartbeat_id, bool) or not isinstance(heartbeat_id, (str, int)):
        raise DecodeError(f"wrong type: id must be a string or an integer, got {type(heartbeat_id).__name__}")
    if not isinstance(device_id, str) or not device_id:
        raise DecodeError(f"wrong type: device_id must be a non-empty string, got {device_id!r:.40}")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise DecodeError(f"wrong type: ts must be a number, got {type(ts).__name__}")
    if isinstance(heartbeat_id, int) and not INT64_MIN <= heartbeat_id <= INT64_MAX:
        raise DecodeError("integer out of range: id does not fit int64")
    if isinstance(ts, int) and not INT64_MIN <= ts <= INT64_MAX:
        raise DecodeError("integer out of range: ts does not fit int64")
    if general:  # only the lenient parser lets lone surrogates through (orjson and simdjson refuse them)
        for name, text in (("id", heartbeat_id), ("device_id", device_id)):
            if isinstance(text, str) and not _is_valid_unicode(text):
                raise DecodeError(f"invalid string: {name} is not valid Unicode (a lone UTF-16 surrogate?)")
    if not math.isfinite(ts):
        raise DecodeError(f"non-finite value: ts is {ts}")
    if not isinstance(beat, (list, np.ndarray)):
        raise DecodeError(f"wrong type: beat must be a list of numbers, got {type(beat).__name__}")
    if len(beat) != BEAT_LENGTH:
        raise DecodeError(f"wrong length: beat has {len(beat)} samples, expected {BEAT_LENGTH}")
    if isinstance(beat, list) and (b"true" in value or b"false" in value):
        _check_no_booleans(beat)
    return str(heartbeat_id), device_id, float(ts), beat


def _check_no_booleans(beat: list) -> None:
    for index, sample in enumerate(beat):
        if isinstance(sample, bool):
            raise DecodeError(f"wrong type: beat[{index}] is a boolean")


def _is_valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_binary(value: bytes) -> tuple:
    if len(value) < _BINARY_HEADER.size + BINARY_BEAT_BYTES:
        raise DecodeError(f"bad binary message: {len(value)} bytes is shorter than the minimum "
                          f"{_BINARY_HEADER.size + BINARY_BEAT_BYTES}")
    magic, ts, id_length, device_length = _BINARY_HEADER.unpack_from(value)
    if magic != BINARY_MAGIC:
        raise DecodeError(f"bad binary message: magic {magic!r}, expected {BINARY_MAGIC!r}")
    beat_start = _BINARY_HEADER.size + id_length + device_length
    if len(value) != beat_start + BINARY_BEAT_BYTES:
        raise DecodeError(f"wrong length: {len(value)} bytes, expected {beat_start + BINARY_BEAT_BYTES} "
                          f"for {BEAT_LENGTH} float32 samples")
    try:
        heartbeat_id = value[_BINARY_HEADER.size:_BINARY_HEADER.size + id_length].decode("utf-8")
        device_id = value[_BINARY_HEADER.size + id_length:beat_start].decode("utf-8")
    except UnicodeDecodeError as error:
        raise DecodeError(f"bad binary message: id or device_id is not UTF-8 ({error})") from None
    if not device_id:
        raise DecodeError("wrong type: device_id must be a non-empty string")
    if not math.isfinite(ts):
        raise DecodeError(f"non-finite value: ts is {ts}")
    return heartbeat_id, device_id, float(ts), np.frombuffer(value, dtype=BINARY_BEAT_DTYPE, count=BEAT_LENGTH,
                                                             offset=beat_start)


def _beat_matrix(samples: list) -> tuple[np.ndarray, dict]:
    """Float32 [n, BEAT_LENGTH] of the rows that are finite numbers, and ``{row: reason}`` for the others.

    All rows are converted at once; only when that fails are they checked one by one for the rows
    that hold something other than numbers. The float32 conversion and finiteness check are shared.
    """
    rows, refused = list(range(len(samples))), {}
    matrix = _numbers(samples)
    if matrix is None or matrix.ndim != 2:
        for row, beat in enumerate(samples):
            array = _numbers(beat)
            if array is None or array.ndim != 1:
                refused[row] = f"wrong type: beat must hold numbers only, got {_first_non_number(beat)!r:.40}"
        rows = [row for row in rows if row not in refused]
        matrix = np.array([samples[row] for row in rows]) if rows else np.empty((0, BEAT_LENGTH))
    with np.errstate(over="ignore"):
        matrix = matrix.astype(np.float32)
    finite = np.isfinite(matrix).all(axis=1)
    for index in np.flatnonzero(~finite):
        refused[rows[index]] = _non_finite_reason(matrix[index])
    return matrix[finite], refused


def _numbers(samples) -> np.ndarray | None:
    """``samples`` as a numeric array, or None when they hold anything else (or are ragged)."""
    try:
        array = np.asarray(samples)
    except (TypeError, ValueError):
        return None
    return array if array.dtype.kind in "fiu" else None


def _first_non_number(beat: list):
    return next((sample for sample in beat if isinstance(sample, bool) or not isinstance(sample, (int, float))),
                None)


def _non_finite_reason(beat: np.ndarray) -> str:
    index = int(np.argmin(np.isfinite(beat)))
    return f"non-finite value: beat[{index}] is {beat[index]} (as float32)"


def encode_json(heartbeat_id: str, device_id: str, ts: float, beat) -> bytes:
    """The JSON encoding of one beat (samples rounded to float32 precision)."""
    samples = [float(sample) for sample in np.asarray(beat, dtype=np.float32)]
    return orjson.dumps({"id": heartbeat_id, "device_id": device_id, "ts": ts, "beat": samples})


def encode_binary(heartbeat_id: str, device_id: str, ts: float, beat) -> bytes:
    """The binary encoding of one beat."""
    id_bytes, device_bytes = str(heartbeat_id).encode("utf-8"), device_id.encode("utf-8")
    if len(id_bytes) > 0xFFFF or len(device_bytes) > 0xFFFF:
        raise ValueError("id and device_id must be shorter than 65536 bytes in the binary encoding")
    array = np.asarray(beat, dtype=BINARY_BEAT_DTYPE)
    if array.shape != (BEAT_LENGTH,):
        raise ValueError(f"beat must have {BEAT_LENGTH} samples, got shape {array.shape}")
    return (_BINARY_HEADER.pack(BINARY_MAGIC, float(ts), len(id_bytes), len(device_bytes))
            + id_bytes + device_bytes + array.tobytes())


def content_type_for(encoding: str) -> str:
    """The content-type header value of an encoding name."""
    if encoding not in ("json", "binary"):
        raise ValueError(f"encoding must be json or binary, got {encoding!r}")
    return BINARY_CONTENT_TYPE if encoding == "binary" else JSON_CONTENT_TYPE


def dumps(document) -> bytes:
    """Compact JSON bytes for output records (numpy scalars and arrays included)."""
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


def loads(value: bytes):
    """Parses JSON bytes; raises ValueError on bad input."""
    return orjson.loads(value)
