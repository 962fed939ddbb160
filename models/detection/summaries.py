"""Mergeable summaries of (label, anomaly score) pairs, and thresholds and metrics computed from them.

A ``ScoreSummary`` holds, per label (``NORMAL`` 0, ``ANOMALY`` 1, ``UNKNOWN_LABEL`` -1), the exact scores
while the class has at most ``exact_limit`` of them, and past that a histogram on a fixed log-scale bin
layout (``bins.BinLayout``) that every summary shares, so summaries built on different workers merge by adding
counts. Each class also keeps its exact count, mean and centred sum of squares (Chan's parallel update).

Exact path: when every class a computation needs is exact, ``threshold_from_summary`` and
``metrics_from_summary`` hand the scores to ``thresholds.calibrate`` and ``metrics.classification_metrics``
themselves (scores sorted per class, so ``mean_std`` agrees up to the rounding of a summation order).

Histogram path, with ``w`` = ``BinLayout.relative_width`` (default 1e-3). A bin is a half-open interval
``(lower, upper]`` with ``upper = lower * (1 + w)`` in magnitude (one bin ``(-m, m]`` around zero,
``m = smallest_magnitude``); "score > upper edge" holds exactly for the bins above, so:

- Every threshold from a histogram is a bin's upper edge, hence the confusion counts at it are exact on any
  summary with the same layout (the validation threshold is an edge of the test summary too).
  ``percentile``: the upper edge of the bin holding order statistic ``x[ceil(h)]`` (``h`` = numpy's linear
  quantile position), so ``x[ceil(h)] <= threshold <= (1 + w) * x[ceil(h)]`` for positive scores and no more
  normal beats are flagged than by the exact threshold. ``mean_std``: mean and std exact from the moments,
  then rounded up to its bin's edge (relative change ``<= w``). ``max_f1``: the best cut among bin edges;
  ``error_bounds`` gives how much F1 a cut inside a bin could still gain.
- ROC-AUC counts pairs inside one bin as ties (1/2): ``|error| <= 0.5 * sum_b n0_b * n1_b / (N0 * N1)``.
- PR-AUC (average precision) treats a bin as one threshold step: ``|error| <= sum_b (n1_b / N1) *
  (P_max_b - P_min_b)``, the spread of precision any ordering inside the bin could reach.
- A threshold that is not a bin edge leaves one bin undecided per class: counted as not flagged, and its
  size reported by ``error_bounds``.

Unlabelled beats count as normal for ``mean_std``/``percentile`` and disable ``max_f1`` (as in
``thresholds.calibrate``); metrics count only labelled beats.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn import metrics as sklearn_metrics

from models.detection import bins, metrics, thresholds
from models.detection.bins import BinLayout
from models.ecg import ANOMALY, NORMAL, UNKNOWN_LABEL

LABELS = (NORMAL, ANOMALY, UNKNOWN_LABEL)
NORMAL_LABELS = (NORMAL, UNKNOWN_LABEL)  # the beats thresholds.calibrate treats as normal
LABELLED = (NORMAL, ANOMALY)
DEFAULT_EXACT_LIMIT = 100_000
_PENDING_FLUSH = 4096


class ScoreSummary:
    """Mergeable summary of (label, score) pairs: exact per class up to ``exact_limit``, then binned.

    ``add`` takes arrays, ``add_pair`` one pair (buffered); ``merge`` folds another summary into this one
    and returns it. Scores must be finite and labels 0, 1 or -1 (``ValueError`` otherwise).
    """

    def __init__(self, exact_limit: int = DEFAULT_EXACT_LIMIT, layout: BinLayout | None = None):
        if exact_limit < 0:
            raise ValueError(f"exact_limit must be non-negative, got {exact_limit}")
        self.exact_limit = int(exact_limit)
        self.layout = layout or BinLayout()
        self._exact = {label: [] for label in LABELS}  # list of arrays, or None once the class is binned
        self._bins = {label: (np.zeros(0, np.int64), np.zeros(0, np.int64)) for label in LABELS}
        self._moments = {label: (0, 0.0, 0.0) for label in LABELS}
        self._pending = {label: [] for label in LABELS}

    @classmethod
    def from_arrays(cls, labels, scores, **options) -> ScoreSummary:
        """A summary of equally long label and score arrays."""
        return cls(**options).add(labels, scores)

    def add(self, labels, scores) -> ScoreSummary:
        """Adds equally long arrays of labels and scores; returns ``self``."""
        labels = np.asarray(labels).ravel()
        values = np.asarray(scores, dtype=np.float64).ravel()
        if labels.shape != values.shape:
            raise ValueError(f"labels and scores differ in length: {labels.size} vs {values.size}")
        if not np.all(np.isfinite(values)):
            raise ValueError("a score summary takes finite scores only (NaN or Inf found)")
        if not np.isin(labels, LABELS).all():
            raise ValueError(f"labels must be one of {LABELS}")
        for label in LABELS:
            self._add_values(label, values[labels == label])
        return self

    def add_pair(self, label, score) -> ScoreSummary:
        """Adds one (label, score) pair; returns ``self``."""
        value = float(score)
        if label not in self._pending or not np.isfinite(value):
            raise ValueError(f"bad pair ({label!r}, {score!r}): label must be one of {LABELS}, score finite")
        pending = self._pending[int(label)]
        pending.append(value)
        if len(pending) >= _PENDING_FLUSH:
            self._flush_label(int(label))
        return self

    def merge(self, other: ScoreSummary) -> ScoreSummary:
        """Folds ``other`` into this summary (same layout needed) and returns ``self``."""
        if other.layout != self.layout:
            raise ValueError(f"cannot merge summaries with different bin layouts: {self.layout} vs {other.layout}")
        other._flush()
        self._flush()
        for label in LABELS:
            self._moments[label] = bins.combine_moments(self._moments[label], other._moments[label])
            if self._exact[label] is not None and other._exact[label] is not None:
                self._exact[label] += other._exact[label]
            else:
                self._bins[label] = bins.add_counts(*self._bins[label], *other.histogram(label))
                if self._exact[label] is not None:
                    self._to_bins(label)
            self._limit(label)
        return self

    @classmethod
    def merge_all(cls, summaries, **options) -> ScoreSummary:
        """One summary of many (an empty one with ``options`` when there are none)."""
        merged = cls(**options)
        for summary in summaries:
            merged.merge(summary)
        return merged

    def count(self, labels=LABELS) -> int:
        """Number of scores with the given label (an int) or labels (a tuple)."""
        self._flush()
        return sum(self._moments[label][0] for label in _as_tuple(labels))

    def is_exact(self, labels=LABELS) -> bool:
        """True when every given class still holds its exact scores."""
        self._flush()
        return all(self._exact[label] is not None for label in _as_tuple(labels))

    def scores(self, label) -> np.ndarray:
        """The exact scores of one class, sorted; ``ValueError`` once it is binned."""
        self._flush()
        if self._exact[label] is None:
            raise ValueError(f"class {label} holds a histogram, not exact scores")
        return np.sort(np.concatenate([np.zeros(0)] + self._exact[label]))

    def arrays(self, labels=LABELS) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, labels)`` of the given exact classes, class by class, each sorted."""
        parts = [(self.scores(label), np.full(self.count(label), label)) for label in _as_tuple(labels)]
        return np.concatenate([part[0] for part in parts]), np.concatenate([part[1] for part in parts])

    def histogram(self, labels=LABELS) -> tuple[np.ndarray, np.ndarray]:
        """``(keys, counts)`` of the given classes on ``layout`` (exact classes binned on the fly)."""
        self._flush()
        keys, counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
        for label in _as_tuple(labels):
            if self._exact[label] is None:
                label_keys, label_counts = self._bins[label]
            else:
                label_keys, label_counts = np.unique(self.layout.keys(self.scores(label)), return_counts=True)
            keys, counts = bins.add_counts(keys, counts, label_keys, label_counts)
        return keys, counts

    def moments(self, labels=LABELS) -> tuple[int, float, float]:
        """``(count, mean, population std)`` of the given classes, exact up to rounding."""
        self._flush()
        combined = (0, 0.0, 0.0)
        for label in _as_tuple(labels):
            combined = bins.combine_moments(combined, self._moments[label])
        count, mean, m2 = combined
        return count, mean, float(np.sqrt(m2 / count)) if count else 0.0

    def compacted(self) -> ScoreSummary:
        """Flushes buffered pairs and joins each class's exact chunks into one array; returns ``self``."""
        self._flush()
        for label in LABELS:
            if self._exact[label] is not None and len(self._exact[label]) > 1:
                self._exact[label] = [np.concatenate(self._exact[label])]
        return self

    def __getstate__(self):
        return self.compacted().__dict__

    def __repr__(self) -> str:
        parts = [f"{label}: {self.count(label)} {'exact' if self.is_exact(label) else 'binned'}" for label in LABELS]
        return f"ScoreSummary({', '.join(parts)})"

    def _add_values(self, label: int, values: np.ndarray) -> None:
        if values.size == 0:
            return
        self._moments[label] = bins.combine_moments(self._moments[label], bins.moments(values))
        if self._exact[label] is not None:
            self._exact[label].append(values.copy())
        else:
            self._bin_values(label, values)
        self._limit(label)

    def _limit(self, label: int) -> None:
        if self._exact[label] is not None and self._moments[label][0] > self.exact_limit:
            self._to_bins(label)

    def _to_bins(self, label: int) -> None:
        values = np.concatenate([np.zeros(0)] + self._exact[label])
        self._exact[label] = None
        self._bin_values(label, values)

    def _bin_values(self, label: int, values: np.ndarray) -> None:
        keys, counts = np.unique(self.layout.keys(values), return_counts=True)
        self._bins[label] = bins.add_counts(*self._bins[label], keys, counts)

    def _flush_label(self, label: int) -> None:
        pending, self._pending[label] = self._pending[label], []
        self._add_values(label, np.asarray(pending, dtype=np.float64))

    def _flush(self) -> None:
        for label in LABELS:
            if self._pending[label]:
                self._flush_label(label)


def _as_tuple(labels) -> tuple:
    labels = (labels,) if np.isscalar(labels) else tuple(labels)
    if not set(labels) <= set(LABELS):
        raise ValueError(f"labels must be among {LABELS}, got {labels}")
    return labels


def calibrate_from_summary(summary: ScoreSummary, config: thresholds.ThresholdConfig) -> thresholds.Threshold:
    """``thresholds.calibrate`` on a summary: the same on exact classes, a bin edge from histograms."""
    total = summary.count()
    if total == 0:
        raise ValueError("cannot calibrate a threshold: the summary holds no scores")
    method = config.method
    if method == "max_f1":
        if summary.count(UNKNOWN_LABEL) == 0 and 0 < summary.count(ANOMALY) < total:
            if summary.is_exact():
                return thresholds.calibrate(config, *summary.arrays())
            value, f1 = _binned_max_f1(summary)[:2]
            return thresholds.Threshold(value, "max_f1", {"validation_f1": f1, "validation_beats": total,
                                                          "relative_bin_width": summary.layout.relative_width})
        method = config.fallback_method
    config = dataclasses.replace(config, method=method)
    if summary.count(NORMAL_LABELS) == 0:
        raise ValueError("cannot calibrate a threshold: no normal errors")
    if summary.is_exact(NORMAL_LABELS):
        return thresholds.calibrate(config, *summary.arrays(NORMAL_LABELS))
    count, mean, std = summary.moments(NORMAL_LABELS)
    if method == "mean_std":
        value = _edge_at_or_above(summary.layout, mean + config.k * std)
        parameters = {"k": config.k}
    else:
        keys, counts = summary.histogram(NORMAL_LABELS)
        rank = int(np.ceil((count - 1) * (1.0 - config.target_false_positive_rate)))
        value = float(summary.layout.upper_edges(keys[np.searchsorted(np.cumsum(counts), rank, side="right")]))
        parameters = {"target_false_positive_rate": config.target_false_positive_rate}
    return thresholds.Threshold(value, method, {**parameters, "normal_beats": count,
                                                "relative_bin_width": summary.layout.relative_width})


def threshold_from_summary(summary: ScoreSummary, config: thresholds.ThresholdConfig) -> float:
    """The threshold value ``calibrate_from_summary`` finds."""
    return float(calibrate_from_summary(summary, config).value)


def _edge_at_or_above(layout: BinLayout, value: float) -> float:
    """The upper edge of the bin holding ``value``."""
    return float(layout.upper_edges(layout.keys([value]))[0])


def _aligned(summary: ScoreSummary) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Union bin keys of the labelled classes with normal and anomaly counts aligned on them."""
    keys, _ = summary.histogram(LABELLED)
    aligned = []
    for label in LABELLED:
        label_keys, label_counts = summary.histogram(label)
        counts = np.zeros(keys.size, dtype=np.int64)
        counts[np.searchsorted(keys, label_keys)] = label_counts
        aligned.append(counts)
    return keys, aligned[0], aligned[1]


def _binned_max_f1(summary: ScoreSummary) -> tuple[float, float, float]:
    """``(threshold, f1, bound)``: the best cut among bin edges, as in ``thresholds.max_f1_threshold``.

    ``bound`` caps the F1 any cut inside a bin could add: at most the ``tp`` anomalies of a bin join the
    flagged beats above it, so F1 <= 2 (TP_above + tp) / (flagged_above + P + tp).
    """
    keys, normals, anomalies = _aligned(summary)
    positives, total = int(anomalies.sum()), int(normals.sum() + anomalies.sum())
    below_anomalies = np.concatenate(([0], np.cumsum(anomalies)))  # at most bin index c - 1 ... c = -1..B-1
    below_all = np.concatenate(([0], np.cumsum(normals + anomalies)))
    true_positives = positives - below_anomalies[:-1]  # cut below bin b (b = 0..B-1) flags bins b..B-1
    f1 = 2.0 * true_positives / (total - below_all[:-1] + positives)
    best = int(np.flatnonzero(f1 == f1.max())[-1])
    value = float(summary.layout.lower_edges(keys[best:best + 1])[0])
    above_anomalies = positives - below_anomalies[1:]
    above_all = total - below_all[1:]
    reachable = 2.0 * (above_anomalies + anomalies) / (above_all + positives + anomalies)
    return value, float(f1[best]), float(max(0.0, reachable.max() - f1[best]))


def _confusion(summary: ScoreSummary, threshold: float) -> tuple[dict, dict]:
    """Confusion counts at ``threshold`` (exact classes by the rule) and the undecided beats per count."""
    flagged, undecided = {}, {}
    for label in LABELLED:
        if summary.is_exact(label):
            flagged[label] = int(thresholds.is_anomalous(summary.scores(label), threshold).sum())
            undecided[label] = 0
            continue
        keys, counts = summary.histogram(label)
        key = int(summary.layout.keys([threshold])[0])
        flagged[label] = int(counts[keys > key].sum())
        on_edge = float(summary.layout.upper_edges([key])[0]) == float(threshold)
        undecided[label] = 0 if on_edge else int(counts[keys == key].sum())
    normals, anomalies = summary.count(NORMAL), summary.count(ANOMALY)
    counts = {"true_positive": flagged[ANOMALY], "false_positive": flagged[NORMAL],
              "true_negative": normals - flagged[NORMAL], "false_negative": anomalies - flagged[ANOMALY]}
    bounds = {"true_positive": undecided[ANOMALY], "false_positive": undecided[NORMAL],
              "true_negative": undecided[NORMAL], "false_negative": undecided[ANOMALY]}
    return counts, bounds


def _binned_aucs(summary: ScoreSummary) -> tuple[float, float, float, float]:
    """``(roc_auc, pr_auc, roc_bound, pr_bound)`` from the aligned histograms (a bin = tied scores)."""
    keys, normals, anomalies = _aligned(summary)
    truth = np.concatenate((np.zeros(keys.size, bool), np.ones(keys.size, bool)))
    weights = np.concatenate((normals, anomalies)).astype(np.float64)
    ranks = np.concatenate((keys, keys)).astype(np.float64)
    present = weights > 0
    roc = float(sklearn_metrics.roc_auc_score(truth[present], ranks[present], sample_weight=weights[present]))
    pr = float(sklearn_metrics.average_precision_score(truth[present], ranks[present],
                                                       sample_weight=weights[present]))
    total_normals, total_anomalies = normals.sum(), anomalies.sum()
    roc_bound = 0.5 * float((normals * anomalies).sum()) / float(total_normals * total_anomalies)
    order = slice(None, None, -1)  # descending bins: precision steps as the cut goes down
    above_true = np.concatenate(([0], np.cumsum(anomalies[order])[:-1])).astype(np.float64)
    above_all = np.concatenate(([0], np.cumsum((normals + anomalies)[order])[:-1])).astype(np.float64)
    bin_true, bin_false = anomalies[order].astype(np.float64), normals[order].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        highest = (above_true + bin_true) / (above_all + bin_true)
        lowest = (above_true + 1.0) / (above_all + 1.0 + bin_false)
    spread = np.where(bin_true > 0, highest - lowest, 0.0)
    pr_bound = float((bin_true / total_anomalies * spread).sum())
    return roc, pr, roc_bound, pr_bound


def metrics_from_summary(summary: ScoreSummary, threshold: float) -> dict:
    """``metrics.classification_metrics`` from a summary (labelled beats only; same keys).

    Exact classes give exactly that function's dict; histograms give exact confusion counts when
    ``threshold`` is a bin edge (every threshold from ``threshold_from_summary`` on a histogram is), and
    ROC-AUC / PR-AUC within ``error_bounds``.
    """
    beats = summary.count(LABELLED)
    if beats == 0:
        raise ValueError("metrics need labelled beats (0 normal or 1 anomaly); the summary holds none")
    if summary.is_exact(LABELLED):
        scores, labels = summary.arrays(LABELLED)
        return metrics.classification_metrics(labels, scores, float(threshold))
    counts = _confusion(summary, float(threshold))[0]
    both_classes = 0 < summary.count(ANOMALY) < beats
    roc_auc, pr_auc = _binned_aucs(summary)[:2] if both_classes else (None, None)
    return _metrics_dict(counts, beats, roc_auc, pr_auc)


def _metrics_dict(counts: dict, beats: int, roc_auc, pr_auc) -> dict:
    """The evaluation dict of ``metrics.classification_metrics`` from confusion counts and AUCs."""
    ratio = metrics._safe_ratio
    precision = ratio(counts["true_positive"], counts["true_positive"] + counts["false_positive"])
    recall = ratio(counts["true_positive"], counts["true_positive"] + counts["false_negative"])
    return {
        "positive_class": "anomaly",
        "beats": beats,
        "accuracy": ratio(counts["true_positive"] + counts["true_negative"], beats),
        "precision": precision,
        "recall": recall,
        "f1": ratio(2 * precision * recall, precision + recall),
        "roc_auc": roc_auc,
        "pr_auc": pr_auc,
        "confusion_matrix": counts,
    }


def error_bounds(summary: ScoreSummary, threshold: float) -> dict:
    """Worst-case errors of ``metrics_from_summary`` at ``threshold`` (all 0 on exact summaries).

    ``confusion_matrix``: beats per count in the bin the threshold splits; ``roc_auc``, ``pr_auc``: the
    bounds in the module docstring; ``max_f1``: how much F1 a cut inside a bin could exceed the chosen one.
    """
    if summary.is_exact(LABELLED):
        zero = {"true_positive": 0, "false_positive": 0, "true_negative": 0, "false_negative": 0}
        return {"confusion_matrix": zero, "roc_auc": 0.0, "pr_auc": 0.0, "max_f1": 0.0}
    bounds = {"confusion_matrix": _confusion(summary, float(threshold))[1], "roc_auc": None, "pr_auc": None,
              "max_f1": None}
    if 0 < summary.count(ANOMALY) < summary.count(LABELLED):
        bounds["roc_auc"], bounds["pr_auc"] = _binned_aucs(summary)[2:]
        bounds["max_f1"] = _binned_max_f1(summary)[2]
    return bounds


def reference_quantiles(summary: ScoreSummary, count: int, label=NORMAL) -> np.ndarray:
    """``count`` quantiles of one class at probabilities ``(i + 0.5) / count`` (drift references).

    Exact classes use ``np.quantile``; binned ones interpolate linearly inside the bin holding each rank,
    so a quantile is off by at most its bin's width (relative ``relative_width``).
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    total = summary.count(label)
    if total == 0:
        raise ValueError(f"no scores with label {label} to take quantiles from")
    probabilities = (np.arange(count) + 0.5) / count
    if summary.is_exact(label):
        return np.quantile(np.concatenate([summary.scores(one) for one in _as_tuple(label)]), probabilities)
    keys, counts = summary.histogram(label)
    cumulative = np.cumsum(counts)
    ranks = probabilities * total
    index = np.minimum(np.searchsorted(cumulative, ranks, side="right"), keys.size - 1)
    before = cumulative[index] - counts[index]
    fraction = np.clip((ranks - before) / counts[index], 0.0, 1.0)
    lower, upper = summary.layout.lower_edges(keys[index]), summary.layout.upper_edges(keys[index])
    return lower + fraction * (upper - lower)
