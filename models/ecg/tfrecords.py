"""TFRecord beat files: one ``tf.train.Example`` per beat, read record by record from any binary stream.

The input format ``tfrecord`` (files ending ``.tfrecord``, ``.tfrecords`` or ``.tfr``, uncompressed):
every record is a serialised ``tf.train.Example`` with

- ``beat``: a ``float_list`` (or ``int64_list``) of ``BEAT_LENGTH`` samples (another feature name
  with ``feature_columns=("name",)``: exactly one name);
- ``label`` (optional; another name with ``label_column``): one value, ``int64``, ``float`` or
  ``bytes`` (UTF-8). As for CSV and parquet tables, a label equal to ``normal_label`` is normal,
  any other is an anomaly with its text as the source class, and a file without the feature is
  unlabelled (``UNKNOWN_LABEL``); a label feature named explicitly must be in every record.

``tfrecord_rows`` yields the ``(row_number, values, label_text)`` rows of ``models.ecg.readers``:
the row number is the 1-based record index. A record that cannot be read becomes an
``Unreadable`` row that validation turns into a bad row with its reason (never raised, never
dropped): a payload that is not an Example, or an Example without the beat feature, costs that
record only; broken framing (a length or payload whose CRC does not match, a file cut short)
ends the file at that record, since no later record boundary can be trusted.

Framing (TensorFlow's ``tf.io.TFRecordWriter``): ``uint64`` length, masked CRC-32C of the length,
the payload, masked CRC-32C of the payload, all little-endian; checked with the ``crc32c`` package.
A file is one read task: records have no markers to resynchronise on, so only whole files spread
over workers (write many shards).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import IO, Any

import crc32c

from models.ecg.readers import OpenFunction, label_cell_text, open_binary
from models.ecg.validation import Unreadable

TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfr")
BEAT_FEATURE = "beat"
LABEL_FEATURE = "label"
MASK_DELTA = 0xA282EAD8
LENGTH_BYTES, CRC_BYTES = 8, 4


class FramingError(ValueError):
    """The record framing of a TFRecord file is broken at some record."""


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C of ``data``."""
    value = crc32c.crc32c(data)
    return ((((value >> 15) | (value << 17)) & 0xFFFFFFFF) + MASK_DELTA) & 0xFFFFFFFF


def frame(payload: bytes) -> bytes:
    """One record as ``tf.io.TFRecordWriter`` writes it (tests and tools write files with it)."""
    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", masked_crc(length)) + payload + struct.pack("<I", masked_crc(payload))


def _read_exactly(binary: IO[bytes], count: int) -> bytes:
    """``count`` bytes from ``binary`` (fewer only at the end of the file)."""
    parts, remaining = [], count
    while remaining > 0:
        part = binary.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def record_payloads(binary: IO[bytes]) -> Iterator[bytes]:
    """The payload of every record of a TFRecord stream; ``FramingError`` where the framing breaks."""
    while True:
        header = _read_exactly(binary, LENGTH_BYTES + CRC_BYTES)
        if not header:
            return
        if len(header) < LENGTH_BYTES + CRC_BYTES:
            raise FramingError(f"file ends inside a record header ({len(header)} of 12 bytes)")
        length_bytes = header[:LENGTH_BYTES]
        if struct.unpack("<I", header[LENGTH_BYTES:])[0] != masked_crc(length_bytes):
            raise FramingError("record length fails its CRC (not a TFRecord file, compressed, or corrupt)")
        length = struct.unpack("<Q", length_bytes)[0]
        body = _read_exactly(binary, length + CRC_BYTES)
        if len(body) < length + CRC_BYTES:
            raise FramingError(f"file ends inside a record ({len(body)} of {length + CRC_BYTES} bytes)")
        payload = body[:length]
        if struct.unpack("<I", body[length:])[0] != masked_crc(payload):
            raise FramingError("record payload fails its CRC (corrupt)")
        yield payload


def beat_feature_name(feature_columns: tuple[str, ...] | None) -> str:
    """The feature holding the beat: ``beat``, or the one name of ``feature_columns``."""
    if feature_columns is None:
        return BEAT_FEATURE
    if len(feature_columns) != 1:
        raise ValueError(f"a TFRecord beat is one feature: give feature_columns one name, got {list(feature_columns)}")
    return feature_columns[0]


def _feature_values(feature) -> list:
    """The values of a ``tf.train.Feature``, whichever list it holds."""
    kind = feature.WhichOneof("kind")
    return [] if kind is None else list(getattr(feature, kind).value)


def example_row(payload: bytes, beat_feature: str, label_feature: str, label_required: bool) -> tuple[Any, str | None]:
    """``(values, label_text)`` of one serialised Example, or ``(Unreadable, None)``."""
    from tensorflow.core.example import example_pb2

    try:
        example = example_pb2.Example.FromString(payload)
    except Exception as error:  # protobuf raises its own DecodeError; the record is bad, the file goes on
        return Unreadable(f"record is not a tf.train.Example ({type(error).__name__})"), None
    features = example.features.feature
    if beat_feature not in features or features[beat_feature].WhichOneof("kind") == "bytes_list":
        present = ", ".join(sorted(features)) or "none"
        return Unreadable(f"no numeric feature {beat_feature!r} in the record (features: {present})"), None
    values = _feature_values(features[beat_feature])
    if label_feature not in features:
        return values, "" if label_required else None
    labels = _feature_values(features[label_feature])
    if len(labels) > 1:
        return Unreadable(f"label feature {label_feature!r} holds {len(labels)} values, expected one"), None
    if not labels:
        return values, ""
    label = labels[0]
    return values, label_cell_text(label.decode("utf-8", errors="replace") if isinstance(label, bytes) else label)


def tfrecord_rows(path: str, open_fn: OpenFunction, feature_columns: tuple[str, ...] | None,
                  label_column: str | None) -> Iterator[tuple[int, Any, str | None]]:
    """The raw ``(row_number, values, label_text)`` rows of one TFRecord beat file (see the module docstring)."""
    beat_feature = beat_feature_name(feature_columns)
    label_feature = label_column or LABEL_FEATURE
    row_number = 0
    with open_binary(path, open_fn) as binary:
        try:
            for row_number, payload in enumerate(record_payloads(binary), 1):
                yield (row_number, *example_row(payload, beat_feature, label_feature, label_column is not None))
        except FramingError as error:
            yield row_number + 1, Unreadable(f"{error}; the rest of the file is not read"), None
