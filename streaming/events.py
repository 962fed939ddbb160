"""Output records of the stream: anomaly events, score records, dead letters and their ids.

Every output is derived from its source message's coordinates, so replaying a message after a crash
produces a byte-for-byte identical record id: ``event_id = uuid5(EVENT_NAMESPACE,
"topic/partition/offset")``. Downstream stores can upsert on it (idempotent on replay).

Anomaly event (JSON, key = device id), one per anomalous beat::

    event_id, heartbeat_id, device_id, anomaly_score (the detector's score), reconstruction_error,
    threshold (the one applied: the detector's, or the device's under adaptive thresholds),
    threshold_kind ("global" or "device"), score (= anomaly_score / threshold, > 1 means anomalous),
    worst_segments [{start, end, mean_error}], model_version, source_topic, source_partition,
    source_offset, event_time (the beat's ts, epoch seconds), detection_time (epoch seconds),
    processor (host:pid), label (ground truth header, when present)

A score record (optional scores topic) has the same fields minus ``worst_segments`` plus
``is_anomaly``. A dead letter keeps the original key and value bytes untouched and adds headers
``heartwatch-dlq-reason``, ``heartwatch-dlq-source-topic``, ``-source-partition``, ``-source-offset``,
``-source-timestamp``, ``-group`` (and ``-truncated`` when the value had to be cut to fit).
"""

from __future__ import annotations

import functools
import hashlib
import uuid

import numpy as np

EVENT_NAMESPACE = uuid.UUID("5d0c3f0e-6b7a-4c61-9a43-2f1f4e3b8c11")
DLQ_PREFIX = "heartwatch-dlq-"
DLQ_REASON_HEADER = DLQ_PREFIX + "reason"
DLQ_TOPIC_HEADER = DLQ_PREFIX + "source-topic"
DLQ_PARTITION_HEADER = DLQ_PREFIX + "source-partition"
DLQ_OFFSET_HEADER = DLQ_PREFIX + "source-offset"
DLQ_TIMESTAMP_HEADER = DLQ_PREFIX + "source-timestamp"
DLQ_GROUP_HEADER = DLQ_PREFIX + "group"
DLQ_TRUNCATED_HEADER = DLQ_PREFIX + "truncated"


def event_id(topic: str, partition: int, offset: int) -> str:
    """The deterministic id of whatever the stream emits for one source message.

    Exactly ``str(uuid.uuid5(EVENT_NAMESPACE, f"{topic}/{partition}/{offset}"))``, computed from a
    SHA-1 state that already holds the namespace and ``topic/partition/`` (one per partition), so a
    message costs one short hash update and a slice of its hex digest instead of building a ``uuid.UUID``.
    """
    digest = _partition_digest(topic, partition).copy()
    digest.update(b"%d" % offset)
    return _uuid5_text(digest.hexdigest())


@functools.lru_cache(maxsize=4096)
def _partition_digest(topic: str, partition: int):
    return hashlib.sha1(EVENT_NAMESPACE.bytes + f"{topic}/{partition}/".encode(), usedforsecurity=False)


_VARIANT_DIGITS = {digit: "89ab"[int(digit, 16) & 0x3] for digit in "0123456789abcdef"}  # RFC 4122 variant bits


def _uuid5_text(hex_digest: str) -> str:
    """The text of the version-5 UUID made from a SHA-1 hex digest (RFC 4122 section 4.3, as ``uuid.uuid5``):
    the first 32 digits, with the version digit set to 5 and the variant bits of digit 16 set to 10."""
    return (f"{hex_digest[:8]}-{hex_digest[8:12]}-5{hex_digest[13:16]}-{_VARIANT_DIGITS[hex_digest[16]]}"
            f"{hex_digest[17:20]}-{hex_digest[20:32]}")


def worst_segments(per_sample_errors: np.ndarray, count: int, segment_length: int) -> list[list[dict]]:
    """For each row of ``per_sample_errors`` [beats, samples], its ``count`` segments of ``segment_length``
    samples with the highest mean error, worst first (computed for all rows at once).

    The last segment may be shorter. ``end`` is exclusive; indices are 0-based sample positions.
    """
    if count < 1 or segment_length < 1:
        raise ValueError(f"count and segment_length must be positive, got {count} and {segment_length}")
    errors = np.asarray(per_sample_errors, dtype=np.float64)
    if errors.ndim != 2:
        raise ValueError(f"per_sample_errors must be [beats, samples], got shape {errors.shape}")
    if errors.shape[0] == 0:
        return []
    starts = np.arange(0, errors.shape[1], segment_length)
    ends = np.minimum(starts + segment_length, errors.shape[1])
    means = np.add.reduceat(errors, starts, axis=1) / (ends - starts)
    order = np.argsort(-means, axis=1, kind="stable")[:, :count]
    worst_means = np.round(np.take_along_axis(means, order, axis=1), 6).tolist()
    starts, ends = starts.tolist(), ends.tolist()
    return [[{"start": starts[index], "end": ends[index], "mean_error": mean} for index, mean in zip(indices, row)]
            for indices, row in zip(order.tolist(), worst_means)]


def score_record(*, heartbeat_id: str, device_id: str, anomaly_score: float, error: float, threshold: float,
                 threshold_kind: str, is_anomaly: bool, model_version: str, topic: str, partition: int,
                 offset: int, event_time: float, detection_time: float, processor: str, label: int | None) -> dict:
    """The record of one scored beat (the scores topic carries one per beat).

    ``is_anomaly`` and ``threshold`` are the verdict and threshold applied (the detector's own, or the
    adaptive step's); ``score`` is ``anomaly_score / threshold``.
    """
    return score_records(heartbeat_ids=[heartbeat_id], device_ids=[device_id], anomaly_scores=[anomaly_score],
                         errors=[error], thresholds=[threshold], threshold_kinds=[threshold_kind],
                         is_anomaly=[is_anomaly], model_version=model_version, topics=[topic], partitions=[partition],
                         offsets=[offset], event_times=[event_time], detection_time=detection_time,
                         processor=processor, labels=[label])[0]


def score_records(*, heartbeat_ids, device_ids, anomaly_scores, errors, thresholds, threshold_kinds, is_anomaly,
                  model_version: str, topics, partitions, offsets, event_times, detection_time: float,
                  processor: str, labels) -> list[dict]:
    """The score records of a batch's beats, field by field as ``score_record`` builds one (same keys, same
    values), from aligned columns: numpy arrays or lists for the numbers, lists for the rest; ``labels``
    holds an integer or None per beat."""
    anomaly_scores = np.asarray(anomaly_scores, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    ratios = np.full(len(anomaly_scores), np.inf)
    np.divide(anomaly_scores, thresholds, out=ratios, where=thresholds > 0)
    numbers = zip(anomaly_scores.tolist(), np.asarray(errors, dtype=np.float64).tolist(), thresholds.tolist(),
                  ratios.tolist(), np.asarray(is_anomaly, dtype=bool).tolist())
    records = [{
        "event_id": event_id(topic, partition, offset),
        "heartbeat_id": heartbeat_id,
        "device_id": device_id,
        "anomaly_score": anomaly_score,
        "reconstruction_error": error,
        "threshold": threshold,
        "threshold_kind": threshold_kind,
        "score": ratio,
        "is_anomaly": flagged,
        "model_version": model_version,
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "event_time": event_time,
        "detection_time": detection_time,
        "processor": processor,
    } for (anomaly_score, error, threshold, ratio, flagged), heartbeat_id, device_id, threshold_kind, topic, partition,
        offset, event_time in zip(numbers, heartbeat_ids, device_ids, threshold_kinds, topics, partitions, offsets,
                                  event_times)]
    for record, label in zip(records, labels):
        if label is not None:
            record["label"] = label
    return records


def anomaly_event(score: dict, segments: list[dict]) -> dict:
    """An anomaly event from a beat's score record and its worst segments (see ``worst_segments``)."""
    event = dict(score)
    del event["is_anomaly"]
    event["worst_segments"] = segments
    return event


def dead_letter_headers(original_headers, *, reason: str, topic: str, partition: int, offset: int,
                        timestamp_ms: int, group_id: str, truncated_from: int | None = None) -> list:
    """The original headers plus the dead-letter ones (reason and source coordinates)."""
    headers = [(key, value) for key, value in (original_headers or ()) if not key.startswith(DLQ_PREFIX)]
    headers += [
        (DLQ_REASON_HEADER, reason.encode("utf-8", "replace")),
        (DLQ_TOPIC_HEADER, topic.encode()),
        (DLQ_PARTITION_HEADER, str(partition).encode()),
        (DLQ_OFFSET_HEADER, str(offset).encode()),
        (DLQ_TIMESTAMP_HEADER, str(timestamp_ms).encode()),
        (DLQ_GROUP_HEADER, group_id.encode()),
    ]
    if truncated_from is not None:
        headers.append((DLQ_TRUNCATED_HEADER, str(truncated_from).encode()))
    return headers


LABEL_MAX_BYTES = 20  # "-9223372036854775808"


def parse_label(value: bytes | None) -> int | None:
    """The ground-truth label header (``0``, ``1`` or ``-1``) as an integer, or None.

    A value that is not an integer fitting int64 is ignored like a missing one (the outputs then carry
    no label), so no label can overflow an output encoder.
    """
    if not isinstance(value, (bytes, bytearray)) or len(value) > LABEL_MAX_BYTES:
        return None
    try:
        label = int(value)
    except ValueError:
        return None
    return label if -(2 ** 63) <= label < 2 ** 63 else None
