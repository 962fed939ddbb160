"""The stream's output producer on librdkafka (confluent-kafka), with the surface the stream uses of kafka-python's.

kafka-python builds every record in Python: measured into tansu, 39-46 µs of client CPU per record
against 5-6 µs for librdkafka (the broker's own cost is 2-3 µs), and with a scores topic the stream
sends two records per beat. ``LibrdkafkaProducer`` offers what ``streaming.consumer`` and
``streaming.commits`` call on a producer: ``send`` returning a future (``is_done``, ``failed()``,
``exception``), ``flush(timeout)`` raising ``KafkaTimeoutError`` when records stay unacknowledged,
``partitions_for(topic)`` and ``close(timeout)``. The consumer stays kafka-python's. A batch's output
goes through ``send_many``, which returns one ``BatchDelivery`` for all its records (one counter and
one shared callback instead of a future per record, which the commit tracker would ask one by one:
2-3 µs a record of the stream's main thread, measured against tansu).

Options come from the same place as kafka-python's (``streaming.kafka_clients``: the at-least-once
defaults, the delivery timeouts, then the user's ``--kafka_option``) and are translated here to
librdkafka's names (``OPTION_NAMES``); a producer option without a librdkafka equivalent is refused
with one line naming it. librdkafka's own log lines go through ``logging`` (logger ``librdkafka``),
so JSON logs stay JSON.
"""

from __future__ import annotations

import logging
import time

from kafka.errors import KafkaError, KafkaTimeoutError

LOGGER = logging.getLogger("librdkafka")

OPTION_NAMES = {
    "bootstrap_servers": "bootstrap.servers",
    "client_id": "client.id",
    "acks": "acks",
    "retries": "retries",
    "linger_ms": "linger.ms",
    "batch_size": "batch.size",
    "max_request_size": "message.max.bytes",
    "compression_type": "compression.type",
    "delivery_timeout_ms": "message.timeout.ms",
    "request_timeout_ms": "request.timeout.ms",
    "retry_backoff_ms": "retry.backoff.ms",
    "reconnect_backoff_ms": "reconnect.backoff.ms",
    "reconnect_backoff_max_ms": "reconnect.backoff.max.ms",
    "security_protocol": "security.protocol",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
    "ssl_crlfile": "ssl.crl.location",
    "ssl_ciphers": "ssl.cipher.suites",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "sasl_kerberos_service_name": "sasl.kerberos.service.name",
}
KAFKA_PYTHON_ONLY = {"bootstrap_timeout_ms", "max_block_ms"}  # librdkafka has no equivalent, and needs none
PARTITION_UNASSIGNED = -1  # librdkafka chooses (unkeyed records)
METADATA_SECONDS = 10.0  # how long a topic's partition count is reused
QUEUE_FULL_WAIT_SECONDS = 0.05


def librdkafka_config(options: dict) -> dict:
    """librdkafka properties for kafka-python producer ``options``; ValueError naming an option it cannot map."""
    config = {}
    for key, value in options.items():
        if key in KAFKA_PYTHON_ONLY or value is None:
            continue
        if key == "ssl_check_hostname":
            config["ssl.endpoint.identification.algorithm"] = "https" if value else "none"
            continue
        name = OPTION_NAMES.get(key)
        if name is None:
            raise ValueError(f"--kafka_option {key}: no librdkafka equivalent for the stream's output producer; "
                             "drop it or pass --output_client kafka-python")
        if isinstance(value, (list, tuple)):
            value = ",".join(str(item) for item in value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        config[name] = value
    return config


class DeliveryFailed(KafkaError):
    """librdkafka did not deliver a record (its error, e.g. a timeout or a refusal by the broker)."""


class BatchDelivery:
    """The outcome of every record of one ``send_many``: done once each was acknowledged or refused.

    ``errors`` lists the refusals (empty when every record was delivered). librdkafka reports deliveries
    through callbacks served by ``poll``; asking ``is_done`` of an unfinished delivery serves the waiting
    ones first (a C call returning at once).
    """

    __slots__ = ("_producer", "count", "remaining", "errors")

    def __init__(self, producer, count: int):
        self._producer = producer
        self.count = count
        self.remaining = count
        self.errors: list = []

    @property
    def is_done(self) -> bool:
        """True once the broker acknowledged or refused every record."""
        if self.remaining:
            self._producer.poll(0)
        return not self.remaining

    def fail(self, error: Exception) -> None:
        """Marks one record undelivered."""
        self.errors.append(error)
        self.remaining -= 1

    def deliver(self, error, message) -> None:
        """librdkafka's delivery callback, shared by the batch's records."""
        if error is not None:
            self.errors.append(DeliveryFailed(f"{error.name()}: {error.str()}"))
        self.remaining -= 1


class DeliveryFuture(BatchDelivery):
    """The outcome of one sent record, as kafka-python's future shows it (``is_done``, ``failed()``,
    ``exception``): a delivery of one record."""

    __slots__ = ()

    def __init__(self, producer):
        super().__init__(producer, 1)

    def failed(self) -> bool:
        """True when the record was not delivered (``exception`` says why)."""
        return bool(self.errors)

    @property
    def exception(self) -> Exception | None:
        """Why the record was not delivered, or None."""
        return self.errors[0] if self.errors else None


class LibrdkafkaProducer:
    """A confluent-kafka producer behind the calls the stream makes of a kafka-python ``KafkaProducer``."""

    def __init__(self, options: dict):
        import confluent_kafka  # the stream's `librdkafka` output client; the package is a requirement

        self._kafka = confluent_kafka
        self._send_timeout_seconds = options.get("delivery_timeout_ms", 120000) / 1000.0
        self._producer = confluent_kafka.Producer(librdkafka_config(options), logger=LOGGER,
                                                  error_cb=self._on_error)
        self._partition_counts: dict = {}

    @staticmethod
    def _on_error(error) -> None:
        """Cluster-level errors (all brokers down, ...): the stream's broker monitor reports outages."""
        LOGGER.debug("librdkafka: %s", error)

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None, headers=None,
             partition: int | None = None) -> DeliveryFuture:
        """Queues one record; its future fails (never raises) when librdkafka refuses or cannot queue it."""
        future = DeliveryFuture(self._producer)
        self._produce(topic, key, value, headers, partition, future.deliver, future.fail)
        return future

    def send_many(self, records) -> BatchDelivery:
        """Queues ``(topic, key, value, headers, partition)`` records in order; one delivery for them all.

        A record librdkafka refuses or cannot queue counts as failed in the delivery (never raised).
        """
        delivery = BatchDelivery(self._producer, len(records))
        produce, deliver, fail = self._produce, delivery.deliver, delivery.fail
        for topic, key, value, headers, partition in records:
            produce(topic, key, value, headers, partition, deliver, fail)
        return delivery

    def _produce(self, topic, key, value, headers, partition, on_delivery, on_failure) -> None:
        deadline = None
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers or None,
                                       partition=PARTITION_UNASSIGNED if partition is None else partition,
                                       on_delivery=on_delivery)
                return
            except BufferError:  # the local queue is full: serve acknowledgements for at most the send timeout
                deadline = deadline or time.monotonic() + self._send_timeout_seconds
                if time.monotonic() > deadline:
                    on_failure(KafkaTimeoutError(
                        f"librdkafka's queue stayed full for {self._send_timeout_seconds:g} s"))
                    return
                self._producer.poll(QUEUE_FULL_WAIT_SECONDS)
            except self._kafka.KafkaException as error:  # e.g. a record above message.max.bytes
                on_failure(DeliveryFailed(str(error.args[0] if error.args else error)))
                return

    def flush(self, timeout: float | None = None) -> None:
        """Waits for every queued record; KafkaTimeoutError when some stay unacknowledged after ``timeout`` s."""
        left = self._producer.flush(-1 if timeout is None else timeout)
        if left:
            raise KafkaTimeoutError(f"{left} records were not acknowledged within {timeout} s")

    def partitions_for(self, topic: str) -> set:
        """The partition numbers of ``topic`` (cached for ``METADATA_SECONDS``; empty when it is unknown)."""
        cached = self._partition_counts.get(topic)
        if cached is not None and time.monotonic() - cached[0] < METADATA_SECONDS:
            return cached[1]
        try:
            metadata = self._producer.list_topics(topic, timeout=self._send_timeout_seconds).topics.get(topic)
        except self._kafka.KafkaException as error:
            LOGGER.debug("no metadata for %s: %s", topic, error)
            return cached[1] if cached else set()
        partitions = set(metadata.partitions) if metadata is not None and metadata.error is None else set()
        self._partition_counts[topic] = (time.monotonic(), partitions)
        return partitions

    def close(self, timeout: float | None = None) -> None:
        """Flushes for at most ``timeout`` s (None: until done, as kafka-python's close), then drops what is
        left (it was never acknowledged, so never committed either) so that closing cannot hang on a lost
        broker."""
        self._producer.flush(-1 if timeout is None else timeout)
        self._producer.purge()
        self._producer.poll(0)
