"""Flags of the streaming commands as frozen dataclasses: one definition for the CLI, JSON files and code.

``parse_config(ConfigClass, argv)`` builds an argparse parser with one ``--field_name`` flag per
dataclass field, reads an optional ``--config FILE.json`` whose keys are the same field names, lets
command-line flags override the file, and validates once by constructing the dataclass.

Kafka connectivity is shared by every command (``KafkaSettings``): ``bootstrap_servers`` plus any
kafka-python client setting passed through with repeated ``--kafka_option key=value`` flags (or a
``"kafka_option"`` object in the JSON file). SASL and SSL are plain kafka-python settings, e.g.::

    --kafka_option security_protocol=SASL_SSL --kafka_option sasl_mechanism=PLAIN
    --kafka_option sasl_plain_username=svc --kafka_option sasl_plain_password=...
    --kafka_option ssl_cafile=/etc/ca.pem

An option applies to every client (consumer, producer, admin) that knows the key; prefix it with
``consumer.``, ``producer.`` or ``admin.`` to target one client only. Values that look like
integers, floats or booleans are converted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing

CLIENT_PREFIXES = ("consumer.", "producer.", "admin.")


def _unwrap_optional(field_type):
    arguments = [argument for argument in typing.get_args(field_type) if argument is not type(None)]
    if typing.get_origin(field_type) in (typing.Union, types.UnionType) and len(arguments) == 1:
        return arguments[0]
    return field_type


def _parse_bool(text: str) -> bool:
    values = {"true": True, "1": True, "yes": True, "on": True,
              "false": False, "0": False, "no": False, "off": False}
    if text.lower() not in values:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return values[text.lower()]


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
            raise ValueError(f"kafka_option must look like key=value, got {option!r}")
        key, value = option.split("=", 1)
        if not key.strip():
            raise ValueError(f"kafka_option has an empty key: {option!r}")
        parsed[key.strip()] = parse_option_value(value)
    return parsed


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
                raise ValueError(f"kafka_option {key!r}: {client} has no setting {name!r}")
            selected[name] = value
    return selected


def check_kafka_options(options: dict, known_keys_by_client: dict) -> None:
    """Raises ValueError for an unprefixed option that no client knows (usually a typo)."""
    every_key = set().union(*known_keys_by_client.values())
    for key in options:
        if not key.startswith(CLIENT_PREFIXES) and key not in every_key:
            raise ValueError(f"kafka_option {key!r} is not a kafka-python consumer, producer or admin setting")


def _flag_type(field_type):
    field_type = _unwrap_optional(field_type)
    if field_type is bool:
        return _parse_bool
    if field_type is int:
        return int
    if field_type is float:
        return float
    return str


def build_parser(config_class, description: str = "", prog: str | None = None,
                 positional: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """An argparse parser with one ``--name`` flag per dataclass field plus ``--config``.

    Fields named in ``positional`` are also accepted as leading positional arguments.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description or config_class.__doc__)
    parser.add_argument("--config", help="JSON file whose keys are these flag names (flags override it)")
    hints = typing.get_type_hints(config_class)
    for name in positional:
        parser.add_argument(f"positional_{name}", nargs="?", default=None, metavar=name.upper(),
                            help=f"same as --{name}")
    for field in dataclasses.fields(config_class):
        default = field.default if field.default is not dataclasses.MISSING else None
        help_text = f"{field.metadata.get('help', '')} (default: {default!r})"
        if "tuple" in str(hints[field.name]):
            parser.add_argument(f"--{field.name}", action="append", default=None, help=help_text + "; repeatable")
        else:
            parser.add_argument(f"--{field.name}", type=_flag_type(hints[field.name]), default=None, help=help_text)
    return parser


def parse_config(config_class, argv=None, prog: str | None = None, description: str = "",
                 positional: tuple[str, ...] = ()):
    """Returns a validated ``config_class`` from defaults < ``--config`` JSON file < command-line flags."""
    parser = build_parser(config_class, description=description, prog=prog, positional=positional)
    arguments = vars(parser.parse_args(argv))
    values = {}
    names = {field.name for field in dataclasses.fields(config_class)}
    config_path = arguments.pop("config")
    if config_path:
        with open(config_path) as handle:
            values = json.load(handle)
        if not isinstance(values, dict):
            raise ValueError(f"{config_path}: expected a JSON object of flag names")
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{config_path}: unknown keys {unknown}; known: {sorted(names)}")
    for name in positional:
        value = arguments.pop(f"positional_{name}")
        if value is not None:
            values[name] = value
    values.update({key: value for key, value in arguments.items() if value is not None})
    hints = typing.get_type_hints(config_class)
    for key, value in list(values.items()):
        if isinstance(value, list) and "tuple" in str(hints[key]):
            values[key] = tuple(value)
    return config_class(**values)


def _help(text: str, **kwargs):
    return dataclasses.field(metadata={"help": text}, **kwargs)


def _check_positive(config, *names) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def _check_non_negative(config, *names) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be zero or positive, got {value!r}")


def _check_choice(config, name: str, choices) -> None:
    if getattr(config, name) not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {getattr(config, name)!r}")


def _check_topic(config, name: str, required: bool = True) -> None:
    value = getattr(config, name)
    if not isinstance(value, str) or (required and not value.strip()):
        raise ValueError(f"{name} must be a topic name, got {value!r}")
    if value and any(character.isspace() for character in value):
        raise ValueError(f"{name} must not contain spaces, got {value!r}")


@dataclasses.dataclass(frozen=True)
class KafkaSettings:
    """Where the Kafka cluster is and how to talk to it (shared by every streaming command)."""

    bootstrap_servers: str = _help("comma-separated host:port list of the Kafka cluster",
                                   default="localhost:9092")
    kafka_option: tuple[str, ...] = _help(
        "extra kafka-python client setting key=value (SASL/SSL too); prefix consumer./producer./admin. "
        "to target one client", default=())

    def __post_init__(self):
        """Checks the cluster address and the option syntax."""
        if not isinstance(self.bootstrap_servers, str) or not self.bootstrap_servers.strip():
            raise ValueError(f"bootstrap_servers must be a host:port list, got {self.bootstrap_servers!r}")
        if isinstance(self.kafka_option, dict):
            object.__setattr__(self, "kafka_option",
                               tuple(f"{key}={value}" for key, value in self.kafka_option.items()))
        parse_kafka_options(self.kafka_option)

    def options(self) -> dict:
        """The parsed ``kafka_option`` pairs."""
        return parse_kafka_options(self.kafka_option)


@dataclasses.dataclass(frozen=True)
class StreamConfig(KafkaSettings):
    """Flags of `heartwatch stream` (same names in --config JSON files and in code)."""

    model_dir: str = _help("model root (newest version served, new versions hot-swapped) or one version "
                           "directory (served as is)", default="artifacts/ecg")
    group_id: str = _help("consumer group id", default="heartwatch-stream")
    input_topic: str = _help("topic of heartbeats", default="heartbeats")
    events_topic: str = _help("topic of anomaly events", default="heartwatch-anomalies")
    scores_topic: str = _help("topic receiving every score (empty: off)", default="")
    dead_letter_topic: str = _help("topic receiving bad input with the reason", default="heartwatch-dead-letter")
    alerts_topic: str = _help("topic receiving anomaly-burst alerts (empty: off)", default="heartwatch-alerts")
    batch_size: int = _help("score a micro-batch when it holds this many messages", default=1024)
    batch_timeout_ms: int = _help("... or when its oldest message waited this long", default=10)
    poll_timeout_ms: int = _help("longest wait of one consumer poll while no batch is open", default=200)
    input_encoding: str = _help("auto (content-type header decides, JSON otherwise), json or binary",
                                default="auto")
    max_message_bytes: int = _help("messages larger than this are dead-lettered as oversize", default=65536)
    worst_segments: int = _help("how many worst segments of the per-sample error an event lists", default=3)
    segment_length: int = _help("samples per segment when ranking the worst segments", default=10)
    model_poll_seconds: float = _help("how often the model root is checked for a new version (0: never)",
                                      default=5.0)
    xla: str = _help("compile scoring with XLA: auto (on a GPU only), on or off", default="auto")
    metrics_port: int = _help("Prometheus metrics HTTP port (0: no endpoint)", default=9108)
    log_format: str = _help("json or text log lines", default="json")
    alert_count: int = _help("alert when a device has this many anomalies ...", default=5)
    alert_window_seconds: float = _help("... within this many seconds (event time)", default=60.0)
    alert_webhook_url: str = _help("also POST each alert as JSON to this URL (empty: off)", default="")
    adaptive_thresholds: bool = _help("per-device thresholds from each device's error statistics",
                                      default=False)
    adaptive_min_beats: int = _help("beats a device needs before its own threshold replaces the global one",
                                    default=200)
    adaptive_sigma: float = _help("device threshold = mean + sigma * std of its normal-looking errors",
                                  default=4.0)
    session_timeout_ms: int = _help("consumer group session timeout (tansu holds a join for half of it)",
                                    default=6000)
    max_poll_interval_ms: int = _help("consumer rebalance timeout; keep it 10-30 s on tansu", default=20000)
    auto_offset_reset: str = _help("where a group without committed offsets starts: earliest or latest",
                                   default="earliest")
    send_timeout_seconds: float = _help("how long to wait for the broker to acknowledge a batch's output",
                                        default=30.0)

    def __post_init__(self):
        """Validates every flag once, before any connection is made."""
        super().__post_init__()
        for name in ("model_dir", "group_id"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        for name in ("input_topic", "events_topic", "dead_letter_topic"):
            _check_topic(self, name)
        for name in ("scores_topic", "alerts_topic"):
            _check_topic(self, name, required=False)
        _check_positive(self, "batch_size", "batch_timeout_ms", "poll_timeout_ms", "max_message_bytes",
                        "worst_segments", "segment_length", "alert_count", "alert_window_seconds",
                        "adaptive_min_beats", "adaptive_sigma", "session_timeout_ms", "max_poll_interval_ms",
                        "send_timeout_seconds")
        _check_non_negative(self, "model_poll_seconds", "metrics_port")
        _check_choice(self, "input_encoding", ("auto", "json", "binary"))
        _check_choice(self, "xla", ("auto", "on", "off"))
        _check_choice(self, "log_format", ("json", "text"))
        _check_choice(self, "auto_offset_reset", ("earliest", "latest"))
        if self.segment_length > 140:
            raise ValueError(f"segment_length must be at most the beat length 140, got {self.segment_length}")
        if self.max_poll_interval_ms < self.session_timeout_ms:
            raise ValueError("max_poll_interval_ms must be at least session_timeout_ms, got "
                             f"{self.max_poll_interval_ms} < {self.session_timeout_ms}")
        if self.alert_webhook_url and not self.alert_webhook_url.startswith(("http://", "https://")):
            raise ValueError(f"alert_webhook_url must be an http(s) URL, got {self.alert_webhook_url!r}")
        topics = [self.input_topic, self.events_topic, self.dead_letter_topic, self.scores_topic, self.alerts_topic]
        if self.input_topic in topics[1:]:
            raise ValueError(f"input_topic {self.input_topic!r} must differ from the output topics")


@dataclasses.dataclass(frozen=True)
class BrokerConfig:
    """Flags of `heartwatch broker`."""

    host: str = _help("interface to listen on", default="127.0.0.1")
    port: int = _help("port to listen on (0: a free one)", default=9092)

    def __post_init__(self):
        """Checks the address."""
        if not isinstance(self.host, str) or not self.host.strip():
            raise ValueError(f"host must be a non-empty string, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port!r}")


@dataclasses.dataclass(frozen=True)
class ReplayConfig(KafkaSettings):
    """Flags of `heartwatch replay`."""

    data: str = _help("dataset path/URL (ecg.csv, UCR, CSV, Parquet), 'tf-ecg' or 'synthetic[:beats=N,...]'",
                      default="synthetic:beats=5000")
    topic: str = _help("topic to publish to", default="heartbeats")
    rate: float = _help("target beats per second (0: as fast as possible)", default=0.0)
    encoding: str = _help("json or binary message encoding", default="json")
    devices: int = _help("number of simulated devices the beats are spread over", default=10)
    limit: int = _help("publish at most this many beats (0: all)", default=0)
    repeat: int = _help("publish the data set this many times", default=1)
    progress: bool = _help("draw a progress bar on stderr", default=True)

    def __post_init__(self):
        """Validates the flags."""
        super().__post_init__()
        if not isinstance(self.data, str) or not self.data.strip():
            raise ValueError(f"data must be a path or URI, got {self.data!r}")
        _check_topic(self, "topic")
        _check_non_negative(self, "rate", "limit")
        _check_positive(self, "devices", "repeat")
        _check_choice(self, "encoding", ("json", "binary"))


@dataclasses.dataclass(frozen=True)
class TailConfig(KafkaSettings):
    """Flags of `heartwatch tail TOPIC`."""

    topic: str = _help("topic to print", default="heartwatch-anomalies")
    from_beginning: bool = _help("start at the oldest message instead of new ones", default=False)
    max_messages: int = _help("stop after this many messages (0: never)", default=0)
    idle_timeout_seconds: float = _help("stop after this long without a message (0: never)", default=0.0)
    raw: bool = _help("print the message values as they are", default=False)

    def __post_init__(self):
        """Validates the flags."""
        super().__post_init__()
        _check_topic(self, "topic")
        _check_non_negative(self, "max_messages", "idle_timeout_seconds")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Flags of `heartwatch demo`."""

    data: str = _help("labelled data to train on when the model root holds no version",
                      default="synthetic:beats=6000,seed=1,anomaly_fraction=0.1")
    replay_data: str = _help("labelled data to replay through the stream (empty: the training data)",
                             default="synthetic:beats=3000,seed=2,anomaly_fraction=0.1")
    model_dir: str = _help("model root: reused when it holds a version, trained into otherwise",
                           default="artifacts/ecg")
    bootstrap_servers: str = _help("existing Kafka cluster (empty: start the embedded tansu broker)", default="")
    rate: float = _help("replay rate in beats per second (0: as fast as possible)", default=500.0)
    limit: int = _help("replay at most this many beats (0: the whole data set)", default=0)
    show_events: int = _help("print at most this many anomaly events", default=15)
    metrics_port: int = _help("Prometheus port of the stream (0: none)", default=9108)
    epochs: int = _help("training epochs when a model has to be trained", default=60)

    def __post_init__(self):
        """Validates the flags."""
        for name in ("data", "model_dir"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        _check_non_negative(self, "rate", "limit", "show_events", "metrics_port")
        _check_positive(self, "epochs")
