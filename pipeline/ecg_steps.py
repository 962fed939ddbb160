"""The ECG jobs' shared Beam steps: read a dataset's rows, validate them, split them, stack them.

``heartwatch train`` and ``heartwatch score`` both start with ``ReadValidRows``: one element per
dataset spec, read by a worker (``ReadRows``, through Beam's ``FileSystems``), then validated row by
row (``ValidateRows``): good rows become beat records, bad rows go to the ``errors`` output with
their row number and reason. ``AssignSplits`` adds the seeded, stratified ``split`` field the
training job partitions on (``pipeline.splits``).
"""

from __future__ import annotations

import io

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from models.ecg import (
    ANOMALY,
    BEAT_KEY,
    BEAT_LENGTH,
    IS_ANOMALY_KEY,
    ROW_NUMBER_KEY,
    SOURCE_CLASS_KEY,
    SOURCE_KEY,
    sources,
)
from pipeline import splits

METRICS_NAMESPACE = "heartwatch"
SPLIT_KEY = "split"


def open_with_beam_filesystems(path: str, mode: str = "r"):
    """Opens local or remote (gs://, s3://, hdfs://, ram://) files the same way on every Beam worker."""
    stream = FileSystems.open(path)
    return stream if "b" in mode else io.TextIOWrapper(stream, encoding="utf-8", newline="")


class ReadRows(beam.DoFn):
    """Reads one dataset's raw rows (row number, values, label text); the worker opens the file."""

    def process(self, spec: sources.DatasetSpec):
        yield from sources.iter_raw_rows(spec, open_fn=open_with_beam_filesystems)


class ValidateRows(beam.DoFn):
    """Turns raw rows into beat records; bad rows go to the ``errors`` output with their reason."""

    ERRORS = "errors"

    def __init__(self, spec: sources.DatasetSpec):
        self.spec = spec

    def setup(self):
        self.valid_rows = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "valid_rows")
        self.bad_rows = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "bad_rows")

    def process(self, raw_row):
        row_number, values, label_text = raw_row
        record, error = sources.validate_row(row_number, values, label_text, self.spec)
        if error is not None:
            self.bad_rows.inc()
            yield beam.pvalue.TaggedOutput(self.ERRORS, error)
        else:
            self.valid_rows.inc()
            yield record


class ReadValidRows(beam.PTransform):
    """Dataset spec -> ``(records, errors)``: valid beat records and the bad rows with their reasons.

    ``spread`` reshuffles the rows before validation so that the work after it fans out over workers.
    """

    def __init__(self, spec: sources.DatasetSpec, spread: bool = False):
        super().__init__()
        self.spec = spec
        self.spread = spread

    def expand(self, pipeline):
        rows = (pipeline
                | "Dataset" >> beam.Create([self.spec])
                | "ReadRows" >> beam.ParDo(ReadRows()))
        if self.spread:
            rows = rows | "Spread" >> beam.Reshuffle()
        validated = rows | "Validate" >> beam.ParDo(ValidateRows(self.spec)).with_outputs(ValidateRows.ERRORS,
                                                                                           main="records")
        return validated.records, validated[ValidateRows.ERRORS]


def _assign_stratum(keyed_group, config: splits.SplitConfig):
    _, group = keyed_group
    group = list(group)
    keys = [splits.split_key(config.seed, record[SOURCE_KEY], record[ROW_NUMBER_KEY]) for record in group]
    for record, split_name in zip(group, splits.stratum_assignments(keys, config)):
        yield {**record, SPLIT_KEY: split_name}


class AssignSplits(beam.PTransform):
    """Adds a ``split`` field: seeded, stratified by source class (see ``pipeline.splits``)."""

    def __init__(self, config: splits.SplitConfig):
        super().__init__()
        self.config = config

    def expand(self, records):
        return (records
                | "KeyByClass" >> beam.Map(lambda record: (record[SOURCE_CLASS_KEY], record))
                | "GroupByClass" >> beam.GroupByKey()
                | "AssignWithinClass" >> beam.FlatMap(_assign_stratum, self.config))


def is_training_normal(record) -> bool:
    """Normal or unlabelled beats train the model; known anomalies never do."""
    return record[IS_ANOMALY_KEY] != ANOMALY


def beat_instance(record) -> dict:
    """The instance tensorflow-transform analyses: the raw beat alone."""
    return {BEAT_KEY: np.asarray(record[BEAT_KEY], dtype=np.float32)}


def stack(records, key: str) -> np.ndarray:
    """One field of every record stacked into a float32 [n, BEAT_LENGTH] array."""
    if not records:
        return np.zeros((0, BEAT_LENGTH), np.float32)
    return np.stack([np.asarray(record[key], dtype=np.float32) for record in records])


def labels(records) -> np.ndarray:
    """The records' ``is_anomaly`` labels (0 normal, 1 anomaly, or the unknown marker)."""
    return np.asarray([record[IS_ANOMALY_KEY] for record in records], dtype=np.int64)
