"""Read every supported ECG input into validated beat records.

Supported inputs (``DatasetSpec.format``):

``ecg_csv``
    TensorFlow's ``ecg.csv`` (``ECG_CSV_URL``, alias path ``"tf-ecg"``): no header, comma
    separated, ``BEAT_LENGTH`` samples then a 0/1 label where **1 means normal**. heartwatch counts
    anomaly as positive, so ``is_anomaly = 1 - label``; the source class is ``"normal"`` or
    ``"abnormal"``.
``ucr``
    UCR ECG5000 files. ``.txt`` is whitespace separated and ``.tsv`` tab separated, both with the
    class first; ``.arff`` has a header up to ``@data`` and the class last. Classes are 1 to 5
    (written like ``1.0000000e+00``); class 1 is normal, 2 to 5 are abnormal and the class is kept
    as the source class (``"1"`` to ``"5"``) for per-class reporting.
``csv`` and ``parquet``
    Generic tables with a header. The features are ``feature_columns`` (default: every column but
    the label column), the label is ``label_column`` (optional); a label equal to ``normal_label``
    (as text, or as a number: ``"1.0"`` matches ``"1"``) is normal, any other is an anomaly and
    its text is the source class. Without a label column every beat's label is
    ``UNKNOWN_LABEL``. A parquet table may also hold each beat as one list-valued column.
``tfrecord``
    ``.tfrecord``/``.tfrecords``/``.tfr`` files of one ``tf.train.Example`` per beat: a numeric
    feature ``beat`` and an optional one-value ``label`` compared with ``normal_label`` as for tables
    (``feature_columns`` names another beat feature, ``label_column`` another label feature); see
    ``models.ecg.tfrecords``.
``synthetic``
    ``"synthetic"`` or ``"synthetic:beats=...,seed=..."`` (see ``models.ecg.synthetic``); the source
    class is the synthetic kind.

``path`` may also be a glob pattern (``beats-*.parquet``, ``gs://bucket/ecg/*.txt``): every matched
file is read with the same format and options, each file tagging its rows as their source
(``match_files``; row numbers restart in every file).

``auto`` (the default) picks the format from the path: a synthetic URI, then the extension
(``.txt``/``.tsv``/``.arff`` are ucr, ``.parquet`` is parquet, ``.tfrecord``/``.tfrecords``/``.tfr``
are tfrecord, and a ``.csv`` is ``csv`` when its
first line has a non-numeric field, a header, else ``ecg_csv``; for a pattern, the first matched
file's). ``http(s)`` URLs are downloaded once into a cache (``models.ecg.download.resolve_path``).

Reading has two steps so that a pipeline can spread them out: ``iter_raw_rows`` yields each row's
raw fields with its row number (``models.ecg.readers``: the physical line number in text files, so
users can find it), and ``validate_row`` turns a raw row into a record or an error without ever
raising (``models.ecg.validation`` has the checks and the reasons). An error is a dict with
``row_number``, ``source``, ``reason`` and ``raw``. Bad rows are never dropped silently: each one
is an error.

Files are opened through ``open_fn(path, "rb")`` and patterns expanded by ``glob_fn(pattern)``, by
default the file layer (``models.common.files``: local, ``gs://`` or ``ram://`` paths), so a Beam
pipeline can pass its ``FileSystems`` opener and matcher instead; it reads a dataset as independent
tasks (``models.ecg.shards``) on many workers.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.common import files
from models.ecg import (
    ANOMALY,
    BEAT_KEY,
    BEAT_LENGTH,
    DATASET_FORMATS,
    IS_ANOMALY_KEY,
    NORMAL,
    ROW_NUMBER_KEY,
    SOURCE_CLASS_KEY,
    SOURCE_KEY,
    UNKNOWN_LABEL,
    chunks,
    readers,
    shards,
    synthetic,
    tfrecords,
    validation,
)
from models.ecg.download import ECG_CSV_URL, TF_ECG_ALIAS, file_sha256, is_http_url, resolve_path
from models.ecg.readers import OpenFunction, open_data_file

__all__ = [
    "ECG_CSV_URL",
    "FORMATS",
    "TF_ECG_ALIAS",
    "DatasetSpec",
    "LoadedDataset",
    "detect_format",
    "file_sha256",
    "iter_raw_rows",
    "iter_records",
    "is_pattern",
    "load_dataset",
    "match_files",
    "validate_rows",
    "resolve_path",
    "validate_row",
    "with_resolved_format",
]

LOGGER = logging.getLogger(__name__)

FORMATS = DATASET_FORMATS
GLOB_CHARACTERS = "*?["
GlobFunction = Callable[[str], list]


def is_pattern(path: str) -> bool:
    """Whether ``path`` is a glob pattern (``*``, ``?`` or ``[``), not one file; URLs never are."""
    return (not is_http_url(path) and not synthetic.is_synthetic_uri(path)
            and any(character in path for character in GLOB_CHARACTERS))


def match_files(path: str, glob_fn: GlobFunction = files.glob) -> list[str]:
    """The files a pattern matches, sorted (``ValueError`` when none); a plain path stands for itself."""
    if not is_pattern(path):
        return [path]
    matched = sorted(glob_fn(path))
    if not matched:
        raise ValueError(f"no files match {path!r}")
    return matched


@dataclass(frozen=True)
class DatasetSpec:
    """Where a data set is and how to read it; ``path`` also tags every record as its source."""

    path: str = "synthetic"
    format: str = "auto"
    label_column: str | None = None
    feature_columns: tuple[str, ...] | None = None
    normal_label: str = "1"
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        """Check the fields, so that a bad spec fails before any file is read."""
        if isinstance(self.path, os.PathLike):
            object.__setattr__(self, "path", os.fspath(self.path))
        if not isinstance(self.path, str) or not self.path.strip():
            raise ValueError(f"path must be a non-empty string, got {self.path!r}")
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; choose from {', '.join(FORMATS)}")
        if self.format == "synthetic" and not synthetic.is_synthetic_uri(self.path):
            raise ValueError(
                f"format 'synthetic' needs a path like 'synthetic:beats=1000', got {self.path!r}"
            )
        if synthetic.is_synthetic_uri(self.path):
            synthetic.parse_synthetic_uri(self.path)
        if self.label_column is not None and not _is_name(self.label_column):
            raise ValueError(f"label_column must be a non-empty string, got {self.label_column!r}")
        if self.feature_columns is not None:
            object.__setattr__(self, "feature_columns", _checked_columns(self.feature_columns))
            if self.label_column in self.feature_columns:
                raise ValueError(
                    f"label_column {self.label_column!r} is also listed in feature_columns"
                )
        if not _is_name(self.normal_label):
            raise ValueError(f"normal_label must be a non-empty string, got {self.normal_label!r}")
        if isinstance(self.cache_dir, os.PathLike):
            object.__setattr__(self, "cache_dir", os.fspath(self.cache_dir))
        if self.cache_dir is not None and not _is_name(self.cache_dir):
            raise ValueError(f"cache_dir must be a non-empty string, got {self.cache_dir!r}")

    def resolved_format(self, open_fn: OpenFunction = open_data_file, glob_fn: GlobFunction = files.glob) -> str:
        """The concrete format: ``format`` itself, or for ``auto`` the one detected from the path.

        Telling a header-less ``.csv`` (``ecg_csv``) from one with a header (``csv``) reads its
        first line (downloading a URL first; for a pattern, of its first file); the answer is
        remembered on this spec.
        """
        if self.format != "auto":
            return self.format
        cached = self.__dict__.get("_detected_format")
        if cached is None:
            cached = detect_format(self.path, open_fn=open_fn, cache_dir=self.cache_dir, glob_fn=glob_fn)
            object.__setattr__(self, "_detected_format", cached)
        return cached


def _is_name(value: object) -> bool:
    """Whether ``value`` is a non-blank string."""
    return isinstance(value, str) and bool(value.strip())


def _checked_columns(columns: object) -> tuple[str, ...]:
    """Return ``columns`` as a tuple of distinct, non-empty names, or raise ``ValueError``."""
    if isinstance(columns, str):
        raise ValueError(f"feature_columns must be a tuple of names, not the string {columns!r}")
    try:
        checked = tuple(columns)
    except TypeError as error:
        raise ValueError(f"feature_columns must be a tuple of names, got {columns!r}") from error
    if not checked:
        raise ValueError("feature_columns must name at least one column (or be None for all)")
    for name in checked:
        if not _is_name(name):
            raise ValueError(f"feature_columns must hold non-empty strings, got {name!r}")
    if len(set(checked)) != len(checked):
        raise ValueError(f"feature_columns lists a column twice: {checked!r}")
    return checked


def with_resolved_format(spec: DatasetSpec, open_fn: OpenFunction = open_data_file,
                         glob_fn: GlobFunction = files.glob) -> DatasetSpec:
    """A copy of ``spec`` with ``format`` pinned to the detected one (the path is unchanged).

    Pass the pinned spec to ``validate_row`` when validating far from the file (Beam workers), so
    that the format is never detected again.
    """
    return dataclasses.replace(spec, format=spec.resolved_format(open_fn, glob_fn))


def detect_format(path: str, open_fn: OpenFunction = open_data_file, cache_dir: str | None = None,
                  glob_fn: GlobFunction = files.glob) -> str:
    """Pick the format of ``path`` as ``auto`` does (see the module docstring)."""
    if synthetic.is_synthetic_uri(path):
        return "synthetic"
    if path == TF_ECG_ALIAS:
        return "ecg_csv"
    extension = readers.suffix(path)
    if extension in (".txt", ".tsv", ".arff"):
        return "ucr"
    if extension == ".parquet":
        return "parquet"
    if extension in tfrecords.TFRECORD_SUFFIXES:
        return "tfrecord"
    if extension == ".csv":
        local_path = resolve_path(match_files(path, glob_fn)[0], cache_dir)
        return "csv" if _has_header(readers.first_line(local_path, open_fn)) else "ecg_csv"
    raise ValueError(
        f"cannot tell the format of {path!r} from its extension; pass format= one of "
        f"{', '.join(FORMATS[1:])}"
    )


def _has_header(line: str) -> bool:
    """Whether a CSV line has a non-numeric field, which makes it a header."""
    return any(field.strip() and not _is_number(field) for field in line.split(","))


def _is_number(text: str) -> bool:
    """Whether ``text`` parses as a float."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def iter_raw_rows(
    spec: DatasetSpec, open_fn: OpenFunction = open_data_file, glob_fn: GlobFunction = files.glob
) -> Iterator[tuple[int, Any, str | None]]:
    """Yield ``(row_number, values, label_text)`` for every data row, before validation.

    ``row_number`` is 1-based: the physical line number in text files (blank lines, comments and
    headers are skipped but counted), the row index in parquet files, the beat index for synthetic
    data. ``values`` holds the feature fields as read (strings, or floats for parquet and
    synthetic data). ``label_text`` is ``None`` when the table has no label column. A row whose
    field count differs from the header's is given one value fewer or more per missing or extra
    field, so it fails validation as ``wrong length``. A pattern yields the rows of every matched
    file in turn (``iter_records`` tells their sources apart).
    """
    for task in read_tasks(spec, open_fn, glob_fn):
        yield from shards.task_rows(task, open_fn)


def read_tasks(spec: DatasetSpec, open_fn: OpenFunction = open_data_file, glob_fn: GlobFunction = files.glob,
               block_bytes: int | None = None) -> list[shards.ReadTask]:
    """The read tasks of a dataset, in order: one per file (``block_bytes=None``) or per block/row group/shard.

    Split line tasks are numbered (``shards.number_task``) by counting newlines, which reads each
    file once more; the Beam jobs count in parallel instead (``pipeline.ecg_steps.ReadValidRows``).
    """
    data_format = spec.resolved_format(open_fn, glob_fn)
    _check_column_options(spec, data_format)
    if data_format == "synthetic":
        return shards.plan_synthetic(spec.path)
    tasks = []
    for path in match_files(spec.path, glob_fn):
        location = resolve_path(path, spec.cache_dir)
        LOGGER.info("reading %s as %s", path, data_format)
        if block_bytes is None and data_format != "parquet":
            tasks.append(shards.ReadTask(source=path, location=location, data_format=data_format, part=shards.FILE,
                                         label_column=spec.label_column, feature_columns=spec.feature_columns))
            continue
        size = files.size(location) if block_bytes is not None else 0
        newlines = 0
        for task in shards.plan_file(path, location, size, data_format, open_fn, block_bytes or 1,
                                     spec.label_column, spec.feature_columns):
            tasks.append(shards.number_task(task, newlines))
            newlines += shards.count_newlines(task, open_fn) if task.part == shards.LINES else 0
    return tasks


def _check_column_options(spec: DatasetSpec, data_format: str) -> None:
    """Refuse column options for formats whose columns are fixed."""
    if data_format == "tfrecord":
        tfrecords.beat_feature_name(spec.feature_columns)
    if data_format in validation.LABELLED_TABLE_FORMATS:
        return
    if spec.label_column is not None or spec.feature_columns is not None:
        raise ValueError(
            f"label_column and feature_columns apply to csv and parquet tables and tfrecord files only; "
            f"{spec.path!r} is read as {data_format}"
        )


def validate_row(
    row_number: int, values: Any, label_text: str | None, spec: DatasetSpec
) -> tuple[dict | None, dict | None]:
    """Turn one raw row into ``(record, None)``, or ``(None, error)`` if it is bad; never raises.

    The record holds the row number, the beat as float32 ``[BEAT_LENGTH]``, ``is_anomaly``, the
    source class and ``spec.path`` as source. The error holds the row number, the source, the
    reason and the row's text (rebuilt from its fields, cut to 200 characters). With
    ``format="auto"`` the format is detected once per spec; see ``with_resolved_format``.
    """
    data_format = spec.resolved_format()
    if isinstance(values, validation.Unreadable):
        return None, {"row_number": row_number, "source": spec.path, "reason": values.reason, "raw": ""}
    sample_list = validation.as_value_list(values)
    beat, reason = validation.parse_beat(sample_list)
    label = None
    if reason is None:
        label, reason = validation.parse_label(label_text, data_format, spec.normal_label)
    if reason is not None:
        raw = validation.raw_text(sample_list, label_text, data_format, spec.path)
        return None, {"row_number": row_number, "source": spec.path, "reason": reason, "raw": raw}
    is_anomaly, source_class = label
    record = {
        ROW_NUMBER_KEY: int(row_number),
        BEAT_KEY: beat,
        IS_ANOMALY_KEY: is_anomaly,
        SOURCE_CLASS_KEY: source_class,
        SOURCE_KEY: spec.path,
    }
    return record, None


def validate_rows(rows: Iterable[tuple[int, Any, str | None]], spec: DatasetSpec):
    """``(BeatChunk of the good rows, errors of the bad ones)`` of raw rows of one file, decided as ``validate_row``
    decides each row but in bulk (``models.ecg.chunks``); ``spec`` is the file's pinned spec."""
    return chunks.validate_rows(spec, rows, validate_row)


def file_spec(spec: DatasetSpec, source: str) -> DatasetSpec:
    """The spec of one file of ``spec`` (the same format and options; ``source`` as its path)."""
    return spec if source == spec.path else dataclasses.replace(spec, path=source)


def iter_records(spec: DatasetSpec, open_fn: OpenFunction = open_data_file,
                 glob_fn: GlobFunction = files.glob) -> Iterator[tuple[str, dict]]:
    """Yield ``("record", record)`` for each good row and ``("error", error)`` for each bad one."""
    pinned = with_resolved_format(spec, open_fn, glob_fn)
    for task in read_tasks(pinned, open_fn, glob_fn):
        source_spec = file_spec(pinned, task.source)
        for row_number, values, label_text in shards.task_rows(task, open_fn):
            record, error = validate_row(row_number, values, label_text, source_spec)
            if error is None:
                yield "record", record
            else:
                yield "error", error


@dataclass
class LoadedDataset:
    """A whole data set in memory: the good beats as arrays, plus the bad rows' errors."""

    beats: np.ndarray
    is_anomaly: np.ndarray
    source_classes: np.ndarray
    row_numbers: np.ndarray
    errors: list
    source: str

    def __post_init__(self) -> None:
        """Check that the arrays describe the same beats."""
        if self.beats.ndim != 2 or self.beats.shape[1] != BEAT_LENGTH:
            raise ValueError(f"beats must have shape [n, {BEAT_LENGTH}], got {self.beats.shape}")
        count = self.beats.shape[0]
        for name in ("is_anomaly", "source_classes", "row_numbers"):
            if getattr(self, name).shape != (count,):
                raise ValueError(
                    f"{name} must have shape ({count},), got {getattr(self, name).shape}"
                )

    def __len__(self) -> int:
        """The number of good beats."""
        return int(self.beats.shape[0])

    @property
    def has_labels(self) -> bool:
        """Whether there are beats and every one has a known label."""
        return len(self) > 0 and bool(np.all(self.is_anomaly != UNKNOWN_LABEL))


def load_dataset(spec: DatasetSpec, open_fn: OpenFunction = open_data_file,
                 glob_fn: GlobFunction = files.glob) -> LoadedDataset:
    """Read and validate a whole data set into memory (for scoring, benchmarks and replay).

    A pattern's files are concatenated in sorted order (their row numbers restart in every file).
    """
    pinned = with_resolved_format(spec, open_fn, glob_fn)
    if pinned.format == "synthetic":
        _check_column_options(pinned, "synthetic")
        dataset = _load_synthetic(pinned.path)
    else:
        dataset = _collect(iter_records(pinned, open_fn, glob_fn), pinned.path)
    LOGGER.info(
        "loaded %d beats and %d bad rows from %s", len(dataset), len(dataset.errors), spec.path
    )
    return dataset


def _load_synthetic(path: str) -> LoadedDataset:
    """Generated beats straight into arrays, shard by shard (they are valid by construction)."""
    configs = [config for _, config in shards.synthetic_shards(synthetic.parse_synthetic_uri(path))]
    generated = [synthetic.generate(config) for config in configs]
    beats = np.concatenate([part[0] for part in generated]) if len(generated) > 1 else generated[0][0]
    kinds = [kind for part in generated for kind in part[1]]
    source_classes = np.array(kinds, dtype=str)
    return LoadedDataset(
        beats=beats,
        is_anomaly=np.where(source_classes == synthetic.NORMAL_KIND, NORMAL, ANOMALY).astype(
            np.int64
        ),
        source_classes=source_classes,
        row_numbers=np.arange(1, len(kinds) + 1, dtype=np.int64),
        errors=[],
        source=path,
    )


def _collect(items: Iterable[tuple[str, dict]], source: str) -> LoadedDataset:
    """Gather records into arrays and errors into a list."""
    beats, flags, classes, rows, errors = [], [], [], [], []
    for kind, item in items:
        if kind == "error":
            errors.append(item)
            continue
        beats.append(item[BEAT_KEY])
        flags.append(item[IS_ANOMALY_KEY])
        classes.append(item[SOURCE_CLASS_KEY])
        rows.append(item[ROW_NUMBER_KEY])
    return LoadedDataset(
        beats=np.stack(beats) if beats else np.empty((0, BEAT_LENGTH), dtype=np.float32),
        is_anomaly=np.array(flags, dtype=np.int64),
        source_classes=np.array(classes, dtype=str),
        row_numbers=np.array(rows, dtype=np.int64),
        errors=errors,
        source=source,
    )
