"""Detection metrics with anomaly as the positive class (pure numpy).

The TensorFlow autoencoder tutorial reports precision and recall with *normal* as the positive
class; heartwatch counts the anomaly as positive throughout, which is what an alerting system cares
about (recall = share of abnormal beats caught).
"""

from __future__ import annotations

import numpy as np

from models.ecg import ANOMALY, NORMAL


def _labels_and_scores(is_anomaly, scores) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(is_anomaly).ravel()
    values = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != values.shape:
        raise ValueError(f"labels and scores differ in length: {labels.size} vs {values.size}")
    if not np.isin(labels, (NORMAL, ANOMALY)).all():
        raise ValueError("metrics need every label to be 0 (normal) or 1 (anomaly)")
    return labels, values


def confusion_matrix(is_anomaly, predicted_anomaly) -> dict:
    """Counts ``true_positive``, ``false_positive``, ``true_negative``, ``false_negative``."""
    labels, predicted = _labels_and_scores(is_anomaly, predicted_anomaly)
    predicted = predicted.astype(bool)
    actual = labels == ANOMALY
    return {
        "true_positive": int(np.sum(actual & predicted)),
        "false_positive": int(np.sum(~actual & predicted)),
        "true_negative": int(np.sum(~actual & ~predicted)),
        "false_negative": int(np.sum(actual & ~predicted)),
    }


def _safe_ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else 0.0


def roc_auc(is_anomaly, scores) -> float:
    """Area under the ROC curve: the probability that an anomaly outscores a normal beat (ties 1/2)."""
    labels, values = _labels_and_scores(is_anomaly, scores)
    positives = values[labels == ANOMALY]
    negatives = values[labels == NORMAL]
    if positives.size == 0 or negatives.size == 0:
        raise ValueError("ROC-AUC needs both normal and anomalous beats")
    ranks = _average_ranks(values)
    positive_rank_sum = ranks[labels == ANOMALY].sum()
    return float((positive_rank_sum - positives.size * (positives.size + 1) / 2.0)
                 / (positives.size * negatives.size))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_values) != 0) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [values.size]))
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = 0.5 * (start + 1 + end)
    return ranks


def roc_curve(is_anomaly, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rates, true-positive rates and thresholds (descending), for plotting."""
    labels, values = _labels_and_scores(is_anomaly, scores)
    thresholds, true_positives, false_positives = _cumulative_counts(labels, values)
    positives = max(int((labels == ANOMALY).sum()), 1)
    negatives = max(int((labels == NORMAL).sum()), 1)
    return (np.concatenate(([0.0], false_positives / negatives)),
            np.concatenate(([0.0], true_positives / positives)),
            np.concatenate(([np.inf], thresholds)))


def precision_recall_curve(is_anomaly, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precisions, recalls and thresholds (descending), for plotting and average precision."""
    labels, values = _labels_and_scores(is_anomaly, scores)
    thresholds, true_positives, false_positives = _cumulative_counts(labels, values)
    positives = max(int((labels == ANOMALY).sum()), 1)
    precision = true_positives / np.maximum(true_positives + false_positives, 1)
    recall = true_positives / positives
    return np.concatenate(([1.0], precision)), np.concatenate(([0.0], recall)), np.concatenate(([np.inf], thresholds))


def _cumulative_counts(labels: np.ndarray, values: np.ndarray):
    order = np.argsort(-values, kind="mergesort")
    sorted_values = values[order]
    sorted_positive = (labels[order] == ANOMALY).astype(np.float64)
    last_of_each_value = np.concatenate((np.flatnonzero(np.diff(sorted_values) != 0), [values.size - 1]))
    true_positives = np.cumsum(sorted_positive)[last_of_each_value]
    false_positives = (last_of_each_value + 1) - true_positives
    return sorted_values[last_of_each_value], true_positives, false_positives


def average_precision(is_anomaly, scores) -> float:
    """PR-AUC as average precision: sum over thresholds of precision times the recall gained."""
    labels, _ = _labels_and_scores(is_anomaly, scores)
    if not (labels == ANOMALY).any():
        raise ValueError("PR-AUC needs at least one anomalous beat")
    precision, recall, _ = precision_recall_curve(is_anomaly, scores)
    return float(np.sum(np.diff(recall) * precision[1:]))


def classification_metrics(is_anomaly, scores, threshold_value: float) -> dict:
    """Accuracy, precision, recall, F1, ROC-AUC, PR-AUC and the confusion matrix at a threshold."""
    labels, values = _labels_and_scores(is_anomaly, scores)
    predicted = values > float(threshold_value)
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
