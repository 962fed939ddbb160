"""The `heartwatch` console command: one entry point, one subcommand per job.

Subcommands are looked up lazily, so `heartwatch --help` is instant and a subcommand only imports
what it needs (the pipeline and the streaming packages never import each other). Each job module
exposes ``run(argv) -> result``; ``report(result)`` in the same module, when present, prints what a
person wants to see at the end.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

# name -> (module, one-line help)
SUBCOMMANDS = {
    "train": ("pipeline.train", "Beam job: train, calibrate, evaluate and export an ECG detector"),
    "score": ("pipeline.score", "score a dataset in batch with an exported detector, to CSV"),
    "denoise": ("pipeline.denoise", "image denoising: `denoise train` a model, `denoise run` a Beam job over images"),
    "stream": ("streaming.consumer", "Kafka consumer group scoring heartbeats, emitting anomaly events"),
    "broker": ("streaming.broker", "start a local Kafka-protocol broker (tansu, memory storage)"),
    "replay": ("streaming.replay", "publish beats from a dataset or the generator to a topic at a rate"),
    "tail": ("streaming.tail", "print the events of a topic readably"),
    "demo": ("streaming.demo", "the whole flow on an embedded default: train, broker, stream, replay"),
}


def _usage() -> str:
    lines = ["usage: heartwatch SUBCOMMAND [flags]   (heartwatch SUBCOMMAND --help for its flags)", "",
             "subcommands:"]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def configure_logging(level: str | None = None) -> None:
    """Plain timestamped log lines on stderr; HEARTWATCH_LOG_LEVEL sets the level."""
    logging.basicConfig(level=(level or os.environ.get("HEARTWATCH_LOG_LEVEL", "INFO")).upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    """Dispatches to the subcommand's ``run``; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"heartwatch: unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    configure_logging()
    module = importlib.import_module(SUBCOMMANDS[name][0])
    try:
        result = module.run(rest)
    except (ValueError, FileNotFoundError) as error:
        print(f"heartwatch {name}: error: {error}", file=sys.stderr)
        return 2
    if hasattr(module, "report"):
        module.report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
