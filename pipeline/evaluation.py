"""Scoring a materialised split with ``RunInference`` and reducing it to mergeable summaries.

``ScoreBeatFiles`` reads a split's TFRecord shards (``pipeline.beat_files``) once an upstream step has
produced the model they are scored with (its input is that step's output: one trigger element), and
scores the raw beats with ``RunInference`` and ``pipeline.score.DetectorModelHandler``, the same
handler `heartwatch score` uses. What comes out is reduced without ever holding a split in a list:

- ``score_pairs`` -> ``ScoreSummaryFn`` (``pipeline.combiners``): a mergeable summary of
  ``(label, anomaly_score)`` per class, from which ``calibrate`` takes the threshold and
  ``classification`` the detection metrics (``models.detection.summaries``; exact while a class is
  small, a fine fixed-bin histogram with stated error bounds beyond);
- ``flag_counts``: beats and flagged beats per source class (``detection_rates``);
- ``SampleScored``: a bounded, deterministic sample (the smallest ``sample_key`` s) for the report's
  plots and ``test_scores.npz``.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from models.detection import metrics, thresholds
from models.ecg import (
    ANOMALY,
    BEAT_KEY,
    IS_ANOMALY_KEY,
    NORMAL,
    ROW_NUMBER_KEY,
    SOURCE_CLASS_KEY,
    SOURCE_KEY,
    UNKNOWN_LABEL,
)
from pipeline.beat_files import SAMPLE_KEY, decode_record

SAMPLE_LIMIT = 10_000
FLAGGED_KEY = "flagged"
METADATA_KEYS = (SOURCE_KEY, ROW_NUMBER_KEY, IS_ANOMALY_KEY, SOURCE_CLASS_KEY, SAMPLE_KEY)

try:  # the mergeable summaries (helper "summaries"); until they are merged, exact score arrays
    from models.detection import summaries
    from pipeline.combiners import ScoreSummaryFn
except ImportError:  # pragma: no cover - removed once models/detection/summaries.py is merged
    summaries = None
    ScoreSummaryFn = None


class ExactScores:
    """Stand-in for ``summaries.ScoreSummary`` until it is merged: every (label, score) kept exactly."""

    def __init__(self):
        self.labels, self.scores = [], []

    def count(self, labels=(NORMAL, ANOMALY, UNKNOWN_LABEL)) -> int:
        """Pairs whose label is among ``labels``."""
        return int(np.isin(np.asarray(self.labels, np.int64), labels).sum())

    def arrays(self, labels=(NORMAL, ANOMALY, UNKNOWN_LABEL)) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, labels)`` of the pairs whose label is among ``labels``."""
        label_array = np.asarray(self.labels, np.int64)
        keep = np.isin(label_array, labels)
        return np.asarray(self.scores, np.float64)[keep], label_array[keep]


class ExactScoresFn(beam.CombineFn):
    """``(label, score)`` pairs -> ``ExactScores`` (the stand-in of ``ScoreSummaryFn``)."""

    def create_accumulator(self):
        return ExactScores()

    def add_input(self, accumulator, element):
        accumulator.labels.append(int(element[0]))
        accumulator.scores.append(float(element[1]))
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = ExactScores()
        for accumulator in accumulators:
            merged.labels += accumulator.labels
            merged.scores += accumulator.scores
        return merged

    def extract_output(self, accumulator):
        return accumulator


def summary_fn() -> beam.CombineFn:
    """The CombineFn that summarises ``(label, anomaly_score)`` pairs."""
    return ScoreSummaryFn() if ScoreSummaryFn is not None else ExactScoresFn()


def calibrate(summary, config: thresholds.ThresholdConfig) -> thresholds.Threshold:
    """The threshold of ``config`` from a validation summary (``thresholds.calibrate`` semantics)."""
    if summary.count() == 0:
        raise ValueError("cannot calibrate a threshold: no validation beats were scored")
    if summaries is not None:
        return summaries.calibrate_from_summary(summary, config)
    scores, labels = summary.arrays()
    return thresholds.calibrate(config, scores, labels)


def is_evaluable(summary) -> bool:
    """Metrics need scored beats, every one labelled (as ``export.evaluate`` always required)."""
    return summary.count() > 0 and summary.count((UNKNOWN_LABEL,)) == 0


def classification(summary, threshold_value: float) -> dict | None:
    """``metrics.classification_metrics`` of a summary at a threshold; None unless ``is_evaluable``."""
    if not is_evaluable(summary):
        return None
    if summaries is not None:
        return summaries.metrics_from_summary(summary, threshold_value)
    scores, labels = summary.arrays((NORMAL, ANOMALY))
    return metrics.classification_metrics(labels, scores, threshold_value)


def selection_roc_auc(summary) -> float | None:
    """Validation ROC-AUC when every validation beat is labelled and both classes occur, else None."""
    total = summary.count()
    if not is_evaluable(summary) or not 0 < summary.count((ANOMALY,)) < total:
        return None
    return classification(summary, 0.0)["roc_auc"]


def keyed_beat(record: dict):
    """``(metadata, raw beat)``: what ``RunInference`` with a keyed handler takes."""
    return tuple(record[key] for key in METADATA_KEYS), record[BEAT_KEY]


def scored_row(keyed_result) -> dict:
    """A scored beat as a flat dict: its metadata (``is_anomaly`` is the label), its raw beat and the detector's
    outputs for it (its decision as ``flagged``)."""
    metadata, result = keyed_result
    outputs = result.inference
    return {**dict(zip(METADATA_KEYS, metadata)), BEAT_KEY: np.asarray(result.example, np.float32),
            "anomaly_score": outputs["anomaly_score"], "reconstruction_error": outputs["reconstruction_error"],
            "threshold": outputs["threshold"], FLAGGED_KEY: bool(outputs["is_anomaly"])}


def score_pair(row: dict) -> tuple[int, float]:
    """``(label, anomaly_score)``, the input of the summary CombineFn."""
    return int(row[IS_ANOMALY_KEY]), float(row["anomaly_score"])


def flag_key(row: dict) -> tuple[str, bool]:
    """``(source class, flagged)``: counted per key for the detection rate of every class."""
    return str(row[SOURCE_CLASS_KEY]), row[FLAGGED_KEY]


def detection_rates(flag_counts) -> dict:
    """``metrics.detection_rate_by_class`` from ``((source class, flagged), count)`` pairs."""
    totals = {}
    for (name, flagged), count in flag_counts:
        beats, flagged_beats = totals.get(name, (0, 0))
        totals[name] = (beats + count, flagged_beats + (count if flagged else 0))
    return {name: {"beats": beats, "flagged": flagged, "detection_rate": flagged / beats}
            for name, (beats, flagged) in sorted(totals.items())}


class ScoreBeatFiles(beam.PTransform):
    """Trigger element -> scored beats of the split files ``files`` (a side input), one dict per beat.

    The files are listed only when the trigger arrives (the model in ``model_directory`` exists by
    then); ``ReadAllFromTFRecord`` reshuffles the file ranges, so ``RunInference`` loads the model in
    a later stage than the one that wrote it.
    """

    def __init__(self, model_directory: str, files, batch_size: int = 1024):
        super().__init__()
        self.model_directory = model_directory
        self.files = files
        self.batch_size = batch_size

    def expand(self, trigger):
        from pipeline.score import DetectorModelHandler

        handler = KeyedModelHandler(DetectorModelHandler(self.model_directory, self.batch_size))
        return (trigger
                | "ListFiles" >> beam.FlatMap(lambda _, paths: sorted(paths), paths=beam.pvalue.AsList(self.files))
                | "ReadBeats" >> beam.io.ReadAllFromTFRecord()
                | "Decode" >> beam.Map(decode_record)
                | "Key" >> beam.Map(keyed_beat)
                | "Score" >> RunInference(handler)
                | "Rows" >> beam.Map(scored_row))


class SampleScored(beam.PTransform):
    """Scored rows -> one list of at most ``limit`` of them: those with the smallest ``sample_key`` s."""

    def __init__(self, limit: int = SAMPLE_LIMIT):
        super().__init__()
        self.limit = limit

    def expand(self, rows):
        return rows | "Smallest" >> beam.combiners.Top.Of(self.limit, key=lambda row: row[SAMPLE_KEY], reverse=True)
