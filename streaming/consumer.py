"""`heartwatch stream`: a Kafka consumer group that scores heartbeats in micro-batches.

The loop polls the input topic with an explicit timeout, gathers a micro-batch until it holds
``batch_size`` messages or its oldest message waited ``batch_timeout_ms``, and hands it to one
handler (``streaming.handler.BatchHandler``: decode -> score with the exported detector -> output
records), then sends what the handler built.

The batch then waits in a short queue (at most ``MAX_BATCHES_IN_FLIGHT``) while the loop reads the
next one; its offsets are committed only once the broker acknowledged every record it sent, batch by
batch in order (``streaming.commits``). Overlapping the broker's acknowledgement with the next batch
keeps the round trip off the latency path without weakening the contract.

So delivery is at-least-once: a crash anywhere re-reads from the last commit, and only the batches
in flight can be emitted twice (with identical event ids). A partition revoke processes the open
batch, waits for every acknowledgement and commits before the partitions go; SIGTERM/SIGINT only
set a stop flag, after which the loop finishes the batch, flushes, commits, and the process exits 0
(``finally`` flushes and closes every client). Hot swaps of the detector happen between batches
(``streaming.hotswap``).

Failures end in one line and a non-zero exit, never in a hang: the producer fails a record the
broker did not acknowledge within ``send_timeout_seconds`` (its delivery timeout), which stops the
stream without committing that batch (exit 1). A stop while the broker is down therefore ends
within the send timeout plus the few seconds closing the clients takes; the final commit is skipped
when the broker has not answered for ``broker_lost_seconds`` (exit 1, the next owner re-reads after
the last commit), and after a signal a watchdog ends the process if shutdown still runs
``SHUTDOWN_GRACE_SECONDS`` past the send timeout. A second signal exits at once. Outages are logged
once each way and exported as metrics (``streaming.monitoring.BrokerMonitor``).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import signal
import socket
import threading
import time

import numpy as np
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError, KafkaTimeoutError

from models.common.flags import parse_flags
from models.detection.detector import Detector, is_model_root, load_detector
from streaming import topics
from streaming.alerts import WebhookSender
from streaming.allocator import retain_freed_memory
from streaming.commits import CommitTracker, DeliveryError, log_failed_commit
from streaming.config import StreamConfig
from streaming.drift import DriftWatch
from streaming.handler import BatchHandler, BatchOutput, DeadLetterError
from streaming.hotswap import ModelWatcher
from streaming.kafka_clients import (
    KeyPartitions,
    answer_clock,
    check_reachable,
    delivery_timeouts,
    ensure_topics,
    make_consumer,
    make_output_producer,
    send_many,
)
from streaming.monitoring import BrokerMonitor, StreamMetrics, quiet_kafka_logs, use_json_logs

LOGGER = logging.getLogger(__name__)

LAG_INTERVAL_SECONDS = 1.0
MAX_BATCHES_IN_FLIGHT = 4
IN_FLIGHT_POLL_TIMEOUT_MS = 10
SHUTDOWN_GRACE_SECONDS = 4.0
CLOSE_TIMEOUT_SECONDS = 1.0


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


class _CommitOnRevoke(AsyncConsumerRebalanceListener):
    """kafka-python 3 runs rebalance listeners on its IO thread, where only awaiting is allowed."""

    def __init__(self, processor: StreamProcessor):
        self.processor = processor

    async def on_partitions_revoked(self, revoked):
        offsets = self.processor.on_revoked(revoked)
        if not offsets:
            return
        try:
            await self.processor.consumer.commit_async(offsets)
        except Exception as error:  # the new owner re-reads from the previous commit: duplicates, no loss
            log_failed_commit(offsets, error)

    async def on_partitions_assigned(self, assigned):
        self.processor.on_assigned(assigned)


def load_model(config: StreamConfig) -> Detector:
    """The detector of ``--model_dir``; an error naming the flag when it is missing or cannot be loaded."""
    try:
        return load_detector(config.model_dir, config.xla)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"--model_dir: {error}") from None
    except Exception as error:  # a corrupt SavedModel raises OSError, TensorFlow errors or ValueError
        raise ValueError(f"--model_dir {config.model_dir}: cannot load a detector ({type(error).__name__}: "
                         f"{error}); point it at a model root or version written by `heartwatch train`") from None


class StreamProcessor:
    """One consumer-group member: poll, micro-batch, handle, send, acknowledge, commit."""

    def __init__(self, config: StreamConfig, detector: Detector | None = None):
        self.config = config
        self.detector = detector or load_model(config)
        self.metrics = StreamMetrics()
        self.summary = StreamSummary(model_version=self.detector.version, device=self.detector.device)
        self.processor_id = f"{socket.gethostname()}:{os.getpid()}"
        drift_watch = (DriftWatch(self.metrics.registry, self.processor_id, window=config.drift_window,
                                  alpha=config.drift_alpha) if config.drift_window else None)
        self.handler = BatchHandler(config, self.processor_id, drift_watch)
        self._stop = threading.Event()
        self._pending: list = []
        self._batch_lock = threading.RLock()  # the revoke callback runs on kafka-python's IO thread
        self._last_lag_time = 0.0
        self.consumer = None
        self.producer = None
        self.commits: CommitTracker | None = None
        self.watcher = None
        self.webhook = None
        self.monitor: BrokerMonitor | None = None
        self._answers = None
        self._metrics_server = None
        self._stop_deadline: float | None = None

    def request_stop(self) -> None:
        """Asks the loop to finish its batch, commit and return (safe from signal handlers and threads)."""
        self._stop.set()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            LOGGER.debug("not on the main thread: no signal handlers; call request_stop() to stop")
            return
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signal_number, lambda number, frame: self._on_signal(number))

    def _on_signal(self, number: int) -> None:
        """First signal: stop after the batch, with a watchdog bounding the shutdown; second: exit now."""
        if self._stop.is_set():
            self._abandon(f"second {signal.Signals(number).name}")
        limit = self.config.send_timeout_seconds + SHUTDOWN_GRACE_SECONDS
        self._stop_deadline = time.monotonic() + self.config.send_timeout_seconds
        watchdog = threading.Timer(limit, lambda: self._abandon(f"shutdown did not finish within {limit:g} s"))
        watchdog.daemon = True
        watchdog.start()
        self.request_stop()

    def _abandon(self, reason: str) -> None:
        """Ends the process at once (exit 1), committing nothing more: the next owner re-reads after the last
        commit."""
        silence = self.monitor.seconds_since_answer() if self.monitor is not None else 0.0
        if silence >= 1.0:
            reason += f" ({self.config.bootstrap_servers} has not answered for {silence:.1f} s)"
        LOGGER.error("stream %s exits now without committing what is not acknowledged: %s", self.processor_id,
                     reason)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(1)

    def _start(self) -> None:
        config = self.config
        self.metrics.model_version.set(float(self.detector.version))
        if config.metrics_port:
            self._metrics_server = self.metrics.serve(config.metrics_port)
            LOGGER.info("Prometheus metrics on http://0.0.0.0:%d/metrics", config.metrics_port)
        try:
            ensure_topics(config, {name: topics.DEFAULT_PARTITIONS for name in (
                config.input_topic, config.events_topic, config.dead_letter_topic, config.scores_topic,
                config.alerts_topic)})
        except (KafkaError, TimeoutError) as error:
            LOGGER.warning("could not check or create the topics (%s); assuming they exist", error)
        self.producer = make_output_producer(config, config.output_client,
                                             client_id=f"heartwatch-stream-{self.processor_id}",
                                             **delivery_timeouts(config.send_timeout_seconds))
        self.consumer = make_consumer(
            config, group_id=config.group_id, client_id=f"heartwatch-stream-{self.processor_id}",
            auto_offset_reset=config.auto_offset_reset, max_poll_records=config.batch_size,
            session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=max(100, config.session_timeout_ms // 4),
            max_poll_interval_ms=config.max_poll_interval_ms)
        self.commits = CommitTracker(self.consumer, self.producer, config.send_timeout_seconds)
        self.partitions = KeyPartitions(self.producer)
        self._answers = answer_clock(self.consumer)
        if self._answers is not None:
            self.monitor = BrokerMonitor(self._answers.seconds_since_answer, config.broker_lost_seconds, self.metrics,
                                         config.bootstrap_servers).start()
        self.consumer.subscribe([config.input_topic], listener=_CommitOnRevoke(self))
        if config.model_poll_seconds and is_model_root(config.model_dir):
            self.watcher = ModelWatcher(config.model_dir, self.detector.version, config.xla,
                                        config.model_poll_seconds,
                                        on_refused=lambda version: self.metrics.model_refusals.inc()).start()
        if config.alert_webhook_url:
            self.webhook = WebhookSender(config.alert_webhook_url)
        retain_freed_memory(config.retain_freed_mb)
        gc.freeze()  # TensorFlow leaves ~10^6 long-lived objects: keep them out of the collector's full passes
        LOGGER.info("stream %s: group %s reading %s, scoring on %s with detector version %s (xla %s), "
                    "batches of %d or %d ms", self.processor_id, config.group_id, config.input_topic,
                    self.detector.device, self.detector.version, "on" if self.detector.xla else "off",
                    config.batch_size, config.batch_timeout_ms)

    def run(self) -> StreamSummary:
        """Consumes until asked to stop; returns the counts. Raises ``SystemExit(1)`` after one error line if a
        dead letter cannot be built, if output is not acknowledged within the send timeout
        (``streaming.commits.DeliveryError``), or if the broker is lost at the final commit."""
        self._install_signal_handlers()
        try:
            self._start()
            self._loop()
            self._finish_batches()
            self._commit_positions()
        except DeadLetterError as error:  # the batch is neither sent nor committed: its owner re-reads it
            LOGGER.error("stream %s stopped without committing: %s", self.processor_id, error)
            raise SystemExit(1) from None
        except (DeliveryError, KafkaTimeoutError) as error:  # flush() raises KafkaTimeoutError, the tracker the rest
            LOGGER.error("stream %s stopped without committing unacknowledged output: the broker did not acknowledge "
                         "it within %g s (%s); the next owner re-reads it", self.processor_id,
                         self.config.send_timeout_seconds, error)
            raise SystemExit(1) from None
        finally:
            self._close()
        self.summary.commits = self.commits.commits if self.commits is not None else 0
        LOGGER.info("stream %s stopped: %s", self.processor_id, dataclasses.asdict(self.summary))
        return self.summary

    def _loop(self) -> None:
        config = self.config
        deadline = None
        while not self._stop.is_set():
            self._swap_detector_if_ready()
            if self._pending:  # at most poll_timeout_ms, so a stop request is seen whatever batch_timeout_ms is
                timeout_ms = min(config.poll_timeout_ms, max(0, int((deadline - time.monotonic()) * 1000)))
            elif len(self.commits):
                timeout_ms = IN_FLIGHT_POLL_TIMEOUT_MS
            else:
                timeout_ms = config.poll_timeout_ms
            polled = self._poll(timeout_ms, max(1, config.batch_size - len(self._pending)))
            with self._batch_lock:
                for partition_records in polled.values():
                    if not self._pending:
                        deadline = time.monotonic() + config.batch_timeout_ms / 1000.0
                    self._pending.extend(partition_records)
            if self._pending and (len(self._pending) >= config.batch_size or time.monotonic() >= deadline):
                self._flush_pending()
            with self._batch_lock:
                self.commits.commit_acknowledged()
            self._update_lag()

    def _poll(self, timeout_ms: int, max_records: int) -> dict:
        """``consumer.poll``. A retriable Kafka error (the connection refused while the broker is away, which
        kafka-python can raise from a group rejoin) is logged and reads as an empty poll after the timeout
        (at least ``config.poll_timeout_ms``), so a lasting outage is the broker monitor's to report; any
        other Kafka error stops the stream."""
        try:
            return self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as error:
            if not error.retriable:
                raise
            LOGGER.warning("poll failed (%s: %s); polling again", type(error).__name__, error)
            self._stop.wait(max(timeout_ms, self.config.poll_timeout_ms) / 1000.0)
            return {}

    def _commit_positions(self) -> None:
        """The final synchronous commit; exit 1 after one line when the broker is lost (it would block) or did
        not answer it (a successful commit is an answer, so an older last answer means it failed)."""
        if self.monitor is not None and not self.monitor.check_now():
            self._stopped_without_final_commit(f"it has not answered for {self.monitor.seconds_since_answer():.1f} s")
        asked = time.monotonic()
        self.commits.commit_positions()
        if self.commits.positions and self._answers is not None and self._answers.last_answer < asked:
            self._stopped_without_final_commit("it did not answer the commit")

    def _stopped_without_final_commit(self, why: str) -> None:
        LOGGER.error("stream %s stopped without its final commit to %s: %s; the next owner re-reads after the last "
                     "commit", self.processor_id, self.config.bootstrap_servers, why)
        raise SystemExit(1)

    def _flush_pending(self) -> None:
        """Handles the open batch, if any, sends its output and queues its offsets until it is acknowledged.

        When more than MAX_BATCHES_IN_FLIGHT batches wait, the producer is flushed first, which bounds
        both memory and the window that a crash replays.
        """
        with self._batch_lock:
            if not self._pending:
                return
            records, self._pending = self._pending, []
            output = self.handler.handle(records, self.detector)
            self.commits.add(records, self._send(output))
            self._count(records, output)
            if len(self.commits) > MAX_BATCHES_IN_FLIGHT:
                self.commits.commit_acknowledged(wait=True)

    def _send(self, output: BatchOutput):
        """Sends the batch's output records; returns their delivery. Alerts also go to the webhook."""
        counts = self.partitions.counts(record.topic for record in output.records)
        partition = self.partitions.partition
        delivery = send_many(self.producer, [
            (record.topic, record.key, record.value, record.headers,
             partition(record.topic, record.key, counts[record.topic])) for record in output.records])
        if self.webhook is not None:
            for alert in output.alerts:
                self.webhook.submit(alert)
        return delivery

    def _finish_batches(self) -> None:
        """Handles the open batch and commits every batch once the broker acknowledged all their output."""
        with self._batch_lock:
            self._flush_pending()
            self.commits.commit_acknowledged(wait=True)

    def _swap_detector_if_ready(self) -> None:
        if self.watcher is None:
            return
        detector = self.watcher.take_ready()
        if detector is None:
            return
        previous, self.detector = self.detector, detector
        self.handler.model_changed()
        self.summary.model_version = detector.version
        self.summary.model_swaps += 1
        self.metrics.model_version.set(float(detector.version))
        self.metrics.model_swaps.inc()
        LOGGER.info("swapped detector version %s -> %s (threshold %.6g -> %.6g)", previous.version,
                    detector.version, previous.threshold, detector.threshold)

    def _count(self, records, output: BatchOutput) -> None:
        now = time.time()
        metrics, summary = self.metrics, self.summary
        metrics.consumed.inc(len(records))
        metrics.scored.inc(output.scored)
        metrics.anomalies.inc(output.anomalies)
        metrics.alerts.inc(len(output.alerts))
        metrics.batch_size.observe(len(records))
        if output.scored:
            metrics.scoring_seconds.observe(output.scoring_seconds)
        for reason in output.dead_letters:
            metrics.dead_lettered.labels(reason=reason).inc()
        timestamps = np.fromiter((record.timestamp for record in records), dtype=np.float64, count=len(records))
        metrics.end_to_end_seconds.observe_many(np.maximum(0.0, now - timestamps / 1000.0))
        summary.consumed += len(records)
        summary.scored += output.scored
        summary.anomalies += output.anomalies
        summary.dead_lettered += len(output.dead_letters)
        summary.alerts += len(output.alerts)
        summary.batches += 1

    def _update_lag(self) -> None:
        if time.monotonic() - self._last_lag_time < LAG_INTERVAL_SECONDS:
            return
        self._last_lag_time = time.monotonic()
        for partition in self.consumer.assignment():
            highwater = self.consumer.highwater(partition)
            if highwater is None:
                continue
            position = self.commits.positions.get(partition, highwater)
            self.metrics.consumer_lag.labels(topic=partition.topic, partition=str(partition.partition)).set(
                max(0, highwater - position))

    def on_revoked(self, revoked) -> dict:
        """Rebalance callback: handles the open batch; returns the offsets to commit before the partitions go."""
        LOGGER.info("partitions revoked: %s", sorted(f"{p.topic}/{p.partition}" for p in revoked))
        with self._batch_lock:
            self._finish_batches()
            return self.commits.release(revoked)

    def on_assigned(self, assigned) -> None:
        """Rebalance callback: log the new assignment."""
        LOGGER.info("partitions assigned: %s", sorted(f"{p.topic}/{p.partition}" for p in assigned))

    def _close(self) -> None:
        """Closes everything within the stop deadline (``send_timeout_seconds`` after a signal) plus a little."""
        self._pending = []  # only non-empty after a failure: left uncommitted, re-read by the next owner
        if self.commits is not None:
            self.commits.discard()
        if self.watcher is not None:
            self.watcher.stop()
        deadline = self._stop_deadline or time.monotonic() + self.config.send_timeout_seconds

        def remaining() -> float:
            return max(CLOSE_TIMEOUT_SECONDS, deadline - time.monotonic())

        if self.producer is not None:
            self._quietly("flush the producer", lambda: self.producer.flush(timeout=remaining()))
        if self.consumer is not None:
            self._quietly("close the consumer", lambda: self.consumer.close(
                autocommit=False, timeout_ms=int(CLOSE_TIMEOUT_SECONDS * 1000) if self._broker_lost()
                else int(remaining() * 1000)))
        if self.producer is not None:
            self._quietly("close the producer", lambda: self.producer.close(timeout=remaining()))
        if self.webhook is not None:
            self.webhook.close()
        if self.monitor is not None:
            self.monitor.stop()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()

    def _broker_lost(self) -> bool:
        return self.monitor is not None and not self.monitor.connected

    @staticmethod
    def _quietly(action: str, step) -> None:
        """Runs one closing step; a Kafka error there is logged (the outcome is already decided)."""
        try:
            step()
        except KafkaError as error:
            LOGGER.warning("could not %s cleanly: %s", action, error)


def run(argv=None) -> StreamSummary:
    """`heartwatch stream`: parses the flags and consumes until SIGTERM/SIGINT."""
    config = parse_flags(StreamConfig, argv, prog="heartwatch stream")
    quiet_kafka_logs()
    if config.log_format == "json":
        use_json_logs()
    check_reachable(config)  # before loading the model: an unreachable cluster fails in connect_timeout_seconds
    return StreamProcessor(config).run()


def report(summary: StreamSummary) -> str:
    """The run's counts, as text (the CLI prints it)."""
    return (f"heartwatch stream: consumed {summary.consumed}, scored {summary.scored}, anomalies {summary.anomalies}, "
            f"dead-lettered {summary.dead_lettered}, alerts {summary.alerts}, batches {summary.batches}, "
            f"model version {summary.model_version} ({summary.model_swaps} swaps) on {summary.device}")
