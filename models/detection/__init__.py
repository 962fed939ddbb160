"""Anomaly detection on reconstruction error: thresholds, metrics and the exported detector contract."""

# Threshold calibration methods (``models.detection.thresholds`` implements them).
THRESHOLD_METHODS = ("mean_std", "percentile", "max_f1")

# What the anomaly score is built on (``models.family.base.Autoencoder.scores``): the mean absolute error
# per beat, the root mean square of the absolute errors (which weighs a short, large deviation more), or
# the worst window: the largest mean absolute error over any SCORE_WINDOW_SAMPLES consecutive samples.
SCORE_ERRORS = ("mae", "rms", "window")
SCORE_WINDOW_SAMPLES = 30
