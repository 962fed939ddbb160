"""`heartwatch train`: the Beam job that trains, calibrates, evaluates and exports an ECG detector.

Steps: read -> validate (bad rows to an errors file) -> seeded stratified split -> tensorflow-transform
analyse (training normals) / transform -> train candidate autoencoders (one Beam element each) ->
keep the best by validation score -> calibrate the threshold -> evaluate on the test split -> export
``<output_dir>/<version>/`` (SavedModel on raw beats, model card, metrics, report).

The runner comes from standard Beam flags (``--runner``); without one the in-process ``FnApiRunner``
runs the job, which works offline. Training fits in one worker's memory (Keras is not distributed
here); reading, validation, splitting and the TFT analysis scale with the runner.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import logging
import os
import platform

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from models.ecg import sources as datasets
from models.detection import metrics
from models.detection import thresholds
from models.ecg import (ANOMALY, BEAT_KEY, BEAT_LENGTH, IS_ANOMALY_KEY, NORMALIZED_BEAT_KEY, ROW_NUMBER_KEY,
                        SOURCE_CLASS_KEY, SOURCE_KEY)
from models.training.fit import CandidateConfig
from pipeline import splits
from models.common.flags import parse_beam_flags
from pipeline.config import TrainConfig

LOGGER = logging.getLogger(__name__)
METRICS_NAMESPACE = "heartwatch"
SPLIT_KEY = "split"
DEFAULT_RUNNER = "FnApiRunner"
# Test-split errors as computed at training time, to check that reloaded exports agree.
TEST_SCORES_FILE = "test_scores.npz"


@dataclasses.dataclass
class TrainResult:
    """What a training run produced."""

    version_directory: str
    detector_directory: str
    report_path: str | None
    errors_path: str
    summary: dict


def open_with_beam_filesystems(path: str, mode: str = "r"):
    """Opens local or remote (gs://, s3://, hdfs://) files the same way on every Beam worker."""
    stream = FileSystems.open(path)
    return stream if "b" in mode else io.TextIOWrapper(stream, encoding="utf-8", newline="")


class ReadRows(beam.DoFn):
    """Reads one dataset's raw rows (row number, values, label text); the worker opens the file."""

    def process(self, spec: datasets.DatasetSpec):
        yield from datasets.iter_raw_rows(spec, open_fn=open_with_beam_filesystems)


class ValidateRows(beam.DoFn):
    """Turns raw rows into beat records; bad rows go to the ``errors`` output with their reason."""

    ERRORS = "errors"

    def __init__(self, spec: datasets.DatasetSpec):
        self.spec = spec

    def setup(self):
        self.valid_rows = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "valid_rows")
        self.bad_rows = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "bad_rows")

    def process(self, raw_row):
        row_number, values, label_text = raw_row
        record, error = datasets.validate_row(row_number, values, label_text, self.spec)
        if error is not None:
            self.bad_rows.inc()
            yield beam.pvalue.TaggedOutput(self.ERRORS, error)
        else:
            self.valid_rows.inc()
            yield record


def _assign_stratum(keyed_group, config: splits.SplitConfig):
    _, group = keyed_group
    group = list(group)
    keys = [splits.split_key(config.seed, record[SOURCE_KEY], record[ROW_NUMBER_KEY]) for record in group]
    for record, split_name in zip(group, splits.stratum_assignments(keys, config)):
        yield {**record, SPLIT_KEY: split_name}


class AssignSplits(beam.PTransform):
    """Adds a ``split`` field: seeded, stratified by source class (see ``pipeline.splits``)."""

    def __init__(self, config: splits.SplitConfig):
        super().__init__()
        self.config = config

    def expand(self, records):
        return (records
                | "KeyByClass" >> beam.Map(lambda record: (record[SOURCE_CLASS_KEY], record))
                | "GroupByClass" >> beam.GroupByKey()
                | "AssignWithinClass" >> beam.FlatMap(_assign_stratum, self.config))


def _is_training_normal(record) -> bool:
    """Normal or unlabelled beats train the model; known anomalies never do."""
    return record[IS_ANOMALY_KEY] != ANOMALY


def _beat_instance(record) -> dict:
    return {BEAT_KEY: np.asarray(record[BEAT_KEY], dtype=np.float32)}


def _stack(records, key: str) -> np.ndarray:
    if not records:
        return np.zeros((0, BEAT_LENGTH), np.float32)
    return np.stack([np.asarray(record[key], dtype=np.float32) for record in records])


def _labels(records) -> np.ndarray:
    return np.asarray([record[IS_ANOMALY_KEY] for record in records], dtype=np.int64)


def validation_selection_score(labels: np.ndarray, errors: np.ndarray, best_validation_loss: float) -> dict:
    """How candidates are ranked: validation ROC-AUC when both classes are labelled, else -val_loss."""
    labelled = labels.size and np.isin(labels, (0, 1)).all() and 0 < int((labels == ANOMALY).sum()) < labels.size
    if labelled:
        auc = metrics.roc_auc(labels, errors)
        return {"selection_metric": "validation_roc_auc", "selection_score": auc, "validation_roc_auc": auc}
    return {"selection_metric": "negative_validation_loss", "selection_score": -best_validation_loss,
            "validation_roc_auc": None}


class TrainCandidate(beam.DoFn):
    """Trains one candidate on normalised training normals and scores it on the validation split."""

    def __init__(self, work_directory: str, transform_directory: str, seed: int, verbose: int, data: str):
        self.work_directory = work_directory
        self.transform_directory = transform_directory
        self.seed = seed
        self.verbose = verbose
        self.data = data

    def setup(self):
        self.trained = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "candidates_trained")

    def process(self, candidate_dict, train_rows, validation_rows, validation_records, transform_ready):
        from models.detection.detector import DetectorModule
        from models.training.fit import train_autoencoder
        from pipeline.transform import TransformGraph

        config = CandidateConfig.from_dict(candidate_dict)
        if not train_rows:
            raise ValueError(f"no valid normal training rows in {self.data!r}: the train split needs normal "
                             "(or unlabelled) beats; see the errors output for rejected rows")
        LOGGER.info("training candidate %s (%s) on %d normal beats, validating on %d", config.name, config.model,
                    len(train_rows), len(validation_rows))
        result = train_autoencoder(config, _stack(train_rows, NORMALIZED_BEAT_KEY),
                                   _stack(validation_rows, NORMALIZED_BEAT_KEY), seed=self.seed,
                                   checkpoint_path=self._weights_path(config.name), verbose=self.verbose)
        result.model.save_weights(self._weights_path(config.name))
        detector = DetectorModule(TransformGraph(self.transform_directory), result.model)
        errors = detector.score(_stack(validation_records, BEAT_KEY))["reconstruction_error"]
        self.trained.inc()
        yield {
            "candidate": config.to_dict(),
            "weights_path": self._weights_path(config.name),
            "history": result.history,
            "best_validation_loss": result.best_validation_loss,
            "epochs_run": result.epochs_run,
            "training_seconds": result.seconds,
            "parameter_count": result.parameter_count,
            **validation_selection_score(_labels(validation_records), errors, result.best_validation_loss),
        }

    def _weights_path(self, name: str) -> str:
        return os.path.join(self.work_directory, "candidates", f"{name}.weights.h5")


class ExportDetector(beam.DoFn):
    """Calibrates, evaluates and exports the best candidate; yields the run summary."""

    def __init__(self, config: TrainConfig, version_directory: str, transform_directory: str,
                 errors_path: str, data_sha256: str | None):
        self.config = config
        self.version_directory = version_directory
        self.transform_directory = transform_directory
        self.errors_path = errors_path
        self.data_sha256 = data_sha256

    def process(self, best, validation_records, test_records, candidates, split_counts, bad_row_count,
                transform_ready):
        from models.family import registry
        from models.detection.detector import SAVED_MODEL_DIRECTORY, DetectorModule, write_model_card
        from pipeline import report
        from pipeline.transform import TransformGraph, affine_statistics

        config = CandidateConfig.from_dict(best["candidate"])
        model = registry.build(config.model, config.parameters)
        model(np.zeros((1, BEAT_LENGTH), np.float32))
        model.load_weights(best["weights_path"])
        transform = TransformGraph(self.transform_directory)
        detector = DetectorModule(transform, model)

        validation_errors = detector.score(_stack(validation_records, BEAT_KEY))["reconstruction_error"]
        threshold = thresholds.calibrate(self.config.threshold_config(), validation_errors, _labels(validation_records))
        detector.set_threshold(threshold.value)
        LOGGER.info("threshold %.6f by %s", threshold.value, threshold.method)

        test_beats, test_labels = _stack(test_records, BEAT_KEY), _labels(test_records)
        test_scores = detector.score(test_beats)
        test_metrics = evaluate(test_labels, test_scores, [record[SOURCE_CLASS_KEY] for record in test_records],
                                threshold.value)

        detector_directory = os.path.join(self.version_directory, SAVED_MODEL_DIRECTORY)
        detector.save(detector_directory)
        np.savez(os.path.join(self.version_directory, TEST_SCORES_FILE),
                 row_number=np.asarray([record[ROW_NUMBER_KEY] for record in test_records], dtype=np.int64),
                 reconstruction_error=test_scores["reconstruction_error"])
        metrics_document = {"test": test_metrics, "threshold": threshold.to_dict(),
                            "candidates": [_candidate_summary(item) for item in candidates]}
        with open(os.path.join(self.version_directory, "metrics.json"), "w") as handle:
            json.dump(metrics_document, handle, indent=2)
        card = self._model_card(best, threshold, test_metrics, candidates, split_counts, bad_row_count,
                                affine_statistics(transform, self.config.normalization))
        write_model_card(self.version_directory, card)
        report_path = None
        if self.config.report:
            report_path = report.write_report(
                os.path.join(self.version_directory, "report"), card=card, history=best["history"],
                test_beats=test_beats, test_labels=test_labels, test_scores=test_scores,
                normalize=lambda beats: transform(beats).numpy(), reconstruct=lambda x: model(x, training=False).numpy())
        LOGGER.info("exported %s (report: %s)", detector_directory, report_path)
        yield card

    def _model_card(self, best, threshold, test_metrics, candidates, split_counts, bad_row_count, statistics):
        import keras
        import tensorflow as tf
        import tensorflow_transform as tft

        return {
            "name": "heartwatch ECG detector",
            "version": os.path.basename(self.version_directory),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "signature": {"input": f"beats float32 [batch, {BEAT_LENGTH}] raw (un-normalised)",
                          "outputs": ["reconstruction_error", "per_sample_error", "threshold", "is_anomaly"],
                          "error": "mean absolute reconstruction error in normalised space"},
            "data": {"source": self.config.data, "format": self.config.dataset_spec().resolved_format(),
                     "sha256": self.data_sha256, "valid_rows": int(sum(split_counts.values())),
                     "bad_rows": int(bad_row_count), "rows_by_split": dict(sorted(split_counts.items())),
                     "split": dataclasses.asdict(self.config.split_config())},
            "normalization": statistics,
            "model": {**best["candidate"], "parameter_count": best["parameter_count"],
                      "epochs_run": best["epochs_run"], "best_validation_loss": best["best_validation_loss"],
                      "selection_metric": best["selection_metric"], "selection_score": best["selection_score"]},
            "candidates": [_candidate_summary(item) for item in candidates],
            "threshold": threshold.to_dict(),
            "test_metrics": test_metrics,
            "libraries": {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
                          "tensorflow_transform": tft.__version__, "apache_beam": beam.__version__,
                          "numpy": np.__version__},
        }


def _candidate_summary(item: dict) -> dict:
    return {"name": item["candidate"]["name"], "model": item["candidate"]["model"],
            "selection_metric": item["selection_metric"], "selection_score": item["selection_score"],
            "validation_roc_auc": item["validation_roc_auc"], "best_validation_loss": item["best_validation_loss"],
            "epochs_run": item["epochs_run"], "training_seconds": round(item["training_seconds"], 2),
            "parameter_count": item["parameter_count"]}


def evaluate(labels: np.ndarray, scores: dict, source_classes, threshold_value: float) -> dict | None:
    """Test metrics (anomaly positive) and per-class detection rates; None without labelled test beats."""
    if labels.size == 0 or not np.isin(labels, (0, 1)).all():
        return None
    result = metrics.classification_metrics(labels, scores["reconstruction_error"], threshold_value)
    result["detection_rate_by_class"] = metrics.detection_rate_by_class(source_classes, scores["is_anomaly"])
    return result


def _data_sha256(spec: datasets.DatasetSpec) -> str | None:
    if spec.resolved_format() == "synthetic":
        return None
    return datasets.file_sha256(datasets.resolve_path(spec.path, spec.cache_dir))


def build_pipeline(pipeline: beam.Pipeline, config: TrainConfig, version_directory: str, data_sha256: str | None):
    """Adds the training job to ``pipeline``; returns the PCollection holding the exported model card."""
    import tensorflow_transform.beam as tft_beam

    from pipeline.transform import make_preprocessing_fn, raw_metadata

    spec = datasets.with_resolved_format(config.dataset_spec(), open_with_beam_filesystems)
    work_directory = os.path.join(version_directory, "work")
    transform_directory = os.path.join(work_directory, "transform")
    errors_path = os.path.join(version_directory, "bad_rows.jsonl")

    validated = (pipeline
                 | "Dataset" >> beam.Create([spec])
                 | "ReadRows" >> beam.ParDo(ReadRows())
                 | "Spread" >> beam.Reshuffle()
                 | "Validate" >> beam.ParDo(ValidateRows(spec)).with_outputs(ValidateRows.ERRORS, main="records"))
    errors = validated[ValidateRows.ERRORS]
    _ = (errors
         | "SortErrors" >> beam.combiners.ToList()
         | "ErrorLines" >> beam.FlatMap(lambda items: [json.dumps(item) for item in
                                                       sorted(items, key=lambda error: error["row_number"])])
         | "WriteErrors" >> beam.io.WriteToText(errors_path, shard_name_template="", num_shards=1))
    bad_row_count = errors | "CountErrors" >> beam.combiners.Count.Globally()

    split_records = validated.records | "Split" >> AssignSplits(config.split_config())
    by_split = split_records | "PartitionSplits" >> beam.Partition(
        lambda record, _: splits.SPLITS.index(record[SPLIT_KEY]), len(splits.SPLITS))
    train, validation, test = (by_split[splits.SPLITS.index(name)] for name in splits.SPLITS)
    split_counts = (split_records | "SplitNames" >> beam.Map(lambda record: record[SPLIT_KEY])
                    | "CountSplits" >> beam.combiners.Count.PerElement())

    with tft_beam.Context(temp_dir=os.path.join(work_directory, "tft_tmp")):
        train_normals = (train | "TrainNormals" >> beam.Filter(_is_training_normal)
                         | "TrainInstances" >> beam.Map(_beat_instance))
        validation_normals = (validation | "ValidationNormals" >> beam.Filter(_is_training_normal)
                              | "ValidationInstances" >> beam.Map(_beat_instance))
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
                ExportDetector(config, version_directory, transform_directory, errors_path, data_sha256),
                validation_records=beam.pvalue.AsList(validation), test_records=beam.pvalue.AsList(test),
                candidates=beam.pvalue.AsList(candidates), split_counts=beam.pvalue.AsDict(split_counts),
                bad_row_count=beam.pvalue.AsSingleton(bad_row_count),
                transform_ready=beam.pvalue.AsList(transform_ready)))


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    """Beam options from the remaining flags, defaulting to the offline in-process runner."""
    options = PipelineOptions(beam_args)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = DEFAULT_RUNNER
    return options


def run(argv=None) -> TrainResult:
    """Runs `heartwatch train` with command-line style ``argv``; returns where everything went."""
    config, beam_args = parse_beam_flags(TrainConfig, argv, prog="heartwatch train")
    from models.detection.detector import next_version_directory

    spec = datasets.with_resolved_format(config.dataset_spec(), open_with_beam_filesystems)
    data_sha256 = _data_sha256(spec)
    version_directory = next_version_directory(config.output_dir)
    os.makedirs(version_directory, exist_ok=True)
    LOGGER.info("training on %s -> %s", config.data, version_directory)
    with beam.Pipeline(options=pipeline_options(beam_args)) as pipeline:
        build_pipeline(pipeline, config, version_directory, data_sha256)
    from models.detection.detector import SAVED_MODEL_DIRECTORY, read_model_card

    report_path = os.path.join(version_directory, "report", "index.html")
    return TrainResult(version_directory=version_directory,
                       detector_directory=os.path.join(version_directory, SAVED_MODEL_DIRECTORY),
                       report_path=report_path if os.path.exists(report_path) else None,
                       errors_path=os.path.join(version_directory, "bad_rows.jsonl"),
                       summary=read_model_card(version_directory))


def format_metrics(values: dict) -> str:
    """A small text table of detection metrics (anomaly = positive)."""
    names = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc")
    lines = ["metric (anomaly = positive)  value"]
    lines += [f"{name:<28} {values[name]:.4f}" for name in names if values.get(name) is not None]
    lines.append("confusion: " + ", ".join(f"{key}={value}" for key, value in values["confusion_matrix"].items()))
    return "\n".join(lines)


def report(result: TrainResult) -> None:
    """Prints where the detector, report and bad rows went, and the test metrics (the CLI calls this)."""
    card = result.summary
    print(f"detector: {result.detector_directory}")
    print(f"model card: {os.path.join(result.version_directory, 'model_card.json')}")
    print(f"report: {result.report_path}")
    print(f"bad rows: {card['data']['bad_rows']} -> {result.errors_path}")
    print(f"selected model: {card['model']['name']} ({card['model']['parameter_count']} parameters); "
          f"threshold {card['threshold']['value']:.6f} by {card['threshold']['method']}")
    if card.get("test_metrics"):
        print(format_metrics(card["test_metrics"]))
        for name, item in card["test_metrics"]["detection_rate_by_class"].items():
            print(f"  class {name}: flagged {item['flagged']}/{item['beats']} ({item['detection_rate']:.3f})")
