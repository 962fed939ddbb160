"""Checks of one raw row: is it a beat, and what does its label say? Pure functions, never raising.

``models.ecg.sources.validate_row`` builds records and errors from these. A beat is exactly
``BEAT_LENGTH`` finite numbers that fit float32; a reason for refusing a row starts with one of
``wrong length``, ``non-numeric value``, ``non-finite value``, ``unknown label`` or
``missing label`` (or is the reader's own, for a record it could not read: ``Unreadable``), and
sample indices in reasons are 0-based (``beat[index]``).

Labels, per format: ``ecg_csv`` has 1 for normal and 0 for abnormal (TensorFlow counts normal as
positive, heartwatch does not: ``is_anomaly = 1 - label``); ``ucr`` classes are 1 (normal) to 5,
kept as the source class; ``synthetic`` labels are the generator's kinds; ``csv`` and ``parquet``
tables (and ``tfrecord`` files) compare against the spec's ``normal_label`` as text or as a number,
and without a label column every beat is ``UNKNOWN_LABEL``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from models.ecg import ANOMALY, BEAT_LENGTH, NORMAL, UNKNOWN_LABEL, synthetic
from models.ecg.readers import UCR_LABEL_FIRST_SEPARATORS, suffix

LABELLED_TABLE_FORMATS = ("csv", "parquet", "tfrecord")
ECG_CSV_NORMAL_CLASS = "normal"
ECG_CSV_ABNORMAL_CLASS = "abnormal"
UCR_NORMAL_CLASS = 1
UCR_CLASSES = (1, 2, 3, 4, 5)
RAW_TEXT_LIMIT = 200
REASON_VALUE_LIMIT = 50


class Unreadable:
    """The values of a row its reader could not decode (a broken binary record), with the reason."""

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self) -> str:
        return f"Unreadable({self.reason!r})"


def as_value_list(values: Any) -> Any:
    """``values`` as something with a length: arrays stay arrays, ``None`` becomes empty."""
    if values is None or isinstance(values, (str, bytes)):
        return [] if values is None else [values]
    if isinstance(values, np.ndarray):
        return values.reshape(-1) if values.ndim == 0 else values
    try:
        return list(values)
    except TypeError:
        return [values]


def parse_beat(values: Any) -> tuple[np.ndarray | None, str | None]:
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


def parse_label(
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


def raw_text(values: Any, label_text: Any, data_format: str, path: str) -> str:
    """The row's text rebuilt from its fields in file order, cut to ``RAW_TEXT_LIMIT``."""
    label = [] if label_text is None else [label_text]
    extension = suffix(path)
    if data_format == "ucr" and extension in UCR_LABEL_FIRST_SEPARATORS:
        separator = UCR_LABEL_FIRST_SEPARATORS[extension]
        fields = [*label, *values[:RAW_TEXT_LIMIT]]
    else:
        separator = ","
        fields = [*values[:RAW_TEXT_LIMIT], *label]
    text = separator.join("" if field is None else str(field) for field in fields)
    return text[:RAW_TEXT_LIMIT]
