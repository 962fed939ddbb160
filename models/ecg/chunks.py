"""Beat chunks: many validated beats of one file as columns, and the vectorised validation that makes them.

The Beam jobs move beats in chunks of up to ``CHUNK_BEATS`` rather than one record per beat: one
element carries the beats of consecutive rows of one file as a float32 ``[n, BEAT_LENGTH]`` array with
their row numbers, labels and source classes (``BeatChunk``), so per-element costs are paid once per
chunk and the numeric work is numpy's.

``validate_rows`` validates a batch of raw rows exactly as ``models.ecg.sources.validate_row`` does
row by row (same accepted rows, same records, same reasons), but in bulk: the values of the whole
batch are converted and checked at once, labels are parsed once per distinct label text, and only
rows that fail the bulk checks go through ``validate_row`` one by one, for their reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from models.ecg import BEAT_KEY, BEAT_LENGTH, IS_ANOMALY_KEY, ROW_NUMBER_KEY, SOURCE_CLASS_KEY, SOURCE_KEY, validation

CHUNK_BEATS = 4096


@dataclasses.dataclass
class BeatChunk:
    """Validated beats of one source as columns; ``sample_keys`` and ``split`` once split."""

    source: str
    row_numbers: np.ndarray
    beats: np.ndarray
    is_anomaly: np.ndarray
    source_classes: np.ndarray
    sample_keys: np.ndarray | None = None
    split: str | None = None

    def __post_init__(self):
        count = len(self.row_numbers)
        if self.beats.shape != (count, BEAT_LENGTH):
            raise ValueError(f"a chunk of {count} rows needs beats of shape ({count}, {BEAT_LENGTH}), "
                             f"got {self.beats.shape}")
        for name in ("is_anomaly", "source_classes"):
            if len(getattr(self, name)) != count:
                raise ValueError(f"{name} has {len(getattr(self, name))} values for {count} rows")

    def __len__(self) -> int:
        return int(len(self.row_numbers))

    def take(self, selection) -> BeatChunk:
        """The rows picked by a boolean mask or an index array, as a chunk of the same source."""
        return BeatChunk(self.source, self.row_numbers[selection], self.beats[selection], self.is_anomaly[selection],
                         self.source_classes[selection],
                         None if self.sample_keys is None else self.sample_keys[selection], self.split)

    def records(self) -> Iterator[dict]:
        """The chunk as the per-beat records of ``models.ecg.sources.validate_row``."""
        for index in range(len(self)):
            yield {ROW_NUMBER_KEY: int(self.row_numbers[index]), BEAT_KEY: self.beats[index],
                   IS_ANOMALY_KEY: int(self.is_anomaly[index]), SOURCE_CLASS_KEY: str(self.source_classes[index]),
                   SOURCE_KEY: self.source}


def empty_chunk(source: str) -> BeatChunk:
    """A chunk of no beats."""
    return BeatChunk(source, np.zeros(0, np.int64), np.zeros((0, BEAT_LENGTH), np.float32), np.zeros(0, np.int64),
                     np.zeros(0, dtype=object))


def from_records(records: list[dict]) -> BeatChunk:
    """One chunk from records of a single source (tests and small inputs)."""
    if not records:
        raise ValueError("from_records needs at least one record")
    sources = {record[SOURCE_KEY] for record in records}
    if len(sources) != 1:
        raise ValueError(f"a chunk holds beats of one source, got {sorted(sources)}")
    return BeatChunk(records[0][SOURCE_KEY], np.asarray([record[ROW_NUMBER_KEY] for record in records], np.int64),
                     np.stack([np.asarray(record[BEAT_KEY], np.float32) for record in records]),
                     np.asarray([record[IS_ANOMALY_KEY] for record in records], np.int64),
                     np.asarray([record[SOURCE_CLASS_KEY] for record in records], dtype=object))


def _bulk_beats(values: list) -> tuple[np.ndarray, np.ndarray]:
    """``(float32 beats [n, BEAT_LENGTH], row is a good beat)``: numeric arrays stacked at once, other rows
    converted one by one (numpy parses text fastest row by row), the finiteness checks done for the whole
    batch at once.

    Rows that are not ``BEAT_LENGTH`` finite float32 numbers are marked bad (their beat row is zeros).
    """
    samples = np.zeros((len(values), BEAT_LENGTH), np.float64)
    converted = np.zeros(len(values), dtype=bool)
    numeric = [index for index, row in enumerate(values)
               if isinstance(row, np.ndarray) and row.shape == (BEAT_LENGTH,) and row.dtype.kind in "fiub"]
    if numeric:
        samples[numeric] = np.stack([values[index] for index in numeric])
        converted[numeric] = True
    for index, row in enumerate(values):
        if converted[index]:
            continue
        if len(row) != BEAT_LENGTH:
            continue
        try:
            samples[index] = np.asarray(row, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            continue
        converted[index] = True
    with np.errstate(over="ignore", invalid="ignore"):
        beats = samples.astype(np.float32)
    return beats, converted & np.isfinite(samples).all(axis=1) & np.isfinite(beats).all(axis=1)


def validate_rows(source_spec, rows: Iterable[tuple[int, Any, str | None]],
                  validate_row) -> tuple[BeatChunk, list[dict]]:
    """``(chunk of the good rows, errors of the bad ones)`` for raw rows of one file, in row order.

    ``source_spec`` is the file's pinned ``DatasetSpec``; ``validate_row`` is
    ``models.ecg.sources.validate_row`` (passed in, as ``sources`` imports this module), which decides
    every row the bulk checks do not accept.
    """
    rows = list(rows)
    if not rows:
        return empty_chunk(source_spec.path), []
    data_format = source_spec.resolved_format()
    labels = {}
    for _, _, label_text in rows:
        if label_text not in labels:
            labels[label_text] = validation.parse_label(label_text, data_format, source_spec.normal_label)
    beats, good = _bulk_beats([validation.as_value_list(values) for _, values, _ in rows])
    numbers, flags, classes, kept, errors = [], [], [], [], []
    for index, (row_number, values, label_text) in enumerate(rows):
        label, reason = labels[label_text]
        if good[index] and reason is None:
            numbers.append(row_number)
            flags.append(label[0])
            classes.append(label[1])
            kept.append(index)
            continue
        record, error = validate_row(row_number, values, label_text, source_spec)
        if error is not None:
            errors.append(error)
            continue
        numbers.append(record[ROW_NUMBER_KEY])
        flags.append(record[IS_ANOMALY_KEY])
        classes.append(record[SOURCE_CLASS_KEY])
        beats[index] = record[BEAT_KEY]
        kept.append(index)
    chunk_beats = beats[np.asarray(kept, dtype=np.int64)]
    return BeatChunk(source_spec.path, np.asarray(numbers, np.int64), chunk_beats, np.asarray(flags, np.int64),
                     np.asarray(classes, dtype=object)), errors


def batched(rows: Iterable, size: int = CHUNK_BEATS) -> Iterator[list]:
    """``rows`` in lists of at most ``size``."""
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
