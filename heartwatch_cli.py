"""The `heartwatch` console command: one entry point, one subcommand per job.

Each subcommand maps to its flag dataclass in a light config module (``pipeline.config``,
``streaming.config``: standard library only), so ``heartwatch SUB --help`` and flag errors answer
before TensorFlow is imported. Once the flags pass that fast check, the job module is imported and
``run(argv)`` parses them again, with the checks that need TensorFlow or Keras; ``report(result)``
in the same module, when present, returns the text a person wants to see at the end, and the CLI
prints it (library code logs, it never prints).

Errors a user can act on print one line, ``heartwatch SUB: error: ...``, never a traceback: usage
errors (a flag, or a file or model a flag names: ``ValueError``, ``FileNotFoundError``) exit with
status 2, runtime failures (an unreachable broker, a port in use, other ``OSError``, Kafka and
TensorFlow I/O errors) with status 1, Ctrl-C before a command handles it with 130. A subcommand's
``preflight`` runs on the parsed flags before TensorFlow is imported (`heartwatch stream` checks
its metrics port and that the cluster answers, so an unreachable one fails within
``--connect_timeout_seconds``). For
Beam commands a leftover flag close to one of the command's own flags is refused at once ("did you
mean"), before Apache Beam is imported to check the others.

Unless ``TF_CPP_MIN_LOG_LEVEL`` is set or ``HEARTWATCH_LOG_LEVEL=DEBUG`` asks for everything,
TensorFlow's C++ logs are turned off (level 3) and TensorFlow is imported with the process's native
stderr muted, which hides absl's "before absl::InitializeLog()" lines: JSON logs stay pure JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import importlib.util
import logging
import os
import sys

LOG_LEVEL_VARIABLE = "HEARTWATCH_LOG_LEVEL"
TENSORFLOW_LOG_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
USAGE_STATUS = 2
RUNTIME_STATUS = 1
INTERRUPTED_STATUS = 130


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
    preflight: str = ""  # "module:function" called with the parsed flags before TensorFlow is imported


SUBCOMMANDS = {
    "train": Subcommand("pipeline.train", "Beam job: train, calibrate, evaluate and export an ECG detector",
                        Flags("pipeline.config", "TrainConfig", beam=True)),
    "score": Subcommand("pipeline.score", "score a dataset in batch with an exported detector, to CSV",
                        Flags("pipeline.config", "ScoreConfig", beam=True)),
    "denoise": Subcommand("pipeline.denoise",
                          "image denoising: `denoise train` a model, `denoise run` a Beam job over images",
                          actions={"train": Flags("pipeline.config", "DenoiseTrainConfig", beam=True),
                                   "run": Flags("pipeline.config", "DenoiseRunConfig", beam=True)}),
    "autoencode": Subcommand("pipeline.autoencode",
                             "train the dense (latent 64) and conv (z_dim) image autoencoders; figures, HTML page",
                             Flags("pipeline.autoencode_config", "AutoencodeConfig")),
    "stream": Subcommand("streaming.consumer", "Kafka consumer group scoring heartbeats, emitting anomaly events",
                         Flags("streaming.config", "StreamConfig"), preflight="streaming.preflight:check_stream"),
    "broker": Subcommand("streaming.broker", "start a local Kafka-protocol broker (tansu, memory storage)",
                         Flags("streaming.config", "BrokerConfig"), tensorflow=False),
    "replay": Subcommand("streaming.replay",
                         "publish beats from a dataset or the generator to a topic at a rate",
                         Flags("streaming.config", "ReplayConfig"), preflight="streaming.preflight:check_cluster"),
    "tail": Subcommand("streaming.tail", "print the events of a topic readably",
                       Flags("streaming.config", "TailConfig"), tensorflow=False),
    "demo": Subcommand("streaming.demo", "the whole flow on an embedded default: train, broker, stream, replay",
                       Flags("streaming.config", "DemoConfig"), preflight="streaming.preflight:check_demo"),
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
    """Plain timestamped log lines on stderr; HEARTWATCH_LOG_LEVEL sets the level. Apache Beam's INFO chatter
    (type-hint conversions, state caches) is kept out unless DEBUG is asked for."""
    logging.basicConfig(level=(level or os.environ.get(LOG_LEVEL_VARIABLE, "INFO")).upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose_logging():
        logging.getLogger("apache_beam").setLevel(logging.WARNING)


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


def refuse_near_misses(config_class, arguments: list[str], prog: str) -> None:
    """Raises FlagError for a leftover flag that looks like a misspelt flag of ``config_class`` (no Beam import)."""
    from models.common import flags

    own = [flag.option for flag in flags.flags_of(config_class)]
    _, leftovers = flags.build_parser(config_class, prog=prog, beam=True).parse_known_args(arguments)
    for argument in leftovers:
        if not argument.startswith("--"):
            continue
        name = argument.split("=", 1)[0]
        close = difflib.get_close_matches(name, own, n=1, cutoff=0.8)
        if close:
            raise flags.FlagError(f"unknown flag {name} (did you mean {close[0]}?)")


def check_flags(prog: str, command_flags: Flags, arguments: list[str]):
    """Parses a command's flags without the job's heavy checks (``deep_checks``); returns the flag dataclass.

    Raises ValueError naming the flag.
    """
    from models.common import flags

    config_class = command_flags.load()
    if not command_flags.beam:
        return flags.parse_flags(config_class, arguments, prog=prog, deep_checks=False)
    refuse_near_misses(config_class, arguments, prog)
    return flags.parse_beam_flags(config_class, arguments, prog=prog, deep_checks=False)[0]


def run_preflight(subcommand: Subcommand, config) -> None:
    """Calls the subcommand's ``preflight`` function, if any, with its parsed flags."""
    if subcommand.preflight:
        module_name, function_name = subcommand.preflight.split(":")
        getattr(importlib.import_module(module_name), function_name)(config)


def runtime_errors() -> tuple:
    """Exception types that are a runtime failure to report in one line (of the libraries already imported)."""
    types = [OSError]
    if "kafka" in sys.modules:
        types.append(sys.modules["kafka"].errors.KafkaError)
    if "tensorflow" in sys.modules:
        errors = sys.modules["tensorflow"].errors
        types += [errors.NotFoundError, errors.PermissionDeniedError, errors.DataLossError]
    return tuple(types)


def _error(prog: str, error: Exception, status: int = USAGE_STATUS) -> int:
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    return status


def _failure(prog: str, error: BaseException) -> int | None:
    """The exit status of a user-facing failure (after its one line), or None to let it propagate."""
    if isinstance(error, KeyboardInterrupt):
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED_STATUS
    if isinstance(error, (ValueError, FileNotFoundError)):
        return _error(prog, error)
    if isinstance(error, runtime_errors()):
        return _error(prog, error, RUNTIME_STATUS)
    return None


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
        config = check_flags(prog, command_flags, arguments)
    except SystemExit as exit_request:  # --help printed
        return exit_request.code or 0
    except (ValueError, FileNotFoundError) as error:
        return _error(prog, error)
    try:
        run_preflight(subcommand, config)
        if subcommand.tensorflow:
            import_tensorflow(quiet)
        module = importlib.import_module(subcommand.module)
        result = module.run(argv[1:])
    except (Exception, KeyboardInterrupt) as error:
        status = _failure(prog, error)
        if status is None:
            raise
        return status
    if hasattr(module, "report"):
        print(module.report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
