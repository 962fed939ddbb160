"""`heartwatch stream` against a real tansu broker process and a real detector trained on the ECG sample.

Each test has its own topics and consumer group. Outcomes are checked offset by offset: every input
offset must end up scored (scores topic) or dead-lettered, never both, and duplicates may only come
from the window after the last commit.
"""

import collections
import os
import threading
import time
import urllib.request

import numpy as np
import pytest

from models.ecg.sources import DatasetSpec, load_dataset
from streaming import codec, events, replay
from streaming.broker import free_port
from streaming.config import StreamConfig
from streaming.consumer import StreamProcessor
from streaming.kafka_clients import make_producer
from tests.streaming_fixtures import (
    StreamProcess,
    TopicReader,
    committed_offsets,
    create_topics,
    outcomes_by_offset,
    produce,
    publish_copy,
    read_topic,
    settings_for,
    unique,
    wait_until,
)
from tests.test_stream_units import MALFORMED

PARTITIONS = 4
# How long a stream process may take to start (import TensorFlow, load the detector, join): about 10 s on
# quiet cores, over 2 minutes when eight agents share two cores. Only an upper bound: waits return at once.
STARTUP_SECONDS = 300


@pytest.fixture(scope="module")
def ecg_dataset(ecg5000_path):
    """The 500 real labelled ECG beats."""
    return load_dataset(DatasetSpec(path=ecg5000_path))


def topics(prefix: str) -> dict:
    """Fresh topic and group names for one test."""
    names = {kind: unique(f"{prefix}-{kind}") for kind in ("input", "events", "scores", "dead", "alerts", "group")}
    return names


def stream_flags(names: dict, model_dir: str, *extra: str) -> list:
    """Command-line flags of a stream process on ``names``."""
    return ["--model_dir", model_dir, "--group_id", names["group"], "--input_topic", names["input"],
            "--events_topic", names["events"], "--scores_topic", names["scores"], "--dead_letter_topic",
            names["dead"], "--alerts_topic", names["alerts"], "--log_format", "text", *extra]


def ecg_messages(dataset, count: int, start: int = 0) -> list:
    """``count`` JSON messages cycling through the real beats (labels in headers)."""
    return list(ecg_message_stream(dataset, count, start))


def ecg_message_stream(dataset, count: int, start: int = 0):
    """``ecg_messages`` built one at a time (for a load that may stop long before ``count``)."""
    for index in range(start, start + count):
        yield replay.build_message(dataset, index % len(dataset), index // len(dataset), index, 10, "json", time.time())


class BackgroundProducer:
    """Sends messages at a steady rate from a thread (until they run out or ``stop``) and remembers where each
    landed."""

    def __init__(self, broker, topic: str, messages, rate: float):
        self.broker, self.topic, self.messages, self.rate = broker, topic, messages, rate
        self.coordinates: list = []
        self._stopping = threading.Event()
        self.thread = threading.Thread(target=self._send, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Sends no further message (``join`` then returns where the sent ones landed)."""
        self._stopping.set()

    def _send(self):
        producer = make_producer(settings_for(self.broker), linger_ms=2)
        futures = []
        started = time.monotonic()
        for index, (key, value, headers) in enumerate(self.messages):
            delay = started + index / self.rate - time.monotonic()
            if self._stopping.wait(delay) if delay > 0 else self._stopping.is_set():
                break
            futures.append(producer.send(self.topic, key=key, value=value, headers=headers))
        producer.flush()
        self.coordinates = [(metadata.partition, metadata.offset) for metadata in (f.get(timeout=30) for f in futures)]
        producer.close()

    def join(self, timeout_seconds: float = 120) -> list:
        """Waits until every message is acknowledged; returns their (partition, offset)."""
        self.thread.join(timeout_seconds)
        assert not self.thread.is_alive(), "background producer did not finish"
        return self.coordinates


def check_each_offset_has_one_outcome(coordinates, outcomes, dead_expected=(), duplicates_from=None):
    """Every produced offset scored or dead-lettered (the expected kind), never both; duplicates only past
    ``duplicates_from[partition]`` (the last commit before a crash). Returns how many were duplicated."""
    missing = [coordinate for coordinate in coordinates if coordinate not in outcomes]
    assert not missing, f"{len(missing)} offsets without an outcome, e.g. {missing[:5]}"
    assert set(outcomes) == set(coordinates), "outcomes for offsets that were never produced"
    duplicated = 0
    for coordinate in coordinates:
        kinds = {kind for kind, _ in outcomes[coordinate]}
        assert len(kinds) == 1, f"{coordinate} has conflicting outcomes {outcomes[coordinate]}"
        expected = "dead-lettered" if coordinate in dead_expected else "scored"
        assert kinds == {expected}, f"{coordinate} was {kinds}, expected {expected}"
        if len(outcomes[coordinate]) > 1:
            duplicated += 1
            partition, offset = coordinate
            assert duplicates_from is not None and offset >= duplicates_from.get(partition, 0), (
                f"{coordinate} emitted {len(outcomes[coordinate])} times below the commit {duplicates_from}")
            assert len({identifier for _, identifier in outcomes[coordinate]}) == 1, "replayed ids differ"
    return duplicated


def read_outcomes(broker, names, expected_total, timeout_seconds=90):
    """Reads scores and dead letters until ``expected_total`` distinct offsets are accounted for."""
    scores, dead = TopicReader(broker, names["scores"]), TopicReader(broker, names["dead"])
    try:
        def accounted():
            scores.poll(100)
            dead.poll(100)
            return len(outcomes_by_offset(scores.records, dead.records)) >= expected_total
        wait_until(accounted, timeout_seconds, f"{expected_total} offsets accounted for")
        time.sleep(1.0)
        scores.poll(200)
        dead.poll(200)
        return outcomes_by_offset(scores.records, dead.records), scores.records, dead.records
    finally:
        scores.close()
        dead.close()


def test_detects_real_ecg_anomalies_and_dead_letters_every_malformed_class(kafka_broker, exported_detector,
                                                                           ecg_dataset):
    names = topics("detect")
    create_topics(kafka_broker, PARTITIONS, *(names[kind] for kind in ("input", "events", "scores", "dead", "alerts")))
    good = produce(kafka_broker, names["input"], ecg_messages(ecg_dataset, len(ecg_dataset)))
    malformed_values = {name: value for name, (value, _) in MALFORMED.items()}
    malformed_values["bad binary"] = b"HWB0" + b"\0" * 600
    binary_header = [(codec.CONTENT_TYPE_HEADER, codec.BINARY_CONTENT_TYPE.encode())]
    bad_messages = [(b"bad", value, binary_header if name == "bad binary" else None)
                    for name, value in malformed_values.items()]
    bad = dict(zip(produce(kafka_broker, names["input"], bad_messages), malformed_values))
    metrics_port = free_port()
    model_root = f"ram://{unique('models')}"  # the stream serves a model root on a non-local scheme
    publish_copy(model_root, exported_detector.version_directory)
    config = StreamConfig(bootstrap_servers=kafka_broker.bootstrap_servers, model_dir=model_root,
                          group_id=names["group"], input_topic=names["input"], events_topic=names["events"],
                          scores_topic=names["scores"], dead_letter_topic=names["dead"], alerts_topic=names["alerts"],
                          metrics_port=metrics_port, log_format="text", session_timeout_ms=3000,
                          max_poll_interval_ms=10000, batch_size=128)
    processor = StreamProcessor(config)
    thread = threading.Thread(target=processor.run, daemon=True)
    thread.start()
    try:
        outcomes, scores, dead = read_outcomes(kafka_broker, names, len(good) + len(bad))
        metrics_text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    finally:
        processor.request_stop()
        thread.join(60)
    assert not thread.is_alive()
    check_each_offset_has_one_outcome(good + list(bad), outcomes, dead_expected=set(bad))

    documents = [codec.loads(record.value) for record in scores]
    labels = np.array([document["label"] for document in documents])
    flagged = np.array([document["is_anomaly"] for document in documents])
    precision = (flagged & (labels == 1)).sum() / flagged.sum()
    recall = (flagged & (labels == 1)).sum() / (labels == 1).sum()
    assert precision >= 0.85 and recall >= 0.9, f"precision {precision:.3f}, recall {recall:.3f}"
    offline = processor.detector.score(ecg_dataset.beats)
    row_of = {str(int(row_number)): index for index, row_number in enumerate(ecg_dataset.row_numbers)}
    for document in documents:
        index = row_of[document["heartbeat_id"]]
        assert document["is_anomaly"] == bool(offline["is_anomaly"][index])
        assert np.isclose(document["reconstruction_error"], offline["reconstruction_error"][index], rtol=1e-4)
        assert np.isclose(document["anomaly_score"], offline["anomaly_score"][index], rtol=1e-4)
        assert np.isclose(document["threshold"], processor.detector.threshold, rtol=1e-6)

    anomaly_events = [codec.loads(record.value) for record in read_topic(kafka_broker, names["events"], flagged.sum())]
    assert len(anomaly_events) == flagged.sum()
    version = os.path.basename(exported_detector.version_directory)
    for event in anomaly_events:
        assert event["model_version"] == version and event["score"] > 1.0 and len(event["worst_segments"]) == 3
        assert event["event_id"] == events.event_id(event["source_topic"], event["source_partition"],
                                                    event["source_offset"])
        assert event["detection_time"] >= event["event_time"] and event["threshold_kind"] == "global"

    for record in dead:
        partition = int(codec.header_value(record.headers, events.DLQ_PARTITION_HEADER))
        offset = int(codec.header_value(record.headers, events.DLQ_OFFSET_HEADER))
        name = bad[(partition, offset)]
        reason = codec.header_value(record.headers, events.DLQ_REASON_HEADER).decode()
        expected_reason = "bad binary message" if name == "bad binary" else MALFORMED[name][1]
        assert reason.startswith(expected_reason), (name, reason)
        assert (record.value or b"") == malformed_values[name], f"{name}: original bytes not preserved"
        assert codec.header_value(record.headers, events.DLQ_TOPIC_HEADER).decode() == names["input"]

    alerts = [codec.loads(record.value) for record in read_topic(kafka_broker, names["alerts"], 1)]
    assert alerts and all(alert["anomaly_count"] >= config.alert_count for alert in alerts)
    total = len(good) + len(bad)
    assert f"heartwatch_beats_consumed_total {float(total)}" in metrics_text
    assert f"heartwatch_beats_scored_total {float(len(good))}" in metrics_text
    assert f"heartwatch_model_version {float(version)}" in metrics_text


def test_kill_9_mid_stream_then_restart_loses_nothing(kafka_broker, exported_detector, ecg_dataset, tmp_path):
    names = topics("kill")
    create_topics(kafka_broker, PARTITIONS, *(names[kind] for kind in ("input", "events", "scores", "dead", "alerts")))
    messages = ecg_messages(ecg_dataset, 5000)
    bad_indices = set(range(250, 5000, 500))
    messages = [(key, b"not json" if index in bad_indices else value, headers)
                for index, (key, value, headers) in enumerate(messages)]
    upfront = produce(kafka_broker, names["input"], messages[:200])
    flags = stream_flags(names, exported_detector.version_directory, "--batch_size", "200", "--batch_timeout_ms", "20")
    first = StreamProcess(kafka_broker, tmp_path / "first.log", *flags)
    scores = TopicReader(kafka_broker, names["scores"])
    try:
        wait_until(lambda: scores.poll(200) >= 150, STARTUP_SECONDS, "first consumer scoring")
        upfront += produce(kafka_broker, names["input"], messages[200:1500])
        background = BackgroundProducer(kafka_broker, names["input"], messages[1500:], rate=700)
        wait_until(lambda: scores.poll(200) >= 1200, 90, "first consumer scored 1200 beats")
        first.kill()
        still_producing = background.thread.is_alive()
        committed_at_kill = committed_offsets(kafka_broker, names["group"], names["input"])
        assert sum(committed_at_kill.values()) > 0, "nothing was committed before the kill"
        second = StreamProcess(kafka_broker, tmp_path / "second.log", *flags)
        try:
            coordinates = upfront + background.join()
            dead_expected = {coordinates[index] for index in bad_indices}
            # the restarted process has to start first (import TensorFlow, load the detector, join)
            outcomes, _, _ = read_outcomes(kafka_broker, names, len(coordinates), timeout_seconds=STARTUP_SECONDS)
            assert second.terminate() == 0, second.log()[-2000:]
        finally:
            second.close()
    finally:
        first.close()
        scores.close()
    assert still_producing, "the input ended before the kill: not mid-stream"
    duplicated = check_each_offset_has_one_outcome(coordinates, outcomes, dead_expected, committed_at_kill)
    assert duplicated <= sum(1 for partition, offset in coordinates if offset >= committed_at_kill.get(partition, 0))


def test_two_consumers_rebalance_without_loss_or_duplicates(kafka_broker, exported_detector, ecg_dataset, tmp_path):
    names = topics("rebalance")
    create_topics(kafka_broker, PARTITIONS, *(names[kind] for kind in ("input", "events", "scores", "dead", "alerts")))
    upfront = produce(kafka_broker, names["input"], ecg_messages(ecg_dataset, 100))
    flags = stream_flags(names, exported_detector.version_directory, "--batch_size", "100", "--batch_timeout_ms", "20")
    first = StreamProcess(kafka_broker, tmp_path / "first.log", *flags)
    scores = TopicReader(kafka_broker, names["scores"])

    def scored_by_processor() -> collections.Counter:
        scores.poll(200)
        return collections.Counter(codec.loads(record.value)["processor"] for record in scores.records)

    def rebalanced_and_both_scoring() -> bool:
        # The first member took part in the new generation (assigned again after the revoke) and both scored,
        # the first beyond the upfront messages.
        counts = scored_by_processor()
        return (first.log().count("partitions assigned: ['") >= 2 and len(counts) == 2
                and counts[first_processor] > len(upfront))

    try:
        wait_until(lambda: scores.poll(200) >= len(upfront), STARTUP_SECONDS, "first consumer scoring")
        (first_processor,) = scored_by_processor()
        second = StreamProcess(kafka_broker, tmp_path / "second.log", *flags)
        try:
            # The load starts once the second process has loaded its detector and is about to join, so it joins,
            # and the group rebalances, mid-stream. It runs until both members scored after the rebalance (up to
            # 200 s on busy cores; about 5 s on quiet ones), so a slow rebalance cannot end the load first.
            wait_until(lambda: f"group {names['group']} reading" in second.log(), STARTUP_SECONDS,
                       "second consumer started")
            background = BackgroundProducer(kafka_broker, names["input"],
                                            ecg_message_stream(ecg_dataset, 120000, len(upfront)), rate=600)
            wait_until(rebalanced_and_both_scoring, 180, "both consumers scoring after the rebalance")
            assert background.thread.is_alive(), "the input ended before both consumers scored: not mid-stream"
            assert "partitions revoked: ['" in first.log(), "the first consumer never gave up partitions"
            assert "partitions assigned: ['" in second.log()
            assert first.terminate() == 0, first.log()[-2000:]
            before = len(scores.records)
            wait_until(lambda: scores.poll(200) > before + 300, 60, "second consumer took over")
            background.stop()
            coordinates = upfront + background.join(180)
            outcomes, score_records, _ = read_outcomes(kafka_broker, names, len(coordinates))
            assert second.terminate() == 0, second.log()[-2000:]
        finally:
            second.close()
    finally:
        first.close()
        scores.close()
    assert check_each_offset_has_one_outcome(coordinates, outcomes) == 0
    per_processor = {}
    for record in score_records:
        processor = codec.loads(record.value)["processor"]
        per_processor[processor] = per_processor.get(processor, 0) + 1
    assert len(per_processor) == 2 and min(per_processor.values()) > 100, per_processor


def test_hot_swap_under_load_refuses_a_broken_version(kafka_broker, exported_detector, ecg_dataset, tmp_path):
    names = topics("swap")
    create_topics(kafka_broker, PARTITIONS, *(names[kind] for kind in ("input", "events", "scores", "dead", "alerts")))
    root = str(tmp_path / "models")
    assert publish_copy(root, exported_detector.version_directory) == 1
    messages = ecg_messages(ecg_dataset, 9000)
    upfront = produce(kafka_broker, names["input"], messages[:100])
    stream = StreamProcess(kafka_broker, tmp_path / "stream.log",
                           *stream_flags(names, root, "--model_poll_seconds", "0.5", "--batch_size", "100"))
    scores = TopicReader(kafka_broker, names["scores"])
    versions = lambda: {codec.loads(record.value)["model_version"] for record in scores.records}  # noqa: E731
    try:
        wait_until(lambda: scores.poll(200) >= 100, STARTUP_SECONDS, "stream scoring with version 1")
        background = BackgroundProducer(kafka_broker, names["input"], messages[100:], rate=600)
        wait_until(lambda: scores.poll(200) >= 300, 30, "stream scoring under load")
        assert publish_copy(root, exported_detector.version_directory, broken=True) == 2
        wait_until(lambda: "refusing model version 2" in stream.log(), 30, "broken version 2 refused")
        assert publish_copy(root, exported_detector.version_directory) == 3
        wait_until(lambda: scores.poll(200) and "3" in versions(), 60, "events carrying version 3")
        assert background.thread.is_alive(), "the input ended before the swap: not under load"
        coordinates = upfront + background.join(180)
        outcomes, score_records, _ = read_outcomes(kafka_broker, names, len(coordinates))
        assert stream.terminate() == 0, stream.log()[-2000:]
    finally:
        stream.close()
        scores.close()
    assert check_each_offset_has_one_outcome(coordinates, outcomes) == 0
    by_partition = {}
    for record in score_records:
        document = codec.loads(record.value)
        by_partition.setdefault(document["source_partition"], []).append(
            (document["source_offset"], int(document["model_version"])))
    for partition, pairs in by_partition.items():
        sequence = [version for _, version in sorted(pairs)]
        assert sequence == sorted(sequence), f"partition {partition} went back to an older version"
        assert set(sequence) <= {1, 3}
    assert versions() == {"1", "3"}
    assert "swapped detector version 1 -> 3" in stream.log()


@pytest.mark.parametrize("output_client", ["librdkafka", "kafka-python"])
def test_sigterm_finishes_the_batch_commits_and_exits_zero(kafka_broker, exported_detector, ecg_dataset, tmp_path,
                                                           output_client):
    names = topics("sigterm")
    create_topics(kafka_broker, PARTITIONS, *(names[kind] for kind in ("input", "events", "scores", "dead", "alerts")))
    messages = ecg_messages(ecg_dataset, 6000)
    produce(kafka_broker, names["input"], messages[:100])
    stream = StreamProcess(kafka_broker, tmp_path / "stream.log",
                           *stream_flags(names, exported_detector.version_directory, "--batch_size", "500",
                                         "--batch_timeout_ms", "200", "--output_client", output_client))
    scores = TopicReader(kafka_broker, names["scores"])
    try:
        wait_until(lambda: scores.poll(200) >= 100, STARTUP_SECONDS, "stream scoring")
        background = BackgroundProducer(kafka_broker, names["input"], messages[100:], rate=800)
        wait_until(lambda: scores.poll(200) >= 1000, 30, "stream scoring under load")
        assert stream.terminate() == 0, stream.log()[-2000:]
        assert background.thread.is_alive(), "the input ended before SIGTERM: not mid-stream"
        background.join(180)
        scores.read_until(len(scores.records), timeout_seconds=10, settle_seconds=1.0)
    finally:
        stream.close()
        scores.close()
    committed = committed_offsets(kafka_broker, names["group"], names["input"])
    scored = {}
    for record in scores.records:
        document = codec.loads(record.value)
        scored.setdefault(document["source_partition"], set()).add(document["source_offset"])
    assert scored, "nothing was scored"
    for partition, offsets in scored.items():
        assert committed.get(partition) == max(offsets) + 1, f"partition {partition}: committed {committed}"
        assert offsets == set(range(max(offsets) + 1)), f"partition {partition} has gaps below the commit"
    assert "stopped" in stream.log()


def test_the_librdkafka_output_producer_acknowledges_and_refuses_without_raising(kafka_broker):
    from streaming.kafka_clients import delivery_timeouts, make_output_producer

    topic = unique("librdkafka")
    create_topics(kafka_broker, 3, topic)
    producer = make_output_producer(settings_for(kafka_broker), "librdkafka", **delivery_timeouts(20))
    try:
        assert producer.partitions_for(topic) == {0, 1, 2}
        futures = [producer.send(topic, key=b"device-%d" % index, value=b"beat %d" % index, partition=index % 3,
                                 headers=[("content-type", b"text/plain")]) for index in range(30)]
        oversized = producer.send(topic, value=b"x" * (8 << 20))  # above message.max.bytes (max_request_size)
        producer.flush(timeout=20)
        assert all(future.is_done and not future.failed() for future in futures)
        assert oversized.is_done and oversized.failed() and "MSG_SIZE_TOO_LARGE" in str(oversized.exception)
    finally:
        producer.close(timeout=5)
    records = read_topic(kafka_broker, topic, 30)
    assert sorted(record.value for record in records) == sorted(b"beat %d" % index for index in range(30))
    assert {(record.partition, record.key) for record in records} == {
        (index % 3, b"device-%d" % index) for index in range(30)}
    assert all(record.headers == [("content-type", b"text/plain")] for record in records)


@pytest.mark.parametrize("client", ["librdkafka", "kafka-python"])
def test_a_batch_sent_at_once_is_one_delivery_that_counts_a_refused_record(kafka_broker, client):
    from streaming.kafka_clients import delivery_timeouts, make_output_producer, send_many

    topic = unique(f"send-many-{client}")
    create_topics(kafka_broker, 3, topic)
    producer = make_output_producer(settings_for(kafka_broker), client, **delivery_timeouts(20))
    records = [(topic, b"device-%d" % index, b"beat %d" % index, [("content-type", b"text/plain")], index % 3)
               for index in range(30)]
    try:
        delivered = send_many(producer, records)
        refused = send_many(producer, records[:2] + [(topic, None, b"x" * (8 << 20), None, None)])  # above max size
        producer.flush(timeout=20)
        assert delivered.is_done and delivered.count == 30 and delivered.errors == []
        assert refused.is_done and refused.count == 3 and len(refused.errors) == 1
    finally:
        producer.close(timeout=5)
    read = read_topic(kafka_broker, topic, 32)
    assert sorted(record.value for record in read) == sorted([b"beat %d" % index for index in range(30)]
                                                             + [b"beat 0", b"beat 1"])
    assert {(record.partition, record.key) for record in read} == {(index % 3, b"device-%d" % index)
                                                                   for index in range(30)}
