"""Prometheus metrics and JSON log lines of the stream.

Metrics (one registry per processor, served on ``metrics_port`` at ``/metrics``):

==========================================  =========  ================================================
name                                        type       meaning
==========================================  =========  ================================================
heartwatch_beats_consumed_total             counter    messages read from the input topic
heartwatch_beats_scored_total               counter    beats scored by the detector
heartwatch_anomalies_total                  counter    anomaly events emitted
heartwatch_dead_lettered_total{reason}      counter    messages sent to the dead-letter topic
heartwatch_alerts_total                     counter    anomaly-burst alerts emitted
heartwatch_batch_size                       histogram  messages per micro-batch
heartwatch_scoring_seconds                  histogram  detector call time per batch
heartwatch_end_to_end_seconds               histogram  input record timestamp -> its output sent (per record)
heartwatch_consumer_lag{topic,partition}    gauge      high watermark minus position
heartwatch_model_version                    gauge      serving model version number
heartwatch_model_swaps_total                counter    hot swaps performed
heartwatch_model_refusals_total             counter    model versions refused
heartwatch_seconds_since_last_fetch         gauge      seconds since the broker last answered the consumer
heartwatch_broker_connected                 gauge      1 while the broker answers, 0 during an outage
==========================================  =========  ================================================

The two broker gauges come from ``BrokerMonitor``: the consumer's connections record every answer
(fetch responses every ``fetch_max_wait_ms`` while it owns partitions, group heartbeats otherwise),
the first gauge is computed at each scrape (so it keeps growing while the broker is down), and after
``broker_lost_seconds`` without an answer the monitor logs ``broker lost`` once, sets the second to
0, and logs ``broker regained`` with the outage's length when answers come back.

kafka-python logs every failed connection attempt, several lines a second during an outage.
``quiet_kafka_logs`` keeps those lines out of the log (``HEARTWATCH_LOG_LEVEL=DEBUG`` shows them) and
remembers the last one, which heartwatch's own one-line messages quote (``kafka_problem``).
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import socket
import threading
import time

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

LOGGER = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
BROKER_CHECK_SECONDS = 0.5
PROBLEM_LENGTH = 200
IGNORED_KAFKA_LOGGERS = ("kafka.net.selector",)  # its slow-task warnings say nothing about the broker


class BatchHistogram:
    """A Prometheus histogram that takes a whole batch of observations at once (one value per record).

    ``prometheus_client.Histogram.observe`` takes a lock and walks the buckets for every value: about
    3 µs a record in the stream's profile (5 % of its time at 11,000 beats/s). ``observe_many`` counts
    a batch with one ``searchsorted`` and ``bincount``; scrapes see the same ``_bucket``/``_count``/
    ``_sum`` series as the plain histogram's.
    """

    def __init__(self, name: str, documentation: str, buckets, registry: CollectorRegistry):
        self.name = name
        self.documentation = documentation
        self.bounds = np.array(sorted(float(bound) for bound in buckets if bound != float("inf")))
        self._counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)  # the last: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values) -> None:
        """Adds every value of ``values`` (seconds, or whatever the histogram measures)."""
        values = np.asarray(values, dtype=np.float64)
        if not values.size:
            return
        counts = np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())

    def describe(self):
        """The family without samples (for the registry's name checks)."""
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self):
        """The cumulative buckets, the count and the sum, as a scrape shows them."""
        with self._lock:
            cumulative, total = np.cumsum(self._counts).tolist(), self._sum
        labels = [floatToGoString(bound) for bound in self.bounds] + ["+Inf"]
        return [HistogramMetricFamily(self.name, self.documentation, buckets=list(zip(labels, cumulative)),
                                      sum_value=total)]


class StreamMetrics:
    """The stream's Prometheus metrics in their own registry."""

    def __init__(self):
        self.registry = CollectorRegistry()
        registry = self.registry
        self.consumed = Counter("heartwatch_beats_consumed", "messages read from the input topic",
                                registry=registry)
        self.scored = Counter("heartwatch_beats_scored", "beats scored by the detector", registry=registry)
        self.anomalies = Counter("heartwatch_anomalies", "anomaly events emitted", registry=registry)
        self.dead_lettered = Counter("heartwatch_dead_lettered", "messages sent to the dead-letter topic",
                                     ["reason"], registry=registry)
        self.alerts = Counter("heartwatch_alerts", "anomaly-burst alerts emitted", registry=registry)
        self.batch_size = Histogram("heartwatch_batch_size", "messages per micro-batch", buckets=BATCH_BUCKETS,
                                    registry=registry)
        self.scoring_seconds = Histogram("heartwatch_scoring_seconds", "detector call time per batch",
                                         buckets=LATENCY_BUCKETS, registry=registry)
        self.end_to_end_seconds = BatchHistogram("heartwatch_end_to_end_seconds",
                                                 "input record timestamp to its output sent", LATENCY_BUCKETS,
                                                 registry)
        self.consumer_lag = Gauge("heartwatch_consumer_lag", "high watermark minus position",
                                  ["topic", "partition"], registry=registry)
        self.model_version = Gauge("heartwatch_model_version", "serving model version number", registry=registry)
        self.model_swaps = Counter("heartwatch_model_swaps", "hot swaps performed", registry=registry)
        self.model_refusals = Counter("heartwatch_model_refusals", "model versions refused", registry=registry)
        self.seconds_since_last_fetch = Gauge("heartwatch_seconds_since_last_fetch",
                                              "seconds since the broker last answered the consumer",
                                              registry=registry)
        self.broker_connected = Gauge("heartwatch_broker_connected", "1 while the broker answers, 0 during an outage",
                                      registry=registry)
        self.broker_connected.set(1)

    def serve(self, port: int):
        """Starts the ``/metrics`` HTTP endpoint on ``port``; returns the server. A port in use is an OSError
        with one line naming the flag."""
        try:
            server, _ = start_http_server(port, registry=self.registry)
        except OSError as error:
            raise OSError(port_problem(port, error)) from None
        return server


def port_problem(port: int, error: OSError) -> str:
    """One line: the metrics port cannot be served, why, and what to do."""
    return f"--metrics_port {port}: cannot serve metrics ({error.strerror or error}); choose a free port, or 0 for none"


def check_metrics_port(port: int) -> None:
    """Raises OSError (one line naming the flag) unless ``port`` can be listened on now, as the endpoint will."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server does
        try:
            probe.bind(("", port))
        except OSError as error:
            raise OSError(port_problem(port, error)) from None


class BrokerMonitor:
    """Logs ``broker lost`` / ``broker regained`` once per outage and keeps the two broker gauges current.

    ``seconds_since_answer`` is a callable (``streaming.kafka_clients.AnswerClock``); a daemon thread
    checks it every ``BROKER_CHECK_SECONDS``, independent of the consumer loop (which may be blocked
    waiting for acknowledgements during an outage).
    """

    def __init__(self, seconds_since_answer, lost_after_seconds: float, metrics: StreamMetrics, servers: str,
                 check_seconds: float = BROKER_CHECK_SECONDS):
        if lost_after_seconds <= 0:
            raise ValueError(f"lost_after_seconds must be positive, got {lost_after_seconds}")
        self.seconds_since_answer = seconds_since_answer
        self.lost_after_seconds = lost_after_seconds
        self.metrics = metrics
        self.servers = servers
        self.check_seconds = check_seconds
        self.connected = True
        self.outages = 0
        self._lost_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="broker-monitor", daemon=True)
        metrics.seconds_since_last_fetch.set_function(seconds_since_answer)

    def start(self) -> BrokerMonitor:
        """Starts the checking thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops the checking thread."""
        self._stop.set()
        self._thread.join(timeout=5)

    def check_now(self) -> bool:
        """One check: logs a change of state and updates the gauge; returns whether the broker answers."""
        silent = self.seconds_since_answer()
        if self.connected and silent >= self.lost_after_seconds:
            self.connected = False
            self.outages += 1
            self._lost_at = time.monotonic() - silent
            self.metrics.broker_connected.set(0)
            LOGGER.error("broker lost: %s has not answered for %.1f s (%s); nothing is committed until it answers",
                         self.servers, silent, kafka_problem() or "no answer")
        elif not self.connected and silent < self.lost_after_seconds:
            self.connected = True
            self.metrics.broker_connected.set(1)
            LOGGER.warning("broker regained: %s answers again after %.1f s without an answer", self.servers,
                           time.monotonic() - silent - self._lost_at)
        return self.connected

    def _watch(self) -> None:
        while not self._stop.wait(self.check_seconds):
            self.check_now()


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        """Formats ``record`` as a JSON line."""
        document = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def use_json_logs() -> None:
    """Switches every handler of the root logger (adding one if none) to JSON lines."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
        root.setLevel(logging.INFO)
    for handler in root.handlers:
        handler.setFormatter(JsonLogFormatter())


class KafkaLogMemory(logging.Handler):
    """Keeps kafka-python's last error (or, before any, its last warning) instead of writing it."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.last_error = ""
        self.last_warning = ""

    def emit(self, record: logging.LogRecord) -> None:
        """Remembers the message without its ``<KafkaConnection ...>:`` prefix (not the bootstrap timeout itself,
        which heartwatch reports with the cause remembered before it)."""
        if record.name.startswith(IGNORED_KAFKA_LOGGERS):
            return
        message = re.sub(r"^<[^>]*>:\s*", "", record.getMessage())[:PROBLEM_LENGTH]
        if "Unable to bootstrap" in message:
            return
        if record.levelno >= logging.ERROR:
            self.last_error = message
        else:
            self.last_warning = message

    def problem(self) -> str:
        """The last error, else the last warning, else an empty string."""
        return self.last_error or self.last_warning


KAFKA_LOG_MEMORY = KafkaLogMemory()
KAFKA_LOGGERS = ("kafka", "librdkafka")  # kafka-python; streaming.librdkafka_producer


def kafka_problem() -> str:
    """kafka-python's last complaint since ``quiet_kafka_logs`` (empty when none, or when its lines are shown)."""
    return KAFKA_LOG_MEMORY.problem()


def quiet_kafka_logs() -> None:
    """Keeps the Kafka clients' lines (kafka-python's and librdkafka's) out of the log, remembering the last
    problem, unless the root logs DEBUG."""
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        return
    for name in KAFKA_LOGGERS:
        kafka_logger = logging.getLogger(name)
        kafka_logger.setLevel(logging.WARNING)
        kafka_logger.propagate = False
        if KAFKA_LOG_MEMORY not in kafka_logger.handlers:
            kafka_logger.addHandler(KAFKA_LOG_MEMORY)
