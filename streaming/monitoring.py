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
heartwatch_end_to_end_seconds               histogram  input record timestamp -> output acknowledged
heartwatch_consumer_lag{topic,partition}    gauge      high watermark minus position
heartwatch_model_version                    gauge      serving model version number
heartwatch_model_swaps_total                counter    hot swaps performed
heartwatch_model_refusals_total             counter    model versions refused
==========================================  =========  ================================================
"""

from __future__ import annotations

import datetime
import json
import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


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
        self.end_to_end_seconds = Histogram("heartwatch_end_to_end_seconds",
                                            "input record timestamp to output acknowledged",
                                            buckets=LATENCY_BUCKETS, registry=registry)
        self.consumer_lag = Gauge("heartwatch_consumer_lag", "high watermark minus position",
                                  ["topic", "partition"], registry=registry)
        self.model_version = Gauge("heartwatch_model_version", "serving model version number", registry=registry)
        self.model_swaps = Counter("heartwatch_model_swaps", "hot swaps performed", registry=registry)
        self.model_refusals = Counter("heartwatch_model_refusals", "model versions refused", registry=registry)

    def serve(self, port: int):
        """Starts the ``/metrics`` HTTP endpoint on ``port``; returns the server."""
        server, _ = start_http_server(port, registry=self.registry)
        return server


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


def quiet_kafka_logs() -> None:
    """kafka-python logs every connection at INFO; keep its WARNING and above unless the root logs DEBUG."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("kafka").setLevel(logging.WARNING)
