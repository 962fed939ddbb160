"""Drift watch on anomaly scores: windows of live errors against the validation-normal reference.

The test: a two-sample Kolmogorov-Smirnov test between a window of ``window`` live errors and the
reference, ``count`` quantiles at probabilities ``(i + 0.5) / count`` of the validation-normal errors the
detector was calibrated on (``summaries.reference_quantiles``). The statistic is
``D = sup_x |F_window(x) - F_reference(x)|`` (``scipy.stats.ks_2samp``). Its null distribution is the
two-sample one with effective size ``e = n m / (n + m)``, where ``m`` is the window size and ``n`` the
number of validation normals behind the quantiles (a thousand quantiles of three hundred beats carry three
hundred beats of information; of thirty thousand, far more than a thousand random beats). So
``p = kstwo.sf(D, round(e))`` and ``D_alpha = kstwo.isf(alpha, round(e))`` (scipy's
``ks_2samp(method="asymp")`` for the same sizes), plus ``0.5 / count``, the most the quantiles' step CDF
can differ from that of the beats behind them. A window is out when ``D > D_alpha``, which happens to a
clean window with probability about ``alpha`` (averaged over references: all windows share one reference,
so a reference from few beats makes its windows' alarms correlated).

Censoring: the stream feeds the errors of the beats the detector judges normal (``censor_above`` =
the detector's threshold, by ``thresholds.is_anomalous``), and the reference is cut at the same value, so
both sides describe "normal-looking beats" and a change in the share of true anomalies is not drift.

Hysteresis: the first window out of bounds raises one ``DriftRecord``; the monitor then stays in alarm
until ``rearm_windows`` consecutive windows are back within bounds, so one sustained shift gives one alarm.

The reference travels as ``drift_reference.json`` in the detector's version directory (beside
``detector/`` and ``model_card.json``), through ``models.common.files``; ``read_reference`` returns
``None`` for exports that predate it.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from scipy import stats

from models.common import files
from models.detection import summaries, thresholds
from models.ecg import NORMAL

LOGGER = logging.getLogger(__name__)

REFERENCE_FILE = "drift_reference.json"
REFERENCE_FORMAT = 1
DEFAULT_QUANTILES = 1000
DEFAULT_WINDOW = 500
DEFAULT_ALPHA = 1e-4
DEFAULT_REARM_WINDOWS = 3
TEST_NAME = "two-sample Kolmogorov-Smirnov"


@dataclasses.dataclass(frozen=True)
class DriftReference:
    """Sorted reference quantiles and the number of beats they summarise (``source_count``)."""

    quantiles: np.ndarray
    source_count: int

    def __post_init__(self):
        values = np.sort(np.asarray(self.quantiles, dtype=np.float64).ravel())
        if values.size == 0 or not np.all(np.isfinite(values)):
            raise ValueError("a drift reference needs at least one finite quantile")
        if int(self.source_count) < 1:
            raise ValueError(f"source_count must be at least 1, got {self.source_count}")
        object.__setattr__(self, "quantiles", values)
        object.__setattr__(self, "source_count", int(self.source_count))

    @property
    def effective_size(self) -> int:
        """Sample size the test gives the reference: the beats behind it (``source_count``)."""
        return self.source_count

    @property
    def quantisation(self) -> float:
        """Most the quantiles' step CDF can differ from the CDF of the beats behind them: ``0.5 / count``."""
        return 0.5 / self.quantiles.size

    def to_dict(self) -> dict:
        """The JSON document of ``drift_reference.json``."""
        return {"format": REFERENCE_FORMAT, "test": TEST_NAME, "score": "anomaly_score",
                "probabilities": "(i + 0.5) / count", "source_count": self.source_count,
                "quantiles": [float(value) for value in self.quantiles]}


def reference_from_summary(summary: summaries.ScoreSummary, count: int = DEFAULT_QUANTILES,
                           label: int = NORMAL) -> DriftReference:
    """The drift reference of a validation summary: ``count`` quantiles of its normal scores."""
    return DriftReference(summaries.reference_quantiles(summary, count, label), summary.count(label))


def write_reference(directory: str, reference) -> str:
    """Writes ``drift_reference.json`` into a detector version directory; returns its path.

    ``reference`` is a ``DriftReference`` or an array of quantiles (then each counts as one beat).
    """
    if not isinstance(reference, DriftReference):
        quantiles = np.asarray(reference, dtype=np.float64).ravel()
        reference = DriftReference(quantiles, quantiles.size)
    return files.write_json(files.join(directory, REFERENCE_FILE), reference.to_dict())


def read_reference(directory: str) -> DriftReference | None:
    """The drift reference of a detector version directory, or ``None`` when it has none (older exports)."""
    path = files.join(directory, REFERENCE_FILE)
    if not files.exists(path):
        return None
    document = files.read_json(path)
    if document.get("format") != REFERENCE_FORMAT:
        raise ValueError(f"{path}: unsupported drift reference format {document.get('format')!r}")
    return DriftReference(np.asarray(document["quantiles"], dtype=np.float64), document["source_count"])


def ks_statistic(window, reference) -> float:
    """Two-sample Kolmogorov-Smirnov statistic ``sup |F_window - F_reference|``."""
    return float(stats.ks_2samp(np.asarray(window, np.float64), np.asarray(reference, np.float64)).statistic)


def _effective_pairs(reference_size: int, window_size: int) -> int:
    return max(1, round(reference_size * window_size / (reference_size + window_size)))


def critical_value(alpha: float, reference_size: int, window_size: int) -> float:
    """``D_alpha``: the statistic a same-distribution window exceeds with probability ``alpha``."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be strictly between 0 and 1, got {alpha}")
    return float(stats.kstwo.isf(alpha, _effective_pairs(reference_size, window_size)))


def p_value(statistic: float, reference_size: int, window_size: int) -> float:
    """Asymptotic two-sided p-value of a two-sample statistic (scipy's ``asymp`` method)."""
    return float(stats.kstwo.sf(statistic, _effective_pairs(reference_size, window_size)))


@dataclasses.dataclass(frozen=True)
class DriftRecord:
    """One drift alarm: the window's statistic against its critical value, and where in the stream it fell."""

    statistic: float
    p_value: float
    critical_value: float
    alpha: float
    window_beats: int
    reference_size: int
    window_index: int  # windows tested so far, this one included
    beats_observed: int  # errors fed to the monitor (before censoring)
    beats_tested: int  # errors that entered windows (after censoring)
    window_median: float
    reference_median: float
    test: str = TEST_NAME

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return dataclasses.asdict(self)


class DriftMonitor:
    """Feeds live errors into windows and tests each full one against the reference (see the module doc).

    ``window`` errors per test; a new test every ``stride`` errors (default ``window``: tumbling windows).
    ``censor_above``: errors the rule ``is_anomalous`` flags at this value are dropped, and the reference is
    cut at it. ``observe`` returns the alarms raised by the errors it was given.
    """

    def __init__(self, reference: DriftReference, window: int = DEFAULT_WINDOW, alpha: float = DEFAULT_ALPHA,
                 stride: int | None = None, rearm_windows: int = DEFAULT_REARM_WINDOWS,
                 censor_above: float | None = None):
        if window < 2 or (stride is not None and not 1 <= stride <= window) or rearm_windows < 1:
            raise ValueError(f"need window >= 2, 1 <= stride <= window and rearm_windows >= 1; got {window}, "
                             f"{stride}, {rearm_windows}")
        quantiles = reference.quantiles
        if censor_above is not None:
            kept = ~thresholds.is_anomalous(quantiles, float(censor_above))
            if not kept.any():
                raise ValueError(f"every reference quantile is above the censoring value {censor_above}")
            reference = DriftReference(quantiles[kept],
                                       max(1, round(reference.source_count * kept.sum() / quantiles.size)))
        self.reference = reference
        self.window = int(window)
        self.stride = int(stride or window)
        self.alpha = float(alpha)
        self.rearm_windows = int(rearm_windows)
        self.censor_above = censor_above
        self.critical_value = (critical_value(self.alpha, reference.effective_size, self.window)
                               + reference.quantisation)
        self.reference_median = float(np.median(reference.quantiles))
        self.statistic = float("nan")  # of the last full window; NaN before the first
        self.alarmed = False
        self.windows_tested = 0
        self.alarms = 0
        self.beats_observed = 0
        self.beats_tested = 0
        self._within_bounds_run = 0
        self._buffer = np.zeros(0, dtype=np.float64)

    def observe(self, errors) -> list[DriftRecord]:
        """Adds live errors (any length, finite); returns a ``DriftRecord`` per alarm they raise."""
        values = np.asarray(errors, dtype=np.float64).ravel()
        if not np.all(np.isfinite(values)):
            raise ValueError("drift errors must be finite")
        self.beats_observed += values.size
        if self.censor_above is not None:
            values = values[~thresholds.is_anomalous(values, float(self.censor_above))]
        self.beats_tested += values.size
        self._buffer = np.concatenate((self._buffer, values))
        records = []
        while self._buffer.size >= self.window:
            record = self._test(self._buffer[:self.window])
            self._buffer = self._buffer[self.stride:]
            if record is not None:
                records.append(record)
        return records

    def _test(self, window: np.ndarray) -> DriftRecord | None:
        self.windows_tested += 1
        self.statistic = ks_statistic(window, self.reference.quantiles)
        if self.statistic <= self.critical_value:
            self._within_bounds_run += 1
            if self.alarmed and self._within_bounds_run >= self.rearm_windows:
                self.alarmed = False
                LOGGER.info("error drift cleared after %d windows within bounds", self._within_bounds_run)
            return None
        self._within_bounds_run = 0
        if self.alarmed:
            return None
        self.alarmed = True
        self.alarms += 1
        return DriftRecord(
            statistic=self.statistic, p_value=p_value(self.statistic, self.reference.effective_size, self.window),
            critical_value=self.critical_value, alpha=self.alpha, window_beats=self.window,
            reference_size=self.reference.effective_size, window_index=self.windows_tested,
            beats_observed=self.beats_observed, beats_tested=self.beats_tested,
            window_median=float(np.median(window)), reference_median=self.reference_median)
