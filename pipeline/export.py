"""Calibrate, evaluate and export the selected candidate: the last step of `heartwatch train`.

``ExportDetector`` rebuilds the best candidate from its weights, wraps it with the analysed
normalisation in a ``DetectorModule``, calibrates the threshold on the validation split's
``anomaly_score`` (the model's own score), evaluates the test split with the module's own outputs
(its ``is_anomaly`` decides what is flagged), and writes the version into the staging directory
through the file layer: the SavedModel, ``test_scores.npz``, ``metrics.json``, the report and the
model card (without a version number: ``ArtifactRoot.publish`` gives it one).
"""

from __future__ import annotations

import dataclasses
import io
import logging

import apache_beam as beam
import numpy as np

from models.common import artifacts, files
from models.detection import metrics, thresholds
from models.ecg import BEAT_KEY, BEAT_LENGTH, ROW_NUMBER_KEY, SOURCE_CLASS_KEY
from models.training.candidates import CandidateConfig
from pipeline.ecg_candidates import candidate_summary
from pipeline.ecg_steps import labels, stack

LOGGER = logging.getLogger(__name__)
# Test-split scores as computed at training time, to check that reloaded exports agree.
TEST_SCORES_FILE = "test_scores.npz"
METRICS_FILE = "metrics.json"
ERRORS_FILE = "bad_rows.jsonl"
REPORT_DIRECTORY = "report"
REPORT_PAGE = "index.html"
WORK_DIRECTORY = "work"


def evaluate(test_labels: np.ndarray, scores: dict, source_classes) -> dict | None:
    """Test metrics (anomaly positive) from the detector's outputs; None without labelled test beats.

    Ranking metrics use ``anomaly_score``; what counts as flagged is the detector's decision at its
    own (float32) threshold, so the metrics describe exactly what the SavedModel serves.
    """
    if test_labels.size == 0 or not np.isin(test_labels, (0, 1)).all():
        return None
    result = metrics.classification_metrics(test_labels, scores["anomaly_score"], float(scores["threshold"][0]))
    result["detection_rate_by_class"] = metrics.detection_rate_by_class(source_classes, scores["is_anomaly"])
    return result


def scores_archive_bytes(row_numbers: np.ndarray, scores: dict) -> bytes:
    """``test_scores.npz`` content: row numbers with the test split's anomaly scores and errors."""
    buffer = io.BytesIO()
    np.savez(buffer, row_number=np.asarray(row_numbers, dtype=np.int64), anomaly_score=scores["anomaly_score"],
             reconstruction_error=scores["reconstruction_error"])
    return buffer.getvalue()


def format_metrics(values: dict) -> str:
    """A small text table of detection metrics (anomaly = positive)."""
    names = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc")
    lines = ["metric (anomaly = positive)  value"]
    lines += [f"{name:<28} {values[name]:.4f}" for name in names if values.get(name) is not None]
    lines.append("confusion: " + ", ".join(f"{key}={value}" for key, value in values["confusion_matrix"].items()))
    return "\n".join(lines)


class ExportDetector(beam.DoFn):
    """Calibrates, evaluates and writes the best candidate into the staging directory; yields its card.

    ``config`` is the job's ``TrainConfig``.
    """

    def __init__(self, config, staging_directory: str, transform_directory: str, data_sha256: str | None):
        self.config = config
        self.staging_directory = staging_directory
        self.transform_directory = transform_directory
        self.data_sha256 = data_sha256

    def process(self, best, validation_records, test_records, candidates, split_counts, bad_row_count,
                transform_ready):
        from models.detection.detector import SAVED_MODEL_DIRECTORY, DetectorModule
        from models.family import registry
        from pipeline import report
        from pipeline.transform import TransformGraph, affine_statistics

        config = self.config
        candidate = CandidateConfig.from_dict(best["candidate"])
        model = registry.build(candidate.model, candidate.parameters)
        model(np.zeros((1, BEAT_LENGTH), np.float32))
        model.load_weights(best["weights_path"])
        transform = TransformGraph(self.transform_directory)
        detector = DetectorModule(transform, model)

        validation_scores = detector.score(stack(validation_records, BEAT_KEY))["anomaly_score"]
        threshold = thresholds.calibrate(config.threshold_config(), validation_scores, labels(validation_records))
        detector.set_threshold(threshold.value)
        LOGGER.info("threshold %.6f by %s", threshold.value, threshold.method)

        test_beats, test_labels = stack(test_records, BEAT_KEY), labels(test_records)
        test_scores = detector.score(test_beats)
        test_metrics = evaluate(test_labels, test_scores, [record[SOURCE_CLASS_KEY] for record in test_records])

        detector.save(files.join(self.staging_directory, SAVED_MODEL_DIRECTORY))
        row_numbers = np.asarray([record[ROW_NUMBER_KEY] for record in test_records], dtype=np.int64)
        files.write_bytes(files.join(self.staging_directory, TEST_SCORES_FILE), scores_archive_bytes(row_numbers,
                                                                                                  test_scores))
        summaries = [candidate_summary(item) for item in candidates]
        files.write_json(files.join(self.staging_directory, METRICS_FILE),
                         {"test": test_metrics, "threshold": threshold.to_dict(), "candidates": summaries})
        card = self.model_card(best, threshold, test_metrics, summaries, split_counts, bad_row_count,
                               affine_statistics(transform, config.normalization))
        if config.report:
            report.write_report(
                files.join(self.staging_directory, REPORT_DIRECTORY), card=card, history=best["history"],
                test_beats=test_beats, test_labels=test_labels, test_scores=test_scores,
                normalize=lambda beats: transform(beats).numpy(),
                reconstruct=lambda inputs: model(inputs, training=False).numpy())
        artifacts.write_card(self.staging_directory, card)
        LOGGER.info("exported the detector into %s", self.staging_directory)
        yield card

    def model_card(self, best, threshold, test_metrics, summaries, split_counts, bad_row_count, statistics) -> dict:
        """The model card without its version number (``ArtifactRoot.publish`` adds it)."""
        from models.detection.detector import OUTPUT_KEYS

        config = self.config
        return {
            "name": "heartwatch ECG detector",
            "created": artifacts.utc_now(),
            "signature": {"input": f"beats float32 [batch, {BEAT_LENGTH}] raw (un-normalised)",
                          "outputs": list(OUTPUT_KEYS),
                          "anomaly_score": "the model's own score (Autoencoder.scores), in normalised space",
                          "error": "mean absolute reconstruction error in normalised space",
                          "rule": "is_anomaly = anomaly_score > threshold"},
            "data": {"source": config.data, "format": config.dataset_spec().resolved_format(),
                     "sha256": self.data_sha256, "valid_rows": int(sum(split_counts.values())),
                     "bad_rows": int(bad_row_count), "rows_by_split": dict(sorted(split_counts.items())),
                     "split": dataclasses.asdict(config.split_config())},
            "normalization": statistics,
            "model": {**best["candidate"], "parameter_count": best["parameter_count"],
                      "epochs_run": best["epochs_run"], "best_validation_loss": best["best_validation_loss"],
                      "selection_metric": best["selection_metric"], "selection_score": best["selection_score"]},
            "candidates": summaries,
            "threshold": threshold.to_dict(),
            "test_metrics": test_metrics,
            "libraries": artifacts.library_versions(),
        }
