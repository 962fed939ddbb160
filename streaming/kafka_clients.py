"""kafka-python clients built from ``KafkaSettings``: one place for defaults and pass-through options.

Defaults favour the at-least-once contract and the micro-batch loop: producers wait for every
in-sync replica (``acks="all"``) and retry; consumers never auto-commit. ``--kafka_option`` values
(see ``streaming.config``) override the defaults here.

Consumers use ``retry_backoff_ms=20`` instead of kafka-python's 100. In kafka-python 3.0,
``KafkaConsumer.poll`` sleeps ``min(timeout, retry_backoff_ms)`` whenever its fetcher reports
nothing in flight. When a fetch response lands while ``poll`` is sending the next fetch, the
fetcher drops the completed request and reports exactly that, so ``poll`` sleeps with the
records already buffered. Measured at 10,000 beats/s: 1 to 4 such polls per 20 s, each holding
50-330 beats for about 100 ms. The shorter backoff bounds that stall to 20 ms; it also makes
retries of failed requests come sooner.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError
from kafka.future import Future
from kafka.metrics.measurable_stat import AbstractMeasurableStat
from kafka.net.transport import KafkaSSLTransport
from kafka.partitioner.default import murmur2

from streaming.config import KafkaSettings, check_kafka_options, client_options
from streaming.monitoring import kafka_problem

LOGGER = logging.getLogger(__name__)

RECONNECT_BACKOFF_MAX_MS = 1000
TLS_PROBE_TIMEOUT_SECONDS = 10.0
TLS_PROTOCOLS = ("SSL", "SASL_SSL")

KNOWN_KEYS = {
    "consumer": set(KafkaConsumer.DEFAULT_CONFIG),
    "producer": set(KafkaProducer.DEFAULT_CONFIG),
    "admin": set(KafkaAdminClient.DEFAULT_CONFIG),
}

PRODUCER_DEFAULTS = {"acks": "all", "retries": 5, "linger_ms": 5, "batch_size": 1 << 20,
                     "max_request_size": 4 << 20}
CONSUMER_DEFAULTS = {"enable_auto_commit": False, "max_partition_fetch_bytes": 8 << 20,
                     "fetch_max_bytes": 64 << 20, "fetch_max_wait_ms": 20, "retry_backoff_ms": 20}


class BrokerUnreachableError(ConnectionError):
    """No broker of ``bootstrap_servers`` answered within the connect timeout."""


def _options(settings: KafkaSettings, client: str, defaults: dict, overrides: dict) -> dict:
    options = settings.options()
    check_kafka_options(options, KNOWN_KEYS)
    merged = {"bootstrap_timeout_ms": int(settings.connect_timeout_seconds * 1000),
              "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS}
    merged.update(defaults)
    merged.update(overrides)
    merged.update(client_options(options, client, KNOWN_KEYS[client]))
    merged["bootstrap_servers"] = [server.strip() for server in settings.bootstrap_servers.split(",")]
    return merged


def delivery_timeouts(send_timeout_seconds: float) -> dict:
    """Producer settings under which a record the broker did not acknowledge fails within ``send_timeout_seconds``
    (kafka-python's delivery timeout is 2 minutes), and ``send``, waiting for a topic's metadata, blocks no longer."""
    delivery_ms = int(send_timeout_seconds * 1000)
    request_ms = max(1, min(30000, delivery_ms - PRODUCER_DEFAULTS["linger_ms"]))  # kafka-python requires the sum
    return {"delivery_timeout_ms": delivery_ms, "request_timeout_ms": request_ms, "max_block_ms": delivery_ms}


def unreachable_message(settings: KafkaSettings, options: dict) -> str:
    """One line: which servers did not answer, for how long, kafka-python's last complaint and what to do."""
    seconds = options.get("bootstrap_timeout_ms", settings.connect_timeout_seconds * 1000) / 1000
    problem = kafka_problem() or "no answer"
    return (f"no Kafka broker answered at {settings.bootstrap_servers} within {seconds:g} s ({problem}): check "
            "--bootstrap_servers (and --kafka_option security settings), start one with `heartwatch broker`, "
            "or wait longer with --connect_timeout_seconds")


def _connect(client_class, settings: KafkaSettings, options: dict, *topics: str):
    """Builds a client (kafka-python bootstraps in the constructor); BrokerUnreachableError when it cannot."""
    try:
        return client_class(*topics, **options)
    except KafkaTimeoutError:
        raise BrokerUnreachableError(unreachable_message(settings, options)) from None


def make_producer(settings: KafkaSettings, **overrides) -> KafkaProducer:
    """A producer with the at-least-once defaults, ``overrides``, then the user's options."""
    return _connect(KafkaProducer, settings, _options(settings, "producer", PRODUCER_DEFAULTS, overrides))


def make_output_producer(settings: KafkaSettings, client: str, **overrides):
    """The stream's output producer: kafka-python's (``make_producer``) or, for ``client`` ``librdkafka``, a
    ``streaming.librdkafka_producer.LibrdkafkaProducer`` on the same defaults, ``overrides`` and user options."""
    if client == "kafka-python":
        return make_producer(settings, **overrides)
    from streaming.librdkafka_producer import LibrdkafkaProducer

    return LibrdkafkaProducer(_options(settings, "producer", PRODUCER_DEFAULTS, overrides))


class FuturesDelivery:
    """The outcome of a batch sent record by record with kafka-python: its futures, seen as one delivery
    (``is_done``, ``errors``, ``count``, as ``streaming.librdkafka_producer.BatchDelivery``).

    ``done`` counts the leading futures already seen complete, so each one is looked at until it
    completes and never again (the stream asks after every poll).
    """

    def __init__(self, futures: list):
        self.futures = futures
        self.count = len(futures)
        self.done = 0

    @property
    def is_done(self) -> bool:
        """True once every future completed (successfully or not)."""
        futures, done = self.futures, self.done
        while done < len(futures) and futures[done].is_done:
            done += 1
        self.done = done
        return done == len(futures)

    @property
    def errors(self) -> list:
        """The exceptions of the records that were not delivered."""
        return [future.exception for future in self.futures if future.failed()]


def send_many(producer, records):
    """Sends ``(topic, key, value, headers, partition)`` records in order; returns one delivery for them all.

    The librdkafka output producer queues them with one shared callback (``send_many``); kafka-python's
    sends each and its futures make the delivery (``FuturesDelivery``). Either way a record the client
    refuses counts as failed in the delivery instead of raising.
    """
    if hasattr(producer, "send_many"):
        return producer.send_many(records)
    futures = []
    for topic, key, value, headers, partition in records:
        try:
            futures.append(producer.send(topic, key=key, value=value, headers=headers, partition=partition))
        except KafkaError as error:  # refused before queueing (e.g. above max_request_size): a failed record
            futures.append(Future().failure(error))
    return FuturesDelivery(futures)


def make_consumer(settings: KafkaSettings, *topics: str, **overrides) -> KafkaConsumer:
    """A consumer (auto-commit off) with ``overrides``, then the user's options."""
    return _connect(KafkaConsumer, settings, _options(settings, "consumer", CONSUMER_DEFAULTS, overrides), *topics)


def make_admin(settings: KafkaSettings) -> KafkaAdminClient:
    """An admin client with the user's options."""
    return _connect(KafkaAdminClient, settings, _options(settings, "admin", {}, {}))


def check_tls(options: dict, timeout_seconds: float = TLS_PROBE_TIMEOUT_SECONDS) -> None:
    """With ``security_protocol`` SSL or SASL_SSL, one TLS handshake with the first bootstrap server that accepts
    a connection, using the context kafka-python builds from the same ``ssl_*`` options.

    kafka-python only says "Unable to bootstrap" after its timeout when the broker's certificate is refused;
    this raises ValueError at once with the server, the reason and the option to fix. Unreachable servers
    are left to the clients' own bootstrap error.
    """
    if str(options.get("security_protocol", "PLAINTEXT")).upper() not in TLS_PROTOCOLS:
        return
    tls_options = {key: options[key] for key in KafkaSSLTransport.DEFAULT_CONFIG if key in options}
    try:
        context = KafkaSSLTransport._build_ssl_context({**KafkaSSLTransport.DEFAULT_CONFIG, **tls_options})
    except (OSError, ssl.SSLError) as error:
        raise ValueError(f"--kafka_option ssl_*: cannot load the TLS files: {error}") from None
    cafile = options.get("ssl_cafile") or "(the system CAs)"
    for server in options["bootstrap_servers"]:
        host, _, port = server.rpartition(":")
        try:
            connection = socket.create_connection((host, int(port)), timeout=timeout_seconds)
        except (OSError, ValueError):
            continue
        with connection:
            try:
                with context.wrap_socket(connection, server_hostname=host):
                    return
            except ssl.SSLCertVerificationError as error:
                raise ValueError(f"TLS handshake with {server} failed, its certificate was refused "
                                 f"({error.verify_message}): check --kafka_option ssl_cafile={cafile} "
                                 f"(the CA that signed the broker's certificate) and the host name") from None
            except (ssl.SSLError, OSError) as error:
                raise ValueError(f"TLS handshake with {server} failed ({error}): is it a TLS listener? "
                                 "check --kafka_option security_protocol") from None



def check_reachable(settings: KafkaSettings) -> None:
    """Raises BrokerUnreachableError unless the cluster answers within ``settings.connect_timeout_seconds``;
    ValueError naming the CA option when TLS is asked for and the broker's certificate is refused."""
    check_tls(_options(settings, "admin", {}, {}), timeout_seconds=settings.connect_timeout_seconds)
    make_admin(settings).close()


class AnswerClock(AbstractMeasurableStat):
    """A kafka-python stat on the consumer's request-latency sensor: when the broker last answered a request.

    The sensor records every response the consumer's connections receive (fetches every
    ``fetch_max_wait_ms`` while it owns partitions, heartbeats, commits, metadata), so its last
    record is the last successful round trip to the broker.
    """

    def __init__(self):
        self.last_answer = time.monotonic()

    def record(self, config, value, time_ms):
        """Called by the sensor (on kafka-python's IO thread) for every response."""
        self.last_answer = time.monotonic()

    def measure(self, config, now):
        """Seconds since the last answer."""
        return self.seconds_since_answer()

    def seconds_since_answer(self) -> float:
        """Seconds since the broker last answered this consumer."""
        return max(0.0, time.monotonic() - self.last_answer)


def answer_clock(consumer: KafkaConsumer) -> AnswerClock | None:
    """Attaches an ``AnswerClock`` to the consumer's request-latency sensor; None when its metrics are off.

    kafka-python keeps its metrics registry private (``_metrics``) but its sensors and stats are its
    public metrics API; the sensor is created here when no connection made it yet (kafka-python gets
    the same sensor by name).
    """
    registry = getattr(consumer, "_metrics", None)
    if registry is None:
        LOGGER.warning("kafka-python metrics are off (metrics_enabled=False): broker outages are not monitored")
        return None
    clock = AnswerClock()
    registry.sensor("request-latency").add(
        registry.metric_name("last-answer-seconds-ago", "heartwatch", "seconds since the broker last answered"),
        clock)
    return clock


def ensure_topics(settings: KafkaSettings, topics: dict[str, int], timeout_seconds: float = 30.0) -> None:
    """Creates the topics ``{name: partitions}`` that do not exist yet (replication factor 1 unless they do)."""
    wanted = {name: partitions for name, partitions in topics.items() if name}
    if not wanted:
        return
    admin = make_admin(settings)  # BrokerUnreachableError when the cluster does not answer
    try:
        deadline = time.monotonic() + timeout_seconds
        existing = set(admin.list_topics())
        missing = [NewTopic(name, partitions, 1) for name, partitions in wanted.items() if name not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                LOGGER.info("topics were created concurrently: %s", [topic.name for topic in missing])
            LOGGER.info("created topics %s", {topic.name: topic.num_partitions for topic in missing})
        while not set(wanted) <= set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics {sorted(wanted)} did not appear within {timeout_seconds} s")
            time.sleep(0.1)
    finally:
        admin.close()


class KeyPartitions:
    """Kafka's default choice of partition for a keyed record (murmur2 of the key), cached per key.

    ``KafkaProducer.send`` computes the same choice in pure Python for every record; passing the
    cached partition cuts the stream's per-record send cost by about a third (measured with py-spy:
    47 -> 31 microseconds on the main thread). The cache is bounded: it is emptied when it reaches
    ``max_keys`` entries.
    """

    def __init__(self, producer: KafkaProducer, max_keys: int = 100_000):
        self.producer = producer
        self.max_keys = max_keys
        self._cache: dict = {}

    def counts(self, topics) -> dict:
        """Partition count per topic, from the producer's metadata."""
        return {topic: len(self.producer.partitions_for(topic) or ()) for topic in set(topics)}

    def partition(self, topic: str, key: bytes | None, count: int) -> int | None:
        """The partition the default partitioner would pick; None (let the producer choose) for unkeyed records."""
        if key is None or not count:
            return None
        cache_key = (topic, key, count)
        partition = self._cache.get(cache_key)
        if partition is None:
            if len(self._cache) >= self.max_keys:
                self._cache.clear()
            partition = self._cache[cache_key] = (murmur2(key) & 0x7FFFFFFF) % count
        return partition
