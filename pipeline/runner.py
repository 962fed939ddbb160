"""The Beam pipeline a job runs on: its options, the default runner, or the test's own pipeline.

Every job builds its graph on ``job_pipeline(beam_args, test_pipeline)``: the caller's
``TestPipeline`` when a test passes one, else a new ``beam.Pipeline`` from the Beam flags left over
after the job's own flags (``--runner`` and friends). Without ``--runner`` the in-process
``FnApiRunner`` runs the job, which works offline. Importing this module registers the ``ram://``
scheme with Beam (``pipeline.filesystems``), so every job's Beam IOs and its TensorFlow artefacts see
the same files.

Runners (``docs/pipeline.md``): the default, ``--direct_running_mode=multi_processing
--direct_num_workers=N`` and ``--runner PortableRunner`` against Beam's job service with an external
worker pool are tested; Flink, Spark and Dataflow take their usual flags (with ``--setup_file
./setup.py``) but are not exercised here. ``DaskRunner`` is refused (``check_runner``): it re-runs
tensorflow-transform's analyzers and gets their counts wrong.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline import filesystems  # noqa: F401  (registers ram:// with Beam's FileSystems)

DEFAULT_RUNNER = "FnApiRunner"
REFUSED_RUNNERS = {"daskrunner": "DaskRunner re-runs tensorflow-transform's analyzers and gets their counts "
                                 "wrong; use the default runner, --direct_running_mode=multi_processing, or a "
                                 "portable runner (PortableRunner, FlinkRunner, SparkRunner)"}


def check_runner(options: PipelineOptions) -> None:
    """Refuses runners the jobs are known to break on (``ValueError`` naming the reason)."""
    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) else type(runner).__name__ if runner is not None else ""
    reason = REFUSED_RUNNERS.get(name.rsplit(".", 1)[-1].lower())
    if reason:
        raise ValueError(f"--runner {name} is not supported: {reason}")


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    """Beam options from the remaining flags, defaulting to the offline in-process runner."""
    options = PipelineOptions(beam_args)
    check_runner(options)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = DEFAULT_RUNNER
    return options


def job_pipeline(beam_args: list[str], test_pipeline=None) -> beam.Pipeline:
    """``test_pipeline`` when given (its own options apply), else a new pipeline from ``beam_args``."""
    if test_pipeline is not None:
        check_runner(test_pipeline.options)
        return test_pipeline
    return beam.Pipeline(options=pipeline_options(beam_args))
