"""`heartwatch stream`: a Kafka consumer group that scores heartbeats in micro-batches.

The loop polls the input topic (explicit poll timeout), gathers a micro-batch until it holds
``batch_size`` messages or its oldest message waited ``batch_timeout_ms``, and hands it to one
handler, ``process_batch``, which:

1. decodes every message (``streaming.codec``); bad ones become dead letters with the original bytes;
2. scores the good beats with one call of the exported detector (``streaming.scoring``);
3. applies the global or per-device threshold (``streaming.adaptive``) and builds anomaly events,
   optional score records and burst alerts (``streaming.events``, ``streaming.alerts``);
4. and sends them.

The batch then waits in a short queue (at most ``MAX_BATCHES_IN_FLIGHT``) while the loop reads the
next one; its offsets are committed only once the broker acknowledged every record it sent, batch by
batch in order (``_commit_acknowledged``). Overlapping the broker's acknowledgement with the next
batch keeps the round trip off the latency path without weakening the contract.

So delivery is at-least-once: a crash anywhere re-reads from the last commit, and only the batches
in flight can be emitted twice (with identical event ids). A partition revoke processes the open
batch, waits for every acknowledgement and commits before the partitions go; SIGTERM/SIGINT only
set a stop flag, after which the loop finishes the batch, flushes, commits, and the process exits 0.
Hot swaps of the model happen between batches (``streaming.hotswap``).
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import logging
import os
import signal
import socket
import threading
import time

import numpy as np
from kafka import TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from streaming import codec, events
from streaming.adaptive import DeviceThresholds
from streaming.alerts import BurstDetector, WebhookSender
from models.common.flags import parse_flags
from streaming.config import StreamConfig
from streaming.hotswap import ModelWatcher, is_model_root
from streaming.kafka_clients import ensure_topics, make_consumer, make_producer
from streaming.monitoring import StreamMetrics, quiet_kafka_logs, use_json_logs
from streaming.scoring import ScoringModel, load_scoring_model

LOGGER = logging.getLogger(__name__)

DEFAULT_PARTITIONS = 4
LAG_INTERVAL_SECONDS = 1.0
DEAD_LETTER_MAX_BYTES = 3 << 20
MAX_BATCHES_IN_FLIGHT = 4
IN_FLIGHT_POLL_TIMEOUT_MS = 10


class DeliveryError(RuntimeError):
    """The broker did not acknowledge a batch's output; its offsets are not committed."""


@dataclasses.dataclass
class StreamSummary:
    """Counts of one `heartwatch stream` run."""

    consumed: int = 0
    scored: int = 0
    anomalies: int = 0
    dead_lettered: int = 0
    alerts: int = 0
    batches: int = 0
    commits: int = 0
    model_version: str = ""
    model_swaps: int = 0
    device: str = ""


@dataclasses.dataclass
class BatchOutput:
    """What one batch sent, for counting."""

    scored: int = 0
    anomalies: int = 0
    dead_letters: list = dataclasses.field(default_factory=list)
    alerts: list = dataclasses.field(default_factory=list)
    futures: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class InFlightBatch:
    """A processed batch whose output the broker has not acknowledged yet: its offsets wait."""

    offsets: dict
    futures: list


def offsets_to_commit(records) -> dict:
    """``{TopicPartition: OffsetAndMetadata(last offset + 1)}`` for a batch of consumer records."""
    highest = {}
    for record in records:
        partition = TopicPartition(record.topic, record.partition)
        highest[partition] = max(highest.get(partition, -1), record.offset)
    return {partition: OffsetAndMetadata(offset + 1, "", -1) for partition, offset in highest.items()}


def _log_failed_commit(offsets, result) -> None:
    """Commit callback: a failed commit only means re-reading those messages later (at-least-once)."""
    if isinstance(result, Exception):
        LOGGER.warning("commit of %s failed (%s); those messages will be re-read by their next owner",
                       {f"{partition.topic}/{partition.partition}": meta.offset for partition, meta in offsets.items()},
                       result)


class _CommitOnRevoke(AsyncConsumerRebalanceListener):
    """kafka-python 3 runs rebalance listeners on its IO thread, where only awaiting is allowed."""

    def __init__(self, processor: "StreamProcessor"):
        self.processor = processor

    async def on_partitions_revoked(self, revoked):
        offsets = self.processor.on_revoked(revoked)
        if not offsets:
            return
        try:
            await self.processor.consumer.commit_async(offsets)
        except Exception as error:  # the new owner re-reads from the previous commit: duplicates, no loss
            _log_failed_commit(offsets, error)

    async def on_partitions_assigned(self, assigned):
        self.processor.on_assigned(assigned)


class StreamProcessor:
    """One consumer-group member: poll, micro-batch, score, emit, acknowledge, commit."""

    def __init__(self, config: StreamConfig, model: ScoringModel | None = None):
        self.config = config
        self.model = model or load_scoring_model(config.model_dir, config.xla)
        self.metrics = StreamMetrics()
        self.summary = StreamSummary(model_version=self.model.version, device=self.model.device)
        self.processor_id = f"{socket.gethostname()}:{os.getpid()}"
        self.device_thresholds = (DeviceThresholds(config.adaptive_min_beats, config.adaptive_sigma)
                                  if config.adaptive_thresholds else None)
        self.bursts = BurstDetector(config.alert_count, config.alert_window_seconds)
        self._stop = threading.Event()
        self._pending: list = []
        self._in_flight: collections.deque[InFlightBatch] = collections.deque()
        self._batch_lock = threading.RLock()  # the revoke callback runs on kafka-python's IO thread
        self._positions: dict = {}
        self._last_lag_time = 0.0
        self.consumer = None
        self.producer = None
        self.watcher = None
        self.webhook = None
        self._metrics_server = None

    def request_stop(self) -> None:
        """Asks the loop to finish its batch, commit and return (safe from signal handlers and threads)."""
        self._stop.set()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            LOGGER.debug("not on the main thread: no signal handlers; call request_stop() to stop")
            return
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signal_number, lambda number, frame: self.request_stop())

    def _start(self) -> None:
        config = self.config
        self.metrics.model_version.set(float(self.model.version))
        if config.metrics_port:
            self._metrics_server = self.metrics.serve(config.metrics_port)
            LOGGER.info("Prometheus metrics on http://0.0.0.0:%d/metrics", config.metrics_port)
        try:
            ensure_topics(config, {name: DEFAULT_PARTITIONS for name in (
                config.input_topic, config.events_topic, config.dead_letter_topic, config.scores_topic,
                config.alerts_topic)})
        except (KafkaError, TimeoutError) as error:
            LOGGER.warning("could not check or create the topics (%s); assuming they exist", error)
        self.producer = make_producer(config, client_id=f"heartwatch-stream-{self.processor_id}")
        self.consumer = make_consumer(
            config, group_id=config.group_id, client_id=f"heartwatch-stream-{self.processor_id}",
            auto_offset_reset=config.auto_offset_reset, max_poll_records=config.batch_size,
            session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=max(100, config.session_timeout_ms // 4),
            max_poll_interval_ms=config.max_poll_interval_ms)
        self.consumer.subscribe([config.input_topic], listener=_CommitOnRevoke(self))
        if config.model_poll_seconds and is_model_root(config.model_dir):
            self.watcher = ModelWatcher(config.model_dir, self.model.version, config.xla, config.model_poll_seconds,
                                        on_refused=lambda version: self.metrics.model_refusals.inc()).start()
        if config.alert_webhook_url:
            self.webhook = WebhookSender(config.alert_webhook_url)
        gc.freeze()  # TensorFlow leaves ~10^6 long-lived objects: keep them out of the collector's full passes
        LOGGER.info("stream %s: group %s reading %s, scoring on %s with detector version %s (xla %s), "
                    "batches of %d or %d ms", self.processor_id, config.group_id, config.input_topic,
                    self.model.device, self.model.version, "on" if self.model.xla else "off", config.batch_size,
                    config.batch_timeout_ms)

    def run(self) -> StreamSummary:
        """Consumes until asked to stop; returns the counts. Raises DeliveryError if output is not acknowledged."""
        self._install_signal_handlers()
        try:
            self._start()
            self._loop()
            self._finish_batches()
            self._commit_positions()
        finally:
            self._close()
        LOGGER.info("stream %s stopped: %s", self.processor_id, dataclasses.asdict(self.summary))
        return self.summary

    def _loop(self) -> None:
        config = self.config
        deadline = None
        while not self._stop.is_set():
            self._swap_model_if_ready()
            if self._pending:
                timeout_ms = max(0, int((deadline - time.monotonic()) * 1000))
            elif self._in_flight:
                timeout_ms = IN_FLIGHT_POLL_TIMEOUT_MS
            else:
                timeout_ms = config.poll_timeout_ms
            polled = self.consumer.poll(timeout_ms=timeout_ms,
                                        max_records=max(1, config.batch_size - len(self._pending)))
            with self._batch_lock:
                for partition_records in polled.values():
                    if not self._pending:
                        deadline = time.monotonic() + config.batch_timeout_ms / 1000.0
                    self._pending.extend(partition_records)
            if self._pending and (len(self._pending) >= config.batch_size or time.monotonic() >= deadline):
                self._flush_pending()
            self._commit_acknowledged()
            self._update_lag()

    def _flush_pending(self) -> None:
        """Processes the open batch, if any, and queues its offsets until its output is acknowledged.

        When more than MAX_BATCHES_IN_FLIGHT batches wait, the producer is flushed first, which bounds
        both memory and the window that a crash replays.
        """
        with self._batch_lock:
            if not self._pending:
                return
            records, self._pending = self._pending, []
            output = self.process_batch(records)
            self._in_flight.append(InFlightBatch(offsets_to_commit(records), output.futures))
            if len(self._in_flight) > MAX_BATCHES_IN_FLIGHT:
                self._commit_acknowledged(wait=True)

    def _finish_batches(self) -> None:
        """Processes the open batch and commits every batch once the broker acknowledged all their output."""
        with self._batch_lock:
            self._flush_pending()
            self._commit_acknowledged(wait=True)

    def _commit_acknowledged(self, wait: bool = False) -> None:
        """Commits, in order, the offsets of every leading batch whose output the broker acknowledged.

        With ``wait`` the producer is flushed first and every queued batch must be acknowledged. A
        failed send raises DeliveryError, and neither that batch nor any later one is committed. The
        commit is sent asynchronously (commits of one member are applied in order); revoke and
        shutdown then commit every position synchronously.
        """
        with self._batch_lock:
            if wait and self._in_flight:
                self.producer.flush(timeout=self.config.send_timeout_seconds)
            offsets = {}
            while self._in_flight and all(future.is_done for future in self._in_flight[0].futures):
                batch = self._in_flight[0]
                failures = [future.exception for future in batch.futures if future.failed()]
                if failures:
                    raise DeliveryError(f"{len(failures)} of {len(batch.futures)} output records were not "
                                        f"acknowledged (first: {failures[0]!r}); offsets not committed")
                offsets.update(batch.offsets)
                self._in_flight.popleft()
            if wait and self._in_flight:
                raise DeliveryError(f"output of {len(self._in_flight)} batches was not acknowledged within "
                                    f"{self.config.send_timeout_seconds} s; offsets not committed")
            if offsets:
                self._commit(offsets)

    def _swap_model_if_ready(self) -> None:
        if self.watcher is None:
            return
        model = self.watcher.take_ready()
        if model is None:
            return
        previous, self.model = self.model, model
        if self.device_thresholds is not None:
            self.device_thresholds.reset()
        self.summary.model_version = model.version
        self.summary.model_swaps += 1
        self.metrics.model_version.set(float(model.version))
        self.metrics.model_swaps.inc()
        LOGGER.info("swapped detector version %s -> %s (threshold %.6g -> %.6g)", previous.version, model.version,
                    previous.threshold, model.threshold)

    def process_batch(self, records) -> BatchOutput:
        """The one handler per batch: decode, score, send; the output's send futures come back in it."""
        config = self.config
        output = BatchOutput()
        decoded = codec.decode_batch([(record.value, record.headers) for record in records], config.input_encoding,
                                     config.max_message_bytes)
        for position, reason in decoded.failures:
            output.futures.append(self._send_dead_letter(records[position], reason))
            output.dead_letters.append(reason.split(":", 1)[0])
        if decoded.positions:
            output.futures += self._score_and_emit([records[position] for position in decoded.positions], decoded,
                                                   output)
        self._count(records, output)
        return output

    def _score_and_emit(self, records, decoded: codec.DecodedBatch, output: BatchOutput) -> list:
        config, model = self.config, self.model
        started = time.perf_counter()
        scores = model.score(decoded.beats)
        self.metrics.scoring_seconds.observe(time.perf_counter() - started)
        errors = scores["reconstruction_error"]
        device_ids = decoded.device_ids
        if self.device_thresholds is not None:
            thresholds, kinds = self.device_thresholds.thresholds(device_ids, model.threshold)
            self.device_thresholds.update(device_ids, errors, model.threshold)
        else:
            thresholds, kinds = np.full(len(records), model.threshold), None
        is_anomaly = errors > thresholds
        detection_time = time.time()
        futures = []
        anomalous = np.flatnonzero(is_anomaly)
        segments = dict(zip(anomalous.tolist(), events.worst_segments(
            scores["per_sample_error"][anomalous], config.worst_segments, config.segment_length)))
        emitted = range(len(records)) if config.scores_topic else anomalous.tolist()
        errors, thresholds, is_anomaly = errors.tolist(), thresholds.tolist(), is_anomaly.tolist()
        for index in emitted:
            record, device_id = records[index], device_ids[index]
            score = events.score_record(
                heartbeat_id=decoded.ids[index], device_id=device_id, error=errors[index],
                threshold=thresholds[index], threshold_kind=kinds[index] if kinds else "global",
                is_anomaly=is_anomaly[index], model_version=model.version, topic=record.topic,
                partition=record.partition, offset=record.offset, event_time=decoded.timestamps[index],
                detection_time=detection_time, processor=self.processor_id,
                label=events.parse_label(codec.header_value(record.headers, codec.LABEL_HEADER)))
            key = device_id.encode()
            if config.scores_topic:
                futures.append(self.producer.send(config.scores_topic, key=key, value=codec.dumps(score)))
            if is_anomaly[index]:
                event = events.anomaly_event(score, segments[index])
                futures.append(self.producer.send(config.events_topic, key=key, value=codec.dumps(event)))
                output.anomalies += 1
                futures += self._alert_if_burst(event, output)
        output.scored = len(records)
        return futures

    def _alert_if_burst(self, event: dict, output: BatchOutput) -> list:
        alert = self.bursts.observe(event)
        if alert is None:
            return []
        output.alerts.append(alert)
        LOGGER.warning("anomaly burst on device %s: %d anomalies within %.0f s", alert["device_id"],
                       alert["anomaly_count"], alert["window_seconds"])
        if self.webhook is not None:
            self.webhook.submit(alert)
        if not self.config.alerts_topic:
            return []
        return [self.producer.send(self.config.alerts_topic, key=alert["device_id"].encode(),
                                   value=codec.dumps(alert))]

    def _send_dead_letter(self, record, reason: str):
        value = record.value
        truncated_from = None
        if value is not None and len(value) > DEAD_LETTER_MAX_BYTES:
            value, truncated_from = value[:DEAD_LETTER_MAX_BYTES], len(value)
        headers = events.dead_letter_headers(
            record.headers, reason=reason, topic=record.topic, partition=record.partition, offset=record.offset,
            timestamp_ms=record.timestamp, group_id=self.config.group_id, truncated_from=truncated_from)
        LOGGER.debug("dead letter %s/%d/%d: %s", record.topic, record.partition, record.offset, reason)
        return self.producer.send(self.config.dead_letter_topic, key=record.key, value=value, headers=headers)

    def _count(self, records, output: BatchOutput) -> None:
        now = time.time()
        metrics, summary = self.metrics, self.summary
        metrics.consumed.inc(len(records))
        metrics.scored.inc(output.scored)
        metrics.anomalies.inc(output.anomalies)
        metrics.alerts.inc(len(output.alerts))
        metrics.batch_size.observe(len(records))
        for reason in output.dead_letters:
            metrics.dead_lettered.labels(reason=reason).inc()
        for record in records:
            metrics.end_to_end_seconds.observe(max(0.0, now - record.timestamp / 1000.0))
        summary.consumed += len(records)
        summary.scored += output.scored
        summary.anomalies += output.anomalies
        summary.dead_lettered += len(output.dead_letters)
        summary.alerts += len(output.alerts)
        summary.batches += 1

    def _commit(self, offsets: dict) -> None:
        for partition, meta in offsets.items():
            self._positions[partition] = meta.offset
        self.summary.commits += 1
        self.consumer.commit_async(offsets, callback=_log_failed_commit)

    def _commit_positions(self) -> None:
        """Synchronously commits every processed position (so no asynchronous commit is left in flight)."""
        offsets = {partition: OffsetAndMetadata(offset, "", -1) for partition, offset in self._positions.items()}
        if not offsets:
            return
        try:
            self.consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as error:
            _log_failed_commit(offsets, error)

    def _update_lag(self) -> None:
        if time.monotonic() - self._last_lag_time < LAG_INTERVAL_SECONDS:
            return
        self._last_lag_time = time.monotonic()
        for partition in self.consumer.assignment():
            highwater = self.consumer.highwater(partition)
            if highwater is None:
                continue
            position = self._positions.get(partition, highwater)
            self.metrics.consumer_lag.labels(topic=partition.topic, partition=str(partition.partition)).set(
                max(0, highwater - position))

    def on_revoked(self, revoked) -> dict:
        """Rebalance callback: processes the open batch; returns the offsets to commit before the partitions go."""
        LOGGER.info("partitions revoked: %s", sorted(f"{p.topic}/{p.partition}" for p in revoked))
        with self._batch_lock:
            self._finish_batches()
            offsets = {partition: OffsetAndMetadata(self._positions.pop(partition), "", -1)
                       for partition in revoked if partition in self._positions}
        return offsets

    def on_assigned(self, assigned) -> None:
        """Rebalance callback: log the new assignment."""
        LOGGER.info("partitions assigned: %s", sorted(f"{p.topic}/{p.partition}" for p in assigned))

    def _close(self) -> None:
        self._pending = []  # only non-empty after a failure: left uncommitted, re-read by the next owner
        self._in_flight.clear()
        if self.watcher is not None:
            self.watcher.stop()
        try:
            if self.producer is not None:
                self.producer.flush(timeout=self.config.send_timeout_seconds)
        finally:
            if self.consumer is not None:
                self.consumer.close(autocommit=False)
            if self.producer is not None:
                self.producer.close(timeout=self.config.send_timeout_seconds)
            if self.webhook is not None:
                self.webhook.close()
            if self._metrics_server is not None:
                self._metrics_server.shutdown()


def run(argv=None) -> StreamSummary:
    """`heartwatch stream`: parses the flags and consumes until SIGTERM/SIGINT."""
    config = parse_flags(StreamConfig, argv, prog="heartwatch stream")
    quiet_kafka_logs()
    if config.log_format == "json":
        use_json_logs()
    return StreamProcessor(config).run()


def report(summary: StreamSummary) -> None:
    """Prints the run's counts."""
    print(f"heartwatch stream: consumed {summary.consumed}, scored {summary.scored}, anomalies {summary.anomalies}, "
          f"dead-lettered {summary.dead_lettered}, alerts {summary.alerts}, batches {summary.batches}, "
          f"model version {summary.model_version} ({summary.model_swaps} swaps) on {summary.device}")
