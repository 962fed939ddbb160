"""The `heartwatch` console command: one entry point, one subcommand per job.

Each subcommand maps to its flag dataclass in a light config module (``pipeline.config``,
``streaming.config``: standard library only), so ``heartwatch SUB --help`` and flag errors answer
before TensorFlow is imported. Once the flags pass that fast check, the job module is imported and
``run(argv)`` parses them again, with the checks that need TensorFlow or Keras; ``report(result)``
in the same module, when present, returns the text a person wants to see at the end, and the CLI
prints it (library code logs, it never prints). Usage errors print
one line, ``heartwatch SUB: error: ...``, and exit with status 2.

Unless ``TF_CPP_MIN_LOG_LEVEL`` is set or ``HEARTWATCH_LOG_LEVEL=DEBUG`` asks for everything,
TensorFlow's C++ logs are turned off (level 3) and TensorFlow is imported with the process's native
stderr muted, which hides absl's "before absl::InitializeLog()" lines: JSON logs stay pure JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import logging
import os
import sys

LOG_LEVEL_VARIABLE = "HEARTWATCH_LOG_LEVEL"
TENSORFLOW_LOG_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
USAGE_STATUS = 2


@dataclasses.dataclass(frozen=True)
class Flags:
    """Where a command's flag dataclass lives, and whether leftover flags may be Beam pipeline options."""

    module: str
    config_class: str
    beam: bool = False

    def load(self):
        """The flag dataclass (a light import)."""
        return getattr(importlib.import_module(self.module), self.config_class)


@dataclasses.dataclass(frozen=True)
class Subcommand:
    """A job module with ``run(argv)``, its flags (or its actions' flags, for `denoise train|run`)."""

    module: str
    help: str
    flags: Flags | None = None
    actions: dict = dataclasses.field(default_factory=dict)
    tensorflow: bool = True


SUBCOMMANDS = {
    "train": Subcommand("pipeline.train", "Beam job: train, calibrate, evaluate and export an ECG detector",
                        Flags("pipeline.config", "TrainConfig", beam=True)),
    "score": Subcommand("pipeline.score", "score a dataset in batch with an exported detector, to CSV",
                        Flags("pipeline.config", "ScoreConfig", beam=True)),
    "denoise": Subcommand("pipeline.denoise",
                          "image denoising: `denoise train` a model, `denoise run` a Beam job over images",
                          actions={"train": Flags("pipeline.config", "DenoiseTrainConfig"),
                                   "run": Flags("pipeline.config", "DenoiseRunConfig", beam=True)}),
    "stream": Subcommand("streaming.consumer", "Kafka consumer group scoring heartbeats, emitting anomaly events",
                         Flags("streaming.config", "StreamConfig")),
    "broker": Subcommand("streaming.broker", "start a local Kafka-protocol broker (tansu, memory storage)",
                         Flags("streaming.config", "BrokerConfig"), tensorflow=False),
    "replay": Subcommand("streaming.replay",
                         "publish beats from a dataset or the generator to a topic at a rate",
                         Flags("streaming.config", "ReplayConfig"), tensorflow=False),
    "tail": Subcommand("streaming.tail", "print the events of a topic readably",
                       Flags("streaming.config", "TailConfig"), tensorflow=False),
    "demo": Subcommand("streaming.demo", "the whole flow on an embedded default: train, broker, stream, replay",
                       Flags("streaming.config", "DemoConfig")),
}


def _usage() -> str:
    lines = ["usage: heartwatch SUBCOMMAND [flags]   (heartwatch SUBCOMMAND --help for its flags)", "",
             "subcommands:"]
    lines += [f"  {name:<10} {subcommand.help}" for name, subcommand in SUBCOMMANDS.items()]
    return "\n".join(lines)


def _actions_usage(name: str, subcommand: Subcommand) -> str:
    actions = "|".join(subcommand.actions)
    return (f"usage: heartwatch {name} {{{actions}}} [flags]   (heartwatch {name} ACTION --help for its flags)\n\n"
            f"{subcommand.help}")


def verbose_logging() -> bool:
    """Whether the user asked for every log line (``HEARTWATCH_LOG_LEVEL=DEBUG``)."""
    return os.environ.get(LOG_LEVEL_VARIABLE, "").upper() == "DEBUG"


def quiet_tensorflow() -> bool:
    """Turns TensorFlow's C++ logs off unless the user set their level or asked for DEBUG; True when it did."""
    if verbose_logging() or TENSORFLOW_LOG_VARIABLE in os.environ:
        return False
    os.environ[TENSORFLOW_LOG_VARIABLE] = "3"
    return True


@contextlib.contextmanager
def muted_native_stderr():
    """Points file descriptor 2 at /dev/null meanwhile (native libraries write there, past ``sys.stderr``)."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def import_tensorflow(quiet: bool) -> None:
    """Imports TensorFlow now, with native stderr muted when ``quiet`` (absl's pre-init lines go there)."""
    if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return
    if not quiet:
        importlib.import_module("tensorflow")
        return
    with muted_native_stderr():
        importlib.import_module("tensorflow")


def configure_logging(level: str | None = None) -> None:
    """Plain timestamped log lines on stderr; HEARTWATCH_LOG_LEVEL sets the level."""
    logging.basicConfig(level=(level or os.environ.get(LOG_LEVEL_VARIABLE, "INFO")).upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def resolve_flags(argv: list[str]) -> tuple[str, Flags, list[str]]:
    """``(prog, flags, flag arguments)`` of a command line that starts with a known subcommand."""
    name, rest = argv[0], argv[1:]
    subcommand = SUBCOMMANDS[name]
    if subcommand.flags is not None:
        return f"heartwatch {name}", subcommand.flags, rest
    if not rest or rest[0] not in subcommand.actions:
        given = f" (got {rest[0]!r})" if rest else ""
        raise ValueError(f"choose {' or '.join(subcommand.actions)}{given}: "
                         f"heartwatch {name} {{{'|'.join(subcommand.actions)}}} [flags]")
    return f"heartwatch {name} {rest[0]}", subcommand.actions[rest[0]], rest[1:]


def check_flags(prog: str, command_flags: Flags, arguments: list[str]) -> None:
    """Parses a command's flags without the job's heavy checks (``deep_checks``); raises ValueError."""
    from models.common import flags

    parse = flags.parse_beam_flags if command_flags.beam else flags.parse_flags
    parse(command_flags.load(), arguments, prog=prog, deep_checks=False)


def _error(prog: str, error: Exception) -> int:
    print(f"{prog}: error: {error}", file=sys.stderr)
    return USAGE_STATUS


def main(argv=None) -> int:
    """Checks the flags, then dispatches to the subcommand's ``run``; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name = argv[0]
    if name not in SUBCOMMANDS:
        return _error("heartwatch", ValueError(f"unknown subcommand {name!r} (heartwatch --help lists them)"))
    subcommand = SUBCOMMANDS[name]
    if subcommand.actions and argv[1:2] in (["-h"], ["--help"]):
        print(_actions_usage(name, subcommand))
        return 0
    quiet = quiet_tensorflow()
    configure_logging()
    if any(argument == "--config" or argument.startswith("--config=") for argument in argv):
        import_tensorflow(quiet)  # the --config file is read through the file layer, on tf.io.gfile
    prog = f"heartwatch {name}"
    try:
        prog, command_flags, arguments = resolve_flags(argv)
        check_flags(prog, command_flags, arguments)
    except SystemExit as exit_request:  # --help printed
        return exit_request.code or 0
    except (ValueError, FileNotFoundError) as error:
        return _error(prog, error)
    if subcommand.tensorflow:
        import_tensorflow(quiet)
    module = importlib.import_module(subcommand.module)
    try:
        result = module.run(argv[1:])
    except (ValueError, FileNotFoundError) as error:
        return _error(prog, error)
    if hasattr(module, "report"):
        print(module.report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
