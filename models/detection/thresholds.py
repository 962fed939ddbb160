"""Anomaly-threshold calibration on anomaly scores, and the one rule that applies a threshold.

A beat is anomalous when its anomaly score (the reconstruction error, or a model's own score) is
strictly greater than the threshold (``is_anomalous``). Three
calibration methods, all pure functions of held-out errors:

- ``mean_std``: mean + k * std of the errors of normal validation beats (the TensorFlow tutorial,
  k = 1). Simple, but with k = 1 about one normal beat in six is flagged.
- ``percentile``: the (1 - target_false_positive_rate) quantile of normal validation errors, so the
  expected false-positive rate on normal beats is the target.
- ``max_f1``: the cut between consecutive sorted validation errors that maximises F1 (anomaly
  positive) on a labelled validation split. Needs both classes.

``calibrate`` dispatches by name and returns a ``Threshold`` that travels into the exported detector
and its model card. ``transfer_threshold`` carries a calibrated threshold to a refitted model's scale
(`heartwatch train --refit`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from models.detection import THRESHOLD_METHODS
from models.ecg import ANOMALY, NORMAL

METHODS = THRESHOLD_METHODS


@dataclasses.dataclass(frozen=True)
class ThresholdConfig:
    """How to calibrate: the method name and its parameter.

    ``k`` is used by ``mean_std``; ``target_false_positive_rate`` by ``percentile``. ``max_f1`` falls
    back to ``fallback_method`` when the validation split lacks anomalies or labels.
    """

    method: str = "max_f1"
    k: float = 1.0
    target_false_positive_rate: float = 0.01
    fallback_method: str = "percentile"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown threshold method {self.method!r}; choose one of {METHODS}")
        if self.fallback_method not in ("mean_std", "percentile"):
            raise ValueError("fallback_method must be 'mean_std' or 'percentile' (it needs no labels)")
        if not 0.0 < self.target_false_positive_rate < 1.0:
            raise ValueError("target_false_positive_rate must be strictly between 0 and 1, "
                             f"got {self.target_false_positive_rate}")
        if self.k < 0:
            raise ValueError(f"k must be non-negative, got {self.k}")


@dataclasses.dataclass(frozen=True)
class Threshold:
    """A calibrated threshold: its value, the method that produced it and that method's inputs."""

    value: float
    method: str
    parameters: dict

    def to_dict(self) -> dict:
        """JSON-ready form for model cards and metrics files."""
        return {"value": float(self.value), "method": self.method, "parameters": dict(self.parameters)}


def is_anomalous(scores, threshold):
    """THE rule: a beat is anomalous when its anomaly score is strictly above the threshold.

    Works on numpy arrays and on TensorFlow tensors alike: the exported detector applies it inside
    the SavedModel (``models.detection.detector.DetectorModule``) and the stream's per-device
    thresholds apply the same function to the detector's scores. Lists are read as float arrays.
    """
    if isinstance(scores, (list, tuple)):
        scores = np.asarray(scores, dtype=np.float64)
    return scores > threshold


def _finite_errors(errors, name: str) -> np.ndarray:
    array = np.asarray(errors, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"cannot calibrate a threshold: no {name} errors")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"cannot calibrate a threshold: {name} errors contain NaN or Inf")
    return array


def mean_std_threshold(normal_errors, k: float = 1.0) -> float:
    """mean + k * std (population std) of the errors of normal beats."""
    errors = _finite_errors(normal_errors, "normal")
    return float(errors.mean() + k * errors.std())


def percentile_threshold(normal_errors, target_false_positive_rate: float) -> float:
    """The error below which a fraction 1 - target of normal beats falls (linear interpolation)."""
    errors = _finite_errors(normal_errors, "normal")
    return float(np.quantile(errors, 1.0 - target_false_positive_rate))


def max_f1_threshold(errors, is_anomaly) -> tuple[float, float]:
    """Threshold maximising F1 with anomaly positive; returns ``(threshold, f1)``.

    Candidate cuts are midpoints between consecutive distinct sorted errors (and just below the
    smallest), so the chosen value never sits exactly on a validation error. Ties in F1 go to the
    cut with the fewest false positives, i.e. the highest threshold.
    """
    values = _finite_errors(errors, "validation")
    labels = np.asarray(is_anomaly).ravel()
    if labels.shape != values.shape:
        raise ValueError(f"errors and labels differ in length: {values.size} vs {labels.size}")
    if not np.isin(labels, (NORMAL, ANOMALY)).all():
        raise ValueError("max_f1 needs every validation label to be 0 (normal) or 1 (anomaly)")
    positives = int((labels == ANOMALY).sum())
    if positives == 0 or positives == labels.size:
        raise ValueError("max_f1 needs both normal and anomalous beats in the validation split")
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    sorted_labels = labels[order]
    distinct_ends = np.flatnonzero(np.diff(sorted_values) > 0)
    cut_indices = np.concatenate(([-1], distinct_ends))
    # A cut after sorted index i flags everything above it as anomalous.
    true_positives = positives - np.concatenate(([0], np.cumsum(sorted_labels == ANOMALY)[distinct_ends]))
    flagged = values.size - (cut_indices + 1)
    f1 = 2.0 * true_positives / (flagged + positives)
    best = int(np.flatnonzero(f1 == f1.max())[-1])
    index = cut_indices[best]
    if index < 0:
        value = sorted_values[0] - max(abs(sorted_values[0]) * 1e-6, 1e-12)
    else:
        value = 0.5 * (sorted_values[index] + sorted_values[index + 1])
    return float(value), float(f1[best])


def calibrate(config: ThresholdConfig, errors, is_anomaly) -> Threshold:
    """Calibrates a threshold on validation errors; ``is_anomaly`` may hold -1 for unknown labels."""
    values = _finite_errors(errors, "validation")
    labels = np.asarray(is_anomaly).ravel()
    if labels.shape != values.shape:
        raise ValueError(f"errors and labels differ in length: {values.size} vs {labels.size}")
    normal_errors = values[labels != ANOMALY]  # unlabelled validation beats count as normal
    method = config.method
    if method == "max_f1":
        labelled = np.isin(labels, (NORMAL, ANOMALY)).all()
        if labelled and 0 < int((labels == ANOMALY).sum()) < labels.size:
            value, f1 = max_f1_threshold(values, labels)
            return Threshold(value, "max_f1", {"validation_f1": f1, "validation_beats": int(values.size)})
        method = config.fallback_method
    if method == "mean_std":
        return Threshold(mean_std_threshold(normal_errors, config.k), "mean_std",
                         {"k": config.k, "normal_beats": int(normal_errors.size)})
    return Threshold(percentile_threshold(normal_errors, config.target_false_positive_rate), "percentile",
                     {"target_false_positive_rate": config.target_false_positive_rate,
                      "normal_beats": int(normal_errors.size)})


def transfer_threshold(value: float, source_mean: float, target_mean: float) -> float:
    """A threshold calibrated on one model's scores, carried to another model's scale.

    Both models score the same reference beats (e.g. the training normals they both learnt from);
    ``source_mean`` and ``target_mean`` are their mean scores there, and the threshold scales by their
    ratio, so it sits as far above the reference in the target's units as it did in the source's.
    """
    for name, mean in (("source", source_mean), ("target", target_mean)):
        if not np.isfinite(mean) or mean <= 0:
            raise ValueError(f"the {name} model's mean reference score must be finite and positive, got {mean}")
    if not np.isfinite(value):
        raise ValueError(f"the threshold to transfer must be finite, got {value}")
    return float(value * target_mean / source_mean)
