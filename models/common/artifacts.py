"""Versioned artefacts: integer-numbered versions under a model root, published atomically.

ECG detectors and image denoisers are both exported this way::

    <root>/1/  <root>/2/  ...          one directory per version, newest = highest number
        <marker>                       what makes a version complete (``detector/saved_model.pb``,
                                       ``model.keras``)
        model_card.json                what the version is, for humans and tools

A job builds a version in a staging directory beside the versions (``<root>/.staging-<random>``) and
``publish`` renames it to the next free number (on local disks; on object stores and ``ram://``, which
have no directory rename, it copies the tree with the marker last), so a reader (the stream's hot-swap
watcher, a batch scorer) never sees a half-written version. Everything goes through ``models.common.files``, so a
root may be a local path or any scheme TensorFlow's file layer knows (``gs://``, ``ram://``).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import platform
import re

from models.common import files

LOGGER = logging.getLogger(__name__)

MODEL_CARD_FILE = "model_card.json"
STAGING_PREFIX = ".staging-"
PUBLISH_ATTEMPTS = 20
_VERSION_PATTERN = re.compile(r"^\d+$")


def library_versions() -> dict:
    """Versions of Python and the libraries an export depends on (recorded in every model card)."""
    import importlib.metadata

    versions = {"python": platform.python_version()}
    for name in ("tensorflow", "keras", "tensorflow-transform", "apache-beam", "numpy"):
        try:
            versions[name.replace("-", "_")] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name.replace("-", "_")] = None
    return versions


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string (seconds)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True)
class ArtifactRoot:
    """A model root holding integer versions; ``marker`` is the relative path every complete version has.

    ``hint`` ends the error when a root holds no version (e.g. the command that makes one).
    """

    root: str
    marker: str
    kind: str = "model"
    hint: str = ""

    def numbered(self) -> list[int]:
        """Every integer-named entry under the root, complete or not, oldest first."""
        return sorted(int(name) for name in files.list_directory(self.root) if _VERSION_PATTERN.match(name))

    def versions(self) -> list[int]:
        """Complete versions (their marker exists), oldest first."""
        return [number for number in self.numbered()
                if files.exists(files.join(self.version_directory(number), self.marker))]

    def version_directory(self, version: int) -> str:
        """The directory of ``version``."""
        return files.join(self.root, str(int(version)))

    def is_version(self, path: str) -> bool:
        """True when ``path`` is itself a complete version directory."""
        return files.exists(files.join(path, self.marker))

    def newest(self) -> str:
        """The newest complete version's directory; FileNotFoundError when there is none."""
        versions = self.versions()
        if not versions:
            hint = f" ({self.hint})" if self.hint else ""
            raise FileNotFoundError(
                f"no {self.kind} at {self.root!r}: expected {self.root}/<version>/{self.marker}{hint}")
        return self.version_directory(versions[-1])

    def resolve(self) -> str:
        """The root itself when it is one version directory, else its newest version."""
        return self.root if self.is_version(self.root) else self.newest()

    def staging_directory(self) -> str:
        """A fresh directory to build a version in, beside the versions (never listed as one)."""
        return files.make_directories(files.join(self.root, files.unique_name(STAGING_PREFIX)))

    def publish(self, staging_directory: str, card: dict) -> tuple[int, str]:
        """Writes ``card`` (with its ``version``) into the staging directory and renames it to the next number.

        Returns ``(version, directory)``. Two jobs publishing at once get different numbers: a rename
        onto an existing version fails and the next number is tried.
        """
        if not files.exists(files.join(staging_directory, self.marker)):
            raise ValueError(f"cannot publish {staging_directory}: {self.marker} is missing")
        for _ in range(PUBLISH_ATTEMPTS):
            version = max(self.numbered(), default=0) + 1
            write_card(staging_directory, {**card, "version": str(version)})
            destination = self.version_directory(version)
            if files.has_scheme(self.root):
                if files.exists(destination):
                    continue
                self._copy_marker_last(staging_directory, destination)
                files.remove(staging_directory)
            else:
                try:
                    files.rename(staging_directory, destination)
                except Exception as error:  # another writer took the number first; gfile raises several types
                    if not files.exists(destination):
                        raise
                    LOGGER.info("version %d appeared while publishing (%s); trying the next number", version, error)
                    continue
            LOGGER.info("published %s version %d at %s", self.kind, version, destination)
            return version, destination
        raise RuntimeError(f"could not publish a new version under {self.root} after {PUBLISH_ATTEMPTS} attempts")


    def _copy_marker_last(self, source: str, destination: str) -> None:
        """Copies a version tree file by file with the marker last, so readers never see half a version.

        Object stores (``gs://``) and ``ram://`` have no atomic directory rename; readers list a version
        only once its marker exists. Two writers publishing to one object-store root at the same moment
        are not guarded against.
        """
        marker = files.join(source, self.marker)
        sources = [path for path in files.walk_files(source) if path != marker] + [marker]
        for path in sources:
            target = files.join(destination, path[len(source):].lstrip("/"))
            files.make_directories(files.dirname(target))
            files.copy(path, target)


def resolve(path: str, marker: str, kind: str = "model") -> str:
    """A version directory given either that directory or a model root (then its newest version)."""
    return ArtifactRoot(path, marker, kind).resolve()


def write_card(version_directory: str, card: dict) -> str:
    """Writes ``model_card.json``; returns its path."""
    return files.write_json(files.join(version_directory, MODEL_CARD_FILE), card)


def read_card(version_directory: str) -> dict:
    """Reads a version's model card; a missing card is an error (every export writes one)."""
    path = files.join(version_directory, MODEL_CARD_FILE)
    if not files.exists(path):
        raise FileNotFoundError(f"model card missing: {path}")
    return files.read_json(path)


def version_of(version_directory: str) -> str:
    """The version number of a version directory, as text."""
    return files.basename(version_directory)
