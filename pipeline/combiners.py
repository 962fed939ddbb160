"""Beam ``CombineFn``s over scored beats: mergeable summaries instead of whole splits in one list.

``ScoreSummaryFn`` folds ``(label, anomaly_score)`` pairs into a ``models.detection.summaries.ScoreSummary``
(exact scores per class up to ``exact_limit``, a fixed-bin histogram beyond), so calibration and evaluation
need no ``AsList`` side input of a split: ``summaries.threshold_from_summary`` and
``summaries.metrics_from_summary`` read the combined result. Accumulators are the summaries themselves;
a pickled one holds at most ``exact_limit`` float64 scores per class or its occupied bins (two int64 arrays).
"""

from __future__ import annotations

import apache_beam as beam

from models.detection import summaries
from pipeline.ecg_steps import METRICS_NAMESPACE


class ScoreSummaryFn(beam.CombineFn):
    """``(label, score)`` pairs -> one ``ScoreSummary``; counts the pairs in Beam Metrics.

    ``label`` is 0 (normal), 1 (anomaly) or -1 (unlabelled); ``score`` the detector's finite anomaly score.
    Counter ``<namespace>:summarised_scores`` counts every pair added.
    """

    def __init__(self, exact_limit: int = summaries.DEFAULT_EXACT_LIMIT, layout: summaries.BinLayout | None = None,
                 namespace: str = METRICS_NAMESPACE):
        self.exact_limit = exact_limit
        self.layout = layout or summaries.BinLayout()
        self.summarised = beam.metrics.Metrics.counter(namespace, "summarised_scores")

    def create_accumulator(self) -> summaries.ScoreSummary:
        return summaries.ScoreSummary(self.exact_limit, self.layout)

    def add_input(self, accumulator: summaries.ScoreSummary, element) -> summaries.ScoreSummary:
        label, score = element
        self.summarised.inc()
        return accumulator.add_pair(label, score)

    def merge_accumulators(self, accumulators) -> summaries.ScoreSummary:
        accumulators = iter(accumulators)
        merged = next(accumulators, None) or self.create_accumulator()
        for accumulator in accumulators:
            merged.merge(accumulator)
        return merged

    def compact(self, accumulator: summaries.ScoreSummary) -> summaries.ScoreSummary:
        return accumulator.compacted()

    def extract_output(self, accumulator: summaries.ScoreSummary) -> summaries.ScoreSummary:
        return accumulator.compacted()
