"""Streaming throughput and latency of `heartwatch stream` against a bare loop and the tutorial loop, one run.

On one broker (the embedded tansu unless ``--bootstrap_servers``) and the same pre-loaded messages
(synthetic beats, JSON by default), each variant runs as its own process in its own consumer group:

(a) ceiling   bare loop: kafka-python poll, decode (the stream's codec), produce one small record per
              message with the stream's output client (``--output_client``), flush, commit per poll; with
              the stream's allocator setting (``--retain_freed_mb``, ``streaming.allocator``)
(b) floor     the tutorial-style loop: per message json.loads, ``model.predict`` on one beat
              (Keras wrapping the exported SavedModel), produce an event when anomalous, commit
(c) stream    `heartwatch stream` (events only), and again with ``--scores_topic`` (one output per
              message, like (a)); each at two anomaly rates of the load: about 5 % and 100 %

Throughput is read from outside through the group's committed offsets (first commit to last), so
start-up and group joins do not count. Then two `heartwatch stream` processes share one group on a
topic holding twice the messages; their rate counts from the moment each holds two of the four
partitions (read from their logs), so the first one's time alone and the join's rebalance do not
count. Beside every rate: the cores in use over the same window by the measured processes, by the
broker and by the whole machine (from /proc), which says when the machine itself is the limit. Then
end-to-end latency (producer send time in the message -> anomaly event read back by this script) is
measured at half of (c)'s rate, beside the transport alone (load generator -> broker -> reader) at
the same rate. The load generator and the reader stand in for other machines, so they use
librdkafka (confluent-kafka, the ``bench`` extra), which takes a fraction of kafka-python's CPU on
the shared cores. Finally the device TensorFlow uses and a model-only scoring throughput (plain
graph and XLA) at each of ``--model_batches``. Prints one table with ratios, the load average beside
every figure, and the bars of issue 13.

The anomaly rate of the load is set, not hoped for: from the given (or trained) detector the bench
exports two copies that differ only in their threshold, one at the 95th percentile of the load's
anomaly scores (about 5 % flagged: ``low``) and one below every score (every beat flagged, one event
per input like (a)'s one record per input: ``all``). The rate each copy really flags on the load is
measured and printed. Latency runs with the ``all`` copy by default (``--latency_anomalies``).

    .venv/bin/pip install -e ".[broker]"
    .venv/bin/python bench/stream.py                      # trains a small detector first (~30 s)
    .venv/bin/python bench/stream.py --quick              # shorter runs (fewer messages, one latency run)
    .venv/bin/python bench/stream.py --cases ceiling,events-all --messages 30000   # a selection
    .venv/bin/python bench/stream.py --cases ceiling,events-all,scores-all --repeats 3   # medians of 3 rounds
    .venv/bin/python bench/stream.py --model_dir artifacts/ecg --latency_rate 7000   # latency only
    .venv/bin/python bench/stream.py --cases ceiling,events-all --profile_dir /tmp/profiles   # py-spy each stream

Cases (``--cases``, default all): ``ceiling``, ``ceiling-kafka-python`` and ``ceiling-default-allocator``
(unbarred rows: (a) with kafka-python's producer, and with glibc's allocator defaults), ``floor``,
``events-low``, ``events-all``, ``scores-low``, ``scores-all``, ``two-all`` (two processes, one group),
``latency``, ``model``.
"""

import argparse
import ast
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPOSITORY)

from kafka import TopicPartition  # noqa: E402

from models.common import artifacts, files  # noqa: E402
from models.ecg.sources import DatasetSpec, load_dataset  # noqa: E402
from streaming import codec  # noqa: E402
from streaming.allocator import retain_freed_memory  # noqa: E402
from streaming.broker import LocalBroker  # noqa: E402
from streaming.config import KafkaSettings, StreamConfig  # noqa: E402
from streaming.kafka_clients import ensure_topics, make_consumer, make_output_producer, make_producer  # noqa: E402
from streaming.topics import DEFAULT_PARTITIONS  # noqa: E402

LOAD_LINGER_MS = 20
TICK_SECONDS = 0.001
GROUP_FLAGS = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 750, "max_poll_interval_ms": 10000}
ENVIRONMENT = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPOSITORY, os.environ.get("PYTHONPATH")])),
                   TF_CPP_MIN_LOG_LEVEL="2", HEARTWATCH_LOG_LEVEL="WARNING")
CEILING_CASES = ("ceiling", "ceiling-kafka-python", "ceiling-default-allocator")
STREAM_CASES = ("events-low", "events-all", "scores-low", "scores-all", "two-all")
CASES = (*CEILING_CASES, "floor", *STREAM_CASES, "latency", "model")
LOW_ANOMALY_RATE = 0.05
BROKER_PID: dict = {}  # {"pid": the embedded broker's process id} while this script runs one
TWO_PROCESS_LOAD = 2  # times --messages in the two-process case's topic: its rate is measured after the join
LOAD_BEATS = 20000
QUICK = {"messages": 20000, "floor_seconds": 5.0, "latency_seconds": 8.0, "latency_runs": 1, "model_seconds": 1.0}


def parse_arguments(argv=None):
    """Flags of the benchmark (and of its child roles)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap_servers", default="", help="existing cluster (default: start tansu)")
    parser.add_argument("--model_dir", default="", help="exported detector (default: train a small one)")
    parser.add_argument("--messages", type=int, default=60000, help="messages pre-loaded for the throughput runs")
    parser.add_argument("--floor_seconds", type=float, default=20.0, help="how long the floor loop runs")
    parser.add_argument("--latency_seconds", type=float, default=20.0, help="duration of each latency run")
    parser.add_argument("--latency_runs", type=int, default=3,
                        help="latency runs, each on fresh topics with a fresh stream (the median is reported)")
    parser.add_argument("--encoding", choices=("json", "binary"), default="json")
    parser.add_argument("--output_client", choices=("librdkafka", "kafka-python"),
                        default=StreamConfig.output_client,
                        help="producer of the stream's outputs and of (a)'s, so that both send alike")
    parser.add_argument("--retain_freed_mb", type=int, default=StreamConfig.retain_freed_mb,
                        help="the stream's allocator setting (streaming.allocator), given to (a) and every stream")
    parser.add_argument("--batch_size", type=int, default=1024)
    parser.add_argument("--batch_timeout_ms", type=int, default=10)
    parser.add_argument("--latency_rate", type=float, default=0.0,
                        help="only measure latency, at this rate (default: all runs, latency at half of (c))")
    parser.add_argument("--latency_anomalies", choices=("low", "all"), default="all",
                        help="anomaly rate of the latency runs' detector (half of that case's events-only rate)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated selection of {', '.join(CASES)}")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of the throughput cases, each case once a round in the same order; rates and "
                             "ratios to the same round's (a) are reported as medians over the rounds")
    parser.add_argument("--quick", action="store_true",
                        help="shorter runs: " + ", ".join(f"{key} {value}" for key, value in QUICK.items()))
    parser.add_argument("--model_batches", default="1024", help="comma-separated batch sizes of the model-only case")
    parser.add_argument("--model_seconds", type=float, default=3.0, help="how long each model-only measurement runs")
    parser.add_argument("--stream_args", default="", help="extra flags for every `heartwatch stream` process "
                        "(one string, e.g. \"--kafka_option producer.linger_ms=10\")")
    parser.add_argument("--profile_dir", default="", help="py-spy (on PATH) records each stream process here")
    parser.add_argument("--role", default="main", help=argparse.SUPPRESS)
    parser.add_argument("--topic", default="", help=argparse.SUPPRESS)
    parser.add_argument("--group", default="", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {arguments.repeats}")
    unknown = sorted(set(arguments.cases.split(",")) - set(CASES))
    if unknown:
        parser.error(f"unknown --cases {unknown}; choose from {', '.join(CASES)}")
    if arguments.quick:
        for key, value in QUICK.items():
            if getattr(arguments, key) == parser.get_default(key):
                setattr(arguments, key, value)
    return arguments


def load_average() -> str:
    """The 1-minute load average, as `uptime` prints it (figures on shared cores need it beside them)."""
    return f"{os.getloadavg()[0]:.2f}"


def synthetic_beats(count: int, seed: int, anomaly_fraction: float):
    """Generated beats and labels."""
    dataset = load_dataset(DatasetSpec(path=f"synthetic:beats={count},seed={seed},anomaly_fraction={anomaly_fraction}"))
    return dataset.beats, dataset.is_anomaly


def encode(index: int, beat, ts: float, encoding: str) -> bytes:
    """One benchmark message."""
    encoder = codec.encode_binary if encoding == "binary" else codec.encode_json
    return encoder(str(index), f"device-{index % 50:03d}", ts, beat)


def load_beats(count: int) -> np.ndarray:
    """The beats of the pre-loaded messages, in message order (message ``i`` carries beat ``i % 20000``)."""
    beats, _ = synthetic_beats(min(count, LOAD_BEATS), seed=7, anomaly_fraction=LOW_ANOMALY_RATE)
    return beats[np.arange(count) % len(beats)]


def detector_at_rate(model_dir: str, beats: np.ndarray, rate: float, root: str) -> dict:
    """A copy of the detector that flags ``rate`` of ``beats`` (1.0: every one), under the model root ``root``.

    Only the threshold differs: the 1 - ``rate`` quantile of the beats' anomaly scores, or half of
    the lowest score for 1.0. Returns its directory, threshold and the fraction it really flags.
    """
    import tensorflow as tf

    from models.detection.detector import (
        SAVED_MODEL_DIRECTORY,
        SIGNATURE_NAME,
        artifact_root,
        load_detector,
        resolve_version_directory,
    )

    source = resolve_version_directory(model_dir)
    detector = load_detector(source)
    scores = detector.score(beats, batch_size=4096)["anomaly_score"].astype(np.float64)
    if rate >= 1.0:
        threshold = max(float(scores.min()) / 2, float(np.finfo(np.float32).tiny))
    else:
        threshold = float(np.quantile(scores, 1.0 - rate))
    loaded = tf.saved_model.load(files.join(source, SAVED_MODEL_DIRECTORY))
    loaded.threshold.assign(threshold)
    versions = artifact_root(root)
    staging = versions.staging_directory()
    tf.saved_model.save(loaded, files.join(staging, SAVED_MODEL_DIRECTORY),
                        signatures={SIGNATURE_NAME: loaded.signatures[SIGNATURE_NAME]})
    card = dict(artifacts.read_card(source))
    card["threshold"] = {"value": threshold, "method": f"bench: flags {rate:.0%} of the bench load"}
    directory = versions.publish(staging, card)[1]
    flagged = load_detector(directory).score(beats, batch_size=4096)["is_anomaly"]
    return {"directory": directory, "threshold": threshold, "rate": float(np.mean(flagged))}


def preload(settings, topic: str, count: int, encoding: str) -> None:
    """Writes ``count`` messages (the beats of ``load_beats``) to ``topic``."""
    ensure_topics(settings, {topic: DEFAULT_PARTITIONS})
    beats, _ = synthetic_beats(min(count, LOAD_BEATS), seed=7, anomaly_fraction=LOW_ANOMALY_RATE)
    content_type = [(codec.CONTENT_TYPE_HEADER, codec.content_type_for(encoding).encode())]
    producer = make_producer(settings, linger_ms=20)
    now = time.time()
    for index in range(count):
        producer.send(topic, key=f"device-{index % 50:03d}".encode(),
                      value=encode(index, beats[index % len(beats)], now, encoding), headers=content_type)
    producer.flush()
    producer.close()


def committed_total(consumer, partitions) -> int:
    """Sum of the committed offsets of a group over ``partitions``."""
    return sum(consumer.committed(partition) or 0 for partition in partitions)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far, all its threads (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores of this machine spent busy so far (not idle or waiting for IO)."""
    with open("/proc/stat") as stat:
        values = [int(value) for value in stat.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(pids: list, broker_pid: int | None) -> tuple:
    """(the processes' CPU seconds, the broker's, the machine's busy seconds) now."""
    return (sum(process_cpu_seconds(pid) for pid in pids),
            process_cpu_seconds(broker_pid) if broker_pid else float("nan"), machine_busy_seconds())


def measure_group(settings, topic: str, group: str, target: int, timeout_seconds: float,
                  processes: list, ready=None, broker_pid: int | None = None) -> dict:
    """Watches a group's commits until ``target`` messages are committed (or timeout); returns the rate.

    The rate runs from the first commit seen, or with ``ready`` from the first one seen once ``ready()``
    is true (the group's steady state, after its rebalances). Over the same window it measures the
    cores in use: by ``processes``, by the broker (``broker_pid``, when it runs here) and by the machine.
    """
    consumer = make_consumer(settings, group_id=group, client_id="bench-monitor")
    partitions = [TopicPartition(topic, partition) for partition in range(DEFAULT_PARTITIONS)]
    first_time = first_total = first_cpu = last_cpu = None
    last_total, last_time = 0, time.monotonic()
    pids = [process.pid for process in processes]
    deadline = time.monotonic() + timeout_seconds
    try:
        while time.monotonic() < deadline:
            if any(process.poll() is not None for process in processes):
                break
            total = committed_total(consumer, partitions)
            now = time.monotonic()
            if total and first_time is None and (ready is None or ready()):
                first_time, first_total = now, total
                first_cpu = last_cpu = cpu_snapshot(pids, broker_pid)
            if total != last_total:
                last_total, last_time = total, now
                if first_time is not None:
                    last_cpu = cpu_snapshot(pids, broker_pid)
            if total >= target:
                break
            time.sleep(0.1)
    finally:
        consumer.close(autocommit=False)
    if first_time is None or last_time <= first_time:
        return {"rate": 0.0, "committed": last_total}
    seconds = last_time - first_time
    cores = [(last - first) / seconds for first, last in zip(first_cpu, last_cpu)]
    return {"rate": (last_total - first_total) / seconds, "committed": last_total, "seconds": seconds,
            "cores": {"processes": cores[0], "broker": cores[1], "machine": cores[2]}}


class AssignmentWatch:
    """Follows a stream's partition assignment from its INFO log lines on stderr (a reader thread).

    ERROR lines and tracebacks are passed on to this process's stderr, so the run still shows them (not
    the WARNING lines of the anomaly bursts that a load flagged at 100 % raises).
    """

    def __init__(self, process: subprocess.Popen):
        self.partitions: set = set()
        self._thread = threading.Thread(target=self._read, args=(process.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            if "partitions assigned: " in line:
                self.partitions = set(ast.literal_eval(line.split("partitions assigned: ", 1)[1].strip()))
            elif "partitions revoked: " in line:
                self.partitions = set()
            elif " ERROR " in line or " CRITICAL " in line or "Traceback" in line:
                sys.stderr.write(line)


def group_is_spread(watches: list, partitions: int = DEFAULT_PARTITIONS) -> bool:
    """True when every watched stream holds partitions and together they hold each of them once."""
    held = [watch.partitions for watch in watches]
    return all(held) and sum(map(len, held)) == partitions and len(set().union(*held)) == partitions


def start_stream(settings, model_dir: str, topic: str, group: str, arguments, *extra: str,
                 watch_assignment: bool = False) -> subprocess.Popen:
    """`heartwatch stream` as a child process; with ``watch_assignment`` its ``assignment`` attribute is an
    ``AssignmentWatch`` (INFO logs on a pipe)."""
    command = [sys.executable, "-m", "heartwatch_cli", "stream", "--bootstrap_servers", settings.bootstrap_servers,
               "--model_dir", model_dir, "--input_topic", topic, "--group_id", group, "--metrics_port", "0",
               "--model_poll_seconds", "0", "--batch_size", str(arguments.batch_size), "--batch_timeout_ms",
               str(arguments.batch_timeout_ms), "--session_timeout_ms", "3000", "--max_poll_interval_ms", "10000",
               "--events_topic", f"{group}-events", "--dead_letter_topic", f"{group}-dead", "--alerts_topic", "",
               "--log_format", "text", "--output_client", arguments.output_client,
               "--retain_freed_mb", str(arguments.retain_freed_mb),
               *shlex.split(arguments.stream_args), *extra]
    if watch_assignment:
        process = subprocess.Popen(command, cwd=REPOSITORY, env=dict(ENVIRONMENT, HEARTWATCH_LOG_LEVEL="INFO"),
                                   stderr=subprocess.PIPE, text=True)
        process.assignment = AssignmentWatch(process)
    else:
        process = subprocess.Popen(command, cwd=REPOSITORY, env=ENVIRONMENT)
    if arguments.profile_dir:
        profile(process, files.join(arguments.profile_dir, f"{group}-{process.pid}.txt"))
    return process


def profile(process: subprocess.Popen, path: str) -> None:
    """py-spy records ``process`` (every thread, without pausing it) into ``path`` (collapsed stacks) until it exits."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("--profile_dir needs py-spy on PATH (pip install py-spy)")
    files.make_directories(files.dirname(path))
    subprocess.Popen([py_spy, "record", "--pid", str(process.pid), "--nonblocking", "--threads", "--rate", "200",
                      "--format", "raw", "--output", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_role(settings, role: str, topic: str, group: str, *extra: str) -> subprocess.Popen:
    """This script in another role, as a child process."""
    command = [sys.executable, os.path.abspath(__file__), "--role", role, "--bootstrap_servers",
               settings.bootstrap_servers, "--topic", topic, "--group", group, *extra]
    return subprocess.Popen(command, cwd=REPOSITORY, env=ENVIRONMENT)


def stop(processes) -> None:
    """SIGTERM, then wait."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def stop_flag_on_sigterm() -> threading.Event:
    """An event that SIGTERM sets: the child roles loop until it is set."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda number, frame: stopping.set())
    return stopping


def ceiling_loop(arguments) -> None:
    """(a): poll, decode, produce one small record per message, flush, commit; until SIGTERM."""
    settings = KafkaSettings(bootstrap_servers=arguments.bootstrap_servers)
    stopping = stop_flag_on_sigterm()
    retain_freed_memory(arguments.retain_freed_mb)
    consumer = make_consumer(settings, arguments.topic, group_id=arguments.group, auto_offset_reset="earliest",
                             max_poll_records=1024, **GROUP_FLAGS)
    producer = make_output_producer(settings, arguments.output_client)
    output_topic = f"{arguments.group}-out"
    try:
        while not stopping.is_set():
            polled = consumer.poll(timeout_ms=200, max_records=1024)
            if not polled:
                continue
            for records in polled.values():
                decoded = codec.decode_batch([(record.value, record.headers) for record in records])
                outputs = {position: codec.dumps({"id": heartbeat_id, "offset": records[position].offset})
                           for position, heartbeat_id in zip(decoded.positions, decoded.ids)}
                outputs.update({position: reason.encode() for position, reason in decoded.failures})
                for position, record in enumerate(records):
                    producer.send(output_topic, key=record.key, value=outputs[position])
            producer.flush()
            consumer.commit()
    finally:
        producer.close()
        consumer.close(autocommit=False)


def floor_loop(arguments) -> None:
    """(b): the tutorial loop, one ``model.predict`` per message; until SIGTERM.

    The SavedModel's own ``is_anomaly`` output decides, as in the stream.
    """
    import tensorflow as tf

    from models.detection.detector import SAVED_MODEL_DIRECTORY, SIGNATURE_NAME, resolve_version_directory

    settings = KafkaSettings(bootstrap_servers=arguments.bootstrap_servers)
    stopping = stop_flag_on_sigterm()
    directory = resolve_version_directory(arguments.topic.split("|", 1)[1])
    model = tf.keras.Sequential([tf.keras.Input(shape=(140,)), tf.keras.layers.TFSMLayer(
        files.join(directory, SAVED_MODEL_DIRECTORY), call_endpoint=SIGNATURE_NAME)])
    topic = arguments.topic.split("|", 1)[0]
    consumer = make_consumer(settings, topic, group_id=arguments.group, auto_offset_reset="earliest",
                             max_poll_records=1, **GROUP_FLAGS)
    producer = make_producer(settings)
    try:
        while not stopping.is_set():
            for records in consumer.poll(timeout_ms=200, max_records=1).values():
                for record in records:
                    message = json.loads(record.value)
                    outputs = model.predict(np.array([message["beat"]], dtype=np.float32), verbose=0)
                    if bool(outputs["is_anomaly"][0]):
                        producer.send(f"{arguments.group}-events", value=json.dumps(
                            {"id": message["id"], "anomaly_score": float(outputs["anomaly_score"][0])}).encode()
                        ).get(timeout=30)
                    consumer.commit()
    finally:
        producer.close()
        consumer.close(autocommit=False)


def load_count(rate: float, seconds: float) -> int:
    """How many beats the load generator sends at ``rate`` for ``seconds``."""
    return int(rate * seconds)


def producer_loop(arguments) -> None:
    """Latency load: sends beats at ``--rate`` for ``--seconds`` with ts = send time, through librdkafka.

    The load stands in for devices on other machines, so it should take as little of the shared
    cores as it can: librdkafka (confluent-kafka) sending once per millisecond tick takes about 13 %
    of a core at 7,000 beats/s, kafka-python about 50 %. Its 20 ms linger keeps the broker's stored
    batches few: tansu's memory storage lists every stored batch of a partition on each fetch, and
    with 5 ms batches the transport alone went from p99 43 ms to 135 ms within 30 s (20 ms: 52-67 ms).
    """
    import confluent_kafka

    beats, _ = synthetic_beats(5000, seed=11, anomaly_fraction=0.1)
    suffixes = [codec.encode_json("0", "d", 0.0, beat).split(b',"beat":', 1)[1] for beat in beats]
    producer = confluent_kafka.Producer({"bootstrap.servers": arguments.bootstrap_servers, "acks": "all",
                                         "linger.ms": LOAD_LINGER_MS})
    started = time.monotonic()
    total, sent = load_count(arguments.rate, arguments.seconds), 0
    while sent < total:
        due = min(total, int((time.monotonic() - started) * arguments.rate) + 1)
        for index in range(sent, due):
            device = b"device-%03d" % (index % 50)
            value = b'{"id":"%d","device_id":"%s","ts":%.6f,"beat":' % (index, device, time.time())
            producer.produce(arguments.topic, key=device, value=value + suffixes[index % len(suffixes)])
        sent = due
        producer.poll(0)
        time.sleep(max(TICK_SECONDS, started + sent / arguments.rate - time.monotonic()))
    producer.flush()
    print(json.dumps({"sent": total, "seconds": time.monotonic() - started}), flush=True)


def latency_reader(settings, topic: str):
    """A librdkafka consumer of every partition of ``topic`` from its end (cheap beside kafka-python).

    The end offsets are looked up before assigning. With ``OFFSET_END`` librdkafka resolves the end
    lazily, and one transport run read only 171,580 of 200,000 messages: those sent before the
    lookup were never read, and so never counted.
    """
    import confluent_kafka

    reader = confluent_kafka.Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "bench-reader",
                                       "enable.auto.commit": False, "fetch.wait.max.ms": 20})
    starts = []
    for partition in range(DEFAULT_PARTITIONS):
        _, end = reader.get_watermark_offsets(confluent_kafka.TopicPartition(topic, partition), timeout=30)
        starts.append(confluent_kafka.TopicPartition(topic, partition, end))
    reader.assign(starts)
    return reader


def read_messages(reader, seconds: float) -> list:
    """(read time, message) of every message ``reader`` gets within ``seconds``."""
    read, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        first = reader.poll(0.05)  # returns at the first message (consume() would wait to fill its batch)
        if first is None:
            continue
        now = time.time()
        read += [(now, message) for message in [first, *reader.consume(1000, timeout=0)] if message.error() is None]
    return read


def percentiles(rows: list) -> dict:
    """p50/p99/max in ms of (send time, latency) rows, and the p99 of each third of the window."""
    if not rows:
        return {"count": 0}
    rows = np.array(sorted(rows))
    milliseconds = rows[:, 1] * 1000
    thirds = np.array_split(milliseconds, 3)
    return {"count": len(rows), "p50": float(np.percentile(milliseconds, 50)),
            "p99": float(np.percentile(milliseconds, 99)), "max": float(milliseconds.max()),
            "p99_thirds": [float(np.percentile(third, 99)) for third in thirds if len(third)]}


def send_load(settings, topic: str, rate: float, seconds: float, reader) -> list:
    """Runs the load generator for ``seconds`` at ``rate``; what ``reader`` read meanwhile and 3 s after."""
    load = start_role(settings, "producer", topic, "", "--rate", str(rate), "--seconds", str(seconds))
    read = []
    while load.poll() is None:
        read += read_messages(reader, 0.5)
    return read + read_messages(reader, 3.0)


def latency_runs(settings, model_dir: str, rate: float, arguments) -> list:
    """``--latency_runs`` latency measurements at ``rate``: on these shared cores one run's p99 varies by 2x."""
    return [measure_latency(settings, model_dir, rate, arguments) for _ in range(arguments.latency_runs)]


def measure_latency(settings, model_dir: str, rate: float, arguments) -> dict:
    """End-to-end latency at ``rate``: the transport alone, then through `heartwatch stream`, on fresh topics.

    Transport: load generator -> broker -> reader, read time minus the record's timestamp (its send
    time). Stream: load generator -> broker -> stream -> events topic -> reader, read time minus the
    event's ``event_time`` (the ``ts`` the load generator wrote at send time).
    """
    stamp = time.time_ns()
    transport_topic, topic, group = f"bench-transport-{stamp}", f"bench-live-{stamp}", f"bench-latency-{stamp}"
    ensure_topics(settings, {name: DEFAULT_PARTITIONS for name in (transport_topic, topic, f"{group}-events")})
    reader = latency_reader(settings, transport_topic)
    try:
        read_messages(reader, 1.0)
        transport = send_load(settings, transport_topic, rate, arguments.latency_seconds, reader)
    finally:
        reader.close()
    stream = start_stream(settings, model_dir, topic, group, arguments)
    reader = latency_reader(settings, f"{group}-events")
    try:
        warm = start_role(settings, "producer", topic, group, "--rate", "200", "--seconds", "2")
        measure_group(settings, topic, group, 400, 120, [stream])
        warm.wait()
        read_messages(reader, 1.0)
        events = [(read_time, codec.loads(message.value()))
                  for read_time, message in send_load(settings, topic, rate, arguments.latency_seconds, reader)]
    finally:
        reader.close()
        stop([stream])
    sent_times = [(message.timestamp()[1] / 1000.0, read_time) for read_time, message in transport]
    return {"rate": rate, "sent": load_count(rate, arguments.latency_seconds),
            "transport": percentiles([(sent, read_time - sent) for sent, read_time in sent_times]),
            "stream": percentiles([(event["event_time"], read_time - event["event_time"])
                                   for read_time, event in events]),
            "detection": percentiles([(event["event_time"], event["detection_time"] - event["event_time"])
                                      for _, event in events])}


def model_only(model_dir: str, batch_sizes: list, seconds: float) -> dict:
    """Device and scoring throughput of the detector alone at each batch size, plain graph and XLA."""
    from models.detection.detector import load_detector

    beats, _ = synthetic_beats(max(batch_sizes), seed=5, anomaly_fraction=LOW_ANOMALY_RATE)
    results = {"rates": {}, "load": load_average()}
    for mode in ("off", "on"):
        detector = load_detector(model_dir, mode)
        results["device"] = detector.device
        for batch_size in batch_sizes:
            batch = beats[:batch_size]
            detector.score(batch)
            started, scored = time.perf_counter(), 0
            while time.perf_counter() - started < seconds:
                scored += len(detector.score(batch)["anomaly_score"])
            results["rates"][(batch_size, mode)] = scored / (time.perf_counter() - started)
    return results


def train_detector(directory: str) -> str:
    """A small detector trained by `heartwatch train` on generated beats."""
    command = [sys.executable, "-m", "heartwatch_cli", "train", "--data",
               "synthetic:beats=3000,seed=3,anomaly_fraction=0.1", "--output_dir", directory, "--candidates",
               "dense", "--epochs", "40", "--verbose", "0", "--report", "false"]
    subprocess.run(command, cwd=REPOSITORY, env=ENVIRONMENT, check=True)
    return directory


def throughput(settings, topic: str, label: str, processes_factory, target: int, timeout: float = 300,
               ready=None) -> dict:
    """Starts processes from ``processes_factory(group)`` and measures their group's committed rate
    (with ``ready(processes)``: from when it is true)."""
    group = f"bench-{label}-{int(time.time() * 1000) % 10**8}"
    processes = processes_factory(group)
    until = None if ready is None else (lambda: ready(processes))
    try:
        return {**measure_group(settings, topic, group, target, timeout, processes, until, BROKER_PID.get("pid")),
                "load": load_average()}
    finally:
        stop(processes)


def throughput_measurements(settings, arguments, cases: list, topic: str, two_topic: str, model_dir: str,
                            detectors: dict) -> dict:
    """``{case: measure}`` for the selected throughput cases, in the order they run; ``measure()`` runs the
    case once on fresh consumer groups and returns its result."""
    count = arguments.messages
    measurements = {}
    variants = {"ceiling": (arguments.output_client, arguments.retain_freed_mb),
                "ceiling-kafka-python": ("kafka-python", arguments.retain_freed_mb),  # earlier rounds' reference
                "ceiling-default-allocator": (arguments.output_client, 0)}  # what the allocator setting is worth
    for case, (client, retained) in variants.items():
        if case in cases and (case == "ceiling" or (client, retained) != variants["ceiling"]):
            measurements[case] = lambda case=case, client=client, retained=retained: throughput(
                settings, topic, case, lambda group: [start_role(
                    settings, "ceiling", topic, group, "--output_client", client, "--retain_freed_mb", str(retained))],
                count)
    if "floor" in cases:
        measurements["floor"] = lambda: throughput(settings, topic, "floor", lambda group: [
            start_role(settings, "floor", f"{topic}|{model_dir}", group)], count, timeout=arguments.floor_seconds)
    for case in STREAM_CASES:
        if case not in cases:
            continue
        kind, anomalies = case.split("-")
        directory = detectors[anomalies]["directory"]
        if kind == "two":  # measured once both hold partitions: the join's rebalance is not the steady rate
            measurements[case] = lambda case=case, directory=directory: throughput(
                settings, two_topic, f"stream-{case}", lambda group: [
                    start_stream(settings, directory, two_topic, group, arguments, watch_assignment=True)
                    for _ in range(2)], TWO_PROCESS_LOAD * count,
                ready=lambda processes: group_is_spread([process.assignment for process in processes]))
            continue

        def processes(group, kind=kind, directory=directory):
            extra = ("--scores_topic", f"{group}-scores") if kind == "scores" else ()
            return [start_stream(settings, directory, topic, group, arguments, *extra)]
        measurements[case] = lambda case=case, processes=processes: throughput(
            settings, topic, f"stream-{case}", processes, count)
    return measurements


def repeated(measurements: dict, repeats: int) -> dict:
    """Runs every measurement once a round for ``repeats`` rounds; per case, the run with the median rate,
    with ``rates`` (every round's) and ``ratios`` (each round's rate over the same round's ``ceiling``)."""
    runs = {case: [] for case in measurements}
    for round_number in range(repeats):
        if repeats > 1:
            print(f"round {round_number + 1} of {repeats} (load {load_average()})", flush=True)
        for case, measure in measurements.items():
            runs[case].append(measure())
    results = {}
    for case, case_runs in runs.items():
        rates = [run["rate"] for run in case_runs]
        results[case] = {**sorted(case_runs, key=lambda run: run["rate"])[(len(case_runs) - 1) // 2],
                         "rates": rates}
        if "ceiling" in runs:
            results[case]["ratios"] = [run["rate"] / ceiling["rate"] if ceiling["rate"] else float("nan")
                                       for run, ceiling in zip(case_runs, runs["ceiling"])]
    return results


def run_cases(settings, arguments, cases: list, workspace: str) -> dict:
    """Runs the selected throughput, latency and model-only cases on one broker; returns their results."""
    model_dir = arguments.model_dir or train_detector(files.join(workspace, "model"))
    count = arguments.messages
    results = {"load_start": load_average()}
    if any(case in cases for case in (*STREAM_CASES, "latency")):
        beats = load_beats(count)
        results["detectors"] = {name: detector_at_rate(model_dir, beats, rate, files.join(workspace, name))
                                for name, rate in (("low", LOW_ANOMALY_RATE), ("all", 1.0))}
    if arguments.latency_rate:
        results["latency"] = latency_runs(settings, results["detectors"][arguments.latency_anomalies]["directory"],
                                          arguments.latency_rate, arguments)
        return results
    topic = f"bench-in-{int(time.time())}"
    if any(case in cases for case in (*CEILING_CASES, "floor", *STREAM_CASES)):
        print(f"pre-loading {count:,} {arguments.encoding} messages into {topic} "
              f"({DEFAULT_PARTITIONS} partitions)...", flush=True)
        preload(settings, topic, count, arguments.encoding)
    two_topic = f"{topic}-two"
    if "two-all" in cases:
        print(f"pre-loading {TWO_PROCESS_LOAD * count:,} messages into {two_topic} for the two processes "
              "(the first consumes alone until the second joins)...", flush=True)
        preload(settings, two_topic, TWO_PROCESS_LOAD * count, arguments.encoding)
    measurements = throughput_measurements(settings, arguments, cases, topic, two_topic, model_dir,
                                           results.get("detectors", {}))
    results.update(repeated(measurements, arguments.repeats))
    if "latency" in cases:
        basis = f"events-{arguments.latency_anomalies}"
        rate = results[basis]["rate"] / 2 if basis in results else 0.0
        if rate:
            results["latency"] = latency_runs(
                settings, results["detectors"][arguments.latency_anomalies]["directory"], rate, arguments)
    if "model" in cases:
        results["model"] = model_only(model_dir, [int(size) for size in arguments.model_batches.split(",")],
                                      arguments.model_seconds)
    results["load_end"] = load_average()
    return results


def main(argv=None) -> None:
    """Runs the selected cases and prints the table."""
    arguments = parse_arguments(argv)
    roles = {"ceiling": ceiling_loop, "floor": floor_loop, "producer": producer_loop}
    if arguments.role in roles:
        roles[arguments.role](arguments)
        return
    broker = None
    if not arguments.bootstrap_servers and arguments.cases != "model":
        broker = LocalBroker().start()
        arguments.bootstrap_servers = broker.bootstrap_servers
        BROKER_PID["pid"] = broker.process.pid
    settings = KafkaSettings(bootstrap_servers=arguments.bootstrap_servers) if arguments.bootstrap_servers else None
    workspace = tempfile.mkdtemp(prefix="heartwatch-bench-")
    try:
        results = run_cases(settings, arguments, arguments.cases.split(","), workspace)
        if arguments.latency_rate:
            print_latency(results["latency"], f"--latency_rate, {arguments.latency_anomalies} anomalies")
        else:
            print_table(results, arguments)
    finally:
        if broker is not None:
            broker.stop()
        files.remove(workspace)


def print_latency(runs: list, label: str) -> None:
    """The latency lines of each run (transport alone, then through the stream) and the median over runs."""
    def line(result: dict) -> str:
        if not result.get("count"):
            return "nothing read"
        thirds = ", ".join(f"{value:.0f}" for value in result["p99_thirds"])
        return f"p50 {result['p50']:.0f}, p99 {result['p99']:.0f} (thirds {thirds}), max {result['max']:.0f} ms"
    print(f"end-to-end latency at {runs[0]['rate']:,.0f} beats/s ({label}), {len(runs)} runs on fresh topics, "
          f"load generator linger {LOAD_LINGER_MS} ms:")
    for number, run in enumerate(runs, 1):
        print(f"  run {number}: transport alone (load generator -> broker -> reader): {line(run['transport'])}; "
              f"{run['transport'].get('count', 0):,} of {run['sent']:,} read")
        print(f"         through heartwatch stream (-> anomaly event read back): {line(run['stream'])}; "
              f"{run['stream'].get('count', 0):,} events")
        print(f"         of which send -> scored: {line(run['detection'])}")
    def median(part: str, key: str) -> float:
        return float(np.median([run[part].get(key, np.nan) for run in runs]))
    stream_p99s = ", ".join(f"{run['stream'].get('p99', np.nan):.0f}" for run in runs)
    print(f"  median of the runs: transport p99 {median('transport', 'p99'):.0f} ms; through the stream "
          f"p50 {median('stream', 'p50'):.0f} ms, p99 {median('stream', 'p99'):.0f} ms (p99 by run: {stream_p99s})")


ROWS = (("ceiling", "(a) ceiling: bare consume+decode+produce+commit"),
        ("ceiling-kafka-python", "(a) the same with kafka-python's producer (not a bar)"),
        ("ceiling-default-allocator", "(a) the same, glibc's allocator defaults (not a bar)"),
        ("floor", "(b) floor: tutorial loop, model.predict per message"),
        ("events-low", "(c) stream, events only, low anomaly rate"),
        ("events-all", "(c) stream, events only, every beat anomalous"),
        ("scores-low", "(c) stream + scores topic, low anomaly rate"),
        ("scores-all", "(c) stream + scores topic, every beat anomalous"),
        ("two-all", "(c) stream, 2 processes, one group, every beat"))
BARS = (("events-all", 0.75), ("events-low", 1.10), ("scores-low", 0.75), ("scores-all", 0.75))


def ratio_to_ceiling(result: dict) -> float:
    """The median over the rounds of a case's rate over the same round's (a)."""
    return float(np.median(result["ratios"])) if result.get("ratios") else float("nan")


def print_table(results: dict, arguments) -> None:
    """The side-by-side figures, the load average beside each, and the bars (medians over the rounds)."""
    print(f"\nheartwatch stream benchmark: {arguments.messages:,} {arguments.encoding} messages, "
          f"batch {arguments.batch_size} / {arguments.batch_timeout_ms} ms, outputs through "
          f"{arguments.output_client}, {os.cpu_count()} cores, {arguments.repeats} round(s), "
          f"load average {results['load_start']} at the start, {results['load_end']} at the end")
    for name, detector in results.get("detectors", {}).items():
        print(f"  detector '{name}': threshold {detector['threshold']:.6g}, flags {detector['rate']:.1%} of the load")
    print(f"{'variant':<55} {'anomalies':>9} {'beats/s':>10} {'vs (a)':>8} {'load':>6}  "
          "cores: measured / broker / machine")
    for case, label in ROWS:
        if case not in results:
            continue
        result = results[case]
        detector = results.get("detectors", {}).get(case.rsplit("-", 1)[-1])
        anomalies = f"{detector['rate']:.0%}" if detector else ""
        cores = result.get("cores", {})
        rounds = ("  rounds: " + ", ".join(f"{rate:,.0f}" for rate in result["rates"])
                  + (" (" + ", ".join(f"{ratio:.1%}" for ratio in result["ratios"]) + ")" if "ratios" in result else "")
                  if len(result["rates"]) > 1 else "")
        print(f"{label:<55} {anomalies:>9} {result['rate']:>10,.0f} {ratio_to_ceiling(result):>8.1%} "
              f"{result['load']:>6}  {cores.get('processes', np.nan):.2f} / {cores.get('broker', np.nan):.2f} / "
              f"{cores.get('machine', np.nan):.2f}{rounds}")
    for case, bar in BARS:
        if case in results:
            ratio = ratio_to_ceiling(results[case])
            print(f"bar: {case} >= {bar:.0%} of (a): {ratio:.1%} {'PASS' if ratio >= bar else 'FAIL'}")
    if "two-all" in results and "events-all" in results and results["events-all"]["rate"]:
        ratio = float(np.median([two / one for two, one in zip(results["two-all"]["rates"],
                                                                results["events-all"]["rates"]) if one]))
        print(f"bar: 2 processes >= 1.6x one (every beat anomalous): {ratio:.2f}x {'PASS' if ratio >= 1.6 else 'FAIL'}")
    if "latency" in results:
        print_latency(results["latency"], f"half of events-{arguments.latency_anomalies}")
        p99 = float(np.median([run["stream"].get("p99", np.nan) for run in results["latency"]]))
        print(f"bar: p99 end-to-end <= 150 ms at half rate (median of runs): {p99:.0f} ms "
              f"{'PASS' if p99 <= 150 else 'FAIL'}")
    if "model" in results:
        print_model(results["model"])


def print_model(model: dict) -> None:
    """The model-only lines: beats/s per batch size, plain graph and XLA."""
    print(f"model-only scoring on {model['device']} (load {model['load']}):")
    for batch_size in sorted({size for size, _ in model["rates"]}):
        print(f"  batch {batch_size:>6}: {model['rates'][(batch_size, 'off')]:>12,.0f} beats/s plain graph, "
              f"{model['rates'][(batch_size, 'on')]:>12,.0f} beats/s XLA")
    if model["device"] != "GPU":
        print("GPU: not measured (no GPU visible to TensorFlow on this machine)")


if __name__ == "__main__":
    main()
