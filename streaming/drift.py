"""The stream's drift watch: each batch's scores into per-topic ``DriftMonitor``s, a gauge, a counter, records.

``DriftWatch.observe_batch(detector, topics, scores)`` is called once per scored micro-batch with the
detector's outputs (``Detector.score``) and each beat's input topic. It reads the detector's reference
(``models.detection.drift.read_reference`` on the version directory) whenever the serving version changes,
feeds the ``anomaly_score`` of the beats the detector itself judges normal (its own ``threshold``, by the one
rule, whatever adaptive per-device step follows) into that topic's monitor, and returns one drift record per
alarm for the alerts topic. A detector without a reference (an older export) disables the watch until the
next version, with one log line.

Why only beats judged normal: the reference describes validation *normal* beats below the threshold; live
anomalies come in bursts and in a share that depends on the patients, and the burst alerts already report
them. Comparing like with like (both sides cut at the threshold) makes a new mix of true anomalies no drift,
while a shift of the normal beats' errors still moves the part below the threshold. A shift that pushes
nearly every beat above the threshold slows this watch (fewer beats fill its windows) but raises the anomaly
rate, which ``HeartwatchAnomalyRateSpike`` watches.

Metrics (on the processor's registry):

====================================== ======= ============================================================
heartwatch_error_drift_statistic{topic} gauge   KS statistic of the topic's last full window
heartwatch_error_drift_critical_value{topic} gauge   the value the statistic must exceed to alarm
heartwatch_drift_alarms_total{topic}   counter drift alarms raised
====================================== ======= ============================================================

Drift record (JSON, key ``drift/<topic>``)::

    drift_id, record_type ("error_drift"), topic, model_version, processor, test, statistic, p_value,
    critical_value, alpha, window_beats, reference_size, window_index, beats_observed, beats_tested,
    window_median, reference_median, censor_above, drift_time
"""

from __future__ import annotations

import logging
import time
import uuid

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from models.detection import drift

LOGGER = logging.getLogger(__name__)

RECORD_TYPE = "error_drift"


def drift_key(record: dict) -> bytes:
    """Kafka key of a drift record: ``drift/<topic>``."""
    return f"drift/{record['topic']}".encode()


class DriftWatch:
    """Per-topic drift monitors over the stream's scores (see the module doc).

    ``window``, ``alpha``, ``rearm_windows`` go to every ``DriftMonitor``; ``judged_normal_only`` False feeds
    every scored beat instead (and the reference is then not cut).
    """

    def __init__(self, registry: CollectorRegistry, processor_id: str = "", window: int = drift.DEFAULT_WINDOW,
                 alpha: float = drift.DEFAULT_ALPHA, rearm_windows: int = drift.DEFAULT_REARM_WINDOWS,
                 judged_normal_only: bool = True):
        self.processor_id = processor_id
        self.options = {"window": window, "alpha": alpha, "rearm_windows": rearm_windows}
        drift.critical_value(alpha, window, window)  # refuses a bad alpha now, not at the first batch
        self.judged_normal_only = judged_normal_only
        self.statistic = Gauge("heartwatch_error_drift_statistic",
                               "KS statistic of the last full window of live errors against the reference",
                               ["topic"], registry=registry)
        self.critical_value = Gauge("heartwatch_error_drift_critical_value",
                                    "value the drift statistic must exceed to alarm", ["topic"], registry=registry)
        self.alarms = Counter("heartwatch_drift_alarms", "error-drift alarms raised", ["topic"], registry=registry)
        self.monitors: dict[str, drift.DriftMonitor] = {}
        self._version = None
        self._reference = None
        self._threshold = None

    def observe_batch(self, detector, topics, scores: dict) -> list[dict]:
        """Feeds one scored batch (``scores`` from ``detector.score``, ``topics`` per beat); returns drift records."""
        if detector.version != self._version:
            self._use(detector)
        if self._reference is None:
            return []
        topic_array = np.asarray(topics, dtype=object)
        anomaly_scores = np.asarray(scores["anomaly_score"], dtype=np.float64)
        records = []
        for topic in sorted(set(topic_array.tolist())):
            monitor = self.monitors.get(topic) or self._new_monitor(topic)
            for alarm in monitor.observe(anomaly_scores[topic_array == topic]):
                self.alarms.labels(topic).inc()
                records.append(self._record(topic, alarm))
                LOGGER.warning("error drift on %s: KS statistic %.3f > %.3f (p %.2g) over %d beats, model v%s",
                               topic, alarm.statistic, alarm.critical_value, alarm.p_value, alarm.window_beats,
                               self._version)
            if monitor.windows_tested:
                self.statistic.labels(topic).set(monitor.statistic)
        return records

    def _use(self, detector) -> None:
        """Reads the new version's reference; forgets every monitor (scores of another model differ)."""
        self._version, self.monitors = detector.version, {}
        self._threshold = float(detector.threshold) if self.judged_normal_only else None
        try:
            self._reference = drift.read_reference(detector.directory)
        except (ValueError, KeyError, OSError) as error:  # a broken reference must not stop the stream
            LOGGER.warning("drift watch off for model v%s: unreadable reference (%s)", detector.version, error)
            self._reference = None
            return
        if self._reference is None:
            LOGGER.info("drift watch off for model v%s: its export has no %s", detector.version, drift.REFERENCE_FILE)

    def _new_monitor(self, topic: str) -> drift.DriftMonitor:
        monitor = drift.DriftMonitor(self._reference, censor_above=self._threshold, **self.options)
        self.monitors[topic] = monitor
        self.critical_value.labels(topic).set(monitor.critical_value)
        return monitor

    def _record(self, topic: str, alarm: drift.DriftRecord) -> dict:
        identity = f"heartwatch-drift/{topic}/{self._version}/{self.processor_id}/{alarm.beats_observed}"
        return {"drift_id": str(uuid.uuid5(uuid.NAMESPACE_URL, identity)), "record_type": RECORD_TYPE,
                "topic": topic, "model_version": self._version, "processor": self.processor_id, **alarm.to_dict(),
                "censor_above": self._threshold, "drift_time": time.time()}
