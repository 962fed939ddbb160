"""Per-device adaptive thresholds, with the model's global threshold as the fallback.

Each device keeps running statistics (count, mean, variance by Welford's method) of the
reconstruction errors of its beats that the global threshold calls normal, so anomalies do not
inflate them. Once a device has ``min_beats`` of those, its threshold becomes
``mean + sigma * std``; before that it uses the global threshold. Errors live in the model's
normalised space, so the statistics are reset whenever the model version changes.
"""

from __future__ import annotations

import numpy as np


class DeviceThresholds:
    """Running error statistics per device and the thresholds they imply."""

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
        """``(threshold, kind)`` for one device: its own (``"device"``) or the global one (``"global"``)."""
        statistics = self._statistics.get(device_id)
        if statistics is None or statistics[0] < self.min_beats:
            return global_threshold, "global"
        count, mean, squares = statistics
        return mean + self.sigma * float(np.sqrt(squares / (count - 1))), "device"

    def thresholds(self, device_ids, global_threshold: float) -> tuple[np.ndarray, list[str]]:
        """Thresholds and kinds for a batch of device ids."""
        pairs = [self.threshold_for(device_id, global_threshold) for device_id in device_ids]
        return np.array([pair[0] for pair in pairs], dtype=np.float64), [pair[1] for pair in pairs]

    def update(self, device_ids, errors, global_threshold: float) -> None:
        """Adds the batch's errors that the global threshold calls normal to their devices' statistics."""
        for device_id, error in zip(device_ids, errors):
            error = float(error)
            if error > global_threshold:
                continue
            statistics = self._statistics.setdefault(device_id, [0, 0.0, 0.0])
            statistics[0] += 1
            delta = error - statistics[1]
            statistics[1] += delta / statistics[0]
            statistics[2] += delta * (error - statistics[1])
