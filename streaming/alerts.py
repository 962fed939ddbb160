"""Anomaly-burst alerts: N anomalies of one device within a window of event time.

``BurstDetector.observe`` is fed every anomaly event; when a device reaches ``count`` anomalies
within ``window_seconds`` it returns an alert record (and then stays quiet for that device until a
full new window has passed, so a long burst raises one alert per window, not one per beat). The
consumer writes alerts to the alerts topic in the same acknowledged batch as the events, and hands
them to ``WebhookSender`` when a URL is configured (best effort, off the consumer thread).

Alert record (JSON, key = device id)::

    alert_id, device_id, anomaly_count, window_seconds, first_event_time, last_event_time,
    max_score, event_ids, model_version, alert_time
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
import urllib.request
import uuid

from streaming.codec import dumps

LOGGER = logging.getLogger(__name__)


class BurstDetector:
    """Counts anomalies per device in a sliding event-time window."""

    def __init__(self, count: int, window_seconds: float):
        if count < 1 or window_seconds <= 0:
            raise ValueError(f"count and window_seconds must be positive, got {count} and {window_seconds}")
        self.count = count
        self.window_seconds = window_seconds
        self._recent: dict[str, collections.deque] = {}
        self._quiet_until: dict[str, float] = {}

    def observe(self, event: dict) -> dict | None:
        """Records one anomaly event; returns an alert record when it completes a burst."""
        device_id, event_time = event["device_id"], float(event["event_time"])
        recent = self._recent.setdefault(device_id, collections.deque())
        recent.append((event_time, event["event_id"], float(event["score"])))
        while recent and recent[0][0] <= event_time - self.window_seconds:
            recent.popleft()
        if len(recent) < self.count or event_time < self._quiet_until.get(device_id, float("-inf")):
            return None
        self._quiet_until[device_id] = event_time + self.window_seconds
        burst = list(recent)
        recent.clear()
        return {
            "alert_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"heartwatch-alert/{device_id}/{burst[-1][1]}")),
            "device_id": device_id,
            "anomaly_count": len(burst),
            "window_seconds": self.window_seconds,
            "first_event_time": burst[0][0],
            "last_event_time": burst[-1][0],
            "max_score": max(score for _, _, score in burst),
            "event_ids": [identifier for _, identifier, _ in burst],
            "model_version": event["model_version"],
            "alert_time": time.time(),
        }


class WebhookSender:
    """POSTs alert records as JSON to a URL from a background thread; failures are logged, never raised."""

    def __init__(self, url: str, timeout_seconds: float = 5.0, max_queued: int = 1000):
        self.url = url
        self.timeout_seconds = timeout_seconds
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued)
        self._thread = threading.Thread(target=self._send_forever, name="alert-webhook", daemon=True)
        self._thread.start()

    def submit(self, alert: dict) -> None:
        """Queues one alert (dropped with a warning when the queue is full)."""
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            LOGGER.warning("alert webhook queue full; dropping alert %s", alert["alert_id"])

    def close(self, timeout_seconds: float = 5.0) -> None:
        """Sends what is queued (up to ``timeout_seconds``) and stops the thread."""
        self._queue.put(None)
        self._thread.join(timeout=timeout_seconds)

    def _send_forever(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            request = urllib.request.Request(self.url, data=dumps(alert), method="POST",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                    response.read()
            except Exception as error:  # a broken webhook must never stop the stream
                LOGGER.warning("alert webhook %s failed for alert %s: %s", self.url, alert["alert_id"], error)
