"""Anomaly detection on reconstruction error: thresholds, metrics and the exported detector contract."""
