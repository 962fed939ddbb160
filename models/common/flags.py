"""Command flags as frozen dataclasses: one definition for the command line, ``--config`` files and code.

Every heartwatch command describes its flags as a frozen dataclass whose fields are made with
``field(help, default)``. ``parse_flags`` (and ``parse_beam_flags`` for Beam jobs) turns a
command line into a validated instance:

- one ``--name VALUE`` flag per field (``--name=VALUE`` too); names are never abbreviated;
- ``--config FILE.json``: a JSON object whose keys are the flag names (without ``--``); unknown keys
  are refused, naming them; flags given on the command line override the file;
- typed conversion with a message that names the flag: ``bool`` (true/false, yes/no, on/off, 1/0),
  ``int``, ``float``, ``str``, ``X | None`` (an empty value gives None) and ``tuple[X, ...]``
  (comma-separated, repeated, or both; a JSON list in a file);
- validation by constructing the dataclass: its ``__post_init__`` raises ``ValueError`` naming the
  flag. Checks that need heavy imports (TensorFlow, Keras, pandas) go in an optional
  ``deep_checks()`` method, which the jobs run and the fast CLI check skips;
- leftover arguments: a Beam job gets back those that are Apache Beam pipeline options (Beam is
  imported only when leftovers exist) and any other is refused (``unknown flag --x``); other
  commands refuse every leftover.

A class attribute ``POSITIONAL_FLAGS = ("topic",)`` also accepts those fields as leading positional
arguments (``heartwatch tail TOPIC``). Usage errors raise ``FlagError`` (a ``ValueError``); ``--help``
prints each flag with its type and default once, and exits. This module imports neither TensorFlow
nor Beam: the ``--config`` file is read through ``models.common.files``, imported only then.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import textwrap
import types
import typing

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
CONFIG_FLAG = "config"
POSITIONAL_ATTRIBUTE = "POSITIONAL_FLAGS"
DEEP_CHECKS_METHOD = "deep_checks"
_SCALAR_TYPES = (bool, int, float, str)
_METAVARS = {bool: "BOOL", int: "INT", float: "FLOAT", str: "TEXT"}


class FlagError(ValueError):
    """A usage error: an unknown flag, a missing value or a value of the wrong type."""


def field(help: str, default=dataclasses.MISSING, *, default_text: str | None = None, separator: str | None = ",",
          from_json=None):
    """A dataclass field that is also a flag.

    ``default_text`` replaces the shown default in ``--help`` (e.g. "all but the label");
    ``separator`` splits each value of a tuple flag (None: only repetition adds items);
    ``from_json`` converts a ``--config`` file value before the typed check (e.g. an object into
    ``key=value`` items).
    """
    metadata = {"help": help, "default_text": default_text, "separator": separator, "from_json": from_json}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class FlagType:
    """What a field's annotation allows: a scalar type, maybe None, maybe a tuple of them."""

    scalar: type
    optional: bool = False
    sequence: bool = False

    @classmethod
    def of(cls, annotation) -> FlagType:
        """``int``, ``str | None``, ``tuple[str, ...] | None``, ...; anything else raises TypeError."""
        optional = False
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            arguments = [argument for argument in typing.get_args(annotation) if argument is not type(None)]
            if len(arguments) != 1:
                raise TypeError(f"flags support X | None unions only, got {annotation!r}")
            annotation, optional = arguments[0], True
        if typing.get_origin(annotation) is tuple:
            arguments = typing.get_args(annotation)
            if len(arguments) != 2 or arguments[1] is not Ellipsis or arguments[0] not in _SCALAR_TYPES:
                raise TypeError(f"flags support tuple[X, ...] of bool, int, float or str, got {annotation!r}")
            return cls(arguments[0], optional, sequence=True)
        if annotation not in _SCALAR_TYPES:
            raise TypeError(f"flags support bool, int, float, str, tuples and optionals, got {annotation!r}")
        return cls(annotation, optional)

    def metavar(self, separator: str | None = ",") -> str:
        """How the value looks in ``--help`` (tuple flags without a separator are only repeated)."""
        name = _METAVARS[self.scalar]
        return f"{name}[{separator}{name}...]" if self.sequence and separator else name


@dataclasses.dataclass(frozen=True)
class Flag:
    """One field of a flag dataclass, as the parser sees it."""

    name: str
    kind: FlagType
    help: str
    default: object
    default_text: str | None
    separator: str | None
    from_json: typing.Callable | None

    @property
    def option(self) -> str:
        """The command-line spelling, ``--name``."""
        return f"--{self.name}"

    def shown_default(self) -> str:
        """The default as ``--help`` shows it (once)."""
        if self.default_text is not None:
            return self.default_text
        if self.default is dataclasses.MISSING:
            return "required"
        return format_value(self.default)


def format_value(value) -> str:
    """A flag value written as on the command line: true/false, comma-joined tuples, "" for empty text."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(format_value(item) for item in value) if value else "none"
    if value == "":
        return '""'
    return str(value)


def flags_of(config_class) -> list[Flag]:
    """The flags of a dataclass, in field order."""
    if not dataclasses.is_dataclass(config_class):
        raise TypeError(f"{config_class!r} is not a dataclass")
    hints = typing.get_type_hints(config_class)
    flags = []
    for item in dataclasses.fields(config_class):
        if not item.init:
            continue
        if item.default_factory is not dataclasses.MISSING:
            raise TypeError(f"flag {item.name}: use an immutable default (tuples), not a default_factory")
        metadata = item.metadata
        flags.append(Flag(item.name, FlagType.of(hints[item.name]), metadata.get("help", ""), item.default,
                          metadata.get("default_text"), metadata.get("separator", ","), metadata.get("from_json")))
    return flags


def positional_names(config_class) -> tuple[str, ...]:
    """The fields also accepted as leading positional arguments."""
    return tuple(getattr(config_class, POSITIONAL_ATTRIBUTE, ()))


# ------------------------------------------------------------------------------------------ conversion


def _expected(kind: FlagType) -> str:
    if kind.sequence:
        return "a list or comma-separated text"
    return {bool: "true or false", int: "an integer", float: "a number", str: "text"}[kind.scalar]


def _fail(flag: Flag, value, source: str | None, kind: FlagType | None = None) -> FlagError:
    where = f" (from --config {source})" if source else ""
    shown = "null" if value is None else repr(value)
    return FlagError(f"{flag.option} must be {_expected(kind or flag.kind)}, got {shown}{where}")


def _scalar_from_text(flag: Flag, text: str, source: str | None):
    scalar = flag.kind.scalar
    element = FlagType(scalar)
    if scalar is str:
        return text
    if scalar is bool:
        lowered = text.strip().lower()
        if lowered in TRUE_WORDS or lowered in FALSE_WORDS:
            return lowered in TRUE_WORDS
        raise _fail(flag, text, source, element)
    try:
        value = scalar(text.strip())
    except ValueError:
        raise _fail(flag, text, source, element) from None
    if scalar is float and math.isnan(value):
        raise _fail(flag, text, source, element)
    return value


def convert_text(flag: Flag, texts, source: str | None = None):
    """A command-line value (a list of occurrences for tuple flags) -> the field's value."""
    if not flag.kind.sequence:
        if flag.kind.optional and texts == "":
            return None
        return _scalar_from_text(flag, texts, source)
    texts = [texts] if isinstance(texts, str) else list(texts)
    if flag.kind.optional and texts == [""]:
        return None
    items = []
    for text in texts:
        parts = text.split(flag.separator) if flag.separator else [text]
        items += [part.strip() for part in parts if part.strip()]
    return tuple(_scalar_from_text(flag, item, source) for item in items)


def _scalar_from_json(flag: Flag, value, source: str):
    scalar = flag.kind.scalar
    if isinstance(value, str) and scalar is not str:
        return _scalar_from_text(flag, value, source)
    if scalar is bool and isinstance(value, bool):
        return value
    if scalar is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if scalar is float and isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
        return float(value)
    if scalar is str and isinstance(value, str):
        return value
    raise _fail(flag, value, source, FlagType(scalar))


def convert_json(flag: Flag, value, source: str):
    """A ``--config`` file value -> the field's value (text is read as on the command line)."""
    if flag.from_json is not None:
        value = flag.from_json(value)
    if value is None:
        if flag.kind.optional:
            return None
        raise _fail(flag, value, source)
    if not flag.kind.sequence:
        return _scalar_from_json(flag, value, source)
    if isinstance(value, str):
        return convert_text(flag, [value], source)
    if not isinstance(value, (list, tuple)):
        raise _fail(flag, value, source)
    return tuple(_scalar_from_json(flag, item, source) for item in value)


# ------------------------------------------------------------------------------------------ parsing


class FlagHelpFormatter(argparse.HelpFormatter):
    """Help lines wrapped at spaces only, so defaults such as ``heartwatch-anomalies`` stay whole."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=34)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)


class FlagParser(argparse.ArgumentParser):
    """argparse that raises ``FlagError`` instead of printing usage and exiting."""

    def error(self, message: str):
        """Raises the usage error (argparse calls this)."""
        raise FlagError(message.removeprefix("argument "))


def build_parser(config_class, prog: str | None = None, beam: bool = False) -> FlagParser:
    """The parser of a flag dataclass: ``--config``, one flag per field, positional fields first."""
    positional = positional_names(config_class)
    usage = " ".join([prog or "%(prog)s"] + [f"[{name.upper()}]" for name in positional] + ["[--flag VALUE ...]"])
    epilog = "Flags are also read from --config FILE.json (keys = flag names); the command line overrides it."
    if beam:
        usage += " [Beam pipeline options]"
        epilog += (" Other flags must be Apache Beam pipeline options (--runner, --temp_location, ...): "
                   "they are passed to Beam.")
    parser = FlagParser(prog=prog, usage=usage, description=config_class.__doc__, epilog=epilog, allow_abbrev=False,
                        formatter_class=FlagHelpFormatter)
    for name in positional:
        parser.add_argument(f"positional {name}", nargs="?", default=None, metavar=name.upper(),
                            help=f"same as --{name}")
    parser.add_argument(f"--{CONFIG_FLAG}", metavar="FILE.json", default=argparse.SUPPRESS,
                        help="JSON object of flag values; command-line flags override it")
    for flag in flags_of(config_class):
        if flag.name == CONFIG_FLAG:
            raise TypeError(f"{config_class.__name__}: a field may not be called {CONFIG_FLAG!r}")
        text = f"{flag.help} (default: {flag.shown_default()})".replace("%", "%%")
        parser.add_argument(flag.option, dest=flag.name, metavar=flag.kind.metavar(flag.separator),
                            default=argparse.SUPPRESS, action="append" if flag.kind.sequence else "store", help=text)
    return parser


def read_config_file(path: str) -> dict:
    """The JSON object of a ``--config`` file, read through the file layer (which imports TensorFlow)."""
    from models.common import files

    if not files.exists(path):
        raise FlagError(f"--config {path}: no such file")
    try:
        document = files.read_json(path)
    except json.JSONDecodeError as error:
        raise FlagError(f"--config {path} is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise FlagError(f"--config {path} must hold a JSON object of flag values, got {type(document).__name__}")
    return document


def _file_values(flags: dict[str, Flag], path: str) -> dict:
    document = read_config_file(path)
    unknown = sorted(set(document) - set(flags))
    if unknown:
        raise FlagError(f"--config {path}: unknown keys {', '.join(unknown)}; known: {', '.join(sorted(flags))}")
    return {name: convert_json(flags[name], value, path) for name, value in document.items()}


def _command_line_values(config_class, namespace: dict, flags: dict[str, Flag]) -> dict:
    values = {}
    for name in positional_names(config_class):
        text = namespace.pop(f"positional {name}", None)
        if text is None:
            continue
        if name in namespace:
            raise FlagError(f"give {name} once: as {name.upper()} or as --{name}")
        values[name] = convert_text(flags[name], [text] if flags[name].kind.sequence else text)
    for name, text in namespace.items():
        values[name] = convert_text(flags[name], text)
    return values


def _parse(config_class, argv, prog: str | None, beam: bool, deep_checks: bool):
    flags = {flag.name: flag for flag in flags_of(config_class)}
    parser = build_parser(config_class, prog=prog, beam=beam)
    namespace, leftovers = parser.parse_known_args(argv)
    namespace = vars(namespace)
    config_path = namespace.pop(CONFIG_FLAG, None)
    command_line = _command_line_values(config_class, namespace, flags)
    leftovers = beam_options(leftovers) if beam else refuse_leftovers(leftovers)
    values = _file_values(flags, config_path) if config_path else {}
    values.update(command_line)
    missing = [flag.option for flag in flags.values()
               if flag.default is dataclasses.MISSING and flag.name not in values]
    if missing:
        raise FlagError(f"{', '.join(missing)} is required")
    config = config_class(**values)
    if deep_checks and hasattr(config, DEEP_CHECKS_METHOD):
        getattr(config, DEEP_CHECKS_METHOD)()
    return config, leftovers


def parse_flags(config_class, argv=None, *, prog: str | None = None, deep_checks: bool = True):
    """A validated ``config_class`` from defaults < ``--config`` file < ``argv``; unknown flags are refused.

    ``deep_checks=False`` skips the class's ``deep_checks()`` (the CLI's fast check before the job
    imports TensorFlow). Raises ``FlagError``/``ValueError`` naming the flag.
    """
    config, _ = _parse(config_class, argv, prog, beam=False, deep_checks=deep_checks)
    return config


def parse_beam_flags(config_class, argv=None, *, prog: str | None = None, deep_checks: bool = True):
    """``(config, beam_arguments)`` for a Beam job: leftovers must be Beam pipeline options."""
    return _parse(config_class, argv, prog, beam=True, deep_checks=deep_checks)


def refuse_leftovers(leftovers: list[str]) -> list[str]:
    """Raises ``FlagError`` naming the first leftover argument; returns ``[]`` when there is none."""
    for argument in leftovers:
        if argument.startswith("-"):
            raise FlagError(f"unknown flag {argument.split('=', 1)[0]}")
    if leftovers:
        raise FlagError(f"unexpected argument {leftovers[0]!r}")
    return []


def beam_options(leftovers: list[str]) -> list[str]:
    """``leftovers`` unchanged when all are Apache Beam pipeline options (with their values), else FlagError."""
    if not leftovers:
        return []
    from apache_beam.options.pipeline_options import PipelineOptions

    parsers = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)
    parser = parsers[0]

    def raise_error(message: str):
        raise FlagError(f"Beam pipeline option {message.removeprefix('argument ')}")

    parser.error = raise_error
    _, unknown = parser.parse_known_args(leftovers)
    refuse_leftovers(unknown)
    return list(leftovers)
