"""Model hot swap: a background thread loads and checks new versions; the consumer swaps between batches.

The watcher polls the model root (``models.detection.detector.artifact_root``) every ``poll_seconds``
for a complete version numbered above the one serving. It loads and checks it
(``models.detection.detector.load_detector``: a probe batch must score sanely) off the consumer
thread, then parks it; the consumer calls ``take_ready()`` between batches and swaps one object
reference, so a batch is always scored by exactly one version (normalisation, autoencoder, threshold
and rule travel together in its SavedModel).

A version that fails to load or check is refused with an ERROR log line naming the version and the
reason, and the serving version stays; it is tried again only if its files change. Versions are
published atomically (``models.common.artifacts``), so a numbered folder that lacks
``detector/saved_model.pb`` on two polls in a row was not written by a publish: it is refused the
same way, once, and loaded as soon as it becomes complete.
"""

from __future__ import annotations

import logging
import threading

import tensorflow as tf

from models.common import files
from models.detection.detector import SAVED_MODEL_MARKER, Detector, artifact_root, load_detector

LOGGER = logging.getLogger(__name__)


def files_signature(directory: str) -> tuple:
    """Paths, sizes and modification times of every file below ``directory`` (tells a rewritten version)."""
    entries = []
    for path in files.walk_files(directory):
        try:
            entries.append((path, *files.stat_signature(path)))
        except tf.errors.NotFoundError:  # removed between the listing and the stat
            continue
    return tuple(entries)


class ModelWatcher:
    """Watches a model root for newer versions and prepares them for an atomic swap."""

    def __init__(self, model_root: str, current_version: str, xla_mode: str, poll_seconds: float,
                 on_refused=None, on_ready=None):
        if poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be positive, got {poll_seconds}")
        self.model_root = model_root
        self.artifacts = artifact_root(model_root)
        self.xla_mode = xla_mode
        self.poll_seconds = poll_seconds
        self._newest_seen = int(current_version)
        self._refused: dict[int, tuple] = {}
        self._incomplete_seen: set[int] = set()
        self._incomplete_refused: set[int] = set()
        self._ready: Detector | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._on_refused = on_refused
        self._on_ready = on_ready
        self._thread = threading.Thread(target=self._watch, name="model-watcher", daemon=True)

    def start(self) -> ModelWatcher:
        """Starts the polling thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops the polling thread (waits for a load in progress)."""
        self._stop.set()
        self._thread.join(timeout=60)

    def take_ready(self) -> Detector | None:
        """The newest checked version not yet taken, or None."""
        with self._lock:
            detector, self._ready = self._ready, None
            return detector

    def check_now(self) -> None:
        """One poll of the model root (the thread calls this every ``poll_seconds``)."""
        complete = [version for version in self.artifacts.versions() if version > self._newest_seen]
        self._refuse_incomplete(set(complete))
        for version in reversed(complete):
            directory = self.artifacts.version_directory(version)
            signature = files_signature(directory)
            if self._refused.get(version) == signature:
                continue
            try:
                detector = load_detector(directory, self.xla_mode)
            except Exception as error:  # any failure to load or check refuses the version, never the stream
                self._refused[version] = signature
                self._refuse(version, directory, f"{type(error).__name__}: {error}")
                continue
            with self._lock:
                self._ready = detector
                self._newest_seen = version
            LOGGER.info("model version %s loaded and checked; swapping in at the next batch boundary", version)
            if self._on_ready:
                self._on_ready(str(version))
            return

    def _refuse_incomplete(self, complete: set[int]) -> None:
        """Refuses, once, each newer numbered folder that lacked its SavedModel on two polls in a row."""
        numbered = set(self.artifacts.numbered())
        incomplete = {version for version in numbered - complete if version > self._newest_seen}
        for version in sorted(incomplete & self._incomplete_seen - self._incomplete_refused):
            self._incomplete_refused.add(version)
            self._refuse(version, self.artifacts.version_directory(version),
                         f"incomplete: {SAVED_MODEL_MARKER} is missing (publish versions with "
                         "models.common.artifacts, which never leaves half a version)")
        self._incomplete_seen = incomplete

    def _refuse(self, version: int, directory: str, reason: str) -> None:
        LOGGER.error("refusing model version %s from %s: %s; the serving version stays", version, directory, reason)
        if self._on_refused:
            self._on_refused(str(version))

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.check_now()
            except Exception:  # a transient file-system error must not kill the watcher
                LOGGER.exception("model watcher poll of %s failed", self.model_root)
