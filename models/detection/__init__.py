"""Anomaly detection on reconstruction error: thresholds, metrics and the exported detector contract."""

# Threshold calibration methods (``models.detection.thresholds`` implements them).
THRESHOLD_METHODS = ("mean_std", "percentile", "max_f1")
