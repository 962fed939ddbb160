"""`heartwatch train`: the Beam job that trains, calibrates, evaluates and exports an ECG detector.

Steps, each a Beam step whose memory does not grow with the data (``docs/pipeline.md``):

1. read -> validate -> split: the dataset is cut into read tasks that workers read in parallel
   (``pipeline.ecg_steps.ReadValidRows``); bad rows go to an errors file with their file, row and
   reason; every beat gets its split from its own hash (``pipeline.splits``), nothing groups a class;
2. in the same pass, every split is written once, raw, as sharded TFRecords under the run's work
   directory (``pipeline.beat_files``) and tensorflow-transform analyses the training normals;
3. candidate autoencoders train, one Beam element each, streaming the shards through ``tf.data`` (the
   TFT graph applied per batch; with ``--anomaly_exposure`` the train split's labelled anomalies join
   every batch, pushed to reconstruct badly: ``models.family.exposure``), and export a provisional
   detector (``pipeline.ecg_candidates``);
4. each candidate's validation beats are scored by ``RunInference`` with that detector and reduced to
   a mergeable score summary (``pipeline.evaluation``); the best candidate by that summary wins;
5. its threshold is calibrated from the summary; with ``--refit`` the winner is fitted again on the
   train and validation normals together (the first fit's best epoch count; the threshold is carried
   to its scale); the final detector (``DetectorModule``, which owns the threshold) is written; the
   test beats are scored with it by ``RunInference`` and reduced to a summary, flagged counts per
   class and a bounded sample (``pipeline.export``);
6. the driver publishes the staged version as ``<output_dir>/<version>/`` (SavedModel on raw beats,
   model card, metrics, report).

This module holds the Beam wiring (``build_pipeline``) and the driver (``run``); the flags are
``pipeline.config.TrainConfig``. Every file goes through the file layer or Beam's IOs, below the
staging directory of ``--output_dir`` (scratch files in its ``work/``), so ``--output_dir`` may be
``gs://...`` or ``ram://...`` and workers share nothing but that file system.

The runner comes from standard Beam flags (``--runner``); without one the in-process ``FnApiRunner``
runs the job, which works offline (``pipeline.runner``, which also refuses ``DaskRunner``).
"""

from __future__ import annotations

import dataclasses
import json
import logging

import apache_beam as beam
import numpy as np

from models.common import artifacts, files
from models.common.flags import parse_beam_flags
from models.ecg import ANOMALY, shards
from pipeline import evaluation, splits
from pipeline.beat_files import FILE_SUFFIX, encode_chunk
from pipeline.config import TrainConfig
from pipeline.ecg_candidates import TrainCandidate, detector_directory, rank
from pipeline.ecg_steps import AssignSplits, ReadValidRows, error_sort_key, resolve_spec, training_normals
from pipeline.export import (
    ERRORS_FILE,
    REPORT_DIRECTORY,
    REPORT_PAGE,
    WORK_DIRECTORY,
    ExportDetector,
    FinishVersion,
    format_metrics,
)
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


def _sorted_error_lines(errors: list) -> list[str]:
    return [json.dumps(error) for error in sorted(errors, key=error_sort_key)]


def shard_prefix(work_directory: str, split_name: str) -> str:
    """Where the beats of a split are materialised: ``<work>/beats/<split>/beats-*-of-*.tfrecord``."""
    return files.join(work_directory, "beats", split_name, "beats")


def _without_summary(item: dict) -> dict:
    return {key: value for key, value in item.items() if key != "validation_summary"}


def _candidate_names(config: TrainConfig) -> list[str]:
    names = [item.name for item in config.candidate_configs()]
    if len(set(names)) != len(names):
        raise ValueError(f"--candidates lists a candidate twice: {','.join(names)}")
    return names


def _materialise(split_chunks, work_directory: str) -> tuple[dict, list]:
    """Writes every split's raw chunks as TFRecord shards: ``(written paths by split, chunks by split)``."""
    by_split = split_chunks | "PartitionSplits" >> beam.Partition(
        lambda chunk, _: splits.SPLITS.index(chunk.split), len(splits.SPLITS))
    written = {}
    for index, name in enumerate(splits.SPLITS):
        written[name] = (by_split[index]
                         | f"Encode {name}" >> beam.Map(encode_chunk)
                         | f"Write {name}" >> beam.io.WriteToTFRecord(shard_prefix(work_directory, name),
                                                                       file_name_suffix=FILE_SUFFIX))
    return written, by_split


def _beat_count(split_chunks, label: str, normal_only: bool = False, anomalies_only: bool = False):
    def count(chunk) -> int:
        if anomalies_only:
            return int(np.count_nonzero(np.asarray(chunk.is_anomaly) == ANOMALY))
        return len(training_normals(chunk)) if normal_only else len(chunk)

    return (split_chunks | f"Size {label}" >> beam.Map(count)
            | f"Count {label}" >> beam.CombineGlobally(sum))


def _class_counts(chunk) -> list:
    names, counts = np.unique(np.asarray(chunk.source_classes, dtype=str), return_counts=True)
    return [((chunk.split, str(name)), int(count)) for name, count in zip(names, counts)]


def build_pipeline(pipeline: beam.Pipeline, config: TrainConfig, staging_directory: str,
                   work_directory: str | None = None, block_bytes: int = shards.TEXT_BLOCK_BYTES):
    """Adds the training job to ``pipeline``, writing into ``staging_directory``; returns the model card's PCollection.

    ``work_directory`` holds the scratch files (default: ``work/`` inside the staging directory);
    ``block_bytes`` is the byte range of one read task in split text files.
    """
    import tensorflow_transform.beam as tft_beam

    from pipeline.transform import WriteTransform, beats_record_batch, make_preprocessing_fn, tensor_adapter_config

    spec = resolve_spec(config.dataset_spec())
    work_directory = work_directory or files.join(staging_directory, WORK_DIRECTORY)
    transform_directory = files.join(work_directory, "transform")
    names = _candidate_names(config)

    read = ReadValidRows(spec, block_bytes)
    beat_chunks, errors = pipeline | "ReadValidRows" >> read
    digests = read.digests | "AllDigests" >> beam.combiners.ToList()
    _ = (errors
         | "SortErrors" >> beam.combiners.ToList()
         | "ErrorLines" >> beam.FlatMap(_sorted_error_lines)
         | "WriteErrors" >> beam.io.WriteToText(files.join(staging_directory, ERRORS_FILE), shard_name_template="",
                                                num_shards=1))
    bad_row_count = errors | "CountErrors" >> beam.combiners.Count.Globally()

    split_chunks = beat_chunks | "Split" >> AssignSplits(config.split_config())
    split_counts = (split_chunks | "SplitSizes" >> beam.Map(lambda chunk: (chunk.split, len(chunk)))
                    | "CountSplits" >> beam.CombinePerKey(sum))
    class_split_counts = (split_chunks | "SplitClasses" >> beam.FlatMap(_class_counts)
                          | "CountSplitClasses" >> beam.CombinePerKey(sum))
    shard_files, by_split = _materialise(split_chunks, work_directory)
    train, validation, test = (by_split[splits.SPLITS.index(name)] for name in splits.SPLITS)
    train_beats = _beat_count(train, "train normals", normal_only=True)
    validation_beats = _beat_count(validation, "validation normals", normal_only=True)
    test_beats = _beat_count(test, "test beats")
    train_anomalies = _beat_count(train, "train anomalies", anomalies_only=True)
    validation_anomalies = _beat_count(validation, "validation anomalies", anomalies_only=True)

    with tft_beam.Context(temp_dir=files.join(work_directory, "tft_tmp")):
        train_batches = (train | "TrainNormals" >> beam.Map(training_normals)
                         | "NonEmpty" >> beam.Filter(len)
                         | "RecordBatches" >> beam.Map(lambda chunk: beats_record_batch(chunk.beats)))
        transform_fn = ((train_batches, tensor_adapter_config())
                        | "Analyze" >> tft_beam.AnalyzeDataset(make_preprocessing_fn(config.normalization)))
        transform_ready = transform_fn | "WriteTransform" >> WriteTransform(transform_directory)

    trained = (pipeline
               | "Candidates" >> beam.Create([item.to_dict() for item in config.candidate_configs()])
               | "SpreadCandidates" >> beam.Reshuffle()
               | "TrainCandidates" >> beam.ParDo(
                   TrainCandidate(work_directory, transform_directory, config.seed, config.verbose, config.data,
                                  config.shuffle_buffer, config.score_error, config.anomaly_exposure),
                   train_files=beam.pvalue.AsList(shard_files[splits.TRAIN]),
                   validation_files=beam.pvalue.AsList(shard_files[splits.VALIDATION]),
                   train_beats=beam.pvalue.AsSingleton(train_beats),
                   validation_beats=beam.pvalue.AsSingleton(validation_beats),
                   transform_ready=beam.pvalue.AsSingleton(transform_ready),
                   train_anomalies=beam.pvalue.AsSingleton(train_anomalies),
                   validation_anomalies=beam.pvalue.AsSingleton(validation_anomalies)))
    ranked = []
    for name in names:
        one = trained | f"Only {name}" >> beam.Filter(lambda item, name=name: item["candidate"]["name"] == name)
        scored = one | f"Score validation {name}" >> evaluation.ScoreBeatFiles(
            detector_directory(work_directory, name), shard_files[splits.VALIDATION])
        summary = (scored | f"Validation pairs {name}" >> beam.FlatMap(evaluation.score_pairs)
                   | f"Summarise validation {name}" >> beam.CombineGlobally(evaluation.summary_fn()))
        ranked.append(one | f"Rank {name}" >> beam.Map(rank, beam.pvalue.AsSingleton(summary)))
    ranked = ranked | "AllCandidates" >> beam.Flatten()
    exported = (ranked
                | "Best" >> beam.combiners.Top.Of(1, key=lambda item: item["selection_score"])
                | "Unwrap" >> beam.FlatMap(lambda top: top)
                | "Export" >> beam.ParDo(ExportDetector(config, staging_directory, transform_directory, work_directory),
                                         transform_ready=beam.pvalue.AsSingleton(transform_ready),
                                         train_files=beam.pvalue.AsList(shard_files[splits.TRAIN]),
                                         validation_files=beam.pvalue.AsList(shard_files[splits.VALIDATION]),
                                         train_beats=beam.pvalue.AsSingleton(train_beats),
                                         validation_beats=beam.pvalue.AsSingleton(validation_beats),
                                         train_anomalies=beam.pvalue.AsSingleton(train_anomalies),
                                         validation_anomalies=beam.pvalue.AsSingleton(validation_anomalies)))

    test_scored = exported | "Score test" >> evaluation.ScoreBeatFiles(staging_directory, shard_files[splits.TEST])
    test_summary = (test_scored | "Test pairs" >> beam.FlatMap(evaluation.score_pairs)
                    | "Summarise test" >> beam.CombineGlobally(evaluation.summary_fn()))
    flag_counts = (test_scored | "Flags" >> beam.FlatMap(evaluation.flag_counts)
                   | "Count flags" >> beam.CombinePerKey(sum))
    test_sample = test_scored | "Sample test" >> evaluation.SampleScored(test_beats)
    return exported | "Finish" >> beam.ParDo(
        FinishVersion(config, staging_directory, transform_directory),
        test_summary=beam.pvalue.AsSingleton(test_summary), flag_counts=beam.pvalue.AsList(flag_counts),
        test_sample=beam.pvalue.AsSingleton(test_sample),
        candidates=beam.pvalue.AsList(ranked | "Light" >> beam.Map(_without_summary)),
        split_counts=beam.pvalue.AsDict(split_counts), class_split_counts=beam.pvalue.AsList(class_split_counts),
        bad_row_count=beam.pvalue.AsSingleton(bad_row_count), digests=beam.pvalue.AsSingleton(digests))


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

    root = artifact_root(config.output_dir)
    staging_directory = root.staging_directory()
    work_directory = files.join(staging_directory, WORK_DIRECTORY)
    LOGGER.info("training on %s -> %s (staging %s)", config.data, config.output_dir, staging_directory)
    try:
        with job_pipeline(beam_args, test_pipeline) as pipeline:
            build_pipeline(pipeline, config, staging_directory, work_directory)
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
