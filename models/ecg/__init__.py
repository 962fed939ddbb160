"""ECG vocabulary shared by training, scoring and streaming.

A heartbeat is ``BEAT_LENGTH`` float samples. Records flowing through the pipelines are plain dicts
with the keys below, so they pickle cheaply on any Beam runner and serialise to JSON for Kafka.
Anomaly is the positive class everywhere (``is_anomaly == 1``); the TensorFlow tutorial counts
normal as positive, heartwatch does not.
"""

BEAT_LENGTH = 140

# Dataset formats ``--format`` accepts (``models.ecg.sources`` reads them).
DATASET_FORMATS = ("auto", "ecg_csv", "ucr", "csv", "parquet", "tfrecord", "synthetic")

# Keys of a validated beat record (``models.ecg.sources.validate_row`` makes them).
ROW_NUMBER_KEY = "row_number"
BEAT_KEY = "beat"
IS_ANOMALY_KEY = "is_anomaly"
SOURCE_CLASS_KEY = "source_class"
SOURCE_KEY = "source"

# ``is_anomaly`` values.
NORMAL = 0
ANOMALY = 1
UNKNOWN_LABEL = -1

# Key of the normalised beat produced by the tensorflow-transform graph.
NORMALIZED_BEAT_KEY = "beat_normalized"
