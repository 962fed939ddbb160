"""Detection metrics with anomaly as the positive class, computed by scikit-learn.

The TensorFlow autoencoder tutorial reports precision and recall with *normal* as the positive
class; heartwatch counts the anomaly as positive throughout, which is what an alerting system cares
about (recall = share of abnormal beats caught). Every function takes ``is_anomaly`` labels (0 or 1,
``models.ecg.NORMAL``/``ANOMALY``) and higher-is-more-anomalous scores, and hands scikit-learn the
boolean "is an anomaly" as its positive class.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as sklearn_metrics

from models.detection import thresholds
from models.ecg import ANOMALY, NORMAL


def _labels_and_scores(is_anomaly, scores) -> tuple[np.ndarray, np.ndarray]:
    """Flat labels and float scores, refused unless equally long and every label is 0 or 1."""
    labels = np.asarray(is_anomaly).ravel()
    values = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != values.shape:
        raise ValueError(f"labels and scores differ in length: {labels.size} vs {values.size}")
    if not np.isin(labels, (NORMAL, ANOMALY)).all():
        raise ValueError("metrics need every label to be 0 (normal) or 1 (anomaly)")
    return labels, values


def _positives_and_scores(is_anomaly, scores, needs: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Boolean anomaly flags and scores; ``needs`` is ``both`` classes or an ``anomaly``, else ``ValueError``."""
    labels, values = _labels_and_scores(is_anomaly, scores)
    positive = labels == ANOMALY
    if needs == "both" and (positive.all() or not positive.any()):
        raise ValueError(f"{what} needs both normal and anomalous beats")
    if needs == "anomaly" and not positive.any():
        raise ValueError(f"{what} needs at least one anomalous beat")
    return positive, values


def confusion_matrix(is_anomaly, predicted_anomaly) -> dict:
    """Counts ``true_positive``, ``false_positive``, ``true_negative``, ``false_negative``."""
    labels, predicted = _labels_and_scores(is_anomaly, predicted_anomaly)
    counts = sklearn_metrics.confusion_matrix(labels == ANOMALY, predicted.astype(bool), labels=[False, True])
    true_negative, false_positive, false_negative, true_positive = (int(count) for count in counts.ravel())
    return {"true_positive": true_positive, "false_positive": false_positive, "true_negative": true_negative,
            "false_negative": false_negative}


def _safe_ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, or 0 when the denominator is 0."""
    return float(numerator) / float(denominator) if denominator else 0.0


def roc_auc(is_anomaly, scores) -> float:
    """Area under the ROC curve: the probability that an anomaly outscores a normal beat (ties 1/2)."""
    positive, values = _positives_and_scores(is_anomaly, scores, "both", "ROC-AUC")
    return float(sklearn_metrics.roc_auc_score(positive, values))


def roc_curve(is_anomaly, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rates, true-positive rates and thresholds (descending, ``inf`` first), for plotting.

    Every distinct score is a threshold (no intermediate point is dropped); the curve starts at (0, 0).
    """
    positive, values = _positives_and_scores(is_anomaly, scores, "both", "a ROC curve")
    false_positive_rate, true_positive_rate, thresholds = sklearn_metrics.roc_curve(
        positive, values, drop_intermediate=False)
    return false_positive_rate, true_positive_rate, thresholds


def precision_recall_curve(is_anomaly, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precisions, recalls and thresholds (descending, ``inf`` first), for plotting and average precision.

    The curve starts at precision 1, recall 0 for the ``inf`` threshold; then each distinct score in
    descending order flags the beats scoring at least that much.
    """
    positive, values = _positives_and_scores(is_anomaly, scores, "anomaly", "a precision-recall curve")
    precision, recall, thresholds = sklearn_metrics.precision_recall_curve(positive, values)
    return precision[::-1], recall[::-1], np.concatenate(([np.inf], thresholds[::-1]))


def average_precision(is_anomaly, scores) -> float:
    """PR-AUC as average precision: sum over thresholds of precision times the recall gained."""
    positive, values = _positives_and_scores(is_anomaly, scores, "anomaly", "PR-AUC")
    return float(sklearn_metrics.average_precision_score(positive, values))


def classification_metrics(is_anomaly, scores, threshold_value: float) -> dict:
    """Accuracy, precision, recall, F1, ROC-AUC, PR-AUC and the confusion matrix at a threshold.

    Beats are flagged by the one rule, ``thresholds.is_anomalous`` (score strictly above the threshold).
    """
    labels, values = _labels_and_scores(is_anomaly, scores)
    predicted = thresholds.is_anomalous(values, float(threshold_value))
    counts = confusion_matrix(labels, predicted)
    precision = _safe_ratio(counts["true_positive"], counts["true_positive"] + counts["false_positive"])
    recall = _safe_ratio(counts["true_positive"], counts["true_positive"] + counts["false_negative"])
    both_classes = 0 < int((labels == ANOMALY).sum()) < labels.size
    return {
        "positive_class": "anomaly",
        "beats": int(labels.size),
        "accuracy": _safe_ratio(counts["true_positive"] + counts["true_negative"], labels.size),
        "precision": precision,
        "recall": recall,
        "f1": _safe_ratio(2 * precision * recall, precision + recall),
        "roc_auc": roc_auc(labels, values) if both_classes else None,
        "pr_auc": average_precision(labels, values) if both_classes else None,
        "confusion_matrix": counts,
    }


def detection_rate_by_class(source_classes, predicted_anomaly) -> dict:
    """Share of beats flagged anomalous, per source class (e.g. UCR classes 1..5)."""
    classes = np.asarray(source_classes).astype(str).ravel()
    predicted = np.asarray(predicted_anomaly).astype(bool).ravel()
    if classes.shape != predicted.shape:
        raise ValueError(f"classes and predictions differ in length: {classes.size} vs {predicted.size}")
    return {
        name: {"beats": int((classes == name).sum()), "flagged": int(predicted[classes == name].sum()),
               "detection_rate": float(predicted[classes == name].mean())}
        for name in sorted(set(classes.tolist()))
    }
