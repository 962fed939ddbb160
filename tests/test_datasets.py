"""Tests of reading every supported input into validated beat records (no network needed)."""

import functools
import hashlib
import http.server
import io
import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.common import files
from models.ecg import (
    BEAT_KEY,
    BEAT_LENGTH,
    IS_ANOMALY_KEY,
    ROW_NUMBER_KEY,
    SOURCE_CLASS_KEY,
    SOURCE_KEY,
    UNKNOWN_LABEL,
    download,
    shards,
    synthetic,
)
from models.ecg.readers import open_data_file
from models.ecg.sources import (
    ECG_CSV_URL,
    FORMATS,
    DatasetSpec,
    LoadedDataset,
    detect_format,
    file_sha256,
    is_pattern,
    iter_raw_rows,
    iter_records,
    load_dataset,
    match_files,
    read_tasks,
    resolve_path,
    validate_row,
    validate_rows,
    with_resolved_format,
)

ECG5000_CLASS_COUNTS = {"1": 292, "2": 177, "3": 10, "4": 19, "5": 2}
UNREACHABLE_URL = "http://127.0.0.1:9/x.csv"


def beat(seed: int) -> np.ndarray:
    """A reproducible beat-length row of floats."""
    return np.random.default_rng(seed).normal(size=BEAT_LENGTH)


def text_fields(values) -> list[str]:
    """Values written like the UCR files write them."""
    return [f"{value:.7e}" for value in values]


def number_fields(values) -> list[str]:
    """Values written at full precision."""
    return [repr(float(value)) for value in values]


def write_lines(path: Path, lines: list[str]) -> str:
    """Write ``lines`` to ``path`` and return the path as a string."""
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def records_and_errors(spec: DatasetSpec, open_fn=open_data_file) -> tuple[list[dict], list[dict]]:
    """Split ``iter_records`` into its records and its errors."""
    items = list(iter_records(spec, open_fn))
    return [item for kind, item in items if kind == "record"], [
        item for kind, item in items if kind == "error"
    ]


def ecg5000_sample_path() -> Path:
    """The ECG5000 training sample: ``$HEARTWATCH_ECG5000`` or the shared data folder."""
    default = Path(__file__).resolve().parents[1] / ".." / "shared/data/ecg5000/ECG5000_TRAIN.txt"
    return Path(os.environ.get("HEARTWATCH_ECG5000", default))


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files without logging each request."""

    def log_message(self, format, *args):  # noqa: A002 - the base class's parameter name
        """Stay quiet."""


@pytest.fixture
def file_server(tmp_path):
    """Serve ``tmp_path / "served"`` on a loopback port; yields ``(folder, base_url)``."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_ecg_csv_labels_are_inverted_and_named(tmp_path):
    rows = [(beat(0), "1.000000000000000000e+00"), (beat(1), "0.0"), (beat(2), "1")]
    path = write_lines(
        tmp_path / "ecg.csv", [",".join([*number_fields(values), label]) for values, label in rows]
    )
    records, errors = records_and_errors(DatasetSpec(path))
    assert errors == []
    assert [record[IS_ANOMALY_KEY] for record in records] == [0, 1, 0]
    assert [record[SOURCE_CLASS_KEY] for record in records] == ["normal", "abnormal", "normal"]
    assert [record[ROW_NUMBER_KEY] for record in records] == [1, 2, 3]
    assert all(record[SOURCE_KEY] == path for record in records)
    assert records[1][BEAT_KEY].dtype == np.float32
    assert records[1][BEAT_KEY].shape == (BEAT_LENGTH,)
    np.testing.assert_allclose(records[1][BEAT_KEY], beat(1), rtol=1e-6)


@pytest.mark.parametrize(("suffix", "separator"), [(".txt", "   "), (".tsv", "\t")])
def test_ucr_text_files_keep_the_class(tmp_path, suffix, separator):
    lines = [separator.join([f"{label:.7e}", *text_fields(beat(label))]) for label in range(1, 6)]
    path = write_lines(tmp_path / f"ECG5000_TEST{suffix}", lines)
    records, errors = records_and_errors(DatasetSpec(path))
    assert errors == []
    assert [record[SOURCE_CLASS_KEY] for record in records] == ["1", "2", "3", "4", "5"]
    assert [record[IS_ANOMALY_KEY] for record in records] == [0, 1, 1, 1, 1]
    np.testing.assert_allclose(records[2][BEAT_KEY], beat(3), rtol=1e-6)


def test_ucr_arff_has_the_label_last_and_physical_row_numbers(tmp_path):
    header = [
        "@relation ECG5000",
        *[f"@attribute att{index} numeric" for index in range(BEAT_LENGTH)],
        "@attribute target {1,2,3,4,5}",
        "",
        "@data",
    ]
    data = [
        ",".join([*text_fields(beat(1)), "1"]),
        "% a comment",
        "",
        ",".join([*text_fields(beat(4)), "4"]),
    ]
    path = write_lines(tmp_path / "ECG5000_TRAIN.arff", header + data)
    records, errors = records_and_errors(DatasetSpec(path))
    assert errors == []
    data_line = len(header) + 1
    assert [record[ROW_NUMBER_KEY] for record in records] == [data_line, data_line + 3]
    assert [record[SOURCE_CLASS_KEY] for record in records] == ["1", "4"]
    assert [record[IS_ANOMALY_KEY] for record in records] == [0, 1]


def test_arff_without_data_section_is_refused(tmp_path):
    path = write_lines(tmp_path / "broken.arff", ["@relation x", "@attribute a numeric"])
    with pytest.raises(ValueError, match="@data"):
        list(iter_raw_rows(DatasetSpec(path)))


def test_csv_with_header_label_and_feature_columns(tmp_path):
    features = [f"s{index}" for index in range(BEAT_LENGTH)]
    header = ",".join(["id", *features, "label", "note"])
    lines = [header]
    for index, label in enumerate(["1", "2", "1.0", "abc"]):
        lines.append(",".join([f"beat-{index}", *number_fields(beat(index)), label, "ok"]))
    path = write_lines(tmp_path / "beats.csv", lines)
    spec = DatasetSpec(path, label_column="label", feature_columns=tuple(features))
    assert spec.resolved_format() == "csv"
    records, errors = records_and_errors(spec)
    assert errors == []
    assert [record[ROW_NUMBER_KEY] for record in records] == [2, 3, 4, 5]
    assert [record[IS_ANOMALY_KEY] for record in records] == [0, 1, 0, 1]
    assert [record[SOURCE_CLASS_KEY] for record in records] == ["1", "2", "1.0", "abc"]
    np.testing.assert_allclose(records[3][BEAT_KEY], beat(3), rtol=1e-6)


def test_csv_default_features_and_text_normal_label(tmp_path):
    header = ",".join([*(f"s{index}" for index in range(BEAT_LENGTH)), "rhythm"])
    lines = [
        header,
        ",".join([*number_fields(beat(0)), "sinus"]),
        ",".join([*number_fields(beat(1)), "pvc"]),
    ]
    path = write_lines(tmp_path / "labelled.csv", lines)
    dataset = load_dataset(DatasetSpec(path, label_column="rhythm", normal_label="sinus"))
    assert dataset.is_anomaly.tolist() == [0, 1]
    assert dataset.source_classes.tolist() == ["sinus", "pvc"]
    assert dataset.has_labels


def test_csv_without_label_column_has_unknown_labels(tmp_path):
    header = ",".join(f"s{index}" for index in range(BEAT_LENGTH))
    path = write_lines(tmp_path / "unlabelled.csv", [header, ",".join(number_fields(beat(5)))])
    dataset = load_dataset(DatasetSpec(path))
    assert dataset.is_anomaly.tolist() == [UNKNOWN_LABEL]
    assert dataset.source_classes.tolist() == [""]
    assert not dataset.has_labels


def test_csv_missing_columns_are_named(tmp_path):
    path = write_lines(tmp_path / "few.csv", ["a,b", "1,2"])
    with pytest.raises(ValueError, match="label"):
        list(iter_raw_rows(DatasetSpec(path, label_column="label")))


def parquet_frame(labels) -> pd.DataFrame:
    """A frame with one column per sample and a label column."""
    frame = pd.DataFrame(
        np.stack([beat(index) for index in range(len(labels))]),
        columns=[f"s{index}" for index in range(BEAT_LENGTH)],
    )
    frame["label"] = labels
    return frame


def test_parquet_with_integer_and_float_labels(tmp_path):
    for name, labels in [("ints", [1, 2, 1]), ("floats", [1.0, 3.0, np.nan])]:
        path = str(tmp_path / f"{name}.parquet")
        parquet_frame(labels).to_parquet(path)
        records, errors = records_and_errors(DatasetSpec(path, label_column="label"))
        assert [record[ROW_NUMBER_KEY] for record in records] == [1, 2, 3][: len(records)]
        np.testing.assert_allclose(records[0][BEAT_KEY], beat(0), rtol=1e-6)
        if name == "ints":
            assert [record[SOURCE_CLASS_KEY] for record in records] == ["1", "2", "1"]
            assert [record[IS_ANOMALY_KEY] for record in records] == [0, 1, 0]
        else:
            assert [record[SOURCE_CLASS_KEY] for record in records] == ["1", "3"]
            reasons = [(error["row_number"], error["reason"]) for error in errors]
            assert reasons == [(3, "missing label")]


def test_parquet_with_a_list_column_and_no_label(tmp_path):
    path = str(tmp_path / "lists.parquet")
    pd.DataFrame({"beat": [beat(0).tolist(), beat(1).tolist()[:100]]}).to_parquet(path)
    records, errors = records_and_errors(DatasetSpec(path))
    assert len(records) == 1
    assert records[0][IS_ANOMALY_KEY] == UNKNOWN_LABEL
    np.testing.assert_allclose(records[0][BEAT_KEY], beat(0), rtol=1e-6)
    assert errors[0]["row_number"] == 2
    assert errors[0]["reason"] == "wrong length: expected 140 samples, got 100"


def test_parquet_feature_columns_and_nulls(tmp_path):
    frame = parquet_frame([1, 1])
    frame.insert(0, "patient", ["a", "b"])
    frame.loc[1, "s7"] = np.nan
    path = str(tmp_path / "named.parquet")
    frame.to_parquet(path)
    features = tuple(f"s{index}" for index in range(BEAT_LENGTH))
    spec = DatasetSpec(path, label_column="label", feature_columns=features)
    records, errors = records_and_errors(spec)
    assert len(records) == 1
    assert errors[0]["reason"] == "non-finite value at sample 7"


def test_ecg5000_sample_loads_with_its_class_counts():
    path = ecg5000_sample_path()
    if not path.is_file():
        pytest.skip(f"ECG5000 sample not found at {path} (set HEARTWATCH_ECG5000)")
    dataset = load_dataset(DatasetSpec(str(path)))
    assert dataset.errors == []
    assert len(dataset) == 500
    classes, counts = np.unique(dataset.source_classes, return_counts=True)
    assert dict(zip(classes.tolist(), counts.tolist())) == ECG5000_CLASS_COUNTS
    assert int(dataset.is_anomaly.sum()) == 500 - 292
    assert dataset.row_numbers.tolist() == list(range(1, 501))
    assert dataset.beats.dtype == np.float32
    assert dataset.has_labels


def test_bad_rows_give_one_error_each_and_good_rows_survive(tmp_path):
    good = ",".join([*number_fields(beat(0)), "1"])
    nan_row = beat(1).astype(str)
    nan_row[5] = "nan"
    inf_row = beat(2).astype(str)
    inf_row[9] = "-inf"
    text_row = beat(3).astype(str)
    text_row[12] = "x"
    lines = [
        good,
        ",".join([*number_fields(beat(4)[:139]), "1"]),
        "",
        ",".join([*nan_row, "1"]),
        ",".join([*inf_row, "0"]),
        ",".join([*text_row, "1"]),
        good,
        ",".join([*number_fields(beat(5)), "7"]),
        ",".join([*number_fields(beat(6)), ""]),
        good,
    ]
    path = write_lines(tmp_path / "bad.csv", lines)
    records, errors = records_and_errors(DatasetSpec(path, format="ecg_csv"))
    assert [record[ROW_NUMBER_KEY] for record in records] == [1, 7, 10]
    expected = [
        (2, "wrong length: expected 140 samples, got 139"),
        (4, "non-finite value at sample 5"),
        (5, "non-finite value at sample 9"),
        (6, "non-numeric value 'x' at sample 12"),
        (8, "unknown label '7'"),
        (9, "missing label"),
    ]
    assert [(error["row_number"], error["reason"]) for error in errors] == expected
    for error in errors:
        assert error["source"] == path
        assert 0 < len(error["raw"]) <= 200
    assert errors[3]["raw"].startswith(text_row[0])


def test_bad_rows_in_tables_and_ucr_files(tmp_path):
    header = ",".join([*(f"s{index}" for index in range(BEAT_LENGTH)), "label"])
    csv_lines = [
        header,
        ",".join([*number_fields(beat(0)), ""]),
        ",".join([*number_fields(beat(1)[:138]), "1"]),
        ",".join([*number_fields(beat(2)), "1", "extra"]),
    ]
    csv_path = write_lines(tmp_path / "table.csv", csv_lines)
    _, errors = records_and_errors(DatasetSpec(csv_path, label_column="label"))
    assert [(error["row_number"], error["reason"]) for error in errors] == [
        (2, "missing label"),
        (3, "wrong length: expected 140 samples, got 138"),
        (4, "wrong length: expected 140 samples, got 141"),
    ]
    tsv_lines = ["\t".join(["", *text_fields(beat(0))]), "\t".join(["6", *text_fields(beat(1))])]
    tsv_path = write_lines(tmp_path / "classes.tsv", tsv_lines)
    _, errors = records_and_errors(DatasetSpec(tsv_path))
    assert [(error["row_number"], error["reason"]) for error in errors] == [
        (1, "missing label"),
        (2, "unknown label '6'"),
    ]


def test_validate_row_never_raises():
    spec = DatasetSpec("x.txt")
    cases = [
        (None, "1", "wrong length: expected 140 samples, got 0"),
        ([{"a": 1}] * BEAT_LENGTH, "1", "non-numeric value"),
        ([1e300] * BEAT_LENGTH, "1", "non-finite value at sample 0"),
        ([[1.0, 2.0]] * BEAT_LENGTH, "1", "non-numeric value"),
        (np.zeros(BEAT_LENGTH), None, "missing label"),
        (np.zeros(BEAT_LENGTH), "abnormal", "unknown label 'abnormal'"),
    ]
    for values, label, reason in cases:
        record, error = validate_row(3, values, label, spec)
        assert record is None
        assert error["reason"].startswith(reason)
        assert error["row_number"] == 3


def test_validate_row_makes_the_documented_record():
    record, error = validate_row(9, beat(0).tolist(), "2.0000000e+00", DatasetSpec("x.txt"))
    assert error is None
    assert set(record) == {ROW_NUMBER_KEY, BEAT_KEY, IS_ANOMALY_KEY, SOURCE_CLASS_KEY, SOURCE_KEY}
    assert (record[ROW_NUMBER_KEY], record[IS_ANOMALY_KEY], record[SOURCE_CLASS_KEY]) == (9, 1, "2")
    assert record[SOURCE_KEY] == "x.txt"


def test_error_raw_text_is_cut_to_200_characters():
    values = ["123456789.123456789"] * 139
    _, error = validate_row(1, values, "1", DatasetSpec("x.csv", format="ecg_csv"))
    assert len(error["raw"]) == 200
    assert error["raw"].startswith("123456789.123456789,123456789")


def test_synthetic_spec_yields_kinds_as_classes():
    spec = DatasetSpec("synthetic:beats=60,seed=3")
    records, errors = records_and_errors(spec)
    assert errors == []
    assert len(records) == 60
    assert {record[SOURCE_CLASS_KEY] for record in records} <= {
        "normal", "pvc", "r_on_t", "st_shift", "noise_burst"
    }
    for record in records:
        assert record[IS_ANOMALY_KEY] == int(record[SOURCE_CLASS_KEY] != "normal")
    dataset = load_dataset(spec)
    np.testing.assert_array_equal(dataset.beats, np.stack([record[BEAT_KEY] for record in records]))
    assert dataset.source_classes.tolist() == [record[SOURCE_CLASS_KEY] for record in records]
    assert dataset.row_numbers.tolist() == list(range(1, 61))
    assert dataset.is_anomaly.dtype == np.int64
    assert dataset.source == spec.path


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("synthetic", "synthetic"),
        ("synthetic:beats=10", "synthetic"),
        ("tf-ecg", "ecg_csv"),
        ("data/ECG5000_TRAIN.txt", "ucr"),
        ("data/ECG5000_TRAIN.TSV", "ucr"),
        ("gs://bucket/ECG5000_TEST.arff", "ucr"),
        ("https://example.org/files/beats.parquet?version=2", "parquet"),
        ("beats.parquet", "parquet"),
    ],
)
def test_auto_format_from_the_path(path, expected):
    assert detect_format(path) == expected
    assert DatasetSpec(path).resolved_format() == expected


def test_auto_format_sniffs_csv_headers(tmp_path):
    headed = write_lines(tmp_path / "headed.csv", ["", "a,b,label", "1,2,1"])
    bare = write_lines(tmp_path / "bare.csv", ["1.5,-2e-3,nan,1", "1,2,3,0"])
    assert DatasetSpec(headed).resolved_format() == "csv"
    assert DatasetSpec(bare).resolved_format() == "ecg_csv"
    assert DatasetSpec(bare, format="csv").resolved_format() == "csv"
    assert with_resolved_format(DatasetSpec(headed)).format == "csv"


def test_auto_format_refuses_unknown_extensions():
    with pytest.raises(ValueError, match="format"):
        DatasetSpec("beats.json").resolved_format()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"path": ""}, "path"),
        ({"format": "excel"}, "excel"),
        ({"format": "synthetic", "path": "beats.csv"}, "synthetic"),
        ({"path": "synthetic:beats=-1"}, "beats"),
        ({"feature_columns": "s0"}, "string"),
        ({"feature_columns": ()}, "at least one"),
        ({"feature_columns": ("a", "a")}, "twice"),
        ({"label_column": "a", "feature_columns": ("a", "b")}, "also listed"),
        ({"label_column": ""}, "label_column"),
        ({"normal_label": 1}, "normal_label"),
    ],
)
def test_dataset_spec_rejects_bad_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        DatasetSpec(**fields)


def test_spec_pickles_with_its_detected_format(tmp_path):
    path = write_lines(tmp_path / "bare.csv", ["1,2,0"])
    spec = DatasetSpec(path)
    assert spec.resolved_format() == "ecg_csv"
    Path(path).unlink()
    copy = pickle.loads(pickle.dumps(spec))
    assert copy == spec
    assert copy.resolved_format() == "ecg_csv"


def test_dataset_spec_defaults_and_formats():
    spec = DatasetSpec()
    assert (spec.path, spec.format, spec.normal_label) == ("synthetic", "auto", "1")
    assert FORMATS == ("auto", "ecg_csv", "ucr", "csv", "parquet", "tfrecord", "synthetic")
    assert DatasetSpec(feature_columns=["a", "b"]).feature_columns == ("a", "b")


def test_column_options_are_refused_for_fixed_formats(tmp_path):
    path = write_lines(tmp_path / "x.txt", ["1 " + " ".join(text_fields(beat(0)))])
    with pytest.raises(ValueError, match="csv and parquet tables and tfrecord files only"):
        list(iter_raw_rows(DatasetSpec(path, label_column="label")))


def test_missing_file_names_the_path(tmp_path):
    path = str(tmp_path / "nowhere.txt")
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        list(iter_records(DatasetSpec(path)))


def test_open_fn_is_used_for_every_read(tmp_path):
    csv_bytes = (",".join([*number_fields(beat(0)), "1"]) + "\n").encode()
    parquet_buffer = io.BytesIO()
    parquet_frame([2]).to_parquet(parquet_buffer)
    files = {"mem://a/ecg.csv": csv_bytes, "mem://a/beats.parquet": parquet_buffer.getvalue()}
    opened = []

    def open_memory(path, mode):
        opened.append((path, mode))
        return io.BytesIO(files[path])

    records, _ = records_and_errors(DatasetSpec("mem://a/ecg.csv"), open_memory)
    assert records[0][SOURCE_CLASS_KEY] == "normal"
    parquet_spec = DatasetSpec("mem://a/beats.parquet", label_column="label")
    records, _ = records_and_errors(parquet_spec, open_memory)
    assert records[0][SOURCE_CLASS_KEY] == "2"
    assert all(mode == "rb" for _, mode in opened)
    assert {path for path, _ in opened} == set(files)


def test_file_sha256(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"heartwatch" * 1000)
    assert file_sha256(str(path)) == hashlib.sha256(b"heartwatch" * 1000).hexdigest()


def test_resolve_path_leaves_local_paths_alone(tmp_path):
    local = str(tmp_path / "ecg.csv")
    assert resolve_path(local, cache_dir=str(tmp_path / "cache")) == local
    assert resolve_path("synthetic:beats=3") == "synthetic:beats=3"
    assert resolve_path("gs://bucket/ecg.csv") == "gs://bucket/ecg.csv"
    assert not (tmp_path / "cache").exists()


def test_resolve_path_reports_a_failed_download(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="local path") as raised:
        resolve_path(UNREACHABLE_URL, cache_dir=str(cache))
    assert UNREACHABLE_URL in str(raised.value)
    assert list(cache.iterdir()) == []


def test_resolve_path_downloads_once_into_the_cache(tmp_path, file_server, monkeypatch):
    folder, base_url = file_server
    content = (",".join([*number_fields(beat(0)), "0"]) + "\n").encode()
    (folder / "ecg.csv").write_bytes(content)
    monkeypatch.setenv(download.CACHE_ENV_VAR, str(tmp_path / "env-cache"))
    url = f"{base_url}/ecg.csv"
    local = resolve_path(url)
    assert Path(local).parent == tmp_path / "env-cache"
    assert Path(local).read_bytes() == content
    assert Path(local).suffix == ".csv"
    (folder / "ecg.csv").unlink()
    assert resolve_path(url) == local
    assert [item.name for item in (tmp_path / "env-cache").iterdir()] == [Path(local).name]
    dataset = load_dataset(DatasetSpec(url))
    assert dataset.source == url
    assert dataset.source_classes.tolist() == ["abnormal"]


def test_tf_ecg_alias_points_at_the_tensorflow_file():
    assert ECG_CSV_URL == "http://storage.googleapis.com/download.tensorflow.org/data/ecg.csv"
    assert DatasetSpec("tf-ecg").resolved_format() == "ecg_csv"


def test_loaded_dataset_checks_its_arrays():
    with pytest.raises(ValueError, match="is_anomaly"):
        LoadedDataset(
            beats=np.zeros((2, BEAT_LENGTH), dtype=np.float32),
            is_anomaly=np.zeros(3, dtype=np.int64),
            source_classes=np.array(["", ""]),
            row_numbers=np.array([1, 2]),
            errors=[],
            source="x",
        )


def test_empty_dataset_has_no_labels(tmp_path):
    path = write_lines(tmp_path / "empty.txt", [""])
    dataset = load_dataset(DatasetSpec(path))
    assert len(dataset) == 0
    assert dataset.beats.shape == (0, BEAT_LENGTH)
    assert not dataset.has_labels


def test_default_opener_reads_every_format_through_the_file_layer():
    root = "ram://ecg-sources"
    ucr = files.write_text(f"{root}/ECG5000_TEST.tsv", "\t".join(["2", *text_fields(beat(0))]) + "\n")
    headed = files.write_text(
        f"{root}/table.csv",
        "\ufeff" + ",".join([*(f"s{index}" for index in range(BEAT_LENGTH)), "label"]) + "\r\n"
        + ",".join([*number_fields(beat(1)), "1"]) + "\r\n",
    )
    buffer = io.BytesIO()
    parquet_frame([3]).to_parquet(buffer)
    parquet = files.write_bytes(f"{root}/beats.parquet", buffer.getvalue())
    records, errors = records_and_errors(DatasetSpec(ucr))
    assert errors == [] and [record[SOURCE_CLASS_KEY] for record in records] == ["2"]
    assert DatasetSpec(headed).resolved_format() == "csv"
    records, errors = records_and_errors(DatasetSpec(headed, label_column="label"))
    assert errors == [] and [record[ROW_NUMBER_KEY] for record in records] == [2]
    np.testing.assert_allclose(records[0][BEAT_KEY], beat(1), rtol=1e-6)
    dataset = load_dataset(DatasetSpec(parquet, label_column="label"))
    assert dataset.source_classes.tolist() == ["3"] and dataset.source == parquet
    assert file_sha256(parquet) == hashlib.sha256(buffer.getvalue()).hexdigest()
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        list(iter_records(DatasetSpec(f"{root}/nowhere.txt")))


def test_downloads_are_cached_through_the_file_layer(file_server):
    folder, base_url = file_server
    content = (",".join([*number_fields(beat(0)), "1"]) + "\n").encode()
    (folder / "beats.csv").write_bytes(content)
    cache = "ram://download-cache"
    local = resolve_path(f"{base_url}/beats.csv", cache_dir=cache)
    assert local == files.join(cache, download.cache_file_name(f"{base_url}/beats.csv"))
    assert files.read_bytes(local) == content
    assert files.list_directory(cache) == [files.basename(local)], "no temporary file is left behind"
    (folder / "beats.csv").unlink()
    assert resolve_path(f"{base_url}/beats.csv", cache_dir=cache) == local
    assert load_dataset(DatasetSpec(f"{base_url}/beats.csv", cache_dir=cache)).source_classes.tolist() == ["normal"]


def rows_of_tasks(tasks, open_fn=open_data_file):
    """Every raw row of ``tasks`` as ``(source, row_number, first value, label)``, read task by task."""
    return [(task.source, number, str(values[0]), label) for task in tasks
            for number, values, label in shards.task_rows(task, open_fn)]


@pytest.mark.parametrize("block_bytes", [97, 1400, 1 << 20])
def test_split_text_blocks_read_every_line_once_with_its_line_number(tmp_path, block_bytes):
    lines = [",".join([*number_fields(beat(index)), str(index % 2)]) for index in range(6)]
    lines.insert(2, "")
    text = "\ufeff" + "\r\n".join(lines[:4]) + "\n" + "\n".join(lines[4:]) + "\n"
    path = tmp_path / "ecg.csv"
    path.write_bytes(text.encode("utf-8"))
    spec = with_resolved_format(DatasetSpec(str(path)))
    whole = rows_of_tasks(read_tasks(spec))
    split = rows_of_tasks(read_tasks(spec, block_bytes=block_bytes))
    assert split == whole
    assert [row[1] for row in whole] == [1, 2, 4, 5, 6, 7]
    assert float(whole[0][2]) == pytest.approx(beat(0)[0]), "the byte-order mark is dropped"
    ucr = write_lines(tmp_path / "classes.txt", ["  ".join([f"{label:.7e}", *text_fields(beat(label))])
                                                for label in (1, 2, 3, 1, 5)])
    ucr_spec = with_resolved_format(DatasetSpec(ucr))
    assert rows_of_tasks(read_tasks(ucr_spec, block_bytes=block_bytes)) == rows_of_tasks(read_tasks(ucr_spec))


def test_parquet_row_groups_are_tasks_with_continuing_row_numbers(tmp_path):
    path = str(tmp_path / "groups.parquet")
    parquet_frame([1, 2, 1, 3, 1, 1, 2]).to_parquet(path, row_group_size=3)
    spec = DatasetSpec(path, label_column="label")
    tasks = read_tasks(spec)
    assert [(task.part, task.first_row) for task in tasks] == [("row_groups", 1), ("row_groups", 4),
                                                                ("row_groups", 7)]
    records, errors = records_and_errors(spec)
    assert errors == [] and [record[ROW_NUMBER_KEY] for record in records] == list(range(1, 8))
    assert [record[SOURCE_CLASS_KEY] for record in records] == ["1", "2", "1", "3", "1", "1", "2"]
    np.testing.assert_allclose(records[4][BEAT_KEY], beat(4), rtol=1e-6)


def test_patterns_read_every_file_with_its_own_source(tmp_path):
    paths = [write_lines(tmp_path / f"beats-{index}.txt", ["1 " + " ".join(text_fields(beat(index))),
                                                           "9 " + " ".join(text_fields(beat(index)))])
             for index in range(3)]
    write_lines(tmp_path / "other.tsv", ["1\t" + "\t".join(text_fields(beat(9)))])
    pattern = str(tmp_path / "beats-*.txt")
    assert match_files(pattern) == paths
    records, errors = records_and_errors(DatasetSpec(pattern))
    assert [(record[SOURCE_KEY], record[ROW_NUMBER_KEY]) for record in records] == [(path, 1) for path in paths]
    assert [(error[SOURCE_KEY], error["row_number"], error["reason"]) for error in errors] == [
        (path, 2, "unknown label '9'") for path in paths]
    assert len(load_dataset(DatasetSpec(pattern))) == 3
    with pytest.raises(ValueError, match="no files match"):
        list(iter_records(DatasetSpec(str(tmp_path / "none-*.txt"))))
    assert not is_pattern("https://example.org/beats.parquet?version=2") and is_pattern(pattern)


def test_large_synthetic_uris_are_shards_every_reader_agrees_on(monkeypatch):
    small = DatasetSpec("synthetic:beats=30,seed=4")
    beats, kinds = synthetic.generate(synthetic.parse_synthetic_uri(small.path))
    np.testing.assert_array_equal(load_dataset(small).beats, beats)
    monkeypatch.setattr(shards, "SYNTHETIC_SHARD_BEATS", 40)
    spec = DatasetSpec("synthetic:beats=100,seed=4")
    tasks = read_tasks(spec)
    assert [(task.part, task.first_row) for task in tasks] == [("synthetic", 1), ("synthetic", 41),
                                                                ("synthetic", 81)]
    dataset = load_dataset(spec)
    records, errors = records_and_errors(spec)
    assert errors == [] and len(dataset) == 100 and dataset.row_numbers.tolist() == list(range(1, 101))
    np.testing.assert_array_equal(dataset.beats, np.stack([record[BEAT_KEY] for record in records]))
    shard_beats = [row[1] for row in shards.task_rows(tasks[1], open_data_file)]
    np.testing.assert_array_equal(dataset.beats[40:80], np.stack(shard_beats))
    assert not np.array_equal(dataset.beats[:40], dataset.beats[40:80]), "every shard has its own seed"


def test_bulk_validation_decides_every_row_as_validate_row(tmp_path):
    good = [(number, text_fields(beat(number)), str(1 + number % 5)) for number in range(1, 9)]
    bad = [(20, ["0.5"] * 139, "1"), (21, ["0.5"] * 139 + ["nan"], "1"),
           (22, ["0.5"] * 70 + ["abc"] + ["0.5"] * 69, "1"), (23, ["0.5"] * BEAT_LENGTH, "7"),
           (24, ["1e300"] * BEAT_LENGTH, "1"), (25, [None] * BEAT_LENGTH, "1"), (26, ["0.5"] * BEAT_LENGTH, None),
           (27, [[1.0, 2.0]] * BEAT_LENGTH, "1")]
    rows = good[:4] + bad + good[4:]
    spec = with_resolved_format(DatasetSpec(str(tmp_path / "beats.txt")))
    chunk, errors = validate_rows(rows, spec)
    one_by_one = [validate_row(*row, spec) for row in rows]
    assert errors == [error for _, error in one_by_one if error is not None]
    records = [record for record, _ in one_by_one if record is not None]
    assert [record[ROW_NUMBER_KEY] for record in chunk.records()] == [record[ROW_NUMBER_KEY] for record in records]
    for from_chunk, record in zip(chunk.records(), records):
        np.testing.assert_array_equal(from_chunk.pop(BEAT_KEY), record.pop(BEAT_KEY))
        assert from_chunk == record
    numeric = [(number, beat(number), "normal" if number % 2 else "pvc") for number in range(1, 6)]
    numeric_spec = with_resolved_format(DatasetSpec("synthetic:beats=5"))
    chunk, errors = validate_rows(numeric + [(6, np.full(BEAT_LENGTH, np.inf), "normal")], numeric_spec)
    assert len(chunk) == 5 and chunk.beats.dtype == np.float32 and errors[0]["row_number"] == 6
    assert chunk.is_anomaly.tolist() == [0, 1, 0, 1, 0]
