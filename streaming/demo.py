"""`heartwatch demo`: the whole flow on one machine, with live precision and recall.

1. Reuses the newest detector version under ``--model_dir`` (``models.detection.detector.artifact_root``),
   or trains one with `heartwatch train` (a subprocess: the streaming package never imports the
   training pipeline).
2. Starts the embedded tansu broker unless ``--bootstrap_servers`` is given.
3. Starts `heartwatch stream` as a child process (its log goes to a file) with every score also
   written to a scores topic, and waits until it owns its partitions.
4. Replays labelled beats at ``--rate`` (ground truth in a header) plus three malformed messages.
5. Prints the first anomaly events as they arrive and a running precision/recall line computed from
   the scores against the labels, then stops the stream with SIGTERM and the broker.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from kafka import TopicPartition

from models.common import files
from models.common.flags import parse_flags
from models.detection.detector import artifact_root
from models.ecg.sources import DatasetSpec, load_dataset
from streaming import codec, replay
from streaming.broker import LocalBroker, free_port
from streaming.config import DemoConfig, KafkaSettings
from streaming.kafka_clients import ensure_topics, make_consumer, make_producer
from streaming.monitoring import quiet_kafka_logs
from streaming.tail import format_document
from streaming.topics import (
    ALERTS_TOPIC,
    DEAD_LETTER_TOPIC,
    DEFAULT_PARTITIONS,
    EVENTS_TOPIC,
    INPUT_TOPIC,
    SCORES_TOPIC,
)

STATUS_INTERVAL_SECONDS = 2.0
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class DemoSummary:
    """Outcome of a demo run, counted from the scores topic against the replayed labels."""

    published: int = 0
    scored: int = 0
    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0
    true_negatives: int = 0
    dead_lettered: int = 0
    alerts: int = 0
    model_version: str = ""
    stream_exit_status: int | None = None
    stream_log: str = ""

    @property
    def precision(self) -> float:
        """Flagged beats that are labelled anomalies."""
        flagged = self.true_positives + self.false_positives
        return self.true_positives / flagged if flagged else 0.0

    @property
    def recall(self) -> float:
        """Labelled anomalies that were flagged."""
        anomalies = self.true_positives + self.false_negatives
        return self.true_positives / anomalies if anomalies else 0.0

    def count(self, score: dict) -> None:
        """Adds one score record."""
        self.scored += 1
        self.model_version = score["model_version"]
        label, flagged = score.get("label"), score["is_anomaly"]
        if label == 1:
            self.true_positives += flagged
            self.false_negatives += not flagged
        elif label == 0:
            self.false_positives += flagged
            self.true_negatives += not flagged

    def status_line(self) -> str:
        """The running figures."""
        return (f"-- scored {self.scored:,}/{self.published:,}  precision {self.precision:.3f}  recall "
                f"{self.recall:.3f}  (TP {self.true_positives} FP {self.false_positives} FN {self.false_negatives})"
                f"  dead-lettered {self.dead_lettered}  alerts {self.alerts}")


def _say(text: str) -> None:
    print(text, flush=True)


def ensure_model(config: DemoConfig) -> None:
    """Trains a detector into ``model_dir`` with `heartwatch train` unless it holds a version."""
    versions = artifact_root(config.model_dir).versions()
    if versions:
        _say(f"== reusing detector version {versions[-1]} under {config.model_dir}")
        return
    _say(f"== no detector under {config.model_dir}: training one on {config.data} (about a minute)")
    command = [sys.executable, "-m", "heartwatch_cli", "train", "--data", config.data, "--output_dir",
               config.model_dir, "--candidates", "dense", "--epochs", str(config.epochs), "--verbose", "0"]
    subprocess.run(command, check=True, env=_child_environment())


def _child_environment() -> dict:
    """This environment with the repository on the path (TensorFlow's log level is inherited)."""
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=REPOSITORY + (os.pathsep + path if path else ""))


def start_stream(config: DemoConfig, bootstrap_servers: str, log) -> subprocess.Popen:
    """`heartwatch stream` as a child process writing its log to the open file ``log``."""
    command = [sys.executable, "-m", "heartwatch_cli", "stream", "--bootstrap_servers", bootstrap_servers,
               "--model_dir", config.model_dir, "--group_id", f"heartwatch-demo-{os.getpid()}",
               "--input_topic", INPUT_TOPIC, "--events_topic", EVENTS_TOPIC, "--scores_topic", SCORES_TOPIC,
               "--dead_letter_topic", DEAD_LETTER_TOPIC, "--alerts_topic", ALERTS_TOPIC, "--auto_offset_reset",
               "latest", "--metrics_port", str(config.metrics_port), "--session_timeout_ms", "3000",
               "--max_poll_interval_ms", "10000"]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=_child_environment())


def _wait_for_assignment(stream: subprocess.Popen, log_path: str, timeout_seconds: float = 120) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if "partitions assigned" in files.read_bytes(log_path).decode("utf-8", "replace"):
            return
        if stream.poll() is not None:
            raise RuntimeError(f"heartwatch stream exited with status {stream.returncode}; see {log_path}")
        time.sleep(0.3)
    raise RuntimeError(f"heartwatch stream did not join its group within {timeout_seconds} s; see {log_path}")


def _reader(settings: KafkaSettings, topics: list[str]):
    consumer = make_consumer(settings, client_id="heartwatch-demo-reader")
    partitions = [TopicPartition(topic, partition) for topic in topics for partition in range(DEFAULT_PARTITIONS)]
    consumer.assign(partitions)
    consumer.seek_to_end(*partitions)
    return consumer


MALFORMED_EXAMPLES = (b"{not json", b'{"id": "x", "device_id": "device-000", "ts": 0, "beat": [0.0, 1.0]}',
                      b'{"id": "y", "device_id": "device-000", "ts": 0, "beat": [NaN' + b", 0.0" * 139 + b"]}")


def _replay(settings: KafkaSettings, config: DemoConfig, dataset, summary: DemoSummary, stop: threading.Event):
    result = replay.publish(settings, INPUT_TOPIC, dataset, rate=config.rate, limit=config.limit, stop=stop)
    producer = make_producer(settings)
    for value in MALFORMED_EXAMPLES:
        producer.send(INPUT_TOPIC, key=b"device-000", value=value)
    producer.flush()
    producer.close()
    summary.published = result.published


def run(argv=None) -> DemoSummary:
    """`heartwatch demo`: train or reuse, broker, stream, replay, live figures; stops everything at the end."""
    config = parse_flags(DemoConfig, argv, prog="heartwatch demo")
    quiet_kafka_logs()
    ensure_model(config)
    dataset = load_dataset(DatasetSpec(path=config.replay_data or config.data))
    if not dataset.has_labels:
        raise ValueError(f"{config.replay_data or config.data} has no labels: the demo needs them for precision/recall")
    broker = None
    if not config.bootstrap_servers:
        broker = LocalBroker(port=9092 if _port_is_free(9092) else free_port()).start()
    bootstrap_servers = config.bootstrap_servers or broker.bootstrap_servers
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers)
    log = tempfile.NamedTemporaryFile(prefix="heartwatch-demo-stream-", suffix=".log", delete=False)
    log_path = log.name
    summary = DemoSummary(stream_log=log_path)
    stream = None
    stop = threading.Event()
    try:
        _say(f"== broker {bootstrap_servers}{' (embedded tansu, memory storage)' if broker else ''}")
        ensure_topics(settings, {name: DEFAULT_PARTITIONS for name in (INPUT_TOPIC, EVENTS_TOPIC, SCORES_TOPIC,
                                                                       DEAD_LETTER_TOPIC, ALERTS_TOPIC)})
        stream = start_stream(config, bootstrap_servers, log)
        _say(f"== heartwatch stream started (pid {stream.pid}, log {log_path}"
             f"{f', metrics http://localhost:{config.metrics_port}/metrics' if config.metrics_port else ''})")
        _wait_for_assignment(stream, log_path)
        reader = _reader(settings, [SCORES_TOPIC, EVENTS_TOPIC, DEAD_LETTER_TOPIC, ALERTS_TOPIC])
        total = min(len(dataset), config.limit) if config.limit else len(dataset)
        summary.published = total
        _say(f"== replaying {total:,} labelled beats from {config.replay_data or config.data} at "
             f"{config.rate:,.0f}/s to {INPUT_TOPIC}; other terminals: heartwatch tail {EVENTS_TOPIC} "
             f"--bootstrap_servers {bootstrap_servers}")
        publisher = threading.Thread(target=_replay, args=(settings, config, dataset, summary, stop), daemon=True)
        publisher.start()
        _follow(reader, summary, config, publisher, total)
        reader.close(autocommit=False)
    finally:
        stop.set()
        log.close()
        if stream is not None:
            if stream.poll() is None:
                stream.send_signal(signal.SIGTERM)
            summary.stream_exit_status = stream.wait(timeout=60)
        if broker is not None:
            broker.stop()
    return summary


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _follow(reader, summary: DemoSummary, config: DemoConfig, publisher: threading.Thread, total: int) -> None:
    shown = 0
    last_status = time.monotonic()
    finished_at = None
    while True:
        for records in reader.poll(timeout_ms=200).values():
            for record in records:
                if record.topic == DEAD_LETTER_TOPIC:
                    summary.dead_lettered += 1
                    continue
                document = codec.loads(record.value)
                if record.topic == SCORES_TOPIC:
                    summary.count(document)
                elif record.topic == ALERTS_TOPIC:
                    summary.alerts += 1
                    _say(format_document(document))
                elif shown < config.show_events:
                    shown += 1
                    _say(format_document(document))
        if time.monotonic() - last_status >= STATUS_INTERVAL_SECONDS:
            last_status = time.monotonic()
            _say(summary.status_line())
        if not publisher.is_alive():
            finished_at = finished_at or time.monotonic()
            caught_up = summary.scored >= total and summary.dead_lettered >= len(MALFORMED_EXAMPLES)
            if caught_up or time.monotonic() - finished_at > 30:
                return


def report(summary: DemoSummary) -> str:
    """The final figures."""
    lines = []
    lines.append(summary.status_line())
    lines.append(f"heartwatch demo: detector version {summary.model_version}, precision {summary.precision:.3f}, "
                 f"recall {summary.recall:.3f} on {summary.scored:,} replayed beats; stream exited with status "
                 f"{summary.stream_exit_status} (log {summary.stream_log})")
    return "\n".join(lines)
