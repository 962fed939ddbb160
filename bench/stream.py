"""Streaming throughput and latency of `heartwatch stream` against a bare loop and the tutorial loop, one run.

On one broker (the embedded tansu unless ``--bootstrap_servers``) and the same pre-loaded messages
(synthetic beats, JSON by default), each variant runs as its own process in its own consumer group:

(a) ceiling   bare kafka-python: poll, decode (the stream's codec), produce one small record per
              message, flush, commit per poll
(b) floor     the tutorial-style loop: per message json.loads, ``model.predict`` on one beat
              (Keras wrapping the exported SavedModel), produce an event when anomalous, commit
(c) stream    `heartwatch stream` (events only), and again with ``--scores_topic`` (one output per
              message, like (a))

Throughput is read from outside through the group's committed offsets (first commit to last), so
start-up and group joins do not count. Then two `heartwatch stream` processes share one group, and
end-to-end latency (producer send time in the message -> anomaly event read back by this script) is
measured at half of (c)'s rate. Finally the device TensorFlow uses and a model-only scoring
throughput (plain graph and XLA). Prints one table with ratios.

    .venv/bin/python bench/stream.py                      # trains a small detector first (~30 s)
    .venv/bin/python bench/stream.py --model_dir artifacts/ecg --messages 60000
"""

import argparse
import json
import os
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

from models.datasets import DatasetSpec, load_dataset  # noqa: E402
from streaming import codec  # noqa: E402
from streaming.broker import LocalBroker  # noqa: E402
from streaming.config import KafkaSettings  # noqa: E402
from streaming.kafka_clients import ensure_topics, make_consumer, make_producer  # noqa: E402

PARTITIONS = 4
GROUP_FLAGS = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 750, "max_poll_interval_ms": 10000}
ENVIRONMENT = dict(os.environ, PYTHONPATH=REPOSITORY, TF_CPP_MIN_LOG_LEVEL="2", HEARTWATCH_LOG_LEVEL="WARNING")


def parse_arguments(argv=None):
    """Flags of the benchmark (and of its child roles)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap_servers", default="", help="existing cluster (default: start tansu)")
    parser.add_argument("--model_dir", default="", help="exported detector (default: train a small one)")
    parser.add_argument("--messages", type=int, default=60000, help="messages pre-loaded for the throughput runs")
    parser.add_argument("--floor_seconds", type=float, default=20.0, help="how long the floor loop runs")
    parser.add_argument("--latency_seconds", type=float, default=20.0, help="duration of the latency run")
    parser.add_argument("--encoding", choices=("json", "binary"), default="json")
    parser.add_argument("--batch_size", type=int, default=1024)
    parser.add_argument("--batch_timeout_ms", type=int, default=10)
    parser.add_argument("--latency_rate", type=float, default=0.0,
                        help="only measure latency, at this rate (default: all runs, latency at half of (c))")
    parser.add_argument("--role", default="main", help=argparse.SUPPRESS)
    parser.add_argument("--topic", default="", help=argparse.SUPPRESS)
    parser.add_argument("--group", default="", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def synthetic_beats(count: int, seed: int, anomaly_fraction: float):
    """Generated beats and labels."""
    dataset = load_dataset(DatasetSpec(path=f"synthetic:beats={count},seed={seed},anomaly_fraction={anomaly_fraction}"))
    return dataset.beats, dataset.is_anomaly


def encode(index: int, beat, ts: float, encoding: str) -> bytes:
    """One benchmark message."""
    encoder = codec.encode_binary if encoding == "binary" else codec.encode_json
    return encoder(str(index), f"device-{index % 50:03d}", ts, beat)


def preload(settings, topic: str, count: int, encoding: str) -> None:
    """Writes ``count`` messages (5 % anomalies) to ``topic``."""
    ensure_topics(settings, {topic: PARTITIONS})
    beats, _ = synthetic_beats(min(count, 20000), seed=7, anomaly_fraction=0.05)
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


def measure_group(settings, topic: str, group: str, target: int, timeout_seconds: float,
                  processes: list) -> dict:
    """Watches a group's commits until ``target`` messages are committed (or timeout); returns the rate."""
    consumer = make_consumer(settings, group_id=group, client_id="bench-monitor")
    partitions = [TopicPartition(topic, partition) for partition in range(PARTITIONS)]
    first_time = first_total = None
    last_total, last_time = 0, time.monotonic()
    deadline = time.monotonic() + timeout_seconds
    try:
        while time.monotonic() < deadline:
            if any(process.poll() is not None for process in processes):
                break
            total = committed_total(consumer, partitions)
            now = time.monotonic()
            if total and first_time is None:
                first_time, first_total = now, total
            if total != last_total:
                last_total, last_time = total, now
            if total >= target:
                break
            time.sleep(0.1)
    finally:
        consumer.close(autocommit=False)
    if first_time is None or last_time <= first_time:
        return {"rate": 0.0, "committed": last_total}
    return {"rate": (last_total - first_total) / (last_time - first_time), "committed": last_total,
            "seconds": last_time - first_time}


def start_stream(settings, model_dir: str, topic: str, group: str, arguments, *extra: str) -> subprocess.Popen:
    """`heartwatch stream` as a child process."""
    command = [sys.executable, "-m", "heartwatch_cli", "stream", "--bootstrap_servers", settings.bootstrap_servers,
               "--model_dir", model_dir, "--input_topic", topic, "--group_id", group, "--metrics_port", "0",
               "--model_poll_seconds", "0", "--batch_size", str(arguments.batch_size), "--batch_timeout_ms",
               str(arguments.batch_timeout_ms), "--session_timeout_ms", "3000", "--max_poll_interval_ms", "10000",
               "--events_topic", f"{group}-events", "--dead_letter_topic", f"{group}-dead", "--alerts_topic", "",
               "--log_format", "text", *extra]
    return subprocess.Popen(command, cwd=REPOSITORY, env=ENVIRONMENT)


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
    consumer = make_consumer(settings, arguments.topic, group_id=arguments.group, auto_offset_reset="earliest",
                             max_poll_records=1024, **GROUP_FLAGS)
    producer = make_producer(settings)
    output_topic = f"{arguments.group}-out"
    try:
        while not stopping.is_set():
            polled = consumer.poll(timeout_ms=200, max_records=1024)
            if not polled:
                continue
            for records in polled.values():
                for record in records:
                    try:
                        heartbeat = codec.decode_message(record.value, record.headers)
                        value = codec.dumps({"id": heartbeat.id, "offset": record.offset})
                    except codec.DecodeError as error:
                        value = error.reason.encode()
                    producer.send(output_topic, key=record.key, value=value)
            producer.flush()
            consumer.commit()
    finally:
        producer.close()
        consumer.close(autocommit=False)


def floor_loop(arguments) -> None:
    """(b): the tutorial loop, one ``model.predict`` per message; until SIGTERM."""
    import tensorflow as tf

    from models.detector import read_model_card, resolve_version_directory

    settings = KafkaSettings(bootstrap_servers=arguments.bootstrap_servers)
    stopping = stop_flag_on_sigterm()
    directory = resolve_version_directory(arguments.topic.split("|", 1)[1])
    threshold = read_model_card(directory)["threshold"]["value"]
    model = tf.keras.Sequential([tf.keras.Input(shape=(140,)), tf.keras.layers.TFSMLayer(
        os.path.join(directory, "detector"), call_endpoint="serving_default")])
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
                    error = float(outputs["reconstruction_error"][0])
                    if error > threshold:
                        producer.send(f"{arguments.group}-events", value=json.dumps(
                            {"id": message["id"], "error": error}).encode()).get(timeout=30)
                    consumer.commit()
    finally:
        producer.close()
        consumer.close(autocommit=False)


def producer_loop(arguments) -> None:
    """Latency run: sends beats at ``--rate`` for ``--seconds`` with ts = send time."""
    settings = KafkaSettings(bootstrap_servers=arguments.bootstrap_servers)
    beats, _ = synthetic_beats(5000, seed=11, anomaly_fraction=0.1)
    prefix = [codec.encode_json("0", "d", 0.0, beat).split(b',"beat":', 1)[1] for beat in beats]
    producer = make_producer(settings, linger_ms=5)  # Kafka 4's default linger
    started = time.monotonic()
    total = int(arguments.rate * arguments.seconds)
    for index in range(total):
        delay = started + index / arguments.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        device = f"device-{index % 50:03d}"
        value = b'{"id":"%d","device_id":"%s","ts":%.6f,"beat":' % (index, device.encode(), time.time())
        producer.send(arguments.topic, key=device.encode(), value=value + prefix[index % len(prefix)])
    producer.flush()
    producer.close()
    print(json.dumps({"sent": total, "seconds": time.monotonic() - started}), flush=True)


def measure_latency(settings, model_dir: str, rate: float, arguments) -> dict:
    """Runs the stream, sends at ``rate`` and reads anomaly events back: end-to-end latency percentiles."""
    topic, group = f"bench-live-{int(time.time())}", f"bench-latency-{int(time.time())}"
    ensure_topics(settings, {topic: PARTITIONS, f"{group}-events": PARTITIONS})
    stream = start_stream(settings, model_dir, topic, group, arguments)
    reader = make_consumer(settings, client_id="bench-latency-reader", fetch_max_wait_ms=20)
    partitions = [TopicPartition(f"{group}-events", partition) for partition in range(PARTITIONS)]
    reader.assign(partitions)
    reader.seek_to_end(*partitions)
    latencies, detections = [], []
    try:
        warm = start_role(settings, "producer", topic, group, "--rate", "200", "--seconds", "2")
        measure_group(settings, topic, group, 400, 120, [stream])
        warm.wait()
        while reader.poll(timeout_ms=200):
            pass
        load = start_role(settings, "producer", topic, group, "--rate", str(rate), "--seconds",
                          str(arguments.latency_seconds))
        while load.poll() is None:
            for records in reader.poll(timeout_ms=100).values():
                now = time.time()
                documents = [codec.loads(record.value) for record in records]
                latencies += [now - document["event_time"] for document in documents]
                detections += [document["detection_time"] - document["event_time"] for document in documents]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for records in reader.poll(timeout_ms=100).values():
                now = time.time()
                latencies += [now - codec.loads(record.value)["event_time"] for record in records]
    finally:
        reader.close(autocommit=False)
        stop([stream])
    if not latencies:
        return {"events": 0}
    milliseconds, detection_milliseconds = np.array(latencies) * 1000, np.array(detections or [np.nan]) * 1000
    return {"events": len(latencies), "p50": float(np.percentile(milliseconds, 50)),
            "p99": float(np.percentile(milliseconds, 99)), "max": float(milliseconds.max()),
            "detection_p50": float(np.percentile(detection_milliseconds, 50)),
            "detection_p99": float(np.percentile(detection_milliseconds, 99))}


def model_only(model_dir: str) -> dict:
    """Device and scoring throughput of the detector alone (1024-beat batches), plain and XLA."""
    from streaming.scoring import load_scoring_model

    beats, _ = synthetic_beats(4096, seed=5, anomaly_fraction=0.05)
    results = {}
    for mode in ("off", "on"):
        model = load_scoring_model(model_dir, mode)
        batches = [beats[start:start + 1024] for start in range(0, len(beats), 1024)]
        for batch in batches:
            model.score(batch)
        started, scored = time.perf_counter(), 0
        while time.perf_counter() - started < 3.0:
            for batch in batches:
                scored += len(model.score(batch)["reconstruction_error"])
        results[f"xla_{mode}"] = scored / (time.perf_counter() - started)
        results["device"] = model.device
    return results


def train_detector(directory: str) -> str:
    """A small detector trained by `heartwatch train` on generated beats."""
    command = [sys.executable, "-m", "heartwatch_cli", "train", "--data",
               "synthetic:beats=3000,seed=3,anomaly_fraction=0.1", "--output_dir", directory, "--candidates",
               "dense", "--epochs", "40", "--verbose", "0", "--report", "false"]
    subprocess.run(command, cwd=REPOSITORY, env=ENVIRONMENT, check=True)
    return directory


def throughput(settings, topic: str, label: str, processes_factory, target: int, timeout: float = 300) -> dict:
    """Starts processes from ``processes_factory(group)`` and measures their group's committed rate."""
    group = f"bench-{label}-{int(time.time() * 1000) % 10**8}"
    processes = processes_factory(group)
    try:
        return measure_group(settings, topic, group, target, timeout, processes)
    finally:
        stop(processes)


def main(argv=None) -> None:
    """Runs every variant and prints the table."""
    arguments = parse_arguments(argv)
    roles = {"ceiling": ceiling_loop, "floor": floor_loop, "producer": producer_loop}
    if arguments.role in roles:
        roles[arguments.role](arguments)
        return
    broker = None
    if not arguments.bootstrap_servers:
        broker = LocalBroker().start()
        arguments.bootstrap_servers = broker.bootstrap_servers
    settings = KafkaSettings(bootstrap_servers=arguments.bootstrap_servers)
    workspace = tempfile.mkdtemp(prefix="heartwatch-bench-")
    try:
        model_dir = arguments.model_dir or train_detector(os.path.join(workspace, "model"))
        if arguments.latency_rate:
            latency = measure_latency(settings, model_dir, arguments.latency_rate, arguments)
            print(f"end-to-end latency at {arguments.latency_rate:,.0f} beats/s: {latency}")
            return
        topic = f"bench-in-{int(time.time())}"
        count = arguments.messages
        print(f"pre-loading {count:,} {arguments.encoding} messages into {topic} ({PARTITIONS} partitions)...",
              flush=True)
        preload(settings, topic, count, arguments.encoding)
        results = {}
        results["a"] = throughput(settings, topic, "ceiling", lambda group: [
            start_role(settings, "ceiling", topic, group)], count)
        results["b"] = throughput(settings, topic, "floor", lambda group: [
            start_role(settings, "floor", f"{topic}|{model_dir}", group)], count, timeout=arguments.floor_seconds)
        results["c"] = throughput(settings, topic, "stream", lambda group: [
            start_stream(settings, model_dir, topic, group, arguments)], count)
        results["c_scores"] = throughput(settings, topic, "stream-scores", lambda group: [
            start_stream(settings, model_dir, topic, group, arguments, "--scores_topic", f"{group}-scores")], count)
        results["c_two"] = throughput(settings, topic, "stream-two", lambda group: [
            start_stream(settings, model_dir, topic, group, arguments),
            start_stream(settings, model_dir, topic, group, arguments)], count)
        rate = results["c"]["rate"] / 2
        results["latency"] = measure_latency(settings, model_dir, rate, arguments) if rate else {"events": 0}
        results["model"] = model_only(model_dir)
        print_table(results, arguments, rate)
    finally:
        if broker is not None:
            broker.stop()


def print_table(results: dict, arguments, latency_rate: float) -> None:
    """The side-by-side figures."""
    ceiling = results["a"]["rate"] or float("nan")
    rows = [("(a) ceiling: bare consume+decode+produce+commit", results["a"]),
            ("(b) floor: tutorial loop, model.predict per message", results["b"]),
            ("(c) heartwatch stream, 1 process (events only)", results["c"]),
            ("(c) heartwatch stream, 1 process, + scores topic", results["c_scores"]),
            ("(c) heartwatch stream, 2 processes, one group", results["c_two"])]
    print(f"\nheartwatch stream benchmark: {arguments.messages:,} {arguments.encoding} messages, "
          f"batch {arguments.batch_size} / {arguments.batch_timeout_ms} ms, {os.cpu_count()} cores")
    print(f"{'variant':<55} {'beats/s':>10} {'vs (a)':>8}")
    for label, result in rows:
        print(f"{label:<55} {result['rate']:>10,.0f} {result['rate'] / ceiling:>8.1%}")
    one, two = results["c"]["rate"], results["c_two"]["rate"]
    print(f"2 processes vs 1: {two / one if one else float('nan'):.2f}x")
    latency = results["latency"]
    if latency.get("events"):
        print(f"end-to-end latency at {latency_rate:,.0f} beats/s (half of (c)), {latency['events']:,} anomaly events: "
              f"p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms, max {latency['max']:.1f} ms "
              f"(send -> scored: p50 {latency['detection_p50']:.1f} ms, p99 {latency['detection_p99']:.1f} ms)")
    else:
        print("end-to-end latency: no events measured")
    model = results["model"]
    print(f"model-only scoring on {model['device']} (1024-beat batches): {model['xla_off']:,.0f} beats/s plain graph, "
          f"{model['xla_on']:,.0f} beats/s XLA")
    if model["device"] != "GPU":
        print("GPU: not measured (no GPU visible to TensorFlow on this machine)")


if __name__ == "__main__":
    main()
