"""Score summaries against exact computation: equal on small data, within the stated bounds on large data."""

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from models.detection import bins, metrics, summaries, thresholds
from pipeline.combiners import ScoreSummaryFn

CONFIGS = [thresholds.ThresholdConfig("max_f1"), thresholds.ThresholdConfig("percentile"),
           thresholds.ThresholdConfig("percentile", target_false_positive_rate=0.05),
           thresholds.ThresholdConfig("mean_std", k=1.0), thresholds.ThresholdConfig("mean_std", k=2.5)]


def scored_beats(normals: int, anomalies: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping log-normal errors (normal low, anomaly high), shuffled."""
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.lognormal(-3.0, 0.5, normals), rng.lognormal(-1.5, 0.6, anomalies)])
    labels = np.concatenate([np.zeros(normals, int), np.ones(anomalies, int)])
    order = rng.permutation(scores.size)
    return labels[order], scores[order]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda config: f"{config.method}")
def test_exact_summary_threshold_equals_thresholds_module(config):
    labels, scores = scored_beats(300, 120, seed=1)
    summary = summaries.ScoreSummary.from_arrays(labels, scores)
    assert summary.is_exact()
    expected = thresholds.calibrate(config, scores, labels)
    found = summaries.calibrate_from_summary(summary, config)
    assert found.method == expected.method and found.parameters == expected.parameters
    if config.method == "mean_std":  # only the summation order differs
        assert found.value == pytest.approx(expected.value, rel=1e-12, abs=0)
    else:
        assert found.value == expected.value
    assert summaries.threshold_from_summary(summary, config) == found.value


def test_exact_summary_falls_back_like_calibrate_with_unlabelled_beats():
    labels, scores = scored_beats(200, 50, seed=2)
    labels[:30] = -1
    config = thresholds.ThresholdConfig("max_f1", fallback_method="percentile", target_false_positive_rate=0.1)
    summary = summaries.ScoreSummary.from_arrays(labels, scores)
    expected = thresholds.calibrate(config, scores, labels)
    assert expected.method == "percentile"
    assert summaries.calibrate_from_summary(summary, config) == expected


def test_exact_summary_metrics_equal_classification_metrics():
    labels, scores = scored_beats(300, 120, seed=3)
    summary = summaries.ScoreSummary.from_arrays(labels, scores)
    for threshold in (0.01, float(np.median(scores)), 0.3, 10.0):
        assert summaries.metrics_from_summary(summary, threshold) == metrics.classification_metrics(
            labels, scores, threshold)
        bounds = summaries.error_bounds(summary, threshold)
        assert bounds["roc_auc"] == bounds["pr_auc"] == 0.0


@pytest.fixture(scope="module")
def large():
    """300,000 scored beats: both classes past the exact limit, so both are histograms."""
    labels, scores = scored_beats(240_000, 60_000, seed=4)
    summary = summaries.ScoreSummary.from_arrays(labels, scores, exact_limit=50_000)
    assert not summary.is_exact(summaries.NORMAL) and not summary.is_exact(summaries.ANOMALY)
    return labels, scores, summary


def test_large_percentile_threshold_within_one_bin_above_the_order_statistic(large):
    labels, scores, summary = large
    width = summary.layout.relative_width
    normal = np.sort(scores[labels == 0])
    for rate in (0.01, 0.05, 0.2):
        config = thresholds.ThresholdConfig("percentile", target_false_positive_rate=rate)
        exact = thresholds.calibrate(config, scores, labels).value
        value = summaries.threshold_from_summary(summary, config)
        upper_order_statistic = normal[int(np.ceil((normal.size - 1) * (1 - rate)))]
        assert upper_order_statistic <= value <= (1 + width) * upper_order_statistic
        assert np.sum(normal > value) <= np.sum(normal > exact)  # never more false positives than exact
        assert value == pytest.approx(exact, rel=2 * width)


def test_large_mean_std_threshold_within_one_bin(large):
    labels, scores, summary = large
    config = thresholds.ThresholdConfig("mean_std", k=1.0)
    exact = thresholds.calibrate(config, scores, labels).value
    value = summaries.threshold_from_summary(summary, config)
    assert exact <= value <= exact * (1 + summary.layout.relative_width) * (1 + 1e-12)


def test_large_max_f1_within_stated_bound(large):
    labels, scores, summary = large
    config = thresholds.ThresholdConfig("max_f1")
    exact = thresholds.calibrate(config, scores, labels)
    found = summaries.calibrate_from_summary(summary, config)
    achieved = metrics.classification_metrics(labels, scores, found.value)["f1"]
    assert achieved == pytest.approx(found.parameters["validation_f1"], abs=1e-12)  # counts at an edge are exact
    bound = summaries.error_bounds(summary, found.value)["max_f1"]
    assert 0.0 <= exact.parameters["validation_f1"] - achieved <= bound + 1e-12
    assert bound < 1e-3


def test_large_metrics_exact_counts_at_edges_and_aucs_within_bounds(large):
    labels, scores, summary = large
    for config in CONFIGS:
        threshold = summaries.threshold_from_summary(summary, config)
        expected = metrics.classification_metrics(labels, scores, threshold)
        found = summaries.metrics_from_summary(summary, threshold)
        assert found.keys() == expected.keys()
        assert found["confusion_matrix"] == expected["confusion_matrix"]
        for name in ("beats", "accuracy", "precision", "recall", "f1"):
            assert found[name] == pytest.approx(expected[name], rel=1e-12)
        bounds = summaries.error_bounds(summary, threshold)
        assert set(bounds["confusion_matrix"].values()) == {0}
        for name in ("roc_auc", "pr_auc"):
            assert abs(found[name] - expected[name]) <= bounds[name] + 1e-12
            assert bounds[name] < 1e-3


def test_large_metrics_off_edge_threshold_counts_within_undecided_bin(large):
    labels, scores, summary = large
    threshold = float(np.median(scores))  # a score itself, not a bin edge
    expected = metrics.classification_metrics(labels, scores, threshold)["confusion_matrix"]
    found = summaries.metrics_from_summary(summary, threshold)["confusion_matrix"]
    bounds = summaries.error_bounds(summary, threshold)["confusion_matrix"]
    assert sum(bounds.values()) > 0
    for name, count in expected.items():
        assert abs(found[name] - count) <= bounds[name]


def test_reference_quantiles_exact_and_binned(large):
    labels, scores, summary = large
    normal = scores[labels == 0]
    probabilities = (np.arange(1000) + 0.5) / 1000
    exact_summary = summaries.ScoreSummary.from_arrays(labels[:5000], scores[:5000])
    np.testing.assert_array_equal(summaries.reference_quantiles(exact_summary, 1000),
                                  np.quantile(scores[:5000][labels[:5000] == 0], probabilities))
    binned = summaries.reference_quantiles(summary, 1000)
    np.testing.assert_allclose(binned, np.quantile(normal, probabilities), rtol=2 * summary.layout.relative_width)
    assert np.all(np.diff(binned) >= 0)


def test_bin_keys_agree_with_edges_at_and_between_edges():
    layout = bins.BinLayout(relative_width=1e-3, smallest_magnitude=1e-9)
    rng = np.random.default_rng(5)
    keys = rng.integers(-30_000, 30_000, 2000)
    edges = layout.upper_edges(keys)
    np.testing.assert_array_equal(layout.keys(edges), keys)  # an upper edge belongs to its own bin
    values = np.concatenate([rng.lognormal(0, 5, 5000), -rng.lognormal(0, 5, 5000), [0.0, 1e-9, -1e-9, 1e-10]])
    value_keys = layout.keys(values)
    assert np.all(layout.lower_edges(value_keys) < values) and np.all(values <= layout.upper_edges(value_keys))
    above = rng.choice(values, 200)
    for threshold in layout.upper_edges(value_keys[:200]):
        np.testing.assert_array_equal(thresholds.is_anomalous(above, threshold), layout.keys(above) > layout.keys(
            [threshold])[0])


def test_merge_is_associative_across_the_exact_limit():
    labels, scores = scored_beats(3000, 1000, seed=6)
    parts = [summaries.ScoreSummary(exact_limit=1500).add(labels[i::3], scores[i::3]) for i in range(3)]

    def fresh(index):
        return summaries.ScoreSummary(exact_limit=1500).merge(parts[index])

    left = fresh(0).merge(fresh(1)).merge(fresh(2))
    right = fresh(0).merge(fresh(1).merge(fresh(2)))
    whole = summaries.ScoreSummary.from_arrays(labels, scores, exact_limit=1500)
    pairs = summaries.ScoreSummary(exact_limit=1500)
    for label, score in zip(labels, scores):
        pairs.add_pair(label, score)
    for summary in (left, right, pairs):
        assert summary.is_exact(0) == whole.is_exact(0) is False and summary.is_exact(1) is True
        for label in summaries.LABELS:
            assert summary.count(label) == whole.count(label)
            for got, expected in zip(summary.histogram(label), whole.histogram(label)):
                np.testing.assert_array_equal(got, expected)
            assert summary.moments(label) == pytest.approx(whole.moments(label), rel=1e-12)
        np.testing.assert_array_equal(summary.scores(1), whole.scores(1))
        for config in CONFIGS:
            assert summaries.threshold_from_summary(summary, config) == pytest.approx(
                summaries.threshold_from_summary(whole, config), rel=1e-12)


def test_bad_input_is_refused():
    summary = summaries.ScoreSummary()
    with pytest.raises(ValueError, match="finite"):
        summary.add([0], [np.nan])
    with pytest.raises(ValueError, match="labels must be one of"):
        summary.add([2], [0.1])
    with pytest.raises(ValueError, match="bad pair"):
        summary.add_pair(0, float("inf"))
    with pytest.raises(ValueError, match="different bin layouts"):
        summary.merge(summaries.ScoreSummary(layout=bins.BinLayout(relative_width=1e-2)))
    with pytest.raises(ValueError, match="no scores"):
        summaries.threshold_from_summary(summary, thresholds.ThresholdConfig())
    with pytest.raises(ValueError, match="labelled beats"):
        summaries.metrics_from_summary(summaries.ScoreSummary().add([-1], [0.1]), 0.5)


def test_combine_fn_in_a_pipeline_over_several_bundles():
    labels, scores = scored_beats(2000, 500, seed=7)
    pairs = [(int(label), float(score)) for label, score in zip(labels, scores)]
    expected = summaries.ScoreSummary.from_arrays(labels, scores, exact_limit=800)
    config = thresholds.ThresholdConfig("max_f1")

    def check(outputs):
        (summary,) = outputs
        assert summary.count() == len(pairs) and not summary.is_exact(0) and summary.is_exact(1)
        for label in summaries.LABELS:
            for got, wanted in zip(summary.histogram(label), expected.histogram(label)):
                np.testing.assert_array_equal(got, wanted)
        np.testing.assert_array_equal(summary.scores(1), expected.scores(1))
        assert summaries.threshold_from_summary(summary, config) == summaries.threshold_from_summary(expected, config)

    pipeline = TestPipeline(options=beam.options.pipeline_options.PipelineOptions(
        ["--direct_running_mode=multi_threading", "--direct_num_workers=2"]))
    summary = (pipeline
               | beam.Create([pairs[start:start + 250] for start in range(0, len(pairs), 250)])
               | beam.Reshuffle()
               | beam.FlatMap(lambda chunk: chunk)
               | beam.CombineGlobally(ScoreSummaryFn(exact_limit=800)))
    assert_that(summary, check)
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("summarised_scores"))["counters"]
    assert sum(counter.committed for counter in counters) == len(pairs)


def test_combine_fn_merges_many_accumulators():
    labels, scores = scored_beats(900, 300, seed=8)
    combine = ScoreSummaryFn(exact_limit=500)
    accumulators = []
    for start in range(0, labels.size, 100):
        accumulator = combine.create_accumulator()
        for label, score in zip(labels[start:start + 100], scores[start:start + 100]):
            accumulator = combine.add_input(accumulator, (label, score))
        accumulators.append(accumulator)
    merged = combine.extract_output(combine.merge_accumulators(
        [combine.merge_accumulators(accumulators[:5]), combine.merge_accumulators(accumulators[5:])]))
    expected = summaries.ScoreSummary.from_arrays(labels, scores, exact_limit=500)
    assert merged.count() == expected.count() and merged.is_exact(1) and not merged.is_exact(0)
    assert summaries.metrics_from_summary(merged, 0.1) == summaries.metrics_from_summary(expected, 0.1)
