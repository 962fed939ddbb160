"""ECG files behind ``http(s)`` URLs: downloaded once into a cache, and SHA-256 digests of data files.

``resolve_path`` maps a URL (or the alias ``"tf-ecg"`` for TensorFlow's ``ecg.csv``) to a cached
copy, downloading it the first time; every other path comes back unchanged. The cache is a folder
of the file layer (``models.common.files``), so it may be local or remote: ``cache_dir``, else
``$HEARTWATCH_CACHE``, else ``~/.cache/heartwatch``. A download is written to a temporary file
that is renamed into place when complete, so an interrupted one leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.parse
import urllib.request
from pathlib import PurePosixPath
from typing import IO

import tensorflow as tf

from models.common import files
from models.ecg.readers import OpenFunction, open_binary, open_data_file

LOGGER = logging.getLogger(__name__)

ECG_CSV_URL = "http://storage.googleapis.com/download.tensorflow.org/data/ecg.csv"
TF_ECG_ALIAS = "tf-ecg"
CACHE_ENV_VAR = "HEARTWATCH_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/heartwatch"
DOWNLOAD_TIMEOUT_SECONDS = 60
DOWNLOAD_CHUNK_BYTES = 1 << 20
DOWNLOAD_LOG_EVERY_BYTES = 8 << 20
HASH_CHUNK_BYTES = 1 << 20
PARTIAL_SUFFIX = ".part"


def resolve_path(path: str, cache_dir: str | None = None) -> str:
    """Return a readable path for ``path``, downloading an ``http(s)`` URL once into the cache.

    ``"tf-ecg"`` stands for ``ECG_CSV_URL``. Other paths (local files, synthetic URIs, ``gs://``
    and the like) come back unchanged. A failed download raises ``RuntimeError``.
    """
    if path == TF_ECG_ALIAS:
        path = ECG_CSV_URL
    if not is_http_url(path):
        return path
    directory = cache_directory(cache_dir)
    name = cache_file_name(path)
    target = files.join(directory, name)
    if files.exists(target) and not files.is_directory(target):
        LOGGER.info("using cached copy %s of %s", target, path)
        return target
    files.make_directories(directory)
    _download(path, directory, name)
    return target


def cache_directory(cache_dir: str | None = None) -> str:
    """The download cache: ``cache_dir``, else ``$HEARTWATCH_CACHE``, else ``~/.cache/heartwatch``."""
    return os.path.expanduser(cache_dir or os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_DIR)


def is_http_url(path: str) -> bool:
    """Whether ``path`` is an http or https URL."""
    return urllib.parse.urlparse(path).scheme.lower() in ("http", "https")


def cache_file_name(url: str) -> str:
    """A file name unique to ``url`` that keeps its base name (and so its extension)."""
    base_name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", base_name) or "download"
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]
    return f"{digest}-{safe_name}"


def _download(url: str, directory: str, name: str) -> None:
    """Download ``url`` to ``directory/name`` through a temporary file in the same folder."""
    target = files.join(directory, name)
    temporary = files.join(directory, files.unique_name(f".{name}.") + PARTIAL_SUFFIX)
    LOGGER.info("downloading %s to %s", url, target)
    try:
        with files.open_file(temporary, "wb") as output:
            copied = _copy_response(url, output)
        _publish(temporary, target)
    except (OSError, ValueError, http.client.HTTPException, tf.errors.OpError) as error:
        raise RuntimeError(
            f"download of {url} failed ({error}); download the file yourself and pass its local "
            f"path instead"
        ) from error
    finally:
        files.remove(temporary)
    LOGGER.info("downloaded %s (%d bytes)", url, copied)


def _publish(temporary: str, target: str) -> None:
    """Rename a finished download into place; a copy another process cached meanwhile is kept."""
    try:
        files.rename(temporary, target)
    except tf.errors.AlreadyExistsError:
        LOGGER.info("%s was cached by another process meanwhile; keeping that copy", target)


def _copy_response(url: str, output: IO[bytes]) -> int:
    """Stream the body of ``url`` into ``output``, logging progress; return the byte count."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
        total = response.headers.get("Content-Length")
        copied = 0
        next_log = DOWNLOAD_LOG_EVERY_BYTES
        while chunk := response.read(DOWNLOAD_CHUNK_BYTES):
            output.write(chunk)
            copied += len(chunk)
            if copied >= next_log:
                LOGGER.info("downloaded %d of %s bytes from %s", copied, total or "?", url)
                next_log += DOWNLOAD_LOG_EVERY_BYTES
    return copied


def file_sha256(path: str, open_fn: OpenFunction = open_data_file) -> str:
    """The hex SHA-256 digest of a file's bytes (for model cards)."""
    digest = hashlib.sha256()
    with open_binary(path, open_fn) as binary:
        while chunk := binary.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
