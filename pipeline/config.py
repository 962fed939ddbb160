"""Job flags as frozen dataclasses: one definition for the CLI, config files and code.

``parse_job_args(DataclassType, argv)`` builds an argparse parser from the dataclass fields (flag
``--field_name``), reads an optional ``--config FILE.json`` whose keys are the same field names, lets
command-line flags override it, validates once by constructing the dataclass, and returns the
remaining arguments for Beam's ``PipelineOptions`` (``--runner`` and friends).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing


def _field_parser(field_type):
    arguments = [argument for argument in typing.get_args(field_type) if argument is not type(None)]
    if typing.get_origin(field_type) in (typing.Union, types.UnionType) and len(arguments) == 1:
        field_type = arguments[0]
    if field_type in (bool, "bool"):
        return lambda text: {"true": True, "1": True, "yes": True, "false": False, "0": False,
                             "no": False}[text.lower()]
    if field_type in (int, "int"):
        return int
    if field_type in (float, "float"):
        return float
    if "tuple" in str(field_type):
        return lambda text: tuple(part.strip() for part in text.split(",") if part.strip())
    return str


def build_parser(config_class, description: str = "", prog: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one ``--name`` flag per dataclass field plus ``--config``."""
    parser = argparse.ArgumentParser(prog=prog, description=description or config_class.__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", help="JSON file whose keys are these flag names (flags override it)")
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        default = field.default if field.default is not dataclasses.MISSING else None
        help_text = field.metadata.get("help", "")
        parser.add_argument(f"--{field.name}", type=_field_parser(hints[field.name]), default=None,
                            help=f"{help_text} (default: {default!r})")
    return parser


def parse_job_args(config_class, argv=None, prog: str | None = None, description: str = ""):
    """Returns ``(config, remaining_argv)``; invalid values raise ``ValueError`` before any work."""
    parser = build_parser(config_class, description=description, prog=prog)
    known, remaining = parser.parse_known_args(argv)
    values = {}
    if known.config:
        with open(known.config) as handle:
            values = json.load(handle)
        names = {field.name for field in dataclasses.fields(config_class)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{known.config}: unknown keys {unknown}; known: {sorted(names)}")
    values.update({key: value for key, value in vars(known).items() if key != "config" and value is not None})
    hints = typing.get_type_hints(config_class)
    for key, value in list(values.items()):
        if isinstance(value, list) and "tuple" in str(hints[key]):
            values[key] = tuple(value)
    return config_class(**values), remaining
