"""Per-device adaptive thresholds: an explicit step applied to the detector's outputs after scoring.

The exported detector owns the global threshold and the rule ``is_anomaly = anomaly_score >
threshold`` (``models.detection.detector``). With ``--adaptive_thresholds`` the stream then applies
this step to each scored batch (``DeviceThresholds.apply``):

1. a device with at least ``min_beats`` beats in its statistics gets its own threshold
   ``mean + sigma * std`` of those beats' ``anomaly_score``, and its beats are flagged by
   ``anomaly_score > device threshold`` (kind ``"device"``);
2. every other beat keeps the detector's own ``threshold`` and ``is_anomaly`` (kind ``"global"``);
3. the batch's beats that the detector called normal then join their devices' statistics (count,
   mean, variance by Welford's method), so anomalies do not inflate them.

Scores live in the model's normalised space, so the statistics are reset whenever the model
version changes.
"""

from __future__ import annotations

import numpy as np

from models.detection.thresholds import is_anomalous

GLOBAL_KIND = "global"
DEVICE_KIND = "device"


class DeviceThresholds:
    """Running anomaly-score statistics per device and the thresholds they imply."""

    def __init__(self, min_beats: int, sigma: float):
        if min_beats < 2:
            raise ValueError(f"min_beats must be at least 2, got {min_beats}")
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.min_beats = min_beats
        self.sigma = sigma
        self._statistics: dict[str, list[float]] = {}  # device -> [count, mean, sum of squared deviations]

    def reset(self) -> None:
        """Forgets every device (call when the model changes)."""
        self._statistics.clear()

    def device_count(self) -> int:
        """How many devices have statistics."""
        return len(self._statistics)

    def threshold_for(self, device_id: str, global_threshold: float) -> tuple[float, str]:
        """``(threshold, kind)`` for one device: its own (``"device"``) or ``global_threshold`` (``"global"``)."""
        statistics = self._statistics.get(device_id)
        if statistics is None or statistics[0] < self.min_beats:
            return global_threshold, GLOBAL_KIND
        count, mean, squares = statistics
        return mean + self.sigma * float(np.sqrt(squares / (count - 1))), DEVICE_KIND

    def apply(self, device_ids, scores: dict) -> tuple[np.ndarray, list[str], np.ndarray]:
        """The adaptive step on one scored batch: ``(thresholds, kinds, is_anomaly)``, one entry per beat.

        ``scores`` are the detector's outputs for the batch (``anomaly_score``, ``threshold``,
        ``is_anomaly``). Thresholds come from the statistics before this batch; afterwards the beats
        the detector called normal are added to them.
        """
        anomaly_scores = np.asarray(scores["anomaly_score"], dtype=np.float64)
        detector_flags = np.asarray(scores["is_anomaly"], dtype=bool)
        thresholds = np.asarray(scores["threshold"], dtype=np.float64).copy()
        is_anomaly = detector_flags.copy()
        kinds = [GLOBAL_KIND] * len(anomaly_scores)
        for index, device_id in enumerate(device_ids):
            value, kind = self.threshold_for(device_id, thresholds[index])
            if kind == DEVICE_KIND:
                thresholds[index], kinds[index] = value, kind
                is_anomaly[index] = is_anomalous(anomaly_scores[index], value)
        self.update(device_ids, anomaly_scores, detector_flags)
        return thresholds, kinds, is_anomaly

    def update(self, device_ids, anomaly_scores, detector_flags) -> None:
        """Adds the anomaly scores of the beats the detector called normal to their devices' statistics."""
        for device_id, score, flagged in zip(device_ids, anomaly_scores, detector_flags):
            if flagged:
                continue
            score = float(score)
            statistics = self._statistics.setdefault(device_id, [0, 0.0, 0.0])
            statistics[0] += 1
            delta = score - statistics[1]
            statistics[1] += delta / statistics[0]
            statistics[2] += delta * (score - statistics[1])
