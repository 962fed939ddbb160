"""`heartwatch train`: the Beam job that trains, calibrates, evaluates and exports an ECG detector.

Steps: read -> validate (bad rows to an errors file) -> seeded stratified split -> tensorflow-transform
analyse (training normals) / transform -> train candidate autoencoders (one Beam element each) ->
keep the best by validation score -> calibrate the threshold -> evaluate on the test split -> export.

This module holds the job's flags (``TrainConfig``), its Beam wiring (``build_pipeline``) and the
driver (``run``): the version is built in a staging directory of the model root
(``models.detection.detector.artifact_root(output_dir)``) and published as ``<output_dir>/<version>/``
(SavedModel on raw beats, model card, metrics, report) once the pipeline has finished. The steps
live in ``pipeline.ecg_steps`` (read, validate, split), ``pipeline.ecg_candidates`` (training) and
``pipeline.export`` (calibration, evaluation, export, model card). Every file goes through the file
layer or Beam's IOs, so ``--output_dir`` may be ``gs://...`` or ``ram://...``.

The runner comes from standard Beam flags (``--runner``); without one the in-process ``FnApiRunner``
runs the job, which works offline. Training fits in one worker's memory (Keras is not distributed
here); reading, validation, splitting and the TFT analysis scale with the runner.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile

import apache_beam as beam

from models.common import artifacts, files
from models.common.flags import parse_beam_flags
from models.ecg import sources
from pipeline import filesystems, splits
from pipeline.config import TrainConfig
from pipeline.ecg_candidates import TrainCandidate
from pipeline.ecg_steps import (
    SPLIT_KEY,
    AssignSplits,
    ReadValidRows,
    beat_instance,
    is_training_normal,
    open_with_beam_filesystems,
)
from pipeline.export import ERRORS_FILE, REPORT_DIRECTORY, REPORT_PAGE, WORK_DIRECTORY, ExportDetector, format_metrics
from pipeline.runner import job_pipeline

LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    """What a training run produced."""

    version_directory: str
    detector_directory: str
    report_path: str | None
    errors_path: str
    summary: dict


def _data_sha256(spec: sources.DatasetSpec) -> str | None:
    if spec.resolved_format() == "synthetic":
        return None
    return sources.file_sha256(sources.resolve_path(spec.path, spec.cache_dir))


def _sorted_error_lines(errors: list) -> list[str]:
    return [json.dumps(error) for error in sorted(errors, key=lambda error: error["row_number"])]


def work_directory_for(staging_directory: str) -> str:
    """Where a run keeps its scratch files (the TFT graph, candidate weights): inside the staging directory,
    or a local temporary directory when the output's scheme cannot rename directories (``ram://``)."""
    if filesystems.renames_directories(staging_directory):
        return files.join(staging_directory, WORK_DIRECTORY)
    return tempfile.mkdtemp(prefix="heartwatch-train-")


def build_pipeline(pipeline: beam.Pipeline, config: TrainConfig, staging_directory: str, data_sha256: str | None,
                   work_directory: str | None = None):
    """Adds the training job to ``pipeline``, writing into ``staging_directory``; returns the model card's PCollection.

    ``work_directory`` holds the scratch files (default: ``work/`` inside the staging directory).
    """
    import tensorflow_transform.beam as tft_beam

    from pipeline.transform import make_preprocessing_fn, raw_metadata

    spec = sources.with_resolved_format(config.dataset_spec(), open_with_beam_filesystems)
    work_directory = work_directory or files.join(staging_directory, WORK_DIRECTORY)
    transform_directory = files.join(work_directory, "transform")

    records, errors = pipeline | "ReadValidRows" >> ReadValidRows(spec, spread=True)
    _ = (errors
         | "SortErrors" >> beam.combiners.ToList()
         | "ErrorLines" >> beam.FlatMap(_sorted_error_lines)
         | "WriteErrors" >> beam.io.WriteToText(files.join(staging_directory, ERRORS_FILE), shard_name_template="",
                                                num_shards=1))
    bad_row_count = errors | "CountErrors" >> beam.combiners.Count.Globally()

    split_records = records | "Split" >> AssignSplits(config.split_config())
    by_split = split_records | "PartitionSplits" >> beam.Partition(
        lambda record, _: splits.SPLITS.index(record[SPLIT_KEY]), len(splits.SPLITS))
    train, validation, test = (by_split[splits.SPLITS.index(name)] for name in splits.SPLITS)
    split_counts = (split_records | "SplitNames" >> beam.Map(lambda record: record[SPLIT_KEY])
                    | "CountSplits" >> beam.combiners.Count.PerElement())

    with tft_beam.Context(temp_dir=files.join(work_directory, "tft_tmp")):
        train_normals = (train | "TrainNormals" >> beam.Filter(is_training_normal)
                         | "TrainInstances" >> beam.Map(beat_instance))
        validation_normals = (validation | "ValidationNormals" >> beam.Filter(is_training_normal)
                              | "ValidationInstances" >> beam.Map(beat_instance))
        (transformed_train, _), transform_fn = (
            (train_normals, raw_metadata())
            | "AnalyzeAndTransform" >> tft_beam.AnalyzeAndTransformDataset(
                make_preprocessing_fn(config.normalization)))
        transformed_validation, _ = (
            ((validation_normals, raw_metadata()), transform_fn) | "TransformValidation" >> tft_beam.TransformDataset())
        transform_ready = transform_fn | "WriteTransform" >> tft_beam.WriteTransformFn(transform_directory)

    candidates = (pipeline
                  | "Candidates" >> beam.Create([item.to_dict() for item in config.candidate_configs()])
                  | "SpreadCandidates" >> beam.Reshuffle()
                  | "TrainCandidates" >> beam.ParDo(
                      TrainCandidate(work_directory, transform_directory, config.seed, config.verbose, config.data),
                      train_rows=beam.pvalue.AsList(transformed_train),
                      validation_rows=beam.pvalue.AsList(transformed_validation),
                      validation_records=beam.pvalue.AsList(validation),
                      transform_ready=beam.pvalue.AsList(transform_ready)))
    return (candidates
            | "Best" >> beam.combiners.Top.Of(1, key=lambda item: item["selection_score"])
            | "Unwrap" >> beam.FlatMap(lambda top: top)
            | "Export" >> beam.ParDo(
                ExportDetector(config, staging_directory, transform_directory, data_sha256),
                validation_records=beam.pvalue.AsList(validation), test_records=beam.pvalue.AsList(test),
                candidates=beam.pvalue.AsList(candidates), split_counts=beam.pvalue.AsDict(split_counts),
                bad_row_count=beam.pvalue.AsSingleton(bad_row_count),
                transform_ready=beam.pvalue.AsList(transform_ready)))


def publish_version(root: artifacts.ArtifactRoot, staging_directory: str, config: TrainConfig) -> TrainResult:
    """Driver post-processing: publishes the staged version and says where everything went."""
    from models.detection.detector import SAVED_MODEL_DIRECTORY

    card = artifacts.read_card(staging_directory)
    version, directory = root.publish(staging_directory, card)
    return TrainResult(version_directory=directory,
                       detector_directory=files.join(directory, SAVED_MODEL_DIRECTORY),
                       report_path=files.join(directory, REPORT_DIRECTORY, REPORT_PAGE) if config.report else None,
                       errors_path=files.join(directory, ERRORS_FILE),
                       summary={**card, "version": str(version)})


def run(argv=None, test_pipeline=None) -> TrainResult:
    """Runs `heartwatch train` with command-line style ``argv``; returns where everything went.

    ``test_pipeline``, when given, is the pipeline the job is built on (instead of a new one).
    """
    config, beam_args = parse_beam_flags(TrainConfig, argv, prog="heartwatch train")
    from models.detection.detector import artifact_root

    spec = sources.with_resolved_format(config.dataset_spec(), open_with_beam_filesystems)
    data_sha256 = _data_sha256(spec)
    root = artifact_root(config.output_dir)
    staging_directory = root.staging_directory()
    work_directory = work_directory_for(staging_directory)
    LOGGER.info("training on %s -> %s (staging %s)", config.data, config.output_dir, staging_directory)
    try:
        with job_pipeline(beam_args, test_pipeline) as pipeline:
            build_pipeline(pipeline, config, staging_directory, data_sha256, work_directory)
        files.remove(work_directory)
        return publish_version(root, staging_directory, config)
    except Exception:
        files.remove(work_directory)
        files.remove(staging_directory)
        raise


def report(result: TrainResult) -> str:
    """Where the detector, report and bad rows went, and the test metrics, as text (the CLI prints it)."""
    lines = []
    card = result.summary
    lines.append(f"detector: {result.detector_directory} (version {card['version']})")
    lines.append(f"model card: {files.join(result.version_directory, artifacts.MODEL_CARD_FILE)}")
    lines.append(f"report: {result.report_path}")
    lines.append(f"bad rows: {card['data']['bad_rows']} -> {result.errors_path}")
    lines.append(f"selected model: {card['model']['name']} ({card['model']['parameter_count']} parameters); "
                 f"threshold {card['threshold']['value']:.6f} by {card['threshold']['method']}")
    if card.get("test_metrics"):
        lines.append(format_metrics(card["test_metrics"]))
        for name, item in card["test_metrics"]["detection_rate_by_class"].items():
            lines.append(f"  class {name}: flagged {item['flagged']}/{item['beats']} ({item['detection_rate']:.3f})")
    return "\n".join(lines)
