"""Unit tests of the pure math: thresholds, metrics, splits, normalisation statistics."""

import numpy as np
import pytest

from models.detection import metrics, thresholds
from pipeline import splits


def test_mean_std_threshold_matches_numpy():
    errors = np.array([1.0, 2.0, 3.0, 4.0])
    assert thresholds.mean_std_threshold(errors, k=1.0) == pytest.approx(2.5 + np.std(errors))
    assert thresholds.mean_std_threshold(errors, k=0.0) == pytest.approx(2.5)


def test_percentile_threshold_gives_target_false_positive_rate():
    errors = np.arange(1000, dtype=float)
    value = thresholds.percentile_threshold(errors, 0.05)
    assert np.mean(errors > value) == pytest.approx(0.05, abs=0.002)


def test_max_f1_separable_classes_gives_perfect_split():
    errors = np.array([0.1, 0.2, 0.3, 0.9, 1.0])
    labels = np.array([0, 0, 0, 1, 1])
    value, f1 = thresholds.max_f1_threshold(errors, labels)
    assert 0.3 < value < 0.9
    assert f1 == 1.0
    assert (thresholds.is_anomalous(errors, value) == labels.astype(bool)).all()


def test_max_f1_matches_brute_force():
    rng = np.random.default_rng(3)
    errors = np.concatenate([rng.normal(1, 0.3, 60), rng.normal(1.6, 0.4, 40)])
    labels = np.array([0] * 60 + [1] * 40)
    value, f1 = thresholds.max_f1_threshold(errors, labels)
    brute = max(metrics.classification_metrics(labels, errors, cut)["f1"] for cut in np.concatenate(([-1.0], errors)))
    assert f1 == pytest.approx(brute)
    assert metrics.classification_metrics(labels, errors, value)["f1"] == pytest.approx(f1)


def test_calibrate_falls_back_without_labels():
    errors = np.linspace(0, 1, 101)
    result = thresholds.calibrate(thresholds.ThresholdConfig("max_f1", fallback_method="percentile",
                                                             target_false_positive_rate=0.1), errors, -np.ones(101))
    assert result.method == "percentile"
    assert result.value == pytest.approx(0.9)


def test_calibrate_mean_std_uses_only_normals():
    errors = np.array([1.0, 1.0, 3.0, 3.0, 100.0])
    labels = np.array([0, 0, 0, 0, 1])
    result = thresholds.calibrate(thresholds.ThresholdConfig("mean_std", k=1.0), errors, labels)
    assert result.value == pytest.approx(3.0)


def test_threshold_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown threshold method"):
        thresholds.ThresholdConfig("median")
    with pytest.raises(ValueError, match="target_false_positive_rate"):
        thresholds.ThresholdConfig(target_false_positive_rate=1.5)
    with pytest.raises(ValueError, match="NaN"):
        thresholds.mean_std_threshold([1.0, np.nan])


def test_roc_auc_known_values():
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert metrics.roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert metrics.roc_auc([0, 1], [0.5, 0.5]) == 0.5
    # One inversion out of four pairs.
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.6, 0.5, 0.9]) == 0.75


def test_average_precision_known_value():
    # Ranked: 1 (p=1), 0, 1 (p=2/3): AP = 0.5*1 + 0.5*2/3.
    assert metrics.average_precision([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(0.5 + 1 / 3)


def test_curves_and_confusion_matrix_known_values():
    labels, scores = [0, 1, 1, 0], [0.1, 0.9, 0.5, 0.5]
    # Descending thresholds inf, 0.9, 0.5, 0.1 flag 0, 1, 3 and 4 beats: TP 0, 1, 2, 2 and FP 0, 0, 1, 2.
    false_positive_rate, true_positive_rate, thresholds = metrics.roc_curve(labels, scores)
    np.testing.assert_allclose(false_positive_rate, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(true_positive_rate, [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.5, 0.1])
    precision, recall, thresholds = metrics.precision_recall_curve(labels, scores)
    np.testing.assert_allclose(precision, [1.0, 1.0, 2 / 3, 0.5])
    np.testing.assert_allclose(recall, [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.5, 0.1])
    assert metrics.roc_auc(labels, scores) == pytest.approx(0.875)  # 3.5 of 4 pairs, the tie counting 1/2
    assert metrics.confusion_matrix(labels, [True, False, True, True]) == {
        "true_positive": 1, "false_positive": 2, "true_negative": 0, "false_negative": 1}
    assert metrics.confusion_matrix([1, 1], [True, True]) == {
        "true_positive": 2, "false_positive": 0, "true_negative": 0, "false_negative": 0}


def test_metrics_refuse_inputs_they_cannot_score():
    for function in (metrics.roc_auc, metrics.roc_curve):
        with pytest.raises(ValueError, match="both normal and anomalous"):
            function([0, 0], [0.1, 0.2])
    for function in (metrics.average_precision, metrics.precision_recall_curve):
        with pytest.raises(ValueError, match="at least one anomalous"):
            function([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        metrics.roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="differ in length"):
        metrics.confusion_matrix([0, 1], [True])
    assert metrics.classification_metrics([0, 0], [0.1, 0.9], 0.5)["roc_auc"] is None


def test_classification_metrics_counts_anomaly_as_positive():
    labels = np.array([0, 0, 0, 1, 1])
    errors = np.array([0.1, 0.2, 0.6, 0.7, 0.4])
    result = metrics.classification_metrics(labels, errors, 0.5)
    assert result["confusion_matrix"] == {"true_positive": 1, "false_positive": 1, "true_negative": 2,
                                          "false_negative": 1}
    assert result["precision"] == 0.5 and result["recall"] == 0.5 and result["accuracy"] == 0.6
    assert result["positive_class"] == "anomaly"


def test_detection_rate_by_class():
    rates = metrics.detection_rate_by_class(["1", "2", "2", "3"], [False, True, False, True])
    assert rates["2"] == {"beats": 2, "flagged": 1, "detection_rate": 0.5}
    assert rates["1"]["detection_rate"] == 0.0


def test_splits_are_stratified_deterministic_and_disjoint():
    classes = np.array(["1"] * 292 + ["2"] * 177 + ["4"] * 19 + ["5"] * 2)
    rows = np.arange(1, classes.size + 1)
    config = splits.SplitConfig(seed=7, test_fraction=0.2, validation_fraction=0.2)
    first = splits.assign_splits(["file"] * classes.size, rows, classes, config)
    again = splits.assign_splits(["file"] * classes.size, rows[::-1], classes[::-1], config)[::-1]
    assert (first == again).all()
    for name, count in (("1", 292), ("2", 177), ("4", 19)):
        members = first[classes == name]
        expected = count * 0.2  # hashed splits: binomial counts, within four standard deviations
        assert abs((members == "test").sum() - expected) <= 4 * (expected * 0.8) ** 0.5
        assert abs((members == "validation").sum() - expected) <= 4 * (expected * 0.8) ** 0.5
    other = splits.assign_splits(["file"] * classes.size, rows, classes, splits.SplitConfig(seed=8))
    assert (first != other).any()


def test_split_depends_on_the_file_name_not_the_path_spelling():
    keys = {splits.split_key(3, source, 17) for source in ("beats.txt", "data/beats.txt", "/abs/data/beats.txt",
                                                            "gs://bucket/beats.txt")}
    assert len(keys) == 1
    assert splits.split_key(3, "other.txt", 17) not in keys
    assert splits.source_name("synthetic:beats=100,seed=2") == "synthetic:beats=100,seed=2"


def test_split_config_rejects_no_training_share():
    with pytest.raises(ValueError, match="leave beats to train"):
        splits.SplitConfig(test_fraction=0.5, validation_fraction=0.5)


def test_transfer_threshold_scales_by_the_ratio_of_reference_means():
    assert thresholds.transfer_threshold(0.3, source_mean=0.1, target_mean=0.05) == pytest.approx(0.15)
    assert thresholds.transfer_threshold(0.3, 0.1, 0.1) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="finite and positive"):
        thresholds.transfer_threshold(0.3, 0.0, 0.1)
    with pytest.raises(ValueError, match="target model's mean"):
        thresholds.transfer_threshold(0.3, 0.1, float("nan"))
    with pytest.raises(ValueError, match="must be finite"):
        thresholds.transfer_threshold(float("inf"), 0.1, 0.1)
