"""Calibrate, export, evaluate and describe the selected candidate: the last steps of `heartwatch train`.

``ExportDetector`` calibrates the threshold from the best candidate's validation summary (its own
``anomaly_score`` s, scored by its provisional detector with ``RunInference``), rebuilds the model from
its weights (or, with ``--refit``, fits it again on the train and validation normals together for the
first fit's best epoch count, ``refit_best``, which carries the threshold to the refit's scale),
wraps it with the analysed normalisation in a ``DetectorModule`` that owns the calibrated threshold,
and writes the SavedModel and a first model card into the staging directory, so that the test split
can be scored with the exported detector itself (the test split never trains, selects or calibrates
anything). ``FinishVersion`` then turns the test split's aggregates (score summary, flagged beats
per class) and its bounded sample into the test metrics, ``test_scores.npz`` (the sampled test
beats' scores), ``metrics.json``, the report and the final model card (without a version number:
``ArtifactRoot.publish`` gives it one). Everything goes through the file layer.
"""

from __future__ import annotations

import dataclasses
import io
import logging

import apache_beam as beam
import numpy as np

from models.common import artifacts, files
from models.detection import thresholds
from models.ecg import BEAT_KEY, BEAT_LENGTH, IS_ANOMALY_KEY, ROW_NUMBER_KEY, SOURCE_KEY
from models.training.candidates import CandidateConfig
from pipeline import evaluation
from pipeline.ecg_candidates import candidate_summary
from pipeline.ecg_steps import combined_sha256

LOGGER = logging.getLogger(__name__)
# Test-split scores as computed at training time (a bounded sample), to check that reloaded exports agree.
TEST_SCORES_FILE = "test_scores.npz"
METRICS_FILE = "metrics.json"
ERRORS_FILE = "bad_rows.jsonl"
REPORT_DIRECTORY = "report"
REPORT_PAGE = "index.html"
WORK_DIRECTORY = "work"
REFERENCE_BATCH = 1024


def scores_archive_bytes(rows: list[dict]) -> bytes:
    """``test_scores.npz`` content: source, row number, anomaly score and error of the sampled test beats."""
    rows = sorted(rows, key=lambda row: (row[SOURCE_KEY], row[ROW_NUMBER_KEY]))
    buffer = io.BytesIO()
    np.savez(buffer, source=np.asarray([row[SOURCE_KEY] for row in rows], dtype=str),
             row_number=np.asarray([row[ROW_NUMBER_KEY] for row in rows], dtype=np.int64),
             anomaly_score=np.asarray([row["anomaly_score"] for row in rows], dtype=np.float32),
             reconstruction_error=np.asarray([row["reconstruction_error"] for row in rows], dtype=np.float32))
    return buffer.getvalue()


def format_metrics(values: dict) -> str:
    """A small text table of detection metrics (anomaly = positive)."""
    names = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc")
    lines = ["metric (anomaly = positive)  value"]
    lines += [f"{name:<28} {values[name]:.4f}" for name in names if values.get(name) is not None]
    lines.append("confusion: " + ", ".join(f"{key}={value}" for key, value in values["confusion_matrix"].items()))
    return "\n".join(lines)


def rebuild_model(best: dict):
    """The selected candidate's autoencoder with its best weights."""
    from models.family import registry

    candidate = CandidateConfig.from_dict(best["candidate"])
    model = registry.build(candidate.model, candidate.parameters)
    model(np.zeros((1, BEAT_LENGTH), np.float32))
    model.load_weights(best["weights_path"])
    return model


def mean_scores(models: list, batches, score_error: str) -> list[float]:
    """The mean ``anomaly_score`` (on ``score_error``) of each of ``models`` over input ``batches``, streamed once."""
    totals, count = [0.0] * len(models), 0
    for inputs in batches:
        for index, model in enumerate(models):
            totals[index] += float(np.asarray(model.anomaly_score(inputs, score_error), np.float64).sum())
        count += len(inputs)
    if not count:
        raise ValueError("no beats to take a mean score over")
    return [total / count for total in totals]


def refit_best(config, best: dict, threshold: thresholds.Threshold, transform, work_directory: str,
               train_files: list, validation_files: list, train_beats: int, validation_beats: int,
               train_anomalies: int = 0, validation_anomalies: int = 0) -> tuple:
    """Fits the selected candidate again on the train + validation normals; returns ``(best, threshold)`` for it.

    ``config`` is the TrainConfig. The refit runs the first fit's best epoch count (no early stopping:
    the validation normals are training data now; Keras still gets them as its validation data).
    Selection and calibration stay the first fit's, on held-out validation scores: the threshold is
    carried to the refit's scale by the ratio of the two models' mean scores on the train split's
    normals, which both learnt from (``thresholds.transfer_threshold``), never calibrated on beats
    the refit has seen. With anomaly exposure the labelled anomalies of both splits join the refit.
    ``best`` comes back with the refit's weights and a ``refit`` card entry.
    """
    from pipeline.beat_files import training_dataset
    from pipeline.ecg_candidates import fit_from_files, weights_path

    epochs = int(best["best_epoch"])
    candidate = dataclasses.replace(CandidateConfig.from_dict(best["candidate"]), epochs=epochs,
                                    early_stopping_patience=0)
    result = fit_from_files(candidate, transform, list(train_files) + list(validation_files),
                            train_beats + validation_beats, validation_files, validation_beats, config.seed,
                            config.verbose, config.shuffle_buffer, config.anomaly_exposure,
                            train_anomalies + validation_anomalies, validation_anomalies)
    path = weights_path(work_directory, f"{candidate.name}.refit")
    result.model.save_weights(path)

    reference_batches = (inputs for inputs, _ in training_dataset(train_files, transform, train_beats,
                                                                   REFERENCE_BATCH))
    first_mean, refit_mean = mean_scores([rebuild_model(best), result.model], reference_batches, config.score_error)
    value = thresholds.transfer_threshold(threshold.value, first_mean, refit_mean)
    LOGGER.info("refit %s on %d train + validation normals for %d epochs in %.1f s; threshold %.6f -> %.6f",
                candidate.name, train_beats + validation_beats, epochs, result.seconds, threshold.value, value)
    refit = {"enabled": True, "epochs": epochs, "splits": ["train", "validation"],
             "normal_beats": int(train_beats + validation_beats), "seconds": round(result.seconds, 2),
             "final_loss": result.history["loss"][-1],
             "threshold": {"first_fit_value": threshold.value, "first_fit_mean_train_score": first_mean,
                           "refit_mean_train_score": refit_mean,
                           "rule": "first fit's validation threshold x refit / first-fit mean score on the "
                                   "train split's normals (the drift reference's quantiles likewise)"}}
    transferred = thresholds.Threshold(value, threshold.method, {**threshold.parameters, "transferred_to_refit": True})
    return {**best, "weights_path": path, "refit": refit}, transferred


def training_summary(best: dict) -> dict:
    """The card's account of what the exported weights learnt from: the first fit, and the refit if any."""
    weight = best.get("anomaly_exposure", 0.0)
    first = {"splits": ["train"], "normal_beats": best.get("train_normal_beats"), "epochs_run": best["epochs_run"],
             "best_epoch": best["best_epoch"],
             "anomaly_exposure": {"weight": weight, "anomalies": best.get("train_anomalies", 0) if weight else 0,
                                  "loss": "models.family.exposure.AnomalyExposureLoss" if weight else None},
             "early_stopping": ("on the validation beats' exposure loss (normals and labelled anomalies)" if weight
                                else "on the validation normals' loss")}
    refit = best.get("refit") or {"enabled": False}
    return {"first_fit": first, "refit": refit,
            "exported_weights": "refit on train + validation normals" if refit["enabled"] else "first fit"}


def model_card(config, best: dict, threshold: dict, test_metrics, summaries: list, data: dict,
               statistics: dict) -> dict:
    """The model card without its version number (``ArtifactRoot.publish`` adds it); ``config`` is the TrainConfig."""
    from models.detection.detector import OUTPUT_KEYS

    return {
        "name": "heartwatch ECG detector",
        "created": artifacts.utc_now(),
        "signature": {"input": f"beats float32 [batch, {BEAT_LENGTH}] raw (un-normalised)",
                      "outputs": list(OUTPUT_KEYS),
                      "anomaly_score": f"the model's own score (Autoencoder.scores) on the {config.score_error} "
                                       "of the absolute reconstruction errors, in normalised space",
                      "error": "mean absolute reconstruction error in normalised space",
                      "rule": "is_anomaly = anomaly_score > threshold"},
        "data": {"source": config.data, "format": config.dataset_spec().resolved_format(), **data,
                 "split": dataclasses.asdict(config.split_config())},
        "normalization": statistics,
        "model": {**best["candidate"], "parameter_count": best["parameter_count"],
                  "epochs_run": best["epochs_run"], "best_epoch": best["best_epoch"],
                  "best_validation_loss": best["best_validation_loss"],
                  "selection_metric": best["selection_metric"], "selection_score": best["selection_score"]},
        "training": training_summary(best),
        "candidates": summaries,
        "threshold": threshold,
        "test_metrics": test_metrics,
        "libraries": artifacts.library_versions(),
    }


def data_summary(split_counts: dict, class_split_counts: list, bad_row_count: int, digests: list) -> dict:
    """The card's data section: actual counts per split (and per split and class), bad rows, fingerprint."""
    by_class = {}
    for (split_name, source_class), count in sorted(class_split_counts):
        by_class.setdefault(split_name, {})[source_class] = int(count)
    return {"sha256": combined_sha256(digests), "valid_rows": int(sum(split_counts.values())),
            "bad_rows": int(bad_row_count), "rows_by_split": {name: int(count) for name, count in
                                                              sorted(split_counts.items())},
            "rows_by_split_and_class": by_class, "files": len(digests)}


def write_drift_reference(version_directory: str, validation_summary, scale: float = 1.0) -> None:
    """Stores the quantiles of the validation normals' scores beside the detector: the stream's drift watch
    compares live scores with them (``models.detection.drift``). Skipped, with a log line, without normals.

    ``scale`` multiplies them: a refitted detector scores on its own scale, and its reference is the
    first fit's validation quantiles carried over by the same ratio as its threshold (``refit_best``).
    """
    from models.detection import drift
    from models.ecg import NORMAL

    if validation_summary.count(NORMAL) == 0:
        LOGGER.warning("no labelled normal validation beats: the detector gets no drift reference")
        return
    reference = drift.reference_from_summary(validation_summary)
    drift.write_reference(version_directory, dataclasses.replace(reference, quantiles=reference.quantiles * scale))


def score_scale(best: dict) -> float:
    """How the exported model's scores compare with the first fit's: the refit's ratio, or 1 without one."""
    refit = best.get("refit") or {}
    if not refit.get("enabled"):
        return 1.0
    moved = refit["threshold"]
    return moved["refit_mean_train_score"] / moved["first_fit_mean_train_score"]


class ExportDetector(beam.DoFn):
    """Calibrates the best candidate's threshold and writes its detector into the staging directory.

    ``config`` is the job's ``TrainConfig``. Yields the best candidate with its ``threshold`` (a dict).
    """

    def __init__(self, config, staging_directory: str, transform_directory: str, work_directory: str):
        self.config = config
        self.staging_directory = staging_directory
        self.transform_directory = transform_directory
        self.work_directory = work_directory

    def process(self, best, transform_ready, train_files, validation_files, train_beats, validation_beats,
                train_anomalies=0, validation_anomalies=0):
        from models.detection.detector import SAVED_MODEL_DIRECTORY, DetectorModule
        from pipeline.transform import TransformGraph

        threshold = evaluation.calibrate(best["validation_summary"], self.config.threshold_config())
        LOGGER.info("threshold %.6f by %s (candidate %s)", threshold.value, threshold.method,
                    best["candidate"]["name"])
        transform = TransformGraph(self.transform_directory)
        best = {**best, "train_normal_beats": int(train_beats), "train_anomalies": int(train_anomalies)}
        if self.config.refit:
            best, threshold = refit_best(self.config, best, threshold, transform, self.work_directory, train_files,
                                         validation_files, train_beats, validation_beats, train_anomalies,
                                         validation_anomalies)
        detector = DetectorModule(transform, rebuild_model(best), threshold.value, score_error=self.config.score_error)
        detector.save(files.join(self.staging_directory, SAVED_MODEL_DIRECTORY))
        write_drift_reference(self.staging_directory, best["validation_summary"], score_scale(best))
        artifacts.write_card(self.staging_directory, {"name": "heartwatch ECG detector (being evaluated)",
                                                      "threshold": threshold.to_dict()})
        yield {**{key: value for key, value in best.items() if key != "validation_summary"},
               "threshold": threshold.to_dict()}


class FinishVersion(beam.DoFn):
    """Test metrics, ``test_scores.npz``, ``metrics.json``, the report and the final card; yields the card."""

    def __init__(self, config, staging_directory: str, transform_directory: str):
        self.config = config
        self.staging_directory = staging_directory
        self.transform_directory = transform_directory

    def process(self, exported, test_summary, flag_counts, test_sample, candidates, split_counts,
                class_split_counts, bad_row_count, digests):
        from pipeline import report
        from pipeline.transform import TransformGraph, affine_statistics

        config = self.config
        threshold = exported["threshold"]
        served_threshold = float(np.float32(threshold["value"]))
        test_metrics = evaluation.classification(test_summary, served_threshold)
        if test_metrics is not None:
            test_metrics["detection_rate_by_class"] = evaluation.detection_rates(flag_counts)
        summaries = [candidate_summary(item) for item in candidates]
        files.write_bytes(files.join(self.staging_directory, TEST_SCORES_FILE), scores_archive_bytes(test_sample))
        files.write_json(files.join(self.staging_directory, METRICS_FILE),
                         {"test": test_metrics, "threshold": threshold, "candidates": summaries})
        transform = TransformGraph(self.transform_directory)
        card = model_card(config, exported, threshold, test_metrics, summaries,
                          data_summary(split_counts, class_split_counts, bad_row_count, digests),
                          affine_statistics(transform, config.normalization))
        if config.report:
            model = rebuild_model(exported)
            sample = sorted(test_sample, key=lambda row: (row[SOURCE_KEY], row[ROW_NUMBER_KEY]))
            report.write_report(
                files.join(self.staging_directory, REPORT_DIRECTORY), card=card, history=exported["history"],
                test_beats=np.stack([row[BEAT_KEY] for row in sample]) if sample else np.zeros((0, BEAT_LENGTH)),
                test_labels=np.asarray([row[IS_ANOMALY_KEY] for row in sample], dtype=np.int64),
                test_scores={"anomaly_score": np.asarray([row["anomaly_score"] for row in sample], np.float32)},
                normalize=lambda beats: transform(beats).numpy(),
                reconstruct=lambda inputs: model(inputs, training=False).numpy(),
                test_beat_count=test_summary.count())
        artifacts.write_card(self.staging_directory, card)
        LOGGER.info("exported the detector into %s", self.staging_directory)
        yield card
