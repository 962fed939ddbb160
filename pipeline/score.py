"""`heartwatch score`: batch scoring of any supported dataset with an exported detector (Beam job).

Output CSV, one row per valid beat: ``index`` (the row number in the input), ``reconstruction_error``,
``threshold``, ``is_anomaly`` (0/1) and, when the input is labelled, ``label`` (1 = anomaly) and
``source_class``. Bad rows go to ``<out>.errors.jsonl`` with their reason. Scoring goes through Beam's
``RunInference`` with a small ``ModelHandler`` that loads the detector with TensorFlow alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from models.ecg import sources as datasets
from models.detection import metrics
from models.ecg import BEAT_KEY, IS_ANOMALY_KEY, ROW_NUMBER_KEY, SOURCE_CLASS_KEY, UNKNOWN_LABEL
from models.common.flags import parse_beam_flags
from pipeline.config import ScoreConfig
from pipeline.train import ReadRows, ValidateRows, format_metrics, open_with_beam_filesystems, pipeline_options

LOGGER = logging.getLogger(__name__)
CSV_COLUMNS = ("index", "reconstruction_error", "threshold", "is_anomaly", "label", "source_class")


class DetectorModelHandler(ModelHandler):
    """RunInference handler for heartwatch detectors: batches of raw beats in, score dicts out."""

    def __init__(self, model_path: str, max_batch_size: int = 1024):
        super().__init__()
        self.model_path = model_path
        self.max_batch_size = max_batch_size

    def load_model(self):
        from models.detection.detector import load_detector

        return load_detector(self.model_path)

    def run_inference(self, batch, model, inference_args=None):
        scores = model.score(np.stack(batch), batch_size=self.max_batch_size)
        return [PredictionResult(example, {"reconstruction_error": float(scores["reconstruction_error"][index]),
                                           "threshold": float(scores["threshold"][index]),
                                           "is_anomaly": bool(scores["is_anomaly"][index])})
                for index, example in enumerate(batch)]

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self.max_batch_size}


def _keyed_beat(record):
    return ((record[ROW_NUMBER_KEY], record[IS_ANOMALY_KEY], record[SOURCE_CLASS_KEY]),
            np.asarray(record[BEAT_KEY], dtype=np.float32))


def csv_row(keyed_result) -> str:
    """One output CSV line from ``((row_number, is_anomaly, source_class), PredictionResult)``."""
    (row_number, is_anomaly, source_class), result = keyed_result
    inference = result.inference
    label = "" if is_anomaly == UNKNOWN_LABEL else str(is_anomaly)
    source_class = source_class.replace(",", " ")
    return (f"{row_number},{inference['reconstruction_error']:.8g},{inference['threshold']:.8g},"
            f"{int(inference['is_anomaly'])},{label},{source_class}")


@dataclasses.dataclass
class ScoreResult:
    """Where the scores went, how many rows, and metrics when the input is labelled."""

    out: str
    errors_path: str
    scored_rows: int
    bad_rows: int
    metrics: dict | None


def read_scores(path: str) -> dict[str, np.ndarray]:
    """Reads a score CSV back into arrays sorted by index (for summaries and tests)."""
    with open(path) as handle:
        header = handle.readline().strip().split(",")
        rows = [line.rstrip("\n").split(",") for line in handle if line.strip()]
    if header != list(CSV_COLUMNS):
        raise ValueError(f"{path} is not a heartwatch score file (header {header})")
    rows.sort(key=lambda row: int(row[0]))
    columns = list(zip(*rows)) if rows else [()] * len(CSV_COLUMNS)
    return {
        "index": np.asarray(columns[0], dtype=np.int64),
        "reconstruction_error": np.asarray(columns[1], dtype=np.float64),
        "threshold": np.asarray(columns[2], dtype=np.float64),
        "is_anomaly": np.asarray(columns[3], dtype=np.int64),
        "label": np.asarray([int(value) if value else UNKNOWN_LABEL for value in columns[4]], dtype=np.int64),
        "source_class": np.asarray(columns[5], dtype=str),
    }


def run(argv=None) -> ScoreResult:
    """Runs `heartwatch score`; returns counts and, for labelled data, the metrics."""
    config, beam_args = parse_beam_flags(ScoreConfig, argv, prog="heartwatch score")
    from models.detection.detector import resolve_version_directory

    model_directory = resolve_version_directory(config.model)
    spec = datasets.with_resolved_format(config.dataset_spec(), open_with_beam_filesystems)
    errors_path = f"{config.out}.errors.jsonl"
    os.makedirs(os.path.dirname(os.path.abspath(config.out)), exist_ok=True)
    handler = KeyedModelHandler(DetectorModelHandler(model_directory, config.batch_size))
    with beam.Pipeline(options=pipeline_options(beam_args)) as pipeline:
        validated = (pipeline
                     | "Dataset" >> beam.Create([spec])
                     | "ReadRows" >> beam.ParDo(ReadRows())
                     | "Validate" >> beam.ParDo(ValidateRows(spec)).with_outputs(ValidateRows.ERRORS, main="records"))
        _ = (validated.records
             | "Key" >> beam.Map(_keyed_beat)
             | "Score" >> RunInference(handler)
             | "CsvRows" >> beam.Map(csv_row)
             | "WriteScores" >> beam.io.WriteToText(config.out, shard_name_template="", num_shards=1,
                                                    header=",".join(CSV_COLUMNS)))
        _ = (validated[ValidateRows.ERRORS]
             | "ErrorLines" >> beam.Map(json.dumps)
             | "WriteErrors" >> beam.io.WriteToText(errors_path, shard_name_template="", num_shards=1))
    scores = read_scores(config.out)
    with open(errors_path) as handle:
        bad_rows = sum(1 for line in handle if line.strip())
    labelled = scores["label"].size and (scores["label"] != UNKNOWN_LABEL).all()
    result_metrics = None
    if labelled and 0 < int(scores["label"].sum()) < scores["label"].size:
        result_metrics = metrics.classification_metrics(scores["label"], scores["reconstruction_error"],
                                                        float(scores["threshold"][0]))
    LOGGER.info("scored %d beats with %s (%d bad rows) -> %s", scores["index"].size, model_directory, bad_rows,
                config.out)
    return ScoreResult(out=config.out, errors_path=errors_path, scored_rows=int(scores["index"].size),
                       bad_rows=bad_rows, metrics=result_metrics)


def report(result: ScoreResult) -> None:
    """Prints where the scores went (the CLI calls this)."""
    print(f"scores: {result.out} ({result.scored_rows} beats); bad rows: {result.bad_rows} -> {result.errors_path}")
    if result.metrics:
        print(format_metrics(result.metrics))

