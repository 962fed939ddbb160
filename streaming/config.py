"""Flags of the streaming commands as frozen dataclasses: one definition for the CLI, JSON files and code.

``models.common.flags`` parses them (``parse_flags(TailConfig, argv)``): one ``--field_name`` flag per
field, an optional ``--config FILE.json`` whose keys are the same names, command-line flags over the
file, validation once by constructing the dataclass. This module imports only the standard library.

Kafka connectivity is shared by every command (``KafkaSettings``): ``bootstrap_servers`` plus any
kafka-python client setting passed through with repeated ``--kafka_option key=value`` flags (or a
``"kafka_option"`` object in the JSON file). SASL and SSL are plain kafka-python settings, e.g.::

    --kafka_option security_protocol=SASL_SSL --kafka_option sasl_mechanism=PLAIN
    --kafka_option sasl_plain_username=svc --kafka_option sasl_plain_password=...
    --kafka_option ssl_cafile=/etc/ca.pem

An option applies to every client (consumer, producer, admin) that knows the key; prefix it with
``consumer.``, ``producer.`` or ``admin.`` to target one client only. Values that look like
integers, floats or booleans are converted. Commas do not split ``--kafka_option`` values (repeat
the flag instead), so values such as cipher lists stay whole.
"""

from __future__ import annotations

import dataclasses
import typing

from models.common.flags import field
from streaming.topics import ALERTS_TOPIC, DEAD_LETTER_TOPIC, EVENTS_TOPIC, INPUT_TOPIC

CLIENT_PREFIXES = ("consumer.", "producer.", "admin.")


def parse_option_value(text: str):
    """Converts a ``key=value`` option value: integers, floats and booleans become Python values."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for converter in (int, float):
        try:
            return converter(text)
        except ValueError:
            continue
    return text


def parse_kafka_options(options) -> dict:
    """``("key=value", ...)`` or a mapping -> ``{key: converted value}``; malformed entries raise ValueError."""
    if isinstance(options, dict):
        return {str(key): value for key, value in options.items()}
    parsed = {}
    for option in options:
        if not isinstance(option, str) or "=" not in option:
            raise ValueError(f"--kafka_option must look like key=value, got {option!r}")
        key, value = option.split("=", 1)
        if not key.strip():
            raise ValueError(f"--kafka_option has an empty key: {option!r}")
        parsed[key.strip()] = parse_option_value(value)
    return parsed


def kafka_option_pairs(options):
    """A ``{key: value}`` mapping as ``("key=value", ...)``; anything else unchanged (a file's object form)."""
    if isinstance(options, dict):
        return tuple(f"{key}={value}" for key, value in options.items())
    return options


def client_options(options: dict, client: str, known_keys) -> dict:
    """The options meant for one client kind (``consumer``, ``producer`` or ``admin``).

    Unprefixed keys go to every client whose configuration knows them; ``client.key`` goes to that
    client only, and an unknown key there is an error (kafka-python would reject it later, less clearly).
    """
    selected = {}
    for key, value in options.items():
        prefix = next((prefix for prefix in CLIENT_PREFIXES if key.startswith(prefix)), None)
        if prefix is None:
            if key in known_keys:
                selected[key] = value
        elif prefix == f"{client}.":
            name = key[len(prefix):]
            if name not in known_keys:
                raise ValueError(f"--kafka_option {key!r}: {client} has no setting {name!r}")
            selected[name] = value
    return selected


def check_kafka_options(options: dict, known_keys_by_client: dict) -> None:
    """Raises ValueError for an unprefixed option that no client knows (usually a typo)."""
    every_key = set().union(*known_keys_by_client.values())
    for key in options:
        if not key.startswith(CLIENT_PREFIXES) and key not in every_key:
            raise ValueError(f"--kafka_option {key!r} is not a kafka-python consumer, producer or admin setting")


def check_bootstrap_servers(text, flag: str = "--bootstrap_servers") -> None:
    """Raises ValueError unless ``text`` is a comma-separated list of ``host:port`` (port 1-65535) or ``host``.

    IPv6 addresses go in brackets (``[::1]:9092``); a bare host means kafka-python's port 9092.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{flag} must be a host:port list, got {text!r}")
    for server in text.split(","):
        server = server.strip()
        if server.startswith("["):  # [ipv6-address] or [ipv6-address]:port
            host, closed, rest = server[1:].partition("]")
            if not closed or (rest and not rest.startswith(":")):
                raise ValueError(f"{flag}: {server!r} is not [ipv6-address]:port")
            has_port, port = bool(rest), rest[1:]
            host_ok = bool(host) and not any(character.isspace() for character in host)
        else:
            host, has_port, port = server.rpartition(":") if ":" in server else (server, False, "")
            host_ok = bool(host) and not any(character.isspace() or character in "/[]:" for character in host)
        if not host_ok:
            raise ValueError(f"{flag}: {server!r} is not host:port (e.g. localhost:9092)")
        if has_port and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(f"{flag}: the port of {server!r} must be a number from 1 to 65535, got {port!r}")


def _check_positive(config, *names) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"--{name} must be a positive number, got {value!r}")


def _check_non_negative(config, *names) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"--{name} must be zero or positive, got {value!r}")


def _check_choice(config, name: str, choices) -> None:
    if getattr(config, name) not in choices:
        raise ValueError(f"--{name} must be one of {', '.join(choices)}, got {getattr(config, name)!r}")


def _check_topic(config, name: str, required: bool = True) -> None:
    value = getattr(config, name)
    if not isinstance(value, str) or (required and not value.strip()):
        raise ValueError(f"--{name} must be a topic name, got {value!r}")
    if value and any(character.isspace() for character in value):
        raise ValueError(f"--{name} must not contain spaces, got {value!r}")


@dataclasses.dataclass(frozen=True)
class KafkaSettings:
    """Where the Kafka cluster is and how to talk to it (shared by every streaming command)."""

    bootstrap_servers: str = field("comma-separated host:port list of the Kafka cluster",
                                   default="localhost:9092")
    kafka_option: tuple[str, ...] = field(
        "extra kafka-python client setting key=value (SASL/SSL too), repeat the flag for more; prefix "
        "consumer./producer./admin. to target one client", default=(), separator=None, from_json=kafka_option_pairs)
    connect_timeout_seconds: float = field(
        "how long to wait for the cluster to answer at start before giving up (kafka-python bootstrap)",
        default=10.0)

    def __post_init__(self):
        """Checks the cluster address, the connect timeout and the option syntax."""
        check_bootstrap_servers(self.bootstrap_servers)
        _check_positive(self, "connect_timeout_seconds")
        object.__setattr__(self, "kafka_option", kafka_option_pairs(self.kafka_option))
        parse_kafka_options(self.kafka_option)

    def options(self) -> dict:
        """The parsed ``kafka_option`` pairs."""
        return parse_kafka_options(self.kafka_option)


@dataclasses.dataclass(frozen=True)
class StreamConfig(KafkaSettings):
    """Flags of `heartwatch stream` (same names in --config JSON files and in code)."""

    model_dir: str = field("model root (newest version served, new versions hot-swapped) or one version "
                           "directory (served as is)", default="artifacts/ecg")
    group_id: str = field("consumer group id", default="heartwatch-stream")
    input_topic: str = field("topic of heartbeats", default=INPUT_TOPIC)
    events_topic: str = field("topic of anomaly events", default=EVENTS_TOPIC)
    scores_topic: str = field("topic receiving every score (empty: off)", default="")
    dead_letter_topic: str = field("topic receiving bad input with the reason", default=DEAD_LETTER_TOPIC)
    alerts_topic: str = field("topic receiving anomaly-burst alerts (empty: off)", default=ALERTS_TOPIC)
    batch_size: int = field("score a micro-batch when it holds this many messages", default=1024)
    batch_timeout_ms: int = field("... or when its oldest message waited this long", default=10)
    poll_timeout_ms: int = field("longest wait of one consumer poll while no batch is open", default=200)
    input_encoding: str = field("auto (content-type header decides, JSON otherwise), json or binary",
                                default="auto")
    max_message_bytes: int = field("messages larger than this are dead-lettered as oversize", default=65536)
    worst_segments: int = field("how many worst segments of the per-sample error an event lists", default=3)
    segment_length: int = field("samples per segment when ranking the worst segments", default=10)
    model_poll_seconds: float = field("how often the model root is checked for a new version (0: never)",
                                      default=5.0)
    xla: str = field("compile scoring with XLA: auto (on a GPU only), on or off", default="auto")
    output_client: str = field("producer of the stream's outputs: librdkafka (confluent-kafka, a seventh of "
                               "kafka-python's CPU per record) or kafka-python", default="librdkafka")
    retain_freed_mb: int = field("freed memory (MiB) the process keeps for its next batches instead of handing it "
                                 "back to the OS (0: the C library's defaults; docs/streaming.md)", default=64)
    metrics_port: int = field("Prometheus metrics HTTP port (0: no endpoint)", default=9108)
    log_format: str = field("json or text log lines", default="json")
    alert_count: int = field("alert when a device has this many anomalies ...", default=5)
    alert_window_seconds: float = field("... within this many seconds (event time)", default=60.0)
    alert_webhook_url: str = field("also POST each alert as JSON to this URL (empty: off)", default="")
    adaptive_thresholds: bool = field("per-device thresholds from each device's error statistics",
                                      default=False)
    adaptive_min_beats: int = field("beats a device needs before its own threshold replaces the global one",
                                    default=200)
    adaptive_sigma: float = field("device threshold = mean + sigma * std of its normal-looking errors",
                                  default=4.0)
    session_timeout_ms: int = field("consumer group session timeout (tansu holds a join for half of it)",
                                    default=6000)
    max_poll_interval_ms: int = field("consumer rebalance timeout; keep it 10-30 s on tansu", default=20000)
    auto_offset_reset: str = field("where a group without committed offsets starts: earliest or latest",
                                   default="earliest")
    send_timeout_seconds: float = field("how long to wait for the broker to acknowledge a batch's output",
                                        default=30.0)
    broker_lost_seconds: float = field("log 'broker lost' and report heartwatch_broker_connected 0 after this "
                                       "long without an answer from the broker", default=10.0)
    drift_window: int = field("beats judged normal per drift-test window (0: no drift watch; docs/drift.md)",
                              default=500)
    drift_alpha: float = field("false-alarm probability of one drift test (two-sample Kolmogorov-Smirnov)",
                               default=1e-4)

    def __post_init__(self):
        """Validates every flag once, before any connection is made."""
        super().__post_init__()
        for name in ("model_dir", "group_id"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ValueError(f"--{name} must be a non-empty string, got {getattr(self, name)!r}")
        for name in ("input_topic", "events_topic", "dead_letter_topic"):
            _check_topic(self, name)
        for name in ("scores_topic", "alerts_topic"):
            _check_topic(self, name, required=False)
        _check_positive(self, "batch_size", "batch_timeout_ms", "poll_timeout_ms", "max_message_bytes",
                        "worst_segments", "segment_length", "alert_count", "alert_window_seconds",
                        "adaptive_min_beats", "adaptive_sigma", "session_timeout_ms", "max_poll_interval_ms",
                        "send_timeout_seconds", "broker_lost_seconds")
        _check_non_negative(self, "model_poll_seconds", "metrics_port", "drift_window", "retain_freed_mb")
        if not 0 < self.drift_alpha < 1:
            raise ValueError(f"--drift_alpha must be between 0 and 1, got {self.drift_alpha}")
        _check_choice(self, "input_encoding", ("auto", "json", "binary"))
        _check_choice(self, "xla", ("auto", "on", "off"))
        _check_choice(self, "output_client", ("librdkafka", "kafka-python"))
        _check_choice(self, "log_format", ("json", "text"))
        _check_choice(self, "auto_offset_reset", ("earliest", "latest"))
        if self.segment_length > 140:
            raise ValueError(f"--segment_length must be at most the beat length 140, got {self.segment_length}")
        if self.max_poll_interval_ms < self.session_timeout_ms:
            raise ValueError("--max_poll_interval_ms must be at least --session_timeout_ms, got "
                             f"{self.max_poll_interval_ms} < {self.session_timeout_ms}")
        if self.alert_webhook_url and not self.alert_webhook_url.startswith(("http://", "https://")):
            raise ValueError(f"--alert_webhook_url must be an http(s) URL, got {self.alert_webhook_url!r}")
        topics = [self.input_topic, self.events_topic, self.dead_letter_topic, self.scores_topic, self.alerts_topic]
        if self.input_topic in topics[1:]:
            raise ValueError(f"--input_topic {self.input_topic!r} must differ from the output topics")


@dataclasses.dataclass(frozen=True)
class BrokerConfig:
    """Flags of `heartwatch broker`."""

    host: str = field("interface to listen on", default="127.0.0.1")
    port: int = field("port to listen on (0: a free one)", default=9092)

    def __post_init__(self):
        """Checks the address."""
        if not isinstance(self.host, str) or not self.host.strip():
            raise ValueError(f"--host must be a non-empty string, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be between 0 and 65535, got {self.port!r}")


@dataclasses.dataclass(frozen=True)
class ReplayConfig(KafkaSettings):
    """Flags of `heartwatch replay`."""

    data: str = field("dataset path/URL (ecg.csv, UCR, CSV, Parquet), 'tf-ecg' or 'synthetic[:beats=N,...]'",
                      default="synthetic:beats=5000")
    topic: str = field("topic to publish to", default=INPUT_TOPIC)
    rate: float = field("target beats per second (0: as fast as possible)", default=0.0)
    encoding: str = field("json or binary message encoding", default="json")
    devices: int = field("number of simulated devices the beats are spread over", default=10)
    limit: int = field("publish at most this many beats (0: all)", default=0)
    repeat: int = field("publish the data set this many times", default=1)
    progress: bool = field("draw a progress bar on stderr", default=True)

    def __post_init__(self):
        """Validates the flags."""
        super().__post_init__()
        if not isinstance(self.data, str) or not self.data.strip():
            raise ValueError(f"--data must be a path or URI, got {self.data!r}")
        _check_topic(self, "topic")
        _check_non_negative(self, "rate", "limit")
        _check_positive(self, "devices", "repeat")
        _check_choice(self, "encoding", ("json", "binary"))


@dataclasses.dataclass(frozen=True)
class TailConfig(KafkaSettings):
    """Flags of `heartwatch tail TOPIC`."""

    POSITIONAL_FLAGS: typing.ClassVar[tuple[str, ...]] = ("topic",)

    topic: str = field("topic to print", default=EVENTS_TOPIC)
    from_beginning: bool = field("start at the oldest message instead of new ones", default=False)
    max_messages: int = field("stop after this many messages (0: never)", default=0)
    idle_timeout_seconds: float = field("stop after this long without a message (0: never)", default=0.0)
    raw: bool = field("print the message values as they are", default=False)

    def __post_init__(self):
        """Validates the flags."""
        super().__post_init__()
        _check_topic(self, "topic")
        _check_non_negative(self, "max_messages", "idle_timeout_seconds")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Flags of `heartwatch demo`."""

    data: str = field("labelled data to train on when the model root holds no version",
                      default="synthetic:beats=6000,seed=1,anomaly_fraction=0.1")
    replay_data: str = field("labelled data to replay through the stream (empty: the training data)",
                             default="synthetic:beats=3000,seed=2,anomaly_fraction=0.1")
    model_dir: str = field("model root: reused when it holds a version, trained into otherwise",
                           default="artifacts/ecg")
    bootstrap_servers: str = field("existing Kafka cluster (empty: start the embedded tansu broker)", default="")
    rate: float = field("replay rate in beats per second (0: as fast as possible)", default=500.0)
    limit: int = field("replay at most this many beats (0: the whole data set)", default=0)
    show_events: int = field("print at most this many anomaly events", default=15)
    metrics_port: int = field("Prometheus port of the stream (0: none)", default=9108)
    epochs: int = field("training epochs when a model has to be trained", default=60)

    def __post_init__(self):
        """Validates the flags."""
        for name in ("data", "model_dir"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ValueError(f"--{name} must be a non-empty string, got {getattr(self, name)!r}")
        _check_non_negative(self, "rate", "limit", "show_events", "metrics_port")
        _check_positive(self, "epochs")
        if self.bootstrap_servers:
            check_bootstrap_servers(self.bootstrap_servers)
