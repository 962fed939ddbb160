"""`heartwatch replay`: publish beats from any supported data set or the generator at a target rate.

Each beat becomes one message (JSON or binary, see ``streaming.codec``) keyed by its simulated device
id, with headers ``content-type``, ``heartwatch-label`` (the ground truth: 0 normal, 1 anomaly, -1
unknown) and ``heartwatch-source-class``. ``ts`` is the send time, so the stream's end-to-end
latency can be read off its events. Beats are spread over ``devices`` device ids round-robin and
ids are ``<row number>`` (``<row number>.<pass>`` when repeating).

Rate control sleeps until each message's due time (``rate`` beats/s; 0 sends as fast as possible).
Data files are read through the file layer (``models.ecg.sources``' default opener), so ``--data``
may also be a ``gs://`` or ``ram://`` path.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time

from models.common.flags import parse_flags
from models.ecg.sources import DatasetSpec, LoadedDataset, load_dataset
from streaming import codec, topics
from streaming.config import KafkaSettings, ReplayConfig
from streaming.kafka_clients import ensure_topics, make_producer
from streaming.monitoring import quiet_kafka_logs

LOGGER = logging.getLogger(__name__)

PROGRESS_INTERVAL_SECONDS = 0.5


@dataclasses.dataclass
class ReplaySummary:
    """What a replay published."""

    topic: str
    published: int
    anomalies: int
    seconds: float

    @property
    def rate(self) -> float:
        """Achieved beats per second."""
        return self.published / self.seconds if self.seconds > 0 else 0.0


def device_id_for(index: int, devices: int) -> str:
    """The simulated device of the ``index``-th published beat."""
    return f"device-{index % devices:03d}"


def build_message(dataset: LoadedDataset, row: int, passage: int, index: int, devices: int, encoding: str,
                  ts: float) -> tuple[bytes, bytes, list]:
    """``(key, value, headers)`` of one beat."""
    device_id = device_id_for(index, devices)
    row_number = int(dataset.row_numbers[row])
    heartbeat_id = f"{row_number}" if passage == 0 else f"{row_number}.{passage}"
    encoder = codec.encode_binary if encoding == "binary" else codec.encode_json
    value = encoder(heartbeat_id, device_id, ts, dataset.beats[row])
    headers = [(codec.CONTENT_TYPE_HEADER, codec.content_type_for(encoding).encode()),
               (codec.LABEL_HEADER, str(int(dataset.is_anomaly[row])).encode()),
               (codec.SOURCE_CLASS_HEADER, str(dataset.source_classes[row]).encode())]
    return device_id.encode(), value, headers


class _ProgressBar:
    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled and total > 0
        self.started = time.monotonic()
        self.shown = 0.0

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.shown < PROGRESS_INTERVAL_SECONDS):
            return
        self.shown = now
        width = 30
        filled = int(width * done / self.total)
        rate = done / max(now - self.started, 1e-9)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done:,}/{self.total:,} beats "
                         f"{rate:,.0f}/s" + ("\n" if final else ""))
        sys.stderr.flush()


def publish(settings: KafkaSettings, topic: str, dataset: LoadedDataset, rate: float = 0.0,
            encoding: str = "json", devices: int = 10, limit: int = 0, repeat: int = 1,
            progress: bool = False, stop=None) -> ReplaySummary:
    """Publishes the data set's beats to ``topic``; waits until the broker acknowledged them all.

    ``stop`` (a ``threading.Event``) ends the replay early.
    """
    if rate < 0 or devices < 1 or repeat < 1 or limit < 0:
        raise ValueError("rate and limit must be >= 0, devices and repeat >= 1")
    total = len(dataset) * repeat
    total = min(total, limit) if limit else total
    if total == 0:
        raise ValueError(f"nothing to publish: {dataset.source} has no valid beats")
    ensure_topics(settings, {topic: topics.DEFAULT_PARTITIONS})
    producer = make_producer(settings, client_id="heartwatch-replay", linger_ms=2)
    bar = _ProgressBar(total, progress)
    started = time.monotonic()
    anomalies = 0
    index = 0
    try:
        while index < total and not (stop is not None and stop.is_set()):
            passage, row = divmod(index, len(dataset))
            if rate:
                delay = started + index / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            key, value, headers = build_message(dataset, row, passage, index, devices, encoding, time.time())
            producer.send(topic, key=key, value=value, headers=headers)
            anomalies += int(dataset.is_anomaly[row] == 1)
            index += 1
            bar.update(index)
        producer.flush()
    finally:
        producer.close()
    seconds = time.monotonic() - started
    bar.update(index, final=True)
    LOGGER.info("published %d beats (%d anomalies) to %s in %.1f s", index, anomalies, topic, seconds)
    return ReplaySummary(topic=topic, published=index, anomalies=anomalies, seconds=seconds)


def run(argv=None) -> ReplaySummary:
    """`heartwatch replay`: loads the data set and publishes it."""
    config = parse_flags(ReplayConfig, argv, prog="heartwatch replay")
    quiet_kafka_logs()
    dataset = load_dataset(DatasetSpec(path=config.data))
    return publish(config, config.topic, dataset, rate=config.rate, encoding=config.encoding,
                   devices=config.devices, limit=config.limit, repeat=config.repeat, progress=config.progress)


def report(summary: ReplaySummary) -> str:
    """What was published, as text (the CLI prints it)."""
    return (f"heartwatch replay: {summary.published:,} beats ({summary.anomalies:,} labelled anomalies) to "
            f"{summary.topic} in {summary.seconds:.1f} s ({summary.rate:,.0f} beats/s)")
