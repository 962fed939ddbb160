"""Scoring a materialised split with ``RunInference`` and reducing it to mergeable summaries.

``ScoreBeatFiles`` reads a split's TFRecord shards (``pipeline.beat_files``) once an upstream step has
produced the model they are scored with (its input is that step's output: one trigger element), and
scores the raw beats, a chunk per element, with ``RunInference`` and
``pipeline.score.DetectorModelHandler``, the same handler `heartwatch score` uses. Its output is
``(BeatChunk, outputs)`` pairs (one array per detector output), reduced without ever holding a split:

- ``score_pairs`` -> ``summary_fn()`` (``pipeline.combiners.ScoreSummaryFn``): a mergeable summary of
  ``(label, anomaly_score)`` per class, from which ``calibrate`` takes the threshold and
  ``classification`` the detection metrics (``models.detection.summaries``; exact while a class is
  small, a fine fixed-bin histogram with stated error bounds beyond);
- ``flag_counts``: beats and flagged beats per source class (``detection_rates``);
- ``SampleScored``: a bounded, deterministic sample (the beats of smallest ``sample_priority``) for the
  report's plots and ``test_scores.npz``; only beats below a priority cutoff sized from the split's
  count ever become per-beat rows.
"""

from __future__ import annotations

import collections

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from models.detection import summaries, thresholds
from models.ecg import (
    ANOMALY,
    BEAT_KEY,
    IS_ANOMALY_KEY,
    ROW_NUMBER_KEY,
    SOURCE_CLASS_KEY,
    SOURCE_KEY,
    UNKNOWN_LABEL,
)
from pipeline.beat_files import decode_chunk
from pipeline.combiners import ScoreSummaryFn

SAMPLE_LIMIT = 10_000
SAMPLE_OVERSHOOT = 2.0
FLAGGED_KEY = "flagged"
PRIORITY_KEY = "priority"
_MIX = np.uint64(0x9E3779B97F4A7C15)

def summary_fn() -> beam.CombineFn:
    """The CombineFn that summarises ``(label, anomaly_score)`` pairs."""
    return ScoreSummaryFn()


def calibrate(summary, config: thresholds.ThresholdConfig) -> thresholds.Threshold:
    """The threshold of ``config`` from a validation summary (``thresholds.calibrate`` semantics)."""
    if summary.count() == 0:
        raise ValueError("cannot calibrate a threshold: no validation beats were scored")
    return summaries.calibrate_from_summary(summary, config)


def is_evaluable(summary) -> bool:
    """Metrics need scored beats, every one labelled (as ``export.evaluate`` always required)."""
    return summary.count() > 0 and summary.count((UNKNOWN_LABEL,)) == 0


def classification(summary, threshold_value: float) -> dict | None:
    """``metrics.classification_metrics`` of a summary at a threshold; None unless ``is_evaluable``."""
    if not is_evaluable(summary):
        return None
    return summaries.metrics_from_summary(summary, threshold_value)


def selection_roc_auc(summary) -> float | None:
    """Validation ROC-AUC when every validation beat is labelled and both classes occur, else None."""
    total = summary.count()
    if not is_evaluable(summary) or not 0 < summary.count((ANOMALY,)) < total:
        return None
    return classification(summary, 0.0)["roc_auc"]


def sample_priority(sample_keys: np.ndarray) -> np.ndarray:
    """A per-beat sampling priority, uniform in [0, 2**63) even within one split (whose split keys share a range)."""
    with np.errstate(over="ignore"):
        return ((np.asarray(sample_keys).astype(np.uint64) * _MIX) >> np.uint64(1)).astype(np.int64)


def scored_chunk(keyed_result) -> tuple:
    """``(BeatChunk, outputs)`` of one ``RunInference`` result."""
    chunk, result = keyed_result
    return chunk, result.inference


def score_pairs(scored) -> list[tuple[int, float]]:
    """``(label, anomaly_score)`` of every beat of a scored chunk, the input of the summary CombineFn."""
    chunk, outputs = scored
    return list(zip(chunk.is_anomaly.tolist(), outputs["anomaly_score"].tolist()))


def flag_counts(scored) -> list[tuple[tuple[str, bool], int]]:
    """``((source class, flagged), beats)`` of a scored chunk, summed per key for ``detection_rates``."""
    chunk, outputs = scored
    return list(collections.Counter(zip((str(name) for name in chunk.source_classes),
                                        outputs["is_anomaly"].astype(bool).tolist())).items())


def detection_rates(flag_counts) -> dict:
    """``metrics.detection_rate_by_class`` from ``((source class, flagged), count)`` pairs."""
    totals = {}
    for (name, flagged), count in flag_counts:
        beats, flagged_beats = totals.get(name, (0, 0))
        totals[name] = (beats + count, flagged_beats + (count if flagged else 0))
    return {name: {"beats": beats, "flagged": flagged, "detection_rate": flagged / beats}
            for name, (beats, flagged) in sorted(totals.items())}


def sampled_rows(scored, expected_beats: int, limit: int = SAMPLE_LIMIT) -> list[dict]:
    """Per-beat rows of the chunk's beats whose priority is under the cutoff that keeps about
    ``SAMPLE_OVERSHOOT * limit`` of ``expected_beats`` (all of them when the split is small)."""
    chunk, outputs = scored
    fraction = min(1.0, SAMPLE_OVERSHOOT * limit / max(expected_beats, 1))
    priorities = sample_priority(chunk.sample_keys)
    chosen = np.flatnonzero(priorities < fraction * float(1 << 63)) if fraction < 1.0 else np.arange(len(chunk))
    return [{SOURCE_KEY: chunk.source, ROW_NUMBER_KEY: int(chunk.row_numbers[index]),
             IS_ANOMALY_KEY: int(chunk.is_anomaly[index]), SOURCE_CLASS_KEY: str(chunk.source_classes[index]),
             BEAT_KEY: chunk.beats[index], PRIORITY_KEY: int(priorities[index]),
             "anomaly_score": float(outputs["anomaly_score"][index]),
             "reconstruction_error": float(outputs["reconstruction_error"][index]),
             "threshold": float(outputs["threshold"][index]), FLAGGED_KEY: bool(outputs["is_anomaly"][index])}
            for index in chosen]


class ScoreBeatFiles(beam.PTransform):
    """Trigger element -> ``(BeatChunk, outputs)`` of the split files ``files`` (a side input).

    The files are listed only when the trigger arrives (the model in ``model_directory`` exists by
    then); ``ReadAllFromTFRecord`` reshuffles the file ranges, so ``RunInference`` loads the model in
    a later stage than the one that wrote it.
    """

    def __init__(self, model_directory: str, files, batch_size: int = 4096):
        super().__init__()
        self.model_directory = model_directory
        self.files = files
        self.batch_size = batch_size

    def expand(self, trigger):
        from pipeline.score import DetectorModelHandler

        handler = KeyedModelHandler(DetectorModelHandler(self.model_directory, self.batch_size, chunked=True))
        return (trigger
                | "ListFiles" >> beam.FlatMap(lambda _, paths: sorted(paths), paths=beam.pvalue.AsList(self.files))
                | "ReadChunks" >> beam.io.ReadAllFromTFRecord()
                | "Decode" >> beam.Map(decode_chunk)
                | "Key" >> beam.Map(lambda chunk: (chunk, chunk.beats))
                | "Score" >> RunInference(handler)
                | "Outputs" >> beam.Map(scored_chunk))


class SampleScored(beam.PTransform):
    """Scored chunks -> one list of at most ``limit`` per-beat rows: those of smallest priority.

    ``expected_beats`` is a singleton side input: how many beats the split holds (it sizes the cutoff).
    """

    def __init__(self, expected_beats, limit: int = SAMPLE_LIMIT):
        super().__init__()
        self.expected_beats = expected_beats
        self.limit = limit

    def expand(self, scored):
        return (scored
                | "Candidates" >> beam.FlatMap(sampled_rows, beam.pvalue.AsSingleton(self.expected_beats), self.limit)
                | "Smallest" >> beam.combiners.Top.Of(self.limit, key=lambda row: row[PRIORITY_KEY], reverse=True))
