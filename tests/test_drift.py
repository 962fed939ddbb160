"""Drift watch: the KS statistic and its critical value, alarms with hysteresis, references, the stream glue."""

import types

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from scipy import stats

from models.common import files
from models.detection import drift, summaries
from streaming.drift import DriftWatch, drift_key


def lognormal_reference(beats: int = 20_000, seed: int = 0) -> drift.DriftReference:
    """Reference quantiles of ``beats`` log-normal 'validation-normal errors'."""
    errors = np.random.default_rng(seed).lognormal(-3.0, 0.5, beats)
    return drift.reference_from_summary(summaries.ScoreSummary.from_arrays(np.zeros(beats, int), errors))


def test_ks_statistic_hand_computed_and_equal_to_scipy():
    # CDFs at 1, 2, 2.5, 3, 3.5: window 1/3, 2/3, 2/3, 1, 1; reference 0, 0, 1/2, 1/2, 1 -> sup 2/3.
    assert drift.ks_statistic([1.0, 2.0, 3.0], [2.5, 3.5]) == pytest.approx(2 / 3)
    rng = np.random.default_rng(1)
    window, reference = rng.normal(0, 1, 500), rng.normal(0.1, 1, 1000)
    assert drift.ks_statistic(window, reference) == stats.ks_2samp(window, reference).statistic


def test_p_value_and_critical_value_are_scipys_asymptotic_two_sample_test():
    rng = np.random.default_rng(2)
    window, reference = rng.normal(0, 1, 500), rng.normal(0.15, 1, 1000)
    expected = stats.ks_2samp(window, reference, method="asymp")
    assert drift.p_value(expected.statistic, 1000, 500) == pytest.approx(expected.pvalue, rel=1e-9)
    for alpha in (0.05, 1e-3, 1e-4):
        critical = drift.critical_value(alpha, 1000, 500)
        assert drift.p_value(critical, 1000, 500) == pytest.approx(alpha, rel=1e-4)
    with pytest.raises(ValueError, match="alpha"):
        drift.critical_value(0.0, 1000, 500)


def test_no_alarm_on_same_distribution_windows():
    reference = lognormal_reference()
    monitor = drift.DriftMonitor(reference, window=500, alpha=1e-4)
    live = np.random.default_rng(3).lognormal(-3.0, 0.5, 500 * 400)
    records = [record for start in range(0, live.size, 700) for record in monitor.observe(live[start:start + 700])]
    assert records == [] and monitor.windows_tested == 400 and monitor.alarms == 0
    assert 0 < monitor.statistic < monitor.critical_value


def test_one_alarm_per_shift_then_rearms():
    reference = lognormal_reference()
    monitor = drift.DriftMonitor(reference, window=500, alpha=1e-4, rearm_windows=3)
    rng = np.random.default_rng(4)
    assert monitor.observe(rng.lognormal(-3.0, 0.5, 500 * 10)) == []
    shifted = monitor.observe(rng.lognormal(-3.0, 0.5, 500 * 30) * 1.3)
    assert len(shifted) == 1 and monitor.alarmed
    (record,) = shifted
    assert record.window_index == 11 and record.statistic > record.critical_value == monitor.critical_value
    assert record.p_value < 1e-4 and record.window_median > record.reference_median
    assert record.beats_observed == 500 * 40 and record.window_beats == 500
    assert monitor.observe(rng.lognormal(-3.0, 0.5, 500 * 2)) == [] and monitor.alarmed  # two clean: still alarmed
    assert monitor.observe(rng.lognormal(-3.0, 0.5, 500 * 1)) == [] and not monitor.alarmed  # third: rearmed
    assert len(monitor.observe(rng.lognormal(-3.0, 0.5, 500 * 2) * 0.7)) == 1 and monitor.alarms == 2


def test_censoring_ignores_beats_above_the_threshold_and_cuts_the_reference():
    reference = lognormal_reference()
    threshold = float(np.quantile(reference.quantiles, 0.99))
    rng = np.random.default_rng(5)
    live = np.concatenate([rng.lognormal(-3.0, 0.5, 18_000), rng.lognormal(-1.0, 0.3, 2000)])  # 10 % anomalies
    rng.shuffle(live)
    censored = drift.DriftMonitor(reference, window=500, alpha=1e-4, censor_above=threshold)
    assert censored.reference.quantiles.max() <= threshold and censored.reference.quantiles.size == 990
    assert censored.observe(live) == [] and censored.beats_observed == live.size > censored.beats_tested
    assert len(drift.DriftMonitor(reference, window=500, alpha=1e-4).observe(live)) >= 1  # the mix alone alarms


def test_reference_round_trip_on_ram():
    directory = "ram://drift-test/version-1"
    assert drift.read_reference(directory) is None  # older exports have none
    reference = lognormal_reference(beats=3000)
    path = drift.write_reference(directory, reference)
    assert path == files.join(directory, drift.REFERENCE_FILE)
    loaded = drift.read_reference(directory)
    np.testing.assert_array_equal(loaded.quantiles, reference.quantiles)
    assert loaded.source_count == 3000 and loaded.quantiles.size == drift.DEFAULT_QUANTILES
    drift.write_reference(directory, [3.0, 1.0, 2.0])
    assert drift.read_reference(directory).source_count == 3
    np.testing.assert_array_equal(drift.read_reference(directory).quantiles, [1.0, 2.0, 3.0])
    files.write_json(files.join(directory, drift.REFERENCE_FILE), {"format": 99})
    with pytest.raises(ValueError, match="unsupported drift reference format"):
        drift.read_reference(directory)


def test_reference_from_summary_is_reference_quantiles_with_the_normal_count():
    rng = np.random.default_rng(6)
    labels, errors = rng.integers(0, 2, 4000), rng.lognormal(-3.0, 0.5, 4000)
    summary = summaries.ScoreSummary.from_arrays(labels, errors)
    reference = drift.reference_from_summary(summary, count=200)
    np.testing.assert_array_equal(reference.quantiles, summaries.reference_quantiles(summary, 200))
    assert reference.source_count == int((labels == 0).sum())


def test_bad_monitor_settings_and_errors_are_refused():
    reference = lognormal_reference(beats=1000)
    with pytest.raises(ValueError, match="window"):
        drift.DriftMonitor(reference, window=1)
    with pytest.raises(ValueError, match="censoring"):
        drift.DriftMonitor(reference, censor_above=-1.0)
    with pytest.raises(ValueError, match="finite"):
        drift.DriftMonitor(reference).observe([np.nan])
    with pytest.raises(ValueError, match="finite quantile"):
        drift.DriftReference(np.array([]), 1)


def test_stream_drift_watch_sets_metrics_and_builds_records():
    directory = "ram://drift-test/version-7"
    reference = lognormal_reference()
    drift.write_reference(directory, reference)
    threshold = float(np.quantile(reference.quantiles, 0.99))
    detector = types.SimpleNamespace(version="7", threshold=threshold, directory=directory)
    registry = CollectorRegistry()
    watch = DriftWatch(registry, processor_id="host:1", window=500, alpha=1e-4)
    rng = np.random.default_rng(7)
    records = []
    for batch in range(60):
        errors = rng.lognormal(-3.0, 0.5, 256)
        errors[:200] *= 1.3 if batch >= 30 else 1.0  # only topic "beats" shifts
        topics = ["beats"] * 200 + ["other"] * 56
        records += watch.observe_batch(detector, topics, {"anomaly_score": errors.astype(np.float32)})
    assert [record["topic"] for record in records] == ["beats"]
    (record,) = records
    assert record["record_type"] == "error_drift" and record["model_version"] == "7"
    assert record["censor_above"] == threshold and record["statistic"] > record["critical_value"]
    assert drift_key(record) == b"drift/beats" and watch.monitors["other"].windows_tested == 6
    assert registry.get_sample_value("heartwatch_drift_alarms_total", {"topic": "beats"}) == 1
    assert registry.get_sample_value("heartwatch_error_drift_statistic", {"topic": "beats"}) == pytest.approx(
        watch.monitors["beats"].statistic)
    assert registry.get_sample_value("heartwatch_error_drift_critical_value", {"topic": "beats"}) == pytest.approx(
        watch.monitors["beats"].critical_value)
    older = types.SimpleNamespace(version="8", threshold=threshold, directory="ram://drift-test/no-reference")
    assert watch.observe_batch(older, ["beats"] * 5000, {"anomaly_score": np.full(5000, 9.0)}) == []
    assert watch.monitors == {}


def test_the_exported_drift_reference_is_the_validation_quantiles_times_the_score_scale(tmp_path):
    from pipeline.export import score_scale, write_drift_reference

    labels = np.array([0] * 300 + [1] * 20)
    errors = np.random.default_rng(9).gamma(2.0, 0.01, labels.size)
    summary = summaries.ScoreSummary.from_arrays(labels, errors)
    plain, scaled = tmp_path / "plain", tmp_path / "scaled"
    write_drift_reference(str(plain), summary)
    refit = {"enabled": True, "threshold": {"first_fit_mean_train_score": 0.04, "refit_mean_train_score": 0.03}}
    assert score_scale({"refit": refit}) == pytest.approx(0.75)
    assert score_scale({"refit": {"enabled": False}}) == score_scale({}) == 1.0
    write_drift_reference(str(scaled), summary, score_scale({"refit": refit}))
    first, moved = drift.read_reference(str(plain)), drift.read_reference(str(scaled))
    np.testing.assert_allclose(first.quantiles, drift.reference_from_summary(summary).quantiles)
    np.testing.assert_allclose(moved.quantiles, 0.75 * first.quantiles)
    assert moved.source_count == first.source_count == 300
