"""Streaming test fixtures: a real tansu broker and a real exported detector for the session, and helpers
around real processes.

``tests/conftest.py`` registers this module as a pytest plugin, so its fixtures reach every test module
(pytest then finds them). Every test uses its own topics and group ids on the one broker.

``exported_detector`` is a dense autoencoder trained on the normal beats of the real ECG sample,
exported through the detector contract (``DetectorModule`` + ``artifact_root(...).publish``) the way
`heartwatch train` exports one, without running the Beam pipeline.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import tensorflow as tf
from kafka import TopicPartition

from models.common import artifacts, files
from models.detection import thresholds
from models.detection.detector import SAVED_MODEL_DIRECTORY, SAVED_MODEL_MARKER, DetectorModule, artifact_root
from models.ecg.sources import DatasetSpec, load_dataset
from models.training.fit import CandidateConfig, train_autoencoder
from streaming.broker import LocalBroker
from streaming.config import KafkaSettings
from streaming.kafka_clients import ensure_topics, make_consumer, make_producer

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent

# Group timings that keep tansu's JoinGroup hold short (it holds a join for about half the session timeout).
FAST_GROUP_FLAGS = ["--session_timeout_ms", "3000", "--max_poll_interval_ms", "10000"]


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """A tansu broker process (memory storage) on a free localhost port, for the whole session."""
    log_path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with open(log_path, "ab") as log, LocalBroker(log_file=log) as broker:
        yield broker


class MinMaxScaling(tf.Module):
    """Raw beats -> [0, 1] by the global minimum and maximum of the training beats (`heartwatch train`'s minmax)."""

    def __init__(self, beats: np.ndarray):
        super().__init__(name="minmax_scaling")
        self.minimum = tf.Variable(float(np.min(beats)), trainable=False)
        self.span = tf.Variable(float(np.max(beats) - np.min(beats)), trainable=False)

    def __call__(self, beats):
        return (beats - self.minimum) / self.span


def export_detector(root: str, preprocess, autoencoder, threshold: float, card: dict | None = None) -> str:
    """Exports ``DetectorModule(preprocess, autoencoder, threshold)`` as the next version under ``root``."""
    module = DetectorModule(preprocess, autoencoder, threshold)
    versions = artifact_root(str(root))
    staging = versions.staging_directory()
    module.save(files.join(staging, SAVED_MODEL_DIRECTORY))
    card = {"kind": "detector", "threshold": {"value": float(threshold)}, "created": artifacts.utc_now(),
            "versions": artifacts.library_versions(), **(card or {})}
    return versions.publish(staging, card)[1]


def publish_copy(root: str, source_directory: str, broken: bool = False) -> int:
    """Publishes a copy of a version under ``root`` (atomically); ``broken`` garbles its SavedModel."""
    versions = artifact_root(str(root))
    staging = versions.staging_directory()
    for path in files.walk_files(source_directory):
        target = files.join(staging, path[len(source_directory):].lstrip("/"))
        files.make_directories(files.dirname(target))
        files.copy(path, target)
    if broken:
        files.write_bytes(files.join(staging, SAVED_MODEL_MARKER), b"this is not a SavedModel")
    return versions.publish(staging, artifacts.read_card(source_directory))[0]


@dataclasses.dataclass(frozen=True)
class ExportedDetector:
    """Where the session's detector lives."""

    root: str
    version_directory: str


@pytest.fixture(scope="session")
def exported_detector(tmp_path_factory, ecg5000_path) -> ExportedDetector:
    """A dense detector trained on the real sample's normal beats; threshold by max F1 over the sample."""
    dataset = load_dataset(DatasetSpec(path=ecg5000_path))
    normal = dataset.beats[dataset.is_anomaly == 0]
    scaling = MinMaxScaling(normal)
    scaled = scaling(tf.constant(normal)).numpy()
    split = int(len(scaled) * 0.8)
    candidate = CandidateConfig("dense", "dense", {}, epochs=150, batch_size=32)
    result = train_autoencoder(candidate, scaled[:split], scaled[split:], seed=0, verbose=0)
    errors = DetectorModule(scaling, result.model).score(dataset.beats)["anomaly_score"]
    threshold = thresholds.calibrate(thresholds.ThresholdConfig(method="max_f1"), errors, dataset.is_anomaly)
    root = str(tmp_path_factory.mktemp("detector"))
    directory = export_detector(root, scaling, result.model, threshold.value,
                                {"threshold": threshold.to_dict(), "data": {"source": ecg5000_path}})
    return ExportedDetector(root=root, version_directory=directory)


def settings_for(broker) -> KafkaSettings:
    """Kafka settings pointing at the test broker."""
    return KafkaSettings(bootstrap_servers=broker.bootstrap_servers)


def unique(prefix: str) -> str:
    """A topic or group name nobody else uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_topics(broker, partitions: int, *names: str) -> None:
    """Creates topics with ``partitions`` partitions."""
    ensure_topics(settings_for(broker), {name: partitions for name in names})


def produce(broker, topic: str, messages) -> list:
    """Sends ``(key, value, headers)`` triples in order; returns their ``(partition, offset)``."""
    producer = make_producer(settings_for(broker))
    try:
        futures = [producer.send(topic, key=key, value=value, headers=headers or [])
                   for key, value, headers in messages]
        producer.flush()
        return [(metadata.partition, metadata.offset) for metadata in (future.get(timeout=30) for future in futures)]
    finally:
        producer.close()


class TopicReader:
    """Reads a whole topic incrementally (assigned partitions, no group), keeping every record.

    tansu's ListOffsets answers are not record counts, so progress is measured by reading.
    """

    def __init__(self, broker, topic: str):
        self.topic = topic
        self.records: list = []
        self.consumer = make_consumer(settings_for(broker), client_id="test-reader")
        deadline = time.monotonic() + 30
        partitions = set()
        while not partitions and time.monotonic() < deadline:
            partitions = self.consumer.partitions_for_topic(topic) or set()
            if not partitions:
                time.sleep(0.2)
        if not partitions:
            raise ValueError(f"topic {topic} does not exist")
        assignment = [TopicPartition(topic, partition) for partition in sorted(partitions)]
        self.consumer.assign(assignment)
        self.consumer.seek_to_beginning(*assignment)

    def poll(self, timeout_ms: int = 100) -> int:
        """Reads what is available now; returns the total count so far."""
        for batch in self.consumer.poll(timeout_ms=timeout_ms).values():
            self.records.extend(batch)
        return len(self.records)

    def read_until(self, minimum: int, timeout_seconds: float = 60.0, settle_seconds: float = 1.0) -> list:
        """Reads until at least ``minimum`` records arrived and nothing new came for ``settle_seconds``."""
        deadline = time.monotonic() + timeout_seconds
        last_count, last_change = len(self.records), time.monotonic()
        while time.monotonic() < deadline:
            count = self.poll(200)
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            if count >= minimum and time.monotonic() - last_change >= settle_seconds:
                break
        return self.records

    def close(self) -> None:
        """Closes the consumer."""
        self.consumer.close(autocommit=False)


def read_topic(broker, topic: str, minimum: int, timeout_seconds: float = 60.0, settle_seconds: float = 1.0) -> list:
    """Every record of ``topic`` once at least ``minimum`` arrived and nothing new came for ``settle_seconds``."""
    reader = TopicReader(broker, topic)
    try:
        return reader.read_until(minimum, timeout_seconds, settle_seconds)
    finally:
        reader.close()


def committed_offsets(broker, group_id: str, topic: str) -> dict:
    """``{partition: committed offset}`` of a group (partitions without a commit are absent).

    A consumer with the group id that never subscribes reads the commits without joining the group.
    """
    consumer = make_consumer(settings_for(broker), group_id=group_id, client_id="test-offsets")
    try:
        partitions = [TopicPartition(topic, partition) for partition in consumer.partitions_for_topic(topic) or ()]
        offsets = {partition.partition: consumer.committed(partition) for partition in partitions}
    finally:
        consumer.close(autocommit=False)
    return {partition: offset for partition, offset in offsets.items() if offset is not None and offset >= 0}


def wait_until(condition, timeout_seconds: float, message: str, interval: float = 0.25, detail=None):
    """Polls ``condition()`` until it returns a truthy value; fails the test with ``message`` on timeout.

    ``detail``, a callable returning text (a process's log tail), is added to the failure message.
    """
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout_seconds} s: {message}" + (f"\n{detail()}" if detail else ""))


class StreamProcess:
    """`heartwatch stream` as a real child process, with its log captured to a file."""

    def __init__(self, broker, log_path, *flags: str):
        self.log_path = pathlib.Path(log_path)
        environment = dict(os.environ, PYTHONPATH=str(REPOSITORY), TF_CPP_MIN_LOG_LEVEL="2",
                           CUDA_VISIBLE_DEVICES="")
        command = [sys.executable, "-m", "heartwatch_cli", "stream", "--bootstrap_servers",
                   broker.bootstrap_servers, "--metrics_port", "0", *FAST_GROUP_FLAGS, *flags]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, cwd=str(REPOSITORY), env=environment, stdout=self._log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def log(self) -> str:
        """What the process wrote so far."""
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout_seconds: float = 60.0) -> int:
        """SIGTERM; returns the exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout_seconds)

    def kill(self) -> None:
        """SIGKILL (kill -9)."""
        self.process.kill()
        self.process.wait(timeout=30)

    def wait(self, timeout_seconds: float) -> int:
        """Waits for the exit; kills it and fails the test if it hangs."""
        try:
            return self.process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"stream process did not exit within {timeout_seconds} s; log:\n{self.log()[-3000:]}")
        finally:
            self._log.close()

    def close(self) -> None:
        """Kills the process if it still runs (test cleanup)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if not self._log.closed:
            self._log.close()


def outcomes_by_offset(score_records, dead_letter_records) -> dict:
    """``{(partition, offset): [kind, ...]}`` over score records and dead letters of one input topic."""
    from streaming import codec, events

    outcomes = collections.defaultdict(list)
    for record in score_records:
        document = codec.loads(record.value)
        outcomes[(document["source_partition"], document["source_offset"])].append(("scored", document["event_id"]))
    for record in dead_letter_records:
        partition = int(codec.header_value(record.headers, events.DLQ_PARTITION_HEADER))
        offset = int(codec.header_value(record.headers, events.DLQ_OFFSET_HEADER))
        outcomes[(partition, offset)].append(("dead-lettered", offset))
    return outcomes
