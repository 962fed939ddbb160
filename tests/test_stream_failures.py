"""The failure edges of the streaming commands, through real processes, a real broker and a real detector.

CLI errors: one line, exit 2 for usage and 1 for runtime failures, no traceback, flag errors and
``--help`` without TensorFlow. Outages: the stream's own tansu broker sits behind a TCP relay
(``TcpRelay``), so cutting the relay looks to every client like a stopped broker (connections reset,
new ones refused) while the broker keeps its data, and restoring it brings the broker back.
"""

import json
import logging
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from models.common import files
from models.common.flags import parse_flags
from models.ecg.sources import DatasetSpec, load_dataset
from streaming import codec, events
from streaming.broker import LocalBroker, free_port
from streaming.config import StreamConfig
from streaming.monitoring import BrokerMonitor, StreamMetrics, kafka_problem, quiet_kafka_logs
from tests.streaming_fixtures import (
    REPOSITORY,
    StreamProcess,
    committed_offsets,
    create_topics,
    outcomes_by_offset,
    produce,
    publish_copy,
    read_topic,
    wait_until,
)
from tests.test_stream_broker import ecg_messages, stream_flags, topics
from tests.test_stream_units import POISON

SUBCOMMANDS = ["train", "score", "stream", "replay", "tail", "broker", "demo", "denoise train", "denoise run"]
SEND_TIMEOUT_SECONDS = 5
LOST_SECONDS = 2
OUTAGE_FLAGS = ["--send_timeout_seconds", str(SEND_TIMEOUT_SECONDS), "--broker_lost_seconds", str(LOST_SECONDS)]


@pytest.fixture(scope="module")
def ecg_dataset(ecg5000_path):
    """The 500 real labelled ECG beats."""
    return load_dataset(DatasetSpec(path=ecg5000_path))


def heartwatch(*arguments: str, timeout_seconds: float = 120, importtime: bool = False) -> subprocess.CompletedProcess:
    """Runs ``python -m heartwatch_cli ARGUMENTS`` (with ``-X importtime`` when asked); fails the test if it hangs."""
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "heartwatch_cli", *arguments]
    environment = {"PYTHONPATH": str(REPOSITORY), "PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""}
    try:
        return subprocess.run(command, cwd=str(REPOSITORY), env=environment, capture_output=True, text=True,
                              timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"heartwatch {' '.join(arguments)} did not finish within {timeout_seconds} s")


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """stderr without ``-X importtime`` lines."""
    return [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("import time:")]


def imported(result: subprocess.CompletedProcess) -> set[str]:
    """Top-level packages imported, from ``-X importtime``."""
    return {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()
            if line.startswith("import time:")}


def assert_one_error_line(result: subprocess.CompletedProcess, status: int, prog: str, *words: str) -> str:
    """The run exited with ``status`` after exactly one ``PROG: error: ...`` line containing ``words``."""
    lines = error_lines(result)
    assert result.returncode == status, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"heartwatch {prog}: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def metrics(port: int) -> dict:
    """The stream's Prometheus samples without labels, ``{name: value}``."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+) (\S+)$", line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


@pytest.mark.parametrize("subcommand", SUBCOMMANDS)
def test_help_and_flag_errors_answer_without_tensorflow(subcommand):
    words = subcommand.split()
    shown = heartwatch(*words, "--help", importtime=True)
    assert shown.returncode == 0 and "--" in shown.stdout, shown.stderr[-2000:]
    misspelt = {"train": "--epoch", "score": "--modle", "denoise train": "--epoch", "denoise run": "--inptu"}.get(
        subcommand, "--nosuch")
    refused = heartwatch(*words, misspelt, "1", importtime=True)
    assert_one_error_line(refused, 2, subcommand, f"unknown flag {misspelt}")
    for result in (shown, refused):
        assert not imported(result) & {"tensorflow", "keras", "apache_beam"}, subcommand


def test_a_flag_that_is_not_a_beam_option_is_one_line():
    assert_one_error_line(heartwatch("score", "--no_such_option", "x"), 2, "score", "--no_such_option")


@pytest.mark.parametrize("servers, message", [
    ("host:notaport", "the port of 'host:notaport' must be a number"),
    ("localhost:0", "from 1 to 65535"),
    ("a b:9092", "is not host:port"),
])
def test_malformed_bootstrap_servers_are_usage_errors(servers, message):
    for subcommand in ("stream", "replay", "tail"):
        result = heartwatch(subcommand, "--bootstrap_servers", servers, importtime=True)
        assert_one_error_line(result, 2, subcommand, "--bootstrap_servers", message)
        assert "tensorflow" not in imported(result)


def test_an_unreachable_cluster_fails_in_one_line_within_the_connect_timeout():
    refused = f"127.0.0.1:{free_port()}"
    result = heartwatch("stream", "--bootstrap_servers", refused, "--metrics_port", "0", "--model_dir", "nowhere",
                        importtime=True, timeout_seconds=90)  # default --connect_timeout_seconds: 10
    assert_one_error_line(result, 1, "stream", f"no Kafka broker answered at {refused} within 10 s", "ECONNREFUSED")
    assert "tensorflow" not in imported(result), "the cluster is checked before TensorFlow is imported"
    unresolvable = ["--bootstrap_servers", "no-such-host.invalid:9092", "--connect_timeout_seconds", "2"]
    for arguments in (["stream", "--metrics_port", "0"], ["replay"], ["tail"]):
        result = heartwatch(*arguments, *unresolvable, timeout_seconds=90)
        assert_one_error_line(result, 1, arguments[0], "no-such-host.invalid:9092 within 2 s", "DNS")


def test_a_busy_metrics_port_is_one_line(kafka_broker, exported_detector):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = heartwatch("stream", "--bootstrap_servers", kafka_broker.bootstrap_servers, "--model_dir",
                            exported_detector.version_directory, "--metrics_port", str(port), importtime=True)
    assert_one_error_line(result, 1, "stream", f"--metrics_port {port}", "in use")
    assert "tensorflow" not in imported(result)


def test_a_busy_broker_port_is_one_line(kafka_broker):
    assert_one_error_line(heartwatch("broker", "--port", kafka_broker.bootstrap_servers.rsplit(":", 1)[1]), 1,
                          "broker", "already in use", "--port")


def corrupt_model(kind: str, root) -> str:
    """A model directory of ``kind`` that no detector can be loaded from."""
    if kind == "garbage SavedModel":
        files.write_text(files.join(str(root), "1", "model_card.json"), "{}")
        files.write_bytes(files.join(str(root), "1", "detector", "saved_model.pb"), b"this is not a SavedModel")
        return str(root)
    if kind == "empty directory":
        files.make_directories(str(root))
        return str(root)
    files.write_text(files.join(str(root), "notes", "readme.txt"), "not a model")  # not a model root
    return str(root)


@pytest.mark.parametrize("kind, message", [("garbage SavedModel", "cannot load a detector"),
                                           ("empty directory", "no detector at"),
                                           ("not a model root", "no detector at")])
def test_a_corrupt_model_directory_is_one_line(kafka_broker, tmp_path, kind, message):
    model_dir = corrupt_model(kind, tmp_path / "models")
    result = heartwatch("stream", "--bootstrap_servers", kafka_broker.bootstrap_servers, "--model_dir", model_dir,
                        "--metrics_port", "0")
    assert_one_error_line(result, 2, "stream", "--model_dir", message)


class TcpRelay:
    """A TCP relay to a broker port: ``cut()`` resets every connection and refuses new ones (a stopped broker, to
    its clients), ``restore()`` accepts again. ``bytes_to_clients`` counts what the broker sent through it."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.bytes_to_clients = 0
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._listening = threading.Event()
        self.restore()

    def restore(self) -> None:
        """Listens again on the same port."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listening.set()
        self._accepting = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._accepting.start()

    def cut(self) -> None:
        """Stops listening and resets every relayed connection."""
        self._listening.clear()
        self._accepting.join()  # its listener is closed: no connection made during the cut can outlive it
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # RST, like a crash
            connection.close()

    def _accept(self, listener: socket.socket) -> None:
        with listener:
            while self._listening.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
                client.settimeout(None)
                with self._lock:
                    self._connections += [client, upstream]
                threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
                threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, destination: socket.socket, to_client: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                destination.sendall(data)
                if to_client:
                    with self._lock:
                        self.bytes_to_clients += len(data)
        except OSError:
            pass
        finally:
            for end in (source, destination):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def relayed_broker(tmp_path):
    """``(broker, relay)``: a tansu broker of this test's own, which clients reach through the relay only."""
    log_path = tmp_path / "tansu.log"
    port = free_port()
    relay = TcpRelay(port)
    with open(log_path, "ab") as log, LocalBroker(port=port, advertised_port=relay.port, log_file=log) as broker:
        yield broker, relay
        relay.cut()


def error_records(log: str) -> list[str]:
    """heartwatch's ERROR log lines (text format; not TensorFlow's C++ lines)."""
    return [line for line in log.splitlines() if re.match(r"^\d{4}-\d\d-\d\d [\d:,]+ ERROR ", line)]


def test_an_outage_is_logged_once_each_way_exported_and_survived(relayed_broker, exported_detector, ecg_dataset,
                                                                  tmp_path):
    broker, relay = relayed_broker
    names = topics("outage")
    create_topics(broker, 2, *(names[kind] for kind in ("input", "events", "scores", "dead", "alerts")))
    port = free_port()
    stream = StreamProcess(broker, tmp_path / "stream.log", *stream_flags(
        names, exported_detector.version_directory, "--metrics_port", str(port), *OUTAGE_FLAGS))
    messages = ecg_messages(ecg_dataset, 100)
    try:
        produce(broker, names["input"], messages[:50])
        assert len(read_topic(broker, names["scores"], 50, timeout_seconds=120)) == 50
        connected = metrics(port)
        assert connected["heartwatch_broker_connected"] == 1.0
        assert connected["heartwatch_seconds_since_last_fetch"] < LOST_SECONDS
        relay.cut()
        wait_until(lambda: "broker lost" in stream.log(), 60, "'broker lost' logged")
        during = metrics(port)
        assert during["heartwatch_broker_connected"] == 0.0
        assert during["heartwatch_seconds_since_last_fetch"] >= LOST_SECONDS
        time.sleep(1.5)
        assert metrics(port)["heartwatch_seconds_since_last_fetch"] >= during["heartwatch_seconds_since_last_fetch"] + 1
        log_during_outage = stream.log()
        relay.restore()
        wait_until(lambda: "broker regained" in stream.log(), 60, "'broker regained' logged")
        wait_until(lambda: metrics(port)["heartwatch_seconds_since_last_fetch"] < LOST_SECONDS, 30, "answers again")
        assert metrics(port)["heartwatch_broker_connected"] == 1.0
        produce(broker, names["input"], messages[50:])
        scores = read_topic(broker, names["scores"], 100, timeout_seconds=120)
        assert len(outcomes_by_offset(scores, [])) == 100, "a beat lost across the outage"
        assert stream.terminate() == 0, stream.log()[-3000:]
    finally:
        stream.close()
    log = stream.log()
    assert log.count("broker lost") == 1 and log.count("broker regained") == 1, log[-3000:]
    lost_line = next(line for line in log.splitlines() if "broker lost" in line)
    assert broker.bootstrap_servers in lost_line and "has not answered for" in lost_line
    assert re.search(r"broker regained: .* after \d+\.\d s", log)
    assert "Traceback" not in log
    assert not [line for line in log.splitlines() if " kafka." in line], "kafka-python's lines reach the log"
    assert len(log_during_outage.splitlines()) < 40, "the outage floods the log"


@pytest.mark.parametrize("open_batch", [True, False], ids=["open batch", "idle, broker not yet lost"])
def test_sigterm_with_the_broker_down_exits_bounded_without_committing_unacknowledged_work(
        relayed_broker, exported_detector, ecg_dataset, tmp_path, open_batch):
    broker, relay = relayed_broker
    names = topics("downterm")
    create_topics(broker, 1, *(names[kind] for kind in ("input", "events", "scores", "dead", "alerts")))
    lost_seconds = LOST_SECONDS if open_batch else 60  # idle: the final commit is tried, and would block
    stream = StreamProcess(broker, tmp_path / "stream.log", *stream_flags(
        names, exported_detector.version_directory, "--batch_size", "50", "--batch_timeout_ms", "600000",
        *OUTAGE_FLAGS, "--broker_lost_seconds", str(lost_seconds)))
    messages = ecg_messages(ecg_dataset, 80)
    try:
        produce(broker, names["input"], messages[:50])  # one full batch: scored, acknowledged, committed
        wait_until(lambda: committed_offsets(broker, names["group"], names["input"]) == {0: 50}, 120,
                   "the first batch committed")
        if open_batch:
            before = relay.bytes_to_clients
            produce(broker, names["input"], messages[50:])  # an open batch, never full, flushed by the stop only
            payload = sum(len(value) for _, value, _ in messages[50:])
            wait_until(lambda: relay.bytes_to_clients - before > payload, 60, "the stream fetched the open batch")
        relay.cut()
        if open_batch:
            wait_until(lambda: "broker lost" in stream.log(), 60, "'broker lost' logged",
                       detail=lambda: f"exit status {stream.process.poll()}; log:\n{stream.log()[-4000:]}")
        status = stream.terminate(timeout_seconds=SEND_TIMEOUT_SECONDS + 5 + 20)  # the bar plus slack for load
    finally:
        stream.close()
    log = stream.log()
    assert status == 1, log[-3000:]
    assert "Traceback" not in log
    errors = [line for line in error_records(log) if "broker lost" not in line]
    expected = (["stopped without committing unacknowledged output"] if open_batch else  # a refused or a hung commit:
                ["stopped without its final commit", "exits now without committing"])
    assert len(errors) == 1 and any(text in errors[0] for text in expected), errors
    relay.restore()
    assert committed_offsets(broker, names["group"], names["input"]) == {0: 50}, "unacknowledged work committed"
    scored = {codec.loads(record.value)["source_offset"] for record in read_topic(broker, names["scores"], 50)}
    assert set(range(50)) <= scored


def non_utf8_beat() -> bytes:
    return json.dumps({"id": "h-x", "device_id": "dev", "ts": 1.0, "beat": [0.0] * 140}).replace(
        "h-x", "h-\xff").encode("latin-1")


def test_poison_among_valid_beats_is_dead_lettered_and_the_partition_moves_on(kafka_broker, exported_detector,
                                                                              ecg_dataset, tmp_path):
    names = topics("poison")
    create_topics(kafka_broker, 1, *(names[kind] for kind in ("input", "events", "scores", "dead", "alerts")))
    poison = {name: (value, headers) for name, (value, headers, _) in POISON.items()}
    poison["non-UTF-8 bytes"] = (b"\xff\xfe\xfd" + b"\x80" * 64, None)
    poison["non-UTF-8 string field"] = (non_utf8_beat(), None)
    valid = ecg_messages(ecg_dataset, 2 * len(poison) + 2)
    overflow = valid[1][:2] + ([(codec.LABEL_HEADER, b"9" * 5000)],)  # a valid beat whose label header overflows
    valid[1] = overflow
    messages, expected_poison = [], {}
    for index, message in enumerate(valid):
        messages.append(message)
        if index < len(poison):
            name = sorted(poison)[index]
            value, headers = poison[name]
            expected_poison[len(messages)] = (name, value)
            messages.append((b"device-poison", value, headers))
    root = str(tmp_path / "models")
    publish_copy(root, exported_detector.version_directory)
    port = free_port()
    stream = StreamProcess(kafka_broker, tmp_path / "stream.log", *stream_flags(
        names, root, "--metrics_port", str(port), "--model_poll_seconds", "0.5", "--batch_size", "16"))
    try:
        coordinates = produce(kafka_broker, names["input"], messages)
        total = len(messages)
        wait_until(lambda: committed_offsets(kafka_broker, names["group"], names["input"]).get(0) == total, 120,
                   f"offsets committed past every message ({total})")
        scores = read_topic(kafka_broker, names["scores"], len(valid))
        dead = read_topic(kafka_broker, names["dead"], len(poison))
        files.write_text(files.join(root, "2", "model_card.json"), "{}")  # a version folder without saved_model.pb
        wait_until(lambda: "refusing model version 2" in stream.log(), 60, "the incomplete version 2 refused")
        wait_until(lambda: metrics(port).get("heartwatch_model_refusals_total"), 30, "the refusal counted")
        samples = metrics(port)
        assert stream.process.poll() is None, "the stream stopped"
        produce(kafka_broker, names["input"], ecg_messages(ecg_dataset, 1))
        assert len(read_topic(kafka_broker, names["scores"], len(valid) + 1, timeout_seconds=60)) == len(valid) + 1
        assert stream.terminate() == 0, stream.log()[-3000:]
    finally:
        stream.close()
    assert [partition for partition, _ in coordinates] == [0] * total
    outcomes = outcomes_by_offset(scores, dead)
    for offset in range(total):
        kinds = [kind for kind, _ in outcomes.get((0, offset), [])]
        expected = "dead-lettered" if offset in expected_poison else "scored"
        assert kinds == [expected], (offset, expected_poison.get(offset, ("valid",))[0], kinds)
    for record in dead:
        offset = int(codec.header_value(record.headers, events.DLQ_OFFSET_HEADER))
        assert (record.value or b"") == expected_poison[offset][1], f"{expected_poison[offset][0]}: bytes changed"
    overflow_score = next(codec.loads(record.value) for record in scores if codec.loads(record.value)[
        "source_offset"] == coordinates[messages.index(overflow)][1])
    assert overflow_score.get("label") is None
    assert samples["heartwatch_model_refusals_total"] == 1.0
    assert samples["heartwatch_model_version"] == 1.0
    assert "Traceback" not in stream.log()



def test_bootstrap_servers_accept_hosts_ports_and_bracketed_ipv6():
    config = parse_flags(StreamConfig, ["--bootstrap_servers", "kafka-1:9093, [::1]:9092,kafka-2"])
    assert config.bootstrap_servers == "kafka-1:9093, [::1]:9092,kafka-2"
    for servers in ("[::1]9092", "kafka:", "kafka:65536", ":9092", "a/b:1"):
        with pytest.raises(ValueError, match="--bootstrap_servers"):
            parse_flags(StreamConfig, ["--bootstrap_servers", servers])


def test_the_broker_monitor_logs_each_transition_once_and_sets_the_gauges(caplog):
    silence = [0.5]
    stream_metrics = StreamMetrics()
    monitor = BrokerMonitor(lambda: silence[0], 2.0, stream_metrics, "kafka:9092")
    gauge = lambda name: stream_metrics.registry.get_sample_value(name)  # noqa: E731
    with caplog.at_level(logging.INFO, logger="streaming.monitoring"):
        assert monitor.check_now() and gauge("heartwatch_broker_connected") == 1.0
        for seconds in (2.5, 4.0, 9.0):
            silence[0] = seconds
            assert not monitor.check_now()
            assert gauge("heartwatch_seconds_since_last_fetch") == seconds
        assert gauge("heartwatch_broker_connected") == 0.0
        silence[0] = 0.1
        assert monitor.check_now() and monitor.check_now()
    assert gauge("heartwatch_broker_connected") == 1.0 and monitor.outages == 1
    assert caplog.text.count("broker lost: kafka:9092 has not answered for 2.5 s") == 1
    assert caplog.text.count("broker regained") == 1


def test_kafka_python_lines_are_kept_out_and_the_last_problem_is_remembered(caplog):
    kafka_logger = logging.getLogger("kafka")
    saved = kafka_logger.level, kafka_logger.propagate, list(kafka_logger.handlers)
    try:
        with caplog.at_level(logging.INFO):
            quiet_kafka_logs()
            connection = logging.getLogger("kafka.net.connection")
            connection.error("<KafkaConnection node_id=1 (disconnected)>: Connection lost: %s", "111 ECONNREFUSED")
            logging.getLogger("kafka.net.manager").error("Bootstrap failed: Unable to bootstrap from ['x:1']")
            logging.getLogger("kafka.net.selector").warning("Task ran for 0.2s: it is blocking the event loop")
            logging.getLogger("kafka.cluster").info("Bootstrap complete")
        assert kafka_problem() == "Connection lost: 111 ECONNREFUSED"
        assert "kafka" not in caplog.text.lower(), caplog.text
    finally:
        kafka_logger.setLevel(saved[0])
        kafka_logger.propagate = saved[1]
        kafka_logger.handlers[:] = saved[2]
