"""`heartwatch tail TOPIC`: print the records of a topic readably (events, scores, alerts, dead letters).

It reads with manually assigned partitions and no consumer group, so it never disturbs the stream's
group and commits nothing. ``format_record`` turns one Kafka record into one line.
"""

from __future__ import annotations

import dataclasses
import datetime
import signal
import threading
import time

from kafka import TopicPartition

from models.common.flags import parse_flags
from streaming import codec, events
from streaming.config import TailConfig
from streaming.kafka_clients import make_consumer
from streaming.monitoring import quiet_kafka_logs


def _time_text(epoch_seconds) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(float(epoch_seconds), datetime.timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return str(epoch_seconds)
    return moment.strftime("%H:%M:%S.%f")[:-3]


def format_document(document: dict) -> str:
    """One readable line for an anomaly event, score record or alert record."""
    if "alert_id" in document:
        return (f"ALERT   {_time_text(document['alert_time'])} {document['device_id']}: "
                f"{document['anomaly_count']} anomalies in {document['window_seconds']:.0f} s "
                f"(max score {document['max_score']:.2f}, model v{document['model_version']})")
    if "reconstruction_error" in document:
        kind = "ANOMALY" if document.get("is_anomaly", True) else "normal "
        segments = ", ".join(f"{segment['start']}-{segment['end']}" for segment in document.get("worst_segments", []))
        label = {0: " truth=normal", 1: " truth=anomaly"}.get(document.get("label"), "")
        latency_ms = (float(document["detection_time"]) - float(document["event_time"])) * 1000
        text = (f"{kind} {_time_text(document['event_time'])} {document['device_id']} beat {document['heartbeat_id']}"
                f" score {document['score']:.2f} (error {document['reconstruction_error']:.4g} / "
                f"{document['threshold_kind']} threshold {document['threshold']:.4g}) "
                f"model v{document['model_version']}"
                f"{label} latency {latency_ms:.0f} ms from {document['source_topic']}/{document['source_partition']}"
                f"@{document['source_offset']}")
        return text + (f" worst samples {segments}" if segments else "")
    return codec.dumps(document).decode()


def format_record(record) -> str:
    """One readable line for any record: dead letters by their headers, JSON documents by their kind."""
    reason = codec.header_value(record.headers, events.DLQ_REASON_HEADER)
    if reason is not None:
        source = "/".join(codec.header_value(record.headers, name).decode() for name in (
            events.DLQ_TOPIC_HEADER, events.DLQ_PARTITION_HEADER))
        offset = codec.header_value(record.headers, events.DLQ_OFFSET_HEADER).decode()
        preview = (record.value or b"")[:60]
        return f"DEAD    {source}@{offset}: {reason.decode()} | {preview!r}"
    try:
        document = codec.loads(record.value)
    except ValueError:
        return f"{record.topic}/{record.partition}@{record.offset}: {(record.value or b'')[:120]!r}"
    if isinstance(document, dict):
        return format_document(document)
    return codec.dumps(document).decode()


@dataclasses.dataclass
class TailSummary:
    """How many records were printed."""

    topic: str
    printed: int


def follow(config: TailConfig, handle_line=print, stop=None) -> TailSummary:
    """Reads ``config.topic`` and hands each formatted line to ``handle_line`` until a limit or ``stop``."""
    stop = stop or threading.Event()
    consumer = make_consumer(config, client_id="heartwatch-tail")
    printed = 0
    try:
        partitions = consumer.partitions_for_topic(config.topic) or set()
        deadline = time.monotonic() + 10
        while not partitions and time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.2)
            partitions = consumer.partitions_for_topic(config.topic) or set()
        assignment = [TopicPartition(config.topic, partition) for partition in sorted(partitions)]
        if not assignment:
            raise ValueError(f"topic {config.topic!r} does not exist on {config.bootstrap_servers}")
        consumer.assign(assignment)
        if config.from_beginning:
            consumer.seek_to_beginning(*assignment)
        else:
            consumer.seek_to_end(*assignment)
        last_message = time.monotonic()
        while not stop.is_set():
            polled = consumer.poll(timeout_ms=200)
            for records in polled.values():
                for record in records:
                    if config.raw:
                        handle_line((record.value or b"").decode("utf-8", "replace"))
                    else:
                        handle_line(format_record(record))
                    printed += 1
                    last_message = time.monotonic()
                    if config.max_messages and printed >= config.max_messages:
                        return TailSummary(config.topic, printed)
            if config.idle_timeout_seconds and time.monotonic() - last_message > config.idle_timeout_seconds:
                break
    finally:
        consumer.close(autocommit=False)
    return TailSummary(config.topic, printed)


def run(argv=None) -> TailSummary:
    """`heartwatch tail TOPIC`: prints records until Ctrl-C or a limit."""
    config = parse_flags(TailConfig, argv, prog="heartwatch tail")
    quiet_kafka_logs()
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signal_number, lambda number, frame: stop.set())
    return follow(config, handle_line=lambda line: print(line, flush=True), stop=stop)
