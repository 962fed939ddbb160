"""How a dataset is cut into read tasks that workers read independently, and how one task is read.

A ``DatasetSpec`` path may be one file, a glob pattern (``beats-*.parquet``, ``gs://b/ecg/*.txt``)
or a synthetic URI. ``plan_file`` cuts one matched file into ``ReadTask`` s:

``lines`` (``ecg_csv``, UCR ``.txt``/``.tsv``)
    byte ranges of ``block_bytes``; a task reads the lines that *start* inside its range (the first
    partial line belongs to the range before, the last line is read past the range's end), so every
    line is read exactly once. A line's row number is its physical line number: a first, cheap pass
    counts the newlines of every range (``count_newlines``), and ``number_task`` gives each task the
    number of the line its range starts in, from the counts of the ranges before it.
``row_groups`` (parquet)
    one task per row group; row numbers follow the row counts of the groups before (the footer has them).
``file`` (CSV tables with a header, ARFF, TFRecord)
    the whole file: a header is needed to read any row, quoted CSV fields may span lines, and
    TFRecord framing has no marker to find a record boundary from.
``synthetic``
    ``synthetic_shards``: a synthetic URI of more than ``SYNTHETIC_SHARD_BEATS`` beats is the
    concatenation of shards of that many beats, each generated from its own seed (derived from the
    URI's seed and the shard number), so any worker can generate any shard; smaller URIs are one
    shard with the URI's own seed (the beats ``models.ecg.synthetic.generate`` makes for it).

``task_rows`` yields a task's raw ``(row_number, values, label_text)`` rows through the same per-format
readers (``models.ecg.readers``) the sequential path uses, so both read every row the same way.
Files are opened with ``open_fn(path, "rb")``; seekable streams are needed for ``lines`` and
``row_groups`` tasks.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from models.ecg import readers, synthetic, tfrecords

LOGGER = logging.getLogger(__name__)

TEXT_BLOCK_BYTES = 64 << 20
SYNTHETIC_SHARD_BEATS = 50_000
COUNT_CHUNK_BYTES = 1 << 20
UTF8_BOM = b"\xef\xbb\xbf"
LINE_FORMATS = ("ecg_csv", "ucr")
LINE_SUFFIXES = (".txt", ".tsv", ".csv")

FILE, LINES, ROW_GROUPS, SYNTHETIC = "file", "lines", "row_groups", "synthetic"


@dataclasses.dataclass(frozen=True)
class ReadTask:
    """One independently readable piece of a dataset.

    ``source`` names the rows (the record's ``source``, an error's ``source``: the matched file or URL),
    ``location`` is what to open (a downloaded URL's cache file). ``index`` numbers the task within its
    file; ``start``/``stop`` are a byte range (``lines``) or a row-group range (``row_groups``);
    ``first_row`` is the row number of the task's first row (for ``lines`` tasks: the line number of
    the line holding byte ``start``, set by ``number_task``).
    """

    source: str
    location: str
    data_format: str
    part: str
    index: int = 0
    start: int = 0
    stop: int = 0
    first_row: int = 1
    label_column: str | None = None
    feature_columns: tuple[str, ...] | None = None

    @property
    def file_key(self) -> str:
        """What groups the tasks of one file (their row numbers continue one another)."""
        return self.location


def is_line_splittable(data_format: str, path: str) -> bool:
    """Whether rows of this format are single lines that can be read from any line start."""
    return data_format in LINE_FORMATS and readers.suffix(path) in LINE_SUFFIXES


def plan_file(source: str, location: str, size: int, data_format: str, open_fn: readers.OpenFunction,
              block_bytes: int = TEXT_BLOCK_BYTES, label_column: str | None = None,
              feature_columns: tuple[str, ...] | None = None) -> list[ReadTask]:
    """The read tasks of one file of ``size`` bytes (see the module docstring)."""
    if block_bytes < 1:
        raise ValueError(f"block_bytes must be positive, got {block_bytes}")
    common = {"source": source, "location": location, "data_format": data_format, "label_column": label_column,
              "feature_columns": feature_columns}
    if is_line_splittable(data_format, location) and size > 0:
        return [ReadTask(part=LINES, index=index, start=start, stop=min(start + block_bytes, size), **common)
                for index, start in enumerate(range(0, size, block_bytes))]
    if data_format == "parquet":
        counts = readers.parquet_row_group_sizes(location, open_fn)
        firsts = np.concatenate(([0], np.cumsum(counts)))[:-1] + 1
        return [ReadTask(part=ROW_GROUPS, index=index, start=index, stop=index + 1, first_row=int(first), **common)
                for index, first in enumerate(firsts)]
    return [ReadTask(part=FILE, **common)]


def synthetic_shards(config: synthetic.SyntheticConfig) -> list[tuple[int, synthetic.SyntheticConfig]]:
    """``(first row number, shard config)`` of every shard of a synthetic dataset (see the module docstring)."""
    if config.beats <= SYNTHETIC_SHARD_BEATS:
        return [(1, config)]
    shards = []
    for number, start in enumerate(range(0, config.beats, SYNTHETIC_SHARD_BEATS)):
        seed = int(np.random.SeedSequence([config.seed, number]).generate_state(1)[0])
        beats = min(SYNTHETIC_SHARD_BEATS, config.beats - start)
        shards.append((start + 1, dataclasses.replace(config, beats=beats, seed=seed)))
    return shards


def plan_synthetic(uri: str) -> list[ReadTask]:
    """One ``synthetic`` task per shard of a synthetic URI."""
    shards = synthetic_shards(synthetic.parse_synthetic_uri(uri))
    return [ReadTask(source=uri, location=uri, data_format="synthetic", part=SYNTHETIC, index=index,
                     first_row=first_row) for index, (first_row, _) in enumerate(shards)]


def count_newlines(task: ReadTask, open_fn: readers.OpenFunction) -> int:
    """Newlines in the task's byte range (the first pass that numbers the lines of split text files)."""
    if task.part != LINES:
        raise ValueError(f"only lines tasks count newlines, got a {task.part} task")
    count, remaining = 0, task.stop - task.start
    with readers.open_binary(task.location, open_fn) as binary:
        binary.seek(task.start)
        while remaining > 0:
            chunk = binary.read(min(COUNT_CHUNK_BYTES, remaining))
            if not chunk:
                break
            count += chunk.count(b"\n")
            remaining -= len(chunk)
    return count


def number_task(task: ReadTask, newlines_before: int) -> ReadTask:
    """The task with ``first_row`` set: 1 + the newlines before its range (its range's first line number)."""
    return dataclasses.replace(task, first_row=1 + newlines_before) if task.part == LINES else task


def raw_lines(binary, chunk_bytes: int = COUNT_CHUNK_BYTES) -> Iterator[bytes]:
    """The lines of a binary stream from where it stands, each with its ``\\n`` (the last maybe without).

    Split on ``\\n`` from plain ``read`` calls, so every byte is counted (TensorFlow's ``GFile.readline``
    drops ``\\r``, which would shift every later offset).
    """
    pending = b""
    while chunk := binary.read(chunk_bytes):
        pending += chunk
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            yield pending[start:end + 1]
            start = end + 1
        pending = pending[start:]
    if pending:
        yield pending


def range_lines(task: ReadTask, open_fn: readers.OpenFunction) -> Iterator[tuple[int, str]]:
    """``(line_number, line)`` of the lines starting inside a ``lines`` task's byte range, line ends removed."""
    with readers.open_binary(task.location, open_fn) as binary:
        binary.seek(max(task.start - 1, 0))
        lines = raw_lines(binary)
        position, line_number = task.start, task.first_row
        if task.start > 0:
            rest = next(lines, b"")
            position = task.start - 1 + len(rest)
            if rest != b"\n":
                line_number += 1  # the line holding byte ``start`` began in the range before
        for line in lines:
            if position >= task.stop:
                return
            if position == 0 and line.startswith(UTF8_BOM):
                position += len(UTF8_BOM)
                line = line[len(UTF8_BOM):]
            position += len(line)
            yield line_number, line.decode("utf-8").rstrip("\r\n")
            line_number += 1


def task_rows(task: ReadTask, open_fn: readers.OpenFunction) -> Iterator[tuple[int, Any, str | None]]:
    """The raw ``(row_number, values, label_text)`` rows of one task."""
    if task.part == SYNTHETIC:
        first_row, config = synthetic_shards(synthetic.parse_synthetic_uri(task.location))[task.index]
        yield from readers.generated_rows(config, first_row)
        return
    if task.part == ROW_GROUPS:
        yield from readers.parquet_rows(task.location, open_fn, task.feature_columns, task.label_column,
                                        row_groups=range(task.start, task.stop), first_row=task.first_row)
        return
    lines = (range_lines(task, open_fn) if task.part == LINES
             else readers.text_lines(task.location, open_fn) if task.data_format in LINE_FORMATS else None)
    if task.data_format == "ecg_csv":
        yield from readers.ecg_csv_rows(lines)
    elif task.data_format == "ucr":
        yield from readers.ucr_rows(task.location, lines)
    elif task.data_format == "csv":
        yield from readers.csv_rows(task.location, open_fn, task.feature_columns, task.label_column)
    elif task.data_format == "tfrecord":
        yield from tfrecords.tfrecord_rows(task.location, open_fn, task.feature_columns, task.label_column)
    else:
        yield from readers.parquet_rows(task.location, open_fn, task.feature_columns, task.label_column)
