"""The stream's batch handler: decode -> score -> build outputs, for one micro-batch of consumer records.

``BatchHandler.handle(records, detector)`` is the one handler per batch:

1. decodes every message (``streaming.codec``); a bad one becomes a dead letter holding the original
   bytes and the reason;
2. scores the good beats with one call of the exported detector (``models.detection.detector.Detector``),
   whose SavedModel returns ``anomaly_score``, ``threshold`` and ``is_anomaly``;
3. with adaptive thresholds, applies the per-device step to those outputs (``streaming.adaptive``);
   otherwise the detector's ``threshold`` and ``is_anomaly`` are the verdict as they are;
4. builds the anomaly events, optional score records and burst alerts (``streaming.events``,
   ``streaming.alerts``).

It sends nothing: it returns the output records, in order, for the consumer to send and acknowledge
(``streaming.commits``), so it needs no Kafka connection.

No message can raise out of ``handle``: every message ends as exactly one outcome, scored or dead-lettered.
A message that fails decoding or validation, or whose score record or event cannot be encoded
(``unencodable output``), becomes a dead letter with its original bytes and the reason. An unexpected
exception while handling a batch makes the handler handle that batch again message by message, so one
message cannot take the batch with it; a message that still raises on its own is dead-lettered with
``internal error: <exception>``. The normal path does no per-message work for this. Only when a dead
letter itself cannot be built does ``handle`` raise ``DeadLetterError``: the consumer then stops
without committing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import typing

import numpy as np

from models.detection.detector import Detector
from streaming import codec, events
from streaming.adaptive import GLOBAL_KIND, DeviceThresholds
from streaming.alerts import BurstDetector
from streaming.drift import drift_key

LOGGER = logging.getLogger(__name__)

DEAD_LETTER_MAX_BYTES = 3 << 20
HANDLER_REASONS = ("unencodable output", "internal error")
REASON_MAX_CHARACTERS = 300


class DeadLetterError(RuntimeError):
    """The dead letter of a message cannot be built: the stream must stop without committing that batch."""


class OutputRecord(typing.NamedTuple):
    """One record to send: topic, key, value and headers (a named tuple: one is built per output record)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list | None = None


@dataclasses.dataclass
class BatchOutput:
    """What one batch produced: the records to send, in order, and its counts."""

    records: list = dataclasses.field(default_factory=list)
    scored: int = 0
    anomalies: int = 0
    dead_letters: list = dataclasses.field(default_factory=list)  # reason class of each dead letter
    alerts: list = dataclasses.field(default_factory=list)
    scoring_seconds: float = 0.0
    scored_parts: list = dataclasses.field(default_factory=list)  # (input topics, detector outputs) per scoring

    def extend(self, other: BatchOutput) -> None:
        """Appends the records and counts of ``other`` (the output of a later part of the batch)."""
        self.records += other.records
        self.scored += other.scored
        self.anomalies += other.anomalies
        self.dead_letters += other.dead_letters
        self.alerts += other.alerts
        self.scoring_seconds += other.scoring_seconds
        self.scored_parts += other.scored_parts


def verdicts(scores: dict, device_ids, device_thresholds: DeviceThresholds | None) -> tuple:
    """``(thresholds, kinds, is_anomaly)`` per beat: the detector's own, or after the adaptive step."""
    if device_thresholds is not None:
        return device_thresholds.apply(device_ids, scores)
    return scores["threshold"], [GLOBAL_KIND] * len(device_ids), scores["is_anomaly"]


class BatchHandler:
    """Decodes, scores and turns one batch of consumer records into output records (see the module doc)."""

    def __init__(self, config, processor_id: str, drift_watch=None):
        self.config = config
        self.processor_id = processor_id
        self.drift_watch = drift_watch  # a streaming.drift.DriftWatch, or None
        self.device_thresholds = (DeviceThresholds(config.adaptive_min_beats, config.adaptive_sigma)
                                  if config.adaptive_thresholds else None)
        self.bursts = BurstDetector(config.alert_count, config.alert_window_seconds)

    def model_changed(self) -> None:
        """Forgets the per-device statistics: scores of another model version live in another space."""
        if self.device_thresholds is not None:
            self.device_thresholds.reset()

    def handle(self, records, detector: Detector) -> BatchOutput:
        """The one handler per batch: decode, score with ``detector``, build the output records.

        Raises only ``DeadLetterError`` (a dead letter could not be built); see the module doc.
        """
        try:
            return self._watch_drift(self._handle_batch(records, detector), detector)
        except DeadLetterError:
            raise
        except Exception as error:  # isolate the message that caused it, whatever it was
            LOGGER.warning("handling a batch of %d messages failed (%s: %s); handling it message by message",
                           len(records), type(error).__name__, error)
        output = BatchOutput()
        for record in records:
            try:
                output.extend(self._handle_batch([record], detector))
            except DeadLetterError:
                raise
            except Exception as error:  # this message alone raises: it becomes a dead letter
                self._add_dead_letter(output, record, f"internal error: {type(error).__name__}: {error}")
        return self._watch_drift(output, detector)

    def _watch_drift(self, output: BatchOutput, detector: Detector) -> BatchOutput:
        """Feeds the batch's scores to the drift watch once (after the batch, so a per-message rerun of a failed
        batch is not counted twice); drift records go to the alerts topic. The watch can never fail a batch."""
        if self.drift_watch is None or not output.scored_parts:
            return output
        try:
            for topics, scores in output.scored_parts:
                for record in self.drift_watch.observe_batch(detector, topics, scores):
                    if self.config.alerts_topic:
                        output.records.append(OutputRecord(self.config.alerts_topic, drift_key(record),
                                                           codec.dumps(record)))
        except Exception as error:  # a monitoring fault must not stop a partition
            LOGGER.warning("drift watch skipped a batch (%s: %s)", type(error).__name__, error)
        return output

    def _handle_batch(self, records, detector: Detector) -> BatchOutput:
        config = self.config
        output = BatchOutput()
        decoded = codec.decode_batch([(record.value, record.headers) for record in records], config.input_encoding,
                                     config.max_message_bytes)
        for position, reason in decoded.failures:
            self._add_dead_letter(output, records[position], reason)
        if decoded.positions:
            self._score(detector, [records[position] for position in decoded.positions], decoded, output)
        return output

    def _score(self, detector: Detector, records, decoded: codec.DecodedBatch, output: BatchOutput) -> None:
        config = self.config
        started = time.perf_counter()
        scores = detector.score(decoded.beats)
        output.scoring_seconds = time.perf_counter() - started
        device_ids = decoded.device_ids
        thresholds, kinds, is_anomaly = verdicts(scores, device_ids, self.device_thresholds)
        output.scored_parts.append(([record.topic for record in records], scores))
        detection_time = time.time()
        anomalous = np.flatnonzero(is_anomaly)
        segments = dict(zip(anomalous.tolist(), events.worst_segments(
            scores["per_sample_error"][anomalous], config.worst_segments, config.segment_length)))
        emitted = list(range(len(records))) if config.scores_topic else anomalous.tolist()
        emitted_records = [records[index] for index in emitted]
        label_header = codec.LABEL_HEADER
        score_records = events.score_records(
            heartbeat_ids=[decoded.ids[index] for index in emitted],
            device_ids=[device_ids[index] for index in emitted],
            anomaly_scores=scores["anomaly_score"][emitted], errors=scores["reconstruction_error"][emitted],
            thresholds=np.asarray(thresholds)[emitted], threshold_kinds=[kinds[index] for index in emitted],
            is_anomaly=np.asarray(is_anomaly)[emitted], model_version=detector.version,
            topics=[record.topic for record in emitted_records],
            partitions=[record.partition for record in emitted_records],
            offsets=[record.offset for record in emitted_records],
            event_times=[decoded.timestamps[index] for index in emitted], detection_time=detection_time,
            processor=self.processor_id,
            labels=[events.parse_label(codec.header_value(record.headers, label_header)) if record.headers else None
                    for record in emitted_records])
        output.scored = len(records)
        scores_topic, events_topic = config.scores_topic, config.events_topic
        dumps, append = codec.dumps, output.records.append
        for index, record, score in zip(emitted, emitted_records, score_records):
            flagged = score["is_anomaly"]
            try:  # every record of the message is encoded before any is kept: one outcome per message
                key = score["device_id"].encode()
                score_value = dumps(score) if scores_topic else None
                event = events.anomaly_event(score, segments[index]) if flagged else None
                event_value = dumps(event) if flagged else None
            except (TypeError, ValueError) as error:  # orjson.JSONEncodeError is a TypeError
                output.scored -= 1
                self._add_dead_letter(output, record, f"unencodable output: {error}")
                continue
            if scores_topic:
                append(OutputRecord(scores_topic, key, score_value))
            if flagged:
                append(OutputRecord(events_topic, key, event_value))
                output.anomalies += 1
                self._alert_if_burst(event, output)

    def _alert_if_burst(self, event: dict, output: BatchOutput) -> None:
        alert = self.bursts.observe(event)
        if alert is None:
            return
        output.alerts.append(alert)
        LOGGER.warning("anomaly burst on device %s: %d anomalies within %.0f s", alert["device_id"],
                       alert["anomaly_count"], alert["window_seconds"])
        if self.config.alerts_topic:
            output.records.append(OutputRecord(self.config.alerts_topic, alert["device_id"].encode(),
                                               codec.dumps(alert)))

    def _add_dead_letter(self, output: BatchOutput, record, reason: str) -> None:
        """Adds the dead letter of ``record``; raises ``DeadLetterError`` when it cannot be built."""
        reason = reason[:REASON_MAX_CHARACTERS]
        try:
            output.records.append(self.dead_letter(record, reason))
        except Exception as error:  # whatever it is, this message cannot be set aside
            raise DeadLetterError(
                f"the dead letter of {getattr(record, 'topic', '?')}/{getattr(record, 'partition', '?')}/"
                f"{getattr(record, 'offset', '?')} ({reason}) could not be built: {type(error).__name__}: {error}"
            ) from error
        output.dead_letters.append(reason.split(":", 1)[0])

    def dead_letter(self, record, reason: str) -> OutputRecord:
        """The dead letter of ``record``: its original key and value (cut to 3 MiB) with the reason headers."""
        value = record.value
        truncated_from = None
        if value is not None and len(value) > DEAD_LETTER_MAX_BYTES:
            value, truncated_from = value[:DEAD_LETTER_MAX_BYTES], len(value)
        headers = events.dead_letter_headers(
            record.headers, reason=reason, topic=record.topic, partition=record.partition, offset=record.offset,
            timestamp_ms=record.timestamp, group_id=self.config.group_id, truncated_from=truncated_from)
        LOGGER.debug("dead letter %s/%d/%d: %s", record.topic, record.partition, record.offset, reason)
        return OutputRecord(self.config.dead_letter_topic, record.key, value, headers)
