"""The training job in layers: DoFns, Beam transforms with assert_that, then real end-to-end runs."""

import io
import json
import os
import subprocess
import sys
import uuid

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from conftest import BAD_ROWS, REPOSITORY

from models.common import files
from models.detection import SCORE_WINDOW_SAMPLES
from models.detection.detector import load_detector
from models.ecg import BEAT_KEY, BEAT_LENGTH, NORMALIZED_BEAT_KEY, sources
from pipeline import ecg_steps, export, score, splits, train
from pipeline.transform import make_preprocessing_fn, raw_metadata


def _spec(path="beats.txt"):
    return sources.DatasetSpec(path=path, format="ucr")


def _test_pipeline():
    return TestPipeline(runner="FnApiRunner")


def test_validate_rows_dofn_splits_good_and_bad_rows():
    function = ecg_steps.ValidateRows(_spec())
    function.setup()
    outputs = list(function.process(("beats.txt", [(3, ["0.1"] * BEAT_LENGTH, "1"), (4, ["0.1"] * 10, "1"),
                                                   (6, ["0.2"] * BEAT_LENGTH, "2")])))
    bad, chunk = outputs
    other = list(function.process(("data/other.txt", [(5, ["0.1"] * BEAT_LENGTH, "2")])))[0]
    good = list(chunk.records())
    assert good[0]["row_number"] == 3 and good[0]["is_anomaly"] == 0 and good[0][BEAT_KEY].shape == (BEAT_LENGTH,)
    assert [record["row_number"] for record in good] == [3, 6] and good[1]["is_anomaly"] == 1
    assert bad.tag == ecg_steps.ValidateRows.ERRORS
    assert bad.value["row_number"] == 4 and bad.value["reason"].startswith("wrong length")
    assert bad.value["source"] == "beats.txt" and other.source == "data/other.txt", "rows keep their file"
    assert other.is_anomaly.tolist() == [1]


def test_validate_and_split_transforms_with_assert_that():
    rows = [(number, [str(number)] * BEAT_LENGTH, "1" if number % 3 else "2") for number in range(1, 31)]
    rows.append((31, ["x"] * BEAT_LENGTH, "1"))
    batches = [("beats.txt", rows[:11]), ("beats.txt", rows[11:])]
    config = splits.SplitConfig(seed=5, test_fraction=0.2, validation_fraction=0.2)
    expected = splits.assign_splits(["beats.txt"] * 30, list(range(1, 31)),
                                    ["1" if number % 3 else "2" for number in range(1, 31)], config)
    with _test_pipeline() as pipeline:
        validated = (pipeline | beam.Create(batches)
                     | beam.ParDo(ecg_steps.ValidateRows(_spec())).with_outputs(ecg_steps.ValidateRows.ERRORS,
                                                                               main="records"))
        assigned = validated.records | ecg_steps.AssignSplits(config)
        assert_that(assigned | "Pairs" >> beam.FlatMap(lambda chunk: [(int(row), chunk.split)
                                                                     for row in chunk.row_numbers]),
                    equal_to([(number, expected[number - 1]) for number in range(1, 31)]), label="splits")
        assert_that(validated[ecg_steps.ValidateRows.ERRORS] | beam.Map(lambda error: error["row_number"]),
                    equal_to([31]), label="errors")


def test_tft_minmax_normalizes_with_training_statistics():
    import tensorflow_transform.beam as tft_beam

    beats = [{BEAT_KEY: np.full(BEAT_LENGTH, value, np.float32)} for value in (2.0, 4.0, 6.0)]
    beats[0][BEAT_KEY][0] = 0.0  # global minimum 0, maximum 6
    with _test_pipeline() as pipeline, tft_beam.Context(temp_dir=pipeline.get_option("temp_location") or "/tmp"):
        (transformed, _), _ = ((pipeline | beam.Create(beats), raw_metadata())
                               | tft_beam.AnalyzeAndTransformDataset(make_preprocessing_fn("minmax")))
        assert_that(transformed | beam.Map(lambda row: round(float(row[NORMALIZED_BEAT_KEY][1]), 5)),
                    equal_to([round(2 / 6, 5), round(4 / 6, 5), 1.0]))


def test_unknown_normalization_is_refused():
    with pytest.raises(ValueError, match="unknown normalization"):
        make_preprocessing_fn("robust")


def test_train_flags_are_validated_before_any_work():
    with pytest.raises(ValueError, match="unknown candidate"):
        train.run(["--candidates", "nonesuch"])
    with pytest.raises(ValueError, match="unknown threshold method"):
        train.run(["--threshold_method", "median"])


def test_training_needs_normal_rows(tmp_path, ecg5000_path):
    with open(ecg5000_path) as handle:
        abnormal = [line for line in handle if not line.split()[0].startswith("1.")][:40]
    data = tmp_path / "abnormal.txt"
    data.write_text("".join(abnormal))
    with pytest.raises(Exception, match="no valid normal training rows"):
        train.run(["--data", str(data), "--output_dir", str(tmp_path / "out"), "--candidates", "dense",
                   "--epochs", "1", "--verbose", "0"])
    assert os.listdir(tmp_path / "out") == [], "a failed run publishes nothing and removes its staging directory"


def test_export_contents_and_quality(trained_detector):
    card = trained_detector.summary
    assert os.path.exists(os.path.join(trained_detector.detector_directory, "saved_model.pb"))
    assert card["data"]["valid_rows"] == 500
    assert sum(card["data"]["rows_by_split"].values()) == 500
    for name, count in card["data"]["rows_by_split"].items():
        assert count > 0 and sum(card["data"]["rows_by_split_and_class"][name].values()) == count
    assert card["data"]["sha256"] == sources.file_sha256(trained_detector.summary["data"]["source"])
    assert card["normalization"]["normalization"] == "minmax"
    assert card["normalization"]["min"] < card["normalization"]["max"]
    assert card["threshold"]["method"] == "max_f1"
    test_metrics = card["test_metrics"]
    assert test_metrics["positive_class"] == "anomaly"
    assert test_metrics["roc_auc"] >= 0.95 and test_metrics["accuracy"] >= 0.88
    assert set(test_metrics["detection_rate_by_class"]) >= {"1", "2"}
    for name in ("index.html", "loss.png", "error_histogram.png", "reconstructions.png", "roc_pr.png"):
        assert os.path.getsize(os.path.join(trained_detector.version_directory, "report", name)) > 0
    with open(os.path.join(trained_detector.version_directory, "metrics.json")) as handle:
        assert json.load(handle)["test"]["accuracy"] == test_metrics["accuracy"]


def test_bad_rows_are_reported_with_row_number_and_reason(trained_detector):
    card = trained_detector.summary
    assert card["data"]["bad_rows"] == len(BAD_ROWS)
    with open(trained_detector.errors_path) as handle:
        errors = [json.loads(line) for line in handle]
    assert [error["row_number"] for error in errors] == list(range(501, 501 + len(BAD_ROWS)))
    for error, (_, reason) in zip(errors, BAD_ROWS):
        assert error["reason"].startswith(reason), error


def test_export_reloads_in_fresh_process_with_tensorflow_alone(trained_detector, sample_with_bad_rows, tmp_path):
    scores_at_training = np.load(os.path.join(trained_detector.version_directory, export.TEST_SCORES_FILE))
    dataset = sources.load_dataset(sources.DatasetSpec(path=sample_with_bad_rows))
    positions = np.searchsorted(dataset.row_numbers, scores_at_training["row_number"])
    np.save(tmp_path / "beats.npy", dataset.beats[positions])
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "model = tf.saved_model.load(sys.argv[1])\n"
        "out = model.signatures['serving_default'](beats=tf.constant(np.load(sys.argv[2])))\n"
        "np.save(sys.argv[3], out['reconstruction_error'].numpy())\n"
        "assert not any(name.startswith(('models', 'pipeline', 'tensorflow_transform')) for name in sys.modules)\n")
    subprocess.run([sys.executable, "-c", script, trained_detector.detector_directory, str(tmp_path / "beats.npy"),
                    str(tmp_path / "errors.npy")], check=True, cwd=tmp_path)
    np.testing.assert_allclose(np.load(tmp_path / "errors.npy"), scores_at_training["reconstruction_error"],
                               rtol=1e-5, atol=1e-7)


def test_detector_signature_outputs(trained_detector, ecg5000_path):
    detector = load_detector(os.path.dirname(trained_detector.version_directory))
    beats = sources.load_dataset(sources.DatasetSpec(path=ecg5000_path)).beats[:7]
    out = detector.score(beats, batch_size=3)
    assert out["per_sample_error"].shape == (7, BEAT_LENGTH)
    np.testing.assert_allclose(out["reconstruction_error"], out["per_sample_error"].mean(axis=1), rtol=1e-5)
    assert (out["threshold"] == np.float32(detector.threshold)).all()
    sums = np.cumsum(np.pad(out["per_sample_error"].astype(np.float64), ((0, 0), (1, 0))), axis=1)
    window = SCORE_WINDOW_SAMPLES
    worst_window = ((sums[:, window:] - sums[:, :-window]) / window).max(axis=1)
    np.testing.assert_allclose(out["anomaly_score"], worst_window, rtol=1e-5)
    assert trained_detector.summary["signature"]["anomaly_score"].startswith("the model's own score (Autoencoder."
                                                                             "scores) on the window")
    assert (out["is_anomaly"] == (out["anomaly_score"] > out["threshold"])).all()
    assert (out["is_anomaly"] == (out["anomaly_score"] > out["threshold"])).all()


def test_score_command_end_to_end(trained_detector, sample_with_bad_rows, tmp_path):
    result = score.run(["--model", trained_detector.version_directory, "--data", sample_with_bad_rows,
                        "--out", str(tmp_path / "scores.csv"), "--batch_size", "64"])
    assert result.scored_rows == 500 and result.bad_rows == len(BAD_ROWS)
    scores = score.read_scores(result.out)
    assert (scores["index"] == np.arange(1, 501)).all()
    dataset = sources.load_dataset(sources.DatasetSpec(path=sample_with_bad_rows))
    served = load_detector(trained_detector.version_directory).score(dataset.beats)
    rows = np.searchsorted(dataset.row_numbers, scores["index"])
    np.testing.assert_allclose(scores["reconstruction_error"], served["reconstruction_error"][rows], rtol=1e-5)
    np.testing.assert_allclose(scores["anomaly_score"], served["anomaly_score"][rows], rtol=1e-5)
    assert (scores["is_anomaly"] == (scores["anomaly_score"] > scores["threshold"])).all()
    assert (scores["is_anomaly"] == (served["anomaly_score"][rows] > scores["threshold"])).all()
    assert result.metrics["roc_auc"] >= 0.95 and result.metrics["recall"] >= 0.85


def test_cli_lists_subcommands():
    output = subprocess.run([sys.executable, "-m", "heartwatch_cli", "--help"], capture_output=True, text=True,
                            cwd=REPOSITORY, check=True).stdout
    for name in ("train", "score", "stream", "denoise"):
        assert name in output


def test_train_then_score_on_ram_filesystem(sample_with_bad_rows):
    """`heartwatch train` -> `heartwatch score` with every output on TensorFlow's in-memory ram:// scheme."""
    root = f"ram://{uuid.uuid4().hex}"
    trained = train.run(["--data", sample_with_bad_rows, "--output_dir", f"{root}/ecg", "--candidates", "dense",
                         "--epochs", "30", "--verbose", "0"])
    assert trained.version_directory == f"{root}/ecg/1" and trained.summary["version"] == "1"
    assert files.list_directory(f"{root}/ecg") == ["1"], "the staging directory is gone after publishing"
    for name in ("detector/saved_model.pb", "model_card.json", "metrics.json", "test_scores.npz",
                 "report/index.html", "report/loss.png"):
        assert files.exists(files.join(trained.version_directory, name)), name
    assert not files.exists(files.join(trained.version_directory, export.WORK_DIRECTORY))
    assert files.read_json(files.join(trained.version_directory, "model_card.json")) == trained.summary
    assert len(files.read_text(trained.errors_path).splitlines()) == len(BAD_ROWS)
    archive = np.load(io.BytesIO(files.read_bytes(files.join(trained.version_directory, export.TEST_SCORES_FILE))))
    detector = load_detector(f"{root}/ecg")
    assert detector.version == "1" and detector.threshold == pytest.approx(trained.summary["threshold"]["value"])

    result = score.run(["--model", f"{root}/ecg", "--data", sample_with_bad_rows, "--out", f"{root}/out/scores.csv"],
                       test_pipeline=_test_pipeline())
    assert result.scored_rows == 500 and result.bad_rows == len(BAD_ROWS)
    assert files.list_directory(f"{root}/out") == ["scores.csv", "scores.csv.errors.jsonl"]
    scores = score.read_scores(result.out)
    positions = np.searchsorted(scores["index"], archive["row_number"])
    np.testing.assert_allclose(scores["reconstruction_error"][positions], archive["reconstruction_error"], rtol=1e-6)
    dataset = sources.load_dataset(sources.DatasetSpec(path=sample_with_bad_rows))
    served = detector.score(dataset.beats)
    rows = np.searchsorted(dataset.row_numbers, scores["index"])
    np.testing.assert_allclose(scores["reconstruction_error"], served["reconstruction_error"][rows], rtol=1e-5)
    np.testing.assert_allclose(scores["anomaly_score"], served["anomaly_score"][rows], rtol=1e-5)
    assert (scores["is_anomaly"] == (scores["anomaly_score"] > scores["threshold"])).all()
    assert (scores["is_anomaly"] == (served["anomaly_score"][rows] > scores["threshold"])).all()
    assert result.metrics["beats"] == 500 and result.metrics["roc_auc"] > 0.9


def _ucr_line(label: int, seed: int) -> str:
    return f"{label:.7e} " + " ".join(f"{value:.7e}" for value in np.random.default_rng(seed).normal(size=BEAT_LENGTH))


def test_read_valid_rows_reads_patterns_in_byte_range_tasks(tmp_path):
    for index in range(2):
        lines = [_ucr_line(1 + (row % 2), 10 * index + row) for row in range(6)]
        lines.insert(3, "9.0 " + " ".join(["0.5"] * BEAT_LENGTH))
        (tmp_path / f"part-{index}.txt").write_text("\n".join(lines) + "\n")
    spec = ecg_steps.resolve_spec(sources.DatasetSpec(path=str(tmp_path / "part-*.txt")))
    expected = [item for item in sources.iter_records(spec)]
    records = sorted((item["source"], item["row_number"], item["source_class"]) for kind, item in expected
                     if kind == "record")
    assert len(records) == 12
    with _test_pipeline() as pipeline:
        read = ecg_steps.ReadValidRows(spec, block_bytes=1500)
        valid, errors = pipeline | read
        assert_that(valid | beam.FlatMap(lambda chunk: [(record["source"], record["row_number"],
                                                          record["source_class"]) for record in chunk.records()]),
                    equal_to(records), label="records")
        assert_that(errors | beam.Map(lambda error: (error["source"], error["row_number"], error["reason"])),
                    equal_to([(str(tmp_path / f"part-{index}.txt"), 4, "unknown label '9.0'") for index in range(2)]),
                    label="errors")
        assert_that(read.digests | beam.Map(lambda item: item[0]),
                    equal_to([str(tmp_path / f"part-{index}.txt") for index in range(2)]), label="digests")


def test_split_assignment_groups_nothing():
    config = splits.SplitConfig(seed=1)
    pipeline = beam.Pipeline(runner="FnApiRunner")
    _ = (pipeline | beam.Create([("x.txt", [(1, [0.5] * BEAT_LENGTH, "1")])])
         | beam.ParDo(ecg_steps.ValidateRows(_spec()))
         | "Split" >> ecg_steps.AssignSplits(config))
    transforms = pipeline.to_runner_api().components.transforms.values()
    assert not [item.unique_name for item in transforms
                if item.unique_name.startswith("Split") and item.spec.urn == "beam:transform:group_by_key:v1"]


def test_every_split_of_the_real_sample_gets_normals_and_anomalies(ecg5000_path):
    dataset = sources.load_dataset(sources.DatasetSpec(path=ecg5000_path))
    for seed in range(5):
        assigned = splits.assign_splits([dataset.source] * len(dataset), dataset.row_numbers, dataset.source_classes,
                                        splits.SplitConfig(seed=seed))
        for name, fraction in ((splits.TRAIN, 0.6), (splits.VALIDATION, 0.2), (splits.TEST, 0.2)):
            for label in (0, 1):
                members = (assigned == name) & (dataset.is_anomaly == label)
                expected = fraction * (dataset.is_anomaly == label).sum()
                assert abs(members.sum() - expected) <= 4 * np.sqrt(expected * (1 - fraction)), (seed, name, label)


def test_train_autoencoder_streams_tf_data_batches_like_arrays():
    import dataclasses

    import tensorflow as tf

    from models.training.candidates import candidate
    from models.training.fit import train_autoencoder

    beats = np.random.default_rng(0).uniform(size=(64, BEAT_LENGTH)).astype(np.float32)
    config = dataclasses.replace(candidate("dense"), epochs=2, batch_size=16)
    streamed = tf.data.Dataset.from_tensor_slices(beats).batch(16).apply(tf.data.experimental.assert_cardinality(4))
    from_dataset = train_autoencoder(config, streamed, streamed, seed=3, verbose=0)
    from_arrays = train_autoencoder(config, beats, beats, seed=3, verbose=0)
    assert from_dataset.epochs_run == from_arrays.epochs_run == 2
    assert from_dataset.history["loss"][1] < from_dataset.history["loss"][0]
    with pytest.raises(ValueError, match="no training examples"):
        train_autoencoder(config, streamed.take(0), streamed, verbose=0)


def test_refit_learns_from_train_and_validation_normals_and_keeps_the_test_split_out(tmp_path, ecg5000_path):
    """`--refit true`: the winner is fitted again on train + validation normals; the card says so; test stays out."""
    trained = train.run(["--data", ecg5000_path, "--output_dir", str(tmp_path / "out"), "--candidates", "dense",
                         "--epochs", "4", "--refit", "true", "--report", "false", "--verbose", "0", "--seed", "1"])
    card = trained.summary
    normals = {name: counts.get("1", 0) for name, counts in card["data"]["rows_by_split_and_class"].items()}
    training = card["training"]
    assert training["exported_weights"] == "refit on train + validation normals"
    assert training["first_fit"]["normal_beats"] == normals["train"]
    assert training["first_fit"]["best_epoch"] == card["model"]["best_epoch"] <= 4
    refit = training["refit"]
    assert refit["enabled"] is True and refit["splits"] == ["train", "validation"]
    assert refit["normal_beats"] == normals["train"] + normals["validation"]
    assert refit["epochs"] == card["model"]["best_epoch"]
    moved = refit["threshold"]
    assert card["threshold"]["value"] == pytest.approx(
        moved["first_fit_value"] * moved["refit_mean_train_score"] / moved["first_fit_mean_train_score"])
    assert card["threshold"]["parameters"]["transferred_to_refit"] is True
    assert sum(card["test_metrics"]["confusion_matrix"].values()) == card["data"]["rows_by_split"]["test"]
    detector = load_detector(trained.version_directory)
    assert detector.threshold == pytest.approx(card["threshold"]["value"])
    beats = sources.load_dataset(sources.DatasetSpec(path=ecg5000_path)).beats[:9]
    outputs = detector.score(beats)
    assert (outputs["is_anomaly"] == (outputs["anomaly_score"] > outputs["threshold"])).all()


def test_without_refit_the_card_says_the_first_fit_was_exported(trained_detector):
    training = trained_detector.summary["training"]
    assert training["refit"] == {"enabled": False} and training["exported_weights"] == "first fit"
    assert training["first_fit"]["splits"] == ["train"]
    assert training["first_fit"]["best_epoch"] == trained_detector.summary["model"]["best_epoch"]
