"""Per-format row readers: each turns one ECG file into raw ``(row_number, values, label_text)`` rows.

The readers only split files into fields; ``models.ecg.sources.validate_row`` decides whether a
row is a beat. ``row_number`` is 1-based: the physical line number in text files (blank lines,
comments and headers are skipped but counted, so users can find a row), the row index in parquet
files, the beat index for synthetic data.

Files are opened through ``open_fn(path, "rb")``: by default ``open_data_file`` (the file layer,
``models.common.files``, so local, ``gs://`` and ``ram://`` paths work); a Beam pipeline passes
its ``FileSystems`` opener. Any binary stream that iterates its lines will do; text is decoded
as UTF-8 (a byte-order mark is dropped) line by line, and a parquet table one row group at a time,
so a file is never read whole. ``models.ecg.shards`` cuts files into independently read tasks
(line ranges, row groups) on top of these readers.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any

import numpy as np
import pandas as pd

from models.common import files
from models.ecg import synthetic

TEXT_ENCODING = "utf-8-sig"
ARFF_DATA_MARKER = "@data"
ARFF_COMMENT = "%"
# How UCR text files that put the label first separate their fields (None: any whitespace).
UCR_LABEL_FIRST_SEPARATORS = {".txt": " ", ".tsv": "\t"}
UCR_SPLIT_SEPARATORS = {".txt": None, ".tsv": "\t"}

OpenFunction = Callable[[str, str], IO[bytes]]


def open_data_file(path: str, mode: str = "rb") -> IO[bytes]:
    """The default ``open_fn``: ``path`` through the file layer; a missing file is ``FileNotFoundError``."""
    if not files.exists(path):
        raise FileNotFoundError(f"data file not found: {path}")
    return files.open_file(path, mode)


def open_binary(path: str, open_fn: OpenFunction = open_data_file) -> IO[bytes]:
    """Open ``path`` for binary reading; a missing file raises ``FileNotFoundError`` naming it."""
    try:
        return open_fn(path, "rb")
    except FileNotFoundError as error:
        raise FileNotFoundError(f"data file not found: {path}") from error


def suffix(path: str) -> str:
    """The lower-cased extension of a local path or of a URL's path."""
    if "://" in path:
        path = urllib.parse.urlparse(path).path
    return PurePosixPath(path.replace("\\", "/")).suffix.lower()


def _decoded_lines(binary: IO[bytes]) -> Iterator[str]:
    """The lines of a binary stream decoded as UTF-8, line ends kept."""
    return codecs.iterdecode(binary, TEXT_ENCODING)


def text_lines(path: str, open_fn: OpenFunction) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` for every line of a UTF-8 text file, line ends removed."""
    with open_binary(path, open_fn) as binary:
        for line_number, line in enumerate(_decoded_lines(binary), 1):
            yield line_number, line.rstrip("\r\n")


def first_line(path: str, open_fn: OpenFunction) -> str:
    """The first non-blank line of a text file, or ``""`` for an empty file."""
    with open_binary(path, open_fn) as binary:
        for line in _decoded_lines(binary):
            if line.strip():
                return line
    return ""


def ecg_csv_rows(lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, list[str], str]]:
    """Rows of TensorFlow's ecg.csv: samples, then the label last."""
    for line_number, line in lines:
        if line.strip():
            fields = [field.strip() for field in line.split(",")]
            yield line_number, fields[:-1], fields[-1]


def ucr_rows(path: str, lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, list[str], str]]:
    """Rows of a UCR file: label first in .txt (whitespace) and .tsv (tab), last in .arff."""
    extension = suffix(path)
    if extension == ".arff":
        yield from arff_rows(path, lines)
        return
    separator = UCR_SPLIT_SEPARATORS.get(extension)
    for line_number, line in lines:
        if line.strip():
            fields = [field.strip() for field in line.strip(" \r\n").split(separator)]
            yield line_number, fields[1:], fields[0]


def arff_rows(path: str, lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, list[str], str]]:
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
class ColumnLayout:
    """Where the features and the label sit in a table's header."""

    feature_indices: tuple[int, ...]
    label_index: int | None
    width: int


def column_layout(header: Sequence[str], feature_columns: tuple[str, ...] | None, label_column: str | None,
                  path: str) -> ColumnLayout:
    """Find the feature and label columns in ``header`` (all but the label by default), or raise ``ValueError``."""
    names = [str(name).strip() for name in header]
    wanted = [*(feature_columns or ()), *([label_column] if label_column else [])]
    missing = [name for name in wanted if name not in names]
    if missing:
        raise ValueError(f"{path}: columns {missing} not found; the columns are {names}")
    repeated = [name for name in wanted if names.count(name) > 1]
    if repeated:
        raise ValueError(f"{path}: columns {repeated} appear more than once in the header")
    label_index = names.index(label_column) if label_column else None
    if feature_columns is None:
        feature_indices = tuple(index for index in range(len(names)) if index != label_index)
    else:
        feature_indices = tuple(names.index(name) for name in feature_columns)
    return ColumnLayout(feature_indices, label_index, len(names))


def split_fields(fields: list[str], layout: ColumnLayout) -> tuple[list[str], str | None]:
    """Pick the feature values and the label text out of one row's fields.

    A row whose field count differs from the header's gets one value fewer or more per missing or
    extra field, so that it fails validation as ``wrong length`` instead of being dropped.
    """
    present = [fields[index] for index in layout.feature_indices if index < len(fields)]
    if len(fields) != layout.width:
        wanted = max(0, len(layout.feature_indices) + len(fields) - layout.width)
        present = (present + fields[layout.width:])[:wanted]
    if layout.label_index is None:
        return present, None
    label = fields[layout.label_index] if layout.label_index < len(fields) else ""
    return present, label


def csv_rows(path: str, open_fn: OpenFunction, feature_columns: tuple[str, ...] | None,
             label_column: str | None) -> Iterator[tuple[int, list[str], str | None]]:
    """Rows of a CSV table with a header; ``row_number`` is the physical line number."""
    with open_binary(path, open_fn) as binary:
        reader = csv.reader(_decoded_lines(binary))
        layout = None
        for row in reader:
            fields = [field.strip() for field in row]
            if not any(fields):
                continue
            if layout is None:
                layout = column_layout(fields, feature_columns, label_column, path)
                continue
            values, label = split_fields(fields, layout)
            yield reader.line_num, values, label


class SeekableStream(io.RawIOBase):
    """A seekable binary stream as pyarrow wants one (``closed``, ``readinto``), over any ``read``/``seek``/``tell``.

    TensorFlow's ``GFile`` (the file layer) and Beam's channels have the calls but not every attribute.
    """

    def __init__(self, handle):
        super().__init__()
        self._handle = handle

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._handle.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._handle.seek(offset, whence)
        return self._handle.tell()

    def tell(self) -> int:
        return self._handle.tell()


def _parquet_file(binary: IO[bytes]):
    """A pyarrow ``ParquetFile`` over a seekable binary stream (only the footer is read)."""
    import pyarrow.parquet

    return pyarrow.parquet.ParquetFile(io.BufferedReader(SeekableStream(binary), buffer_size=1 << 20))


def parquet_row_group_sizes(path: str, open_fn: OpenFunction) -> list[int]:
    """The row count of every row group of a parquet file, from its footer."""
    with open_binary(path, open_fn) as binary:
        metadata = _parquet_file(binary).metadata
        return [metadata.row_group(index).num_rows for index in range(metadata.num_row_groups)]


def parquet_rows(path: str, open_fn: OpenFunction, feature_columns: tuple[str, ...] | None,
                 label_column: str | None, row_groups: Iterable[int] | None = None,
                 first_row: int = 1) -> Iterator[tuple[int, Any, str | None]]:
    """Rows of a parquet table, one row group in memory at a time; ``row_number`` is the 1-based row index.

    ``row_groups`` (default: all) reads only those groups; ``first_row`` is then the row number of the
    first row of the first of them.
    """
    with open_binary(path, open_fn) as binary:
        table = _parquet_file(binary)
        groups = range(table.metadata.num_row_groups) if row_groups is None else row_groups
        row_number = first_row
        for group in groups:
            frame = table.read_row_group(group, use_pandas_metadata=True).to_pandas()
            layout = column_layout([str(name) for name in frame.columns], feature_columns, label_column, path)
            features = frame.iloc[:, list(layout.feature_indices)]
            labels = _parquet_labels(frame, layout.label_index)
            for index, values in enumerate(_parquet_feature_rows(features)):
                yield row_number, values, None if labels is None else labels[index]
                row_number += 1
        if row_groups is None and table.metadata.num_row_groups == 0:
            column_layout(table.schema_arrow.names, feature_columns, label_column, path)


def _parquet_feature_rows(features: pd.DataFrame) -> Iterator[Any]:
    """Each row's values: the row itself, or the list held by a single list-valued column."""
    if features.shape[1] == 1 and pd.api.types.is_object_dtype(features.dtypes.iloc[0]):
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
    return [label_cell_text(value) for value in frame.iloc[:, label_index].tolist()]


def label_cell_text(value: Any) -> str:
    """The text of a typed label cell (parquet cells, TFRecord label values): ``1.0`` as ``"1"``, nulls as ``""``."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def generated_rows(config: synthetic.SyntheticConfig, first_row: int = 1) -> Iterator[tuple[int, np.ndarray, str]]:
    """Rows of generated synthetic beats numbered from ``first_row``; the label text is the kind."""
    beats, kinds = synthetic.generate(config)
    for index, (beat, kind) in enumerate(zip(beats, kinds), first_row):
        yield index, beat, kind
