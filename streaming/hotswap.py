"""Model hot swap: a background thread loads and checks new versions; the consumer swaps between batches.

The watcher polls the model root every ``poll_seconds`` for a version number above the one serving.
It loads and checks it (``streaming.scoring.load_scoring_model``) off the consumer thread, then
parks it; the consumer calls ``take_ready()`` between batches and swaps one object reference, so a
batch is always scored by exactly one version (detector, normalisation and threshold together).

A version that fails to load or check is refused with an ERROR log line naming the version and the
reason, and the serving version stays. A refused version is tried again only if its files change.
"""

from __future__ import annotations

import logging
import os
import threading

from models.detection.detector import list_versions, resolve_version_directory
from streaming.scoring import ScoringModel, load_scoring_model

LOGGER = logging.getLogger(__name__)


def is_model_root(path: str) -> bool:
    """True when ``path`` is a model root (versions below it) rather than one version directory."""
    return resolve_version_directory(path) != path


def _files_signature(directory: str) -> tuple:
    """Sizes and modification times of every file below ``directory`` (tells a rewritten version)."""
    entries = []
    for folder, _, files in os.walk(directory):
        for name in files:
            try:
                status = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            entries.append((os.path.join(folder, name), status.st_size, status.st_mtime_ns))
    return tuple(sorted(entries))


class ModelWatcher:
    """Watches a model root for newer versions and prepares them for an atomic swap."""

    def __init__(self, model_root: str, current_version: str, xla_mode: str, poll_seconds: float,
                 on_refused=None, on_ready=None):
        if poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be positive, got {poll_seconds}")
        self.model_root = model_root
        self.xla_mode = xla_mode
        self.poll_seconds = poll_seconds
        self._newest_seen = int(current_version)
        self._refused: dict[str, tuple] = {}
        self._ready: ScoringModel | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._on_refused = on_refused
        self._on_ready = on_ready
        self._thread = threading.Thread(target=self._watch, name="model-watcher", daemon=True)

    def start(self) -> "ModelWatcher":
        """Starts the polling thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops the polling thread (waits for a load in progress)."""
        self._stop.set()
        self._thread.join(timeout=60)

    def take_ready(self) -> ScoringModel | None:
        """The newest checked version not yet taken, or None."""
        with self._lock:
            model, self._ready = self._ready, None
            return model

    def check_now(self) -> None:
        """One poll of the model root (the thread calls this every ``poll_seconds``)."""
        candidates = [version for version in list_versions(self.model_root) if int(version) > self._newest_seen]
        for version in reversed(candidates):
            directory = os.path.join(self.model_root, version)
            signature = _files_signature(directory)
            if self._refused.get(version) == signature:
                continue
            try:
                model = load_scoring_model(directory, self.xla_mode)
            except Exception as error:  # any failure to load or check refuses the version, never the stream
                self._refused[version] = signature
                LOGGER.error("refusing model version %s from %s: %s: %s; the serving version stays",
                             version, directory, type(error).__name__, error)
                if self._on_refused:
                    self._on_refused(version)
                continue
            with self._lock:
                self._ready = model
                self._newest_seen = int(version)
            LOGGER.info("model version %s loaded and checked; swapping in at the next batch boundary", version)
            if self._on_ready:
                self._on_ready(version)
            return

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.check_now()
            except Exception:  # a transient file-system error must not kill the watcher
                LOGGER.exception("model watcher poll of %s failed", self.model_root)
