"""The Beam pipeline a job runs on: its options, the default runner, or the test's own pipeline.

Every job builds its graph on ``job_pipeline(beam_args, test_pipeline)``: the caller's
``TestPipeline`` when a test passes one, else a new ``beam.Pipeline`` from the Beam flags left over
after the job's own flags (``--runner`` and friends). Without ``--runner`` the in-process
``FnApiRunner`` runs the job, which works offline. Importing this module registers the ``ram://``
scheme with Beam (``pipeline.filesystems``), so every job's Beam IOs and its TensorFlow artefacts see
the same files.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline import filesystems  # noqa: F401  (registers ram:// with Beam's FileSystems)

DEFAULT_RUNNER = "FnApiRunner"


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    """Beam options from the remaining flags, defaulting to the offline in-process runner."""
    options = PipelineOptions(beam_args)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = DEFAULT_RUNNER
    return options


def job_pipeline(beam_args: list[str], test_pipeline=None) -> beam.Pipeline:
    """``test_pipeline`` when given (its own options apply), else a new pipeline from ``beam_args``."""
    if test_pipeline is not None:
        return test_pipeline
    return beam.Pipeline(options=pipeline_options(beam_args))
