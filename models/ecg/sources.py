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
``synthetic``
    ``"synthetic"`` or ``"synthetic:beats=...,seed=..."`` (see ``models.ecg.synthetic``); the source
    class is the synthetic kind.

``auto`` (the default) picks the format from the path: a synthetic URI, then the extension
(``.txt``/``.tsv``/``.arff`` are ucr, ``.parquet`` is parquet, and a ``.csv`` is ``csv`` when its
first line has a non-numeric field, a header, else ``ecg_csv``). ``http(s)`` URLs are downloaded
once into a cache (``resolve_path``).

Reading has two steps so that a pipeline can spread them out: ``iter_raw_rows`` yields each row's
raw fields with its row number (the physical line number in text files, so users can find it),
and ``validate_row`` turns a raw row into a record or an error without ever raising. An error is a
dict with ``row_number``, ``source``, ``reason`` and ``raw``; reasons start with one of
``wrong length``, ``non-numeric value``, ``non-finite value``, ``unknown label`` or
``missing label``. Sample indices in reasons are 0-based (``beat[index]``).

Files are opened through ``open_fn(path, "rb")``, so a Beam pipeline can pass an opener for remote
file systems; the binary stream is decoded as UTF-8 here.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import http.client
import io
import logging
import math
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
import pandas as pd

from models.ecg import synthetic
from models.ecg import (
    ANOMALY,
    BEAT_KEY,
    BEAT_LENGTH,
    IS_ANOMALY_KEY,
    NORMAL,
    ROW_NUMBER_KEY,
    SOURCE_CLASS_KEY,
    SOURCE_KEY,
    UNKNOWN_LABEL,
)

LOGGER = logging.getLogger(__name__)

ECG_CSV_URL = "http://storage.googleapis.com/download.tensorflow.org/data/ecg.csv"
TF_ECG_ALIAS = "tf-ecg"
FORMATS = ("auto", "ecg_csv", "ucr", "csv", "parquet", "synthetic")
LABELLED_TABLE_FORMATS = ("csv", "parquet")

CACHE_ENV_VAR = "HEARTWATCH_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/heartwatch"
DOWNLOAD_TIMEOUT_SECONDS = 60
DOWNLOAD_CHUNK_BYTES = 1 << 20
DOWNLOAD_LOG_EVERY_BYTES = 8 << 20
HASH_CHUNK_BYTES = 1 << 20

ECG_CSV_NORMAL_CLASS = "normal"
ECG_CSV_ABNORMAL_CLASS = "abnormal"
UCR_NORMAL_CLASS = 1
UCR_CLASSES = (1, 2, 3, 4, 5)

RAW_TEXT_LIMIT = 200
REASON_VALUE_LIMIT = 50
TEXT_ENCODING = "utf-8-sig"
ARFF_DATA_MARKER = "@data"
ARFF_COMMENT = "%"
UCR_LABEL_FIRST_SEPARATORS = {".txt": " ", ".tsv": "\t"}

OpenFunction = Callable[[str, str], IO[bytes]]


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

    def resolved_format(self, open_fn: OpenFunction = open) -> str:
        """The concrete format: ``format`` itself, or for ``auto`` the one detected from the path.

        Telling a header-less ``.csv`` (``ecg_csv``) from one with a header (``csv``) reads its
        first line (downloading a URL first); the answer is remembered on this spec.
        """
        if self.format != "auto":
            return self.format
        cached = self.__dict__.get("_detected_format")
        if cached is None:
            cached = detect_format(self.path, open_fn=open_fn, cache_dir=self.cache_dir)
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


def with_resolved_format(spec: DatasetSpec, open_fn: OpenFunction = open) -> DatasetSpec:
    """A copy of ``spec`` with ``format`` pinned to the detected one (the path is unchanged).

    Pass the pinned spec to ``validate_row`` when validating far from the file (Beam workers), so
    that the format is never detected again.
    """
    return dataclasses.replace(spec, format=spec.resolved_format(open_fn))


def detect_format(path: str, open_fn: OpenFunction = open, cache_dir: str | None = None) -> str:
    """Pick the format of ``path`` as ``auto`` does (see the module docstring)."""
    if synthetic.is_synthetic_uri(path):
        return "synthetic"
    if path == TF_ECG_ALIAS:
        return "ecg_csv"
    suffix = _suffix(path)
    if suffix in (".txt", ".tsv", ".arff"):
        return "ucr"
    if suffix == ".parquet":
        return "parquet"
    if suffix == ".csv":
        local_path = resolve_path(path, cache_dir)
        return "csv" if _has_header(_first_line(local_path, open_fn)) else "ecg_csv"
    raise ValueError(
        f"cannot tell the format of {path!r} from its extension; pass format= one of "
        f"{', '.join(FORMATS[1:])}"
    )


def _suffix(path: str) -> str:
    """The lower-cased extension of a local path or of a URL's path."""
    if "://" in path:
        path = urllib.parse.urlparse(path).path
    return PurePosixPath(path.replace("\\", "/")).suffix.lower()


def _first_line(path: str, open_fn: OpenFunction) -> str:
    """The first non-blank line of a text file, or ``""`` for an empty file."""
    with _open_binary(path, open_fn) as binary:
        for line in io.TextIOWrapper(binary, encoding=TEXT_ENCODING):
            if line.strip():
                return line
    return ""


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


def _open_binary(path: str, open_fn: OpenFunction) -> IO[bytes]:
    """Open ``path`` for binary reading; a missing file raises ``FileNotFoundError`` naming it."""
    try:
        return open_fn(path, "rb")
    except FileNotFoundError as error:
        raise FileNotFoundError(f"data file not found: {path}") from error


def resolve_path(path: str, cache_dir: str | None = None) -> str:
    """Return a local path for ``path``, downloading an ``http(s)`` URL once into a cache.

    ``"tf-ecg"`` stands for ``ECG_CSV_URL``. The cache is ``cache_dir``, else ``$HEARTWATCH_CACHE``,
    else ``~/.cache/heartwatch``; a download goes to a temporary file renamed into place when
    complete, so an interrupted one leaves nothing behind. Other paths (local files, synthetic
    URIs, ``gs://`` and the like) come back unchanged. A failed download raises ``RuntimeError``.
    """
    if path == TF_ECG_ALIAS:
        path = ECG_CSV_URL
    if not _is_http_url(path):
        return path
    directory = Path(cache_dir or os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_DIR).expanduser()
    target = directory / _cache_file_name(path)
    if target.is_file():
        LOGGER.info("using cached copy %s of %s", target, path)
        return str(target)
    directory.mkdir(parents=True, exist_ok=True)
    _download(path, target)
    return str(target)


def _is_http_url(path: str) -> bool:
    """Whether ``path`` is an http or https URL."""
    return urllib.parse.urlparse(path).scheme.lower() in ("http", "https")


def _cache_file_name(url: str) -> str:
    """A file name unique to ``url`` that keeps its base name (and so its extension)."""
    base_name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", base_name) or "download"
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]
    return f"{digest}-{safe_name}"


def _download(url: str, target: Path) -> None:
    """Download ``url`` to ``target`` through a temporary file in the same folder."""
    LOGGER.info("downloading %s to %s", url, target)
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part"
    )
    try:
        with os.fdopen(handle, "wb") as output:
            copied = _copy_response(url, output)
        os.replace(temporary, target)
    except (OSError, ValueError, http.client.HTTPException) as error:
        raise RuntimeError(
            f"download of {url} failed ({error}); download the file yourself and pass its local "
            f"path instead"
        ) from error
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    LOGGER.info("downloaded %s (%d bytes)", url, copied)


def _copy_response(url: str, output: IO[bytes]) -> int:
    """Stream the body of ``url`` into ``output``, logging progress; return the byte count."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
        total = response.headers.get("Content-Length")
        copied = 0
        next_log = DOWNLOAD_LOG_EVERY_BYTES
        while chunk := response.read(DOWNLOAD_CHUNK_BYTES):
            output.write(chunk)
            copied += len(chunk)
            if copied >= next_log:
                LOGGER.info("downloaded %d of %s bytes from %s", copied, total or "?", url)
                next_log += DOWNLOAD_LOG_EVERY_BYTES
    return copied


def file_sha256(path: str, open_fn: OpenFunction = open) -> str:
    """The hex SHA-256 digest of a file's bytes (for model cards)."""
    digest = hashlib.sha256()
    with _open_binary(path, open_fn) as binary:
        while chunk := binary.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def iter_raw_rows(
    spec: DatasetSpec, open_fn: OpenFunction = open
) -> Iterator[tuple[int, Any, str | None]]:
    """Yield ``(row_number, values, label_text)`` for every data row, before validation.

    ``row_number`` is 1-based: the physical line number in text files (blank lines, comments and
    headers are skipped but counted), the row index in parquet files, the beat index for synthetic
    data. ``values`` holds the feature fields as read (strings, or floats for parquet and
    synthetic data). ``label_text`` is ``None`` when the table has no label column. A row whose
    field count differs from the header's is given one value fewer or more per missing or extra
    field, so it fails validation as ``wrong length``.
    """
    data_format = spec.resolved_format(open_fn)
    _check_column_options(spec, data_format)
    if data_format == "synthetic":
        yield from _synthetic_rows(spec.path)
        return
    path = resolve_path(spec.path, spec.cache_dir)
    LOGGER.info("reading %s as %s", spec.path, data_format)
    if data_format == "ecg_csv":
        yield from _ecg_csv_rows(_text_lines(path, open_fn))
    elif data_format == "ucr":
        yield from _ucr_rows(path, _text_lines(path, open_fn))
    elif data_format == "csv":
        yield from _csv_rows(path, open_fn, spec)
    else:
        yield from _parquet_rows(path, open_fn, spec)


def _check_column_options(spec: DatasetSpec, data_format: str) -> None:
    """Refuse column options for formats whose columns are fixed."""
    if data_format in LABELLED_TABLE_FORMATS:
        return
    if spec.label_column is not None or spec.feature_columns is not None:
        raise ValueError(
            f"label_column and feature_columns apply to csv and parquet tables only; "
            f"{spec.path!r} is read as {data_format}"
        )


def _text_lines(path: str, open_fn: OpenFunction) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` for every line of a UTF-8 text file, line ends removed."""
    with _open_binary(path, open_fn) as binary:
        for line_number, line in enumerate(io.TextIOWrapper(binary, encoding=TEXT_ENCODING), 1):
            yield line_number, line.rstrip("\r\n")


def _ecg_csv_rows(lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, list[str], str]]:
    """Rows of TensorFlow's ecg.csv: samples, then the label last."""
    for line_number, line in lines:
        if line.strip():
            fields = [field.strip() for field in line.split(",")]
            yield line_number, fields[:-1], fields[-1]


def _ucr_rows(path: str, lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, list[str], str]]:
    """Rows of a UCR file: label first in .txt (whitespace) and .tsv (tab), last in .arff."""
    suffix = _suffix(path)
    if suffix == ".arff":
        yield from _arff_rows(path, lines)
        return
    separator = "\t" if suffix == ".tsv" else None
    for line_number, line in lines:
        if line.strip():
            fields = [field.strip() for field in line.strip(" \r\n").split(separator)]
            yield line_number, fields[1:], fields[0]


def _arff_rows(path: str, lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, list[str], str]]:
    """Rows after the ``@data`` line of an ARFF file, comma separated, label last."""
    in_data = False
    for line_number, line in lines:
        stripped = line.strip()
        if not in_data:
            in_data = stripped.lower().startswith(ARFF_DATA_MARKER)
        elif stripped and not stripped.startswith(ARFF_COMMENT):
            fields = [field.strip() for field in stripped.split(",")]
            yield line_number, fields[:-1], fields[-1].strip("'\"")
    if not in_data:
        raise ValueError(f"{path}: no {ARFF_DATA_MARKER} line, so this is not an ARFF file")


@dataclass(frozen=True)
class _ColumnLayout:
    """Where the features and the label sit in a table's header."""

    feature_indices: tuple[int, ...]
    label_index: int | None
    width: int


def _column_layout(header: Sequence[str], spec: DatasetSpec, path: str) -> _ColumnLayout:
    """Find the feature and label columns of ``spec`` in ``header``, or raise ``ValueError``."""
    names = [str(name).strip() for name in header]
    wanted = [*(spec.feature_columns or ()), *([spec.label_column] if spec.label_column else [])]
    missing = [name for name in wanted if name not in names]
    if missing:
        raise ValueError(f"{path}: columns {missing} not found; the columns are {names}")
    repeated = [name for name in wanted if names.count(name) > 1]
    if repeated:
        raise ValueError(f"{path}: columns {repeated} appear more than once in the header")
    label_index = names.index(spec.label_column) if spec.label_column else None
    if spec.feature_columns is None:
        feature_indices = tuple(index for index in range(len(names)) if index != label_index)
    else:
        feature_indices = tuple(names.index(name) for name in spec.feature_columns)
    return _ColumnLayout(feature_indices, label_index, len(names))


def _split_fields(fields: list[str], layout: _ColumnLayout) -> tuple[list[str], str | None]:
    """Pick the feature values and the label text out of one row's fields."""
    present = [fields[index] for index in layout.feature_indices if index < len(fields)]
    if len(fields) != layout.width:
        wanted = max(0, len(layout.feature_indices) + len(fields) - layout.width)
        present = (present + fields[layout.width :])[:wanted]
    if layout.label_index is None:
        return present, None
    label = fields[layout.label_index] if layout.label_index < len(fields) else ""
    return present, label


def _csv_rows(
    path: str, open_fn: OpenFunction, spec: DatasetSpec
) -> Iterator[tuple[int, list[str], str | None]]:
    """Rows of a CSV table with a header; ``row_number`` is the physical line number."""
    with _open_binary(path, open_fn) as binary:
        reader = csv.reader(io.TextIOWrapper(binary, encoding=TEXT_ENCODING, newline=""))
        layout = None
        for row in reader:
            fields = [field.strip() for field in row]
            if not any(fields):
                continue
            if layout is None:
                layout = _column_layout(fields, spec, path)
                continue
            values, label = _split_fields(fields, layout)
            yield reader.line_num, values, label


def _parquet_rows(
    path: str, open_fn: OpenFunction, spec: DatasetSpec
) -> Iterator[tuple[int, Any, str | None]]:
    """Rows of a parquet table; ``row_number`` is the 1-based row index."""
    with _open_binary(path, open_fn) as binary:
        frame = pd.read_parquet(binary)
    layout = _column_layout([str(name) for name in frame.columns], spec, path)
    features = frame.iloc[:, list(layout.feature_indices)]
    labels = _parquet_labels(frame, layout.label_index)
    for index, values in enumerate(_parquet_feature_rows(features)):
        yield index + 1, values, None if labels is None else labels[index]


def _parquet_feature_rows(features: pd.DataFrame) -> Iterator[Any]:
    """Each row's values: the row itself, or the list held by a single list-valued column."""
    if features.shape[1] == 1 and features.dtypes.iloc[0] == object:
        for cell in features.iloc[:, 0]:
            yield _cell_values(cell)
        return
    if all(pd.api.types.is_numeric_dtype(dtype) for dtype in features.dtypes):
        yield from features.to_numpy(dtype=np.float64, na_value=np.nan)
        return
    yield from features.to_numpy()


def _cell_values(cell: Any) -> Any:
    """A list-valued cell's values; any other cell as a one-value list."""
    if isinstance(cell, np.ndarray):
        return cell
    if isinstance(cell, (list, tuple)):
        return list(cell)
    return [cell]


def _parquet_labels(frame: pd.DataFrame, label_index: int | None) -> list[str] | None:
    """The label column as text (``1.0`` as ``"1"``, nulls as ``""``), or ``None``."""
    if label_index is None:
        return None
    return [_label_cell_text(value) for value in frame.iloc[:, label_index].tolist()]


def _label_cell_text(value: Any) -> str:
    """The text of a typed label cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _synthetic_rows(path: str) -> Iterator[tuple[int, np.ndarray, str]]:
    """Rows of generated synthetic beats; the label text is the kind."""
    beats, kinds = synthetic.generate(synthetic.parse_synthetic_uri(path))
    for index, (beat, kind) in enumerate(zip(beats, kinds), 1):
        yield index, beat, kind


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
    sample_list = _as_value_list(values)
    beat, reason = _parse_beat(sample_list)
    label = None
    if reason is None:
        label, reason = _parse_label(label_text, data_format, spec.normal_label)
    if reason is not None:
        raw = _raw_text(sample_list, label_text, data_format, spec.path)
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


def _as_value_list(values: Any) -> Any:
    """``values`` as something with a length: arrays stay arrays, ``None`` becomes empty."""
    if values is None or isinstance(values, (str, bytes)):
        return [] if values is None else [values]
    if isinstance(values, np.ndarray):
        return values.reshape(-1) if values.ndim == 0 else values
    try:
        return list(values)
    except TypeError:
        return [values]


def _parse_beat(values: Any) -> tuple[np.ndarray | None, str | None]:
    """The beat as float32 ``[BEAT_LENGTH]``, or the reason it is not one."""
    if len(values) != BEAT_LENGTH:
        return None, f"wrong length: expected {BEAT_LENGTH} samples, got {len(values)}"
    try:
        samples = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        samples = None
    if samples is None or samples.shape != (BEAT_LENGTH,):
        return None, _first_non_numeric_reason(values)
    bad = np.flatnonzero(~np.isfinite(samples))
    if bad.size:
        return None, f"non-finite value at sample {bad[0]}"
    with np.errstate(over="ignore"):
        beat = samples.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(beat))
    if bad.size:
        return None, f"non-finite value at sample {bad[0]} ({samples[bad[0]]!r} overflows float32)"
    return beat, None


def _first_non_numeric_reason(values: Any) -> str:
    """The reason naming the first value that is not a number."""
    for index, value in enumerate(values):
        try:
            float(value)
        except (TypeError, ValueError, OverflowError):
            return f"non-numeric value {_short(value)!r} at sample {index}"
    return "non-numeric value at an unknown sample"


def _short(value: Any) -> str:
    """The text of ``value``, cut for use in a reason."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= REASON_VALUE_LIMIT else text[:REASON_VALUE_LIMIT] + "..."


def _parse_label(
    label_text: Any, data_format: str, normal_label: str
) -> tuple[tuple[int, str] | None, str | None]:
    """``((is_anomaly, source_class), None)`` for a good label, else ``(None, reason)``."""
    if label_text is None and data_format in LABELLED_TABLE_FORMATS:
        return (UNKNOWN_LABEL, ""), None
    text = "" if label_text is None else str(label_text).strip()
    if not text:
        return None, "missing label"
    if data_format == "ecg_csv":
        label = _ecg_csv_label(text)
    elif data_format == "ucr":
        label = _ucr_label(text)
    elif data_format == "synthetic":
        label = _synthetic_label(text)
    else:
        label = _table_label(text, normal_label)
    if label is None:
        return None, f"unknown label {_short(text)!r}"
    return label, None


def _integer_value(text: str) -> int | None:
    """The integer that ``text`` spells (``"1"``, ``"1.0000000e+00"``), else ``None``."""
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if math.isfinite(number) and number.is_integer() else None


def _ecg_csv_label(text: str) -> tuple[int, str] | None:
    """TensorFlow ecg.csv: 1 is normal, 0 is abnormal."""
    value = _integer_value(text)
    if value == 1:
        return NORMAL, ECG_CSV_NORMAL_CLASS
    if value == 0:
        return ANOMALY, ECG_CSV_ABNORMAL_CLASS
    return None


def _ucr_label(text: str) -> tuple[int, str] | None:
    """UCR ECG5000: class 1 is normal, 2 to 5 abnormal; the class is the source class."""
    value = _integer_value(text)
    if value not in UCR_CLASSES:
        return None
    return (NORMAL if value == UCR_NORMAL_CLASS else ANOMALY), str(value)


def _synthetic_label(text: str) -> tuple[int, str] | None:
    """Synthetic data: the kind ``normal`` is normal, the other known kinds are anomalies."""
    if text not in synthetic.SYNTHETIC_KINDS:
        return None
    return (NORMAL if text == synthetic.NORMAL_KIND else ANOMALY), text


def _table_label(text: str, normal_label: str) -> tuple[int, str]:
    """Generic tables: ``normal_label`` (as text or as a number) is normal, anything else not."""
    return (NORMAL if _same_label(text, normal_label) else ANOMALY), text


def _same_label(text: str, normal_label: str) -> bool:
    """Whether two labels are equal as text or as numbers."""
    if text == normal_label.strip():
        return True
    try:
        return float(text) == float(normal_label)
    except ValueError:
        return False


def _raw_text(values: Any, label_text: Any, data_format: str, path: str) -> str:
    """The row's text rebuilt from its fields in file order, cut to ``RAW_TEXT_LIMIT``."""
    label = [] if label_text is None else [label_text]
    suffix = _suffix(path)
    if data_format == "ucr" and suffix in UCR_LABEL_FIRST_SEPARATORS:
        separator = UCR_LABEL_FIRST_SEPARATORS[suffix]
        fields = [*label, *values[:RAW_TEXT_LIMIT]]
    else:
        separator = ","
        fields = [*values[:RAW_TEXT_LIMIT], *label]
    text = separator.join("" if field is None else str(field) for field in fields)
    return text[:RAW_TEXT_LIMIT]


def iter_records(spec: DatasetSpec, open_fn: OpenFunction = open) -> Iterator[tuple[str, dict]]:
    """Yield ``("record", record)`` for each good row and ``("error", error)`` for each bad one."""
    pinned = with_resolved_format(spec, open_fn)
    for row_number, values, label_text in iter_raw_rows(pinned, open_fn):
        record, error = validate_row(row_number, values, label_text, pinned)
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


def load_dataset(spec: DatasetSpec, open_fn: OpenFunction = open) -> LoadedDataset:
    """Read and validate a whole data set into memory (for scoring, benchmarks and replay)."""
    pinned = with_resolved_format(spec, open_fn)
    if pinned.format == "synthetic":
        _check_column_options(pinned, "synthetic")
        dataset = _load_synthetic(pinned.path)
    else:
        dataset = _collect(iter_records(pinned, open_fn), pinned.path)
    LOGGER.info(
        "loaded %d beats and %d bad rows from %s", len(dataset), len(dataset.errors), spec.path
    )
    return dataset


def _load_synthetic(path: str) -> LoadedDataset:
    """Generated beats straight into arrays (they are valid by construction)."""
    beats, kinds = synthetic.generate(synthetic.parse_synthetic_uri(path))
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
