"""Checks the streaming commands make before TensorFlow is imported, so the common mistakes fail fast.

The CLI calls one of these with the parsed flags (``Subcommand.preflight``): kafka-python's lines
are kept out of the log, a metrics port must be free and the cluster must answer within
``--connect_timeout_seconds``. Each failure is one line naming the flag (an ``OSError``, exit 1).
The commands meet the same conditions again when they start, for callers that skip the CLI.
"""

from __future__ import annotations

from streaming.config import DemoConfig, KafkaSettings, StreamConfig
from streaming.kafka_clients import check_reachable
from streaming.monitoring import check_metrics_port, quiet_kafka_logs


def check_stream(config: StreamConfig) -> None:
    """Raises OSError (``BrokerUnreachableError`` for the cluster) when the stream could not start."""
    quiet_kafka_logs()
    if config.metrics_port:
        check_metrics_port(config.metrics_port)
    check_reachable(config)


def check_cluster(config: KafkaSettings) -> None:
    """Raises ``BrokerUnreachableError`` unless the cluster answers (`heartwatch replay`)."""
    quiet_kafka_logs()
    check_reachable(config)


def check_demo(config: DemoConfig) -> None:
    """The demo's stream metrics port must be free and a given cluster must answer."""
    quiet_kafka_logs()
    if config.metrics_port:
        check_metrics_port(config.metrics_port)
    if config.bootstrap_servers:
        check_reachable(KafkaSettings(bootstrap_servers=config.bootstrap_servers))
