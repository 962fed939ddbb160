"""The file layer: every read and write of a user-given path in heartwatch goes through here.

It is a thin layer over ``tf.io.gfile``, TensorFlow's file API, which every heartwatch artefact needs
anyway (SavedModels, checkpoints, TFT graphs) and which speaks local paths, ``gs://``, ``hdfs://``
and the in-memory ``ram://`` filesystem (used by the tests). Inside Beam pipelines, Beam's own IOs
(``ReadFromText``, ``WriteToText``, ...) read and write through Beam's ``FileSystems``;
``pipeline.filesystems`` registers the schemes only TensorFlow knows (``ram://``) with Beam, backed by
this module, so a path means the same file to both layers.

Nothing else in ``models/``, ``pipeline/`` or ``streaming/`` calls ``open()`` or ``os`` file functions
on a path a user gave.

TensorFlow's ``ram://`` filesystem matches directory names as plain string prefixes (with
``ram://x/copy.csv`` present, ``ram://x/copy`` "exists" and lists ``.csv``), appends when a file is
written again, and cannot delete a tree. Its glob is exact, so for ``ram://`` paths this module
answers existence and listings through glob, deletes trees file by file and removes a file before
rewriting it; other schemes go straight to ``tf.io.gfile``.
"""

from __future__ import annotations

import json
import posixpath
import uuid

import tensorflow as tf

SCHEME_SEPARATOR = "://"
RAM_SCHEME = "ram://"
_GLOB_SPECIALS = "*?["


def has_scheme(path: str) -> bool:
    """True for URLs such as ``gs://bucket/x`` or ``ram://x`` (not for local paths)."""
    return SCHEME_SEPARATOR in str(path)


def join(path: str, *parts: str) -> str:
    """Joins path parts with ``/`` for URLs and the platform separator for local paths."""
    if has_scheme(path):
        return posixpath.join(str(path), *parts)
    import os

    return os.path.join(str(path), *parts)


def basename(path: str) -> str:
    """The last component of ``path`` (a trailing slash is ignored)."""
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def dirname(path: str) -> str:
    """``path`` without its last component."""
    text = str(path).rstrip("/")
    return text.rsplit("/", 1)[0] if "/" in text else ""


def _is_ram(path: str) -> bool:
    return str(path).startswith(RAM_SCHEME)


def _glob_escape(path: str) -> str:
    return "".join(f"[{character}]" if character in _GLOB_SPECIALS else character for character in str(path))


def exists(path: str) -> bool:
    """True when a file or directory exists at ``path``."""
    if _is_ram(path):
        return bool(tf.io.gfile.glob(_glob_escape(str(path).rstrip("/"))))
    return tf.io.gfile.exists(str(path))


def is_directory(path: str) -> bool:
    """True when ``path`` is a directory."""
    if _is_ram(path) and not exists(path):
        return False
    return tf.io.gfile.isdir(str(path))


def is_file(path: str) -> bool:
    """True when a file (not a directory) exists at ``path``."""
    return exists(path) and not is_directory(path)


def make_directories(path: str) -> str:
    """Creates ``path`` and its parents when missing; returns ``path``."""
    tf.io.gfile.makedirs(str(path))
    return str(path)


def list_directory(path: str) -> list[str]:
    """Entry names directly under ``path`` (no trailing slashes), sorted; empty when it is missing."""
    if not is_directory(path):
        return []
    if _is_ram(path):
        return sorted(basename(entry) for entry in tf.io.gfile.glob(_glob_escape(str(path).rstrip("/")) + "/*"))
    return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(str(path)))


def glob(pattern: str) -> list[str]:
    """Paths matching a glob ``pattern``, sorted."""
    return sorted(tf.io.gfile.glob(str(pattern)))


def walk_files(path: str) -> list[str]:
    """Every file below directory ``path``, sorted."""
    found = []
    for name in list_directory(path):
        entry = join(path, name)
        found += walk_files(entry) if is_directory(entry) else [entry]
    return sorted(found)


def size(path: str) -> int:
    """Size of a file in bytes."""
    return int(tf.io.gfile.stat(str(path)).length)


def stat_signature(path: str) -> tuple:
    """``(size, modification time)`` of a file: tells a rewritten file from the old one."""
    status = tf.io.gfile.stat(str(path))
    return int(status.length), int(status.mtime_nsec)


def open_file(path: str, mode: str = "r"):
    """A file object for ``path`` (``r``, ``rb``, ``w``, ``wb``, ``a``); text modes are UTF-8."""
    if mode not in ("r", "rb", "w", "wb", "a"):
        raise ValueError(f"unsupported file mode {mode!r}")
    return tf.io.gfile.GFile(str(path), mode)


def open_binary(path: str):
    """A binary, seekable read stream (what readers that take an ``open_fn`` want)."""
    return open_file(path, "rb")


def read_bytes(path: str) -> bytes:
    """The whole file as bytes."""
    with open_file(path, "rb") as handle:
        return handle.read()


def read_text(path: str) -> str:
    """The whole file as text."""
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> str:
    """Writes ``data`` to ``path``, replacing any earlier file (parents created); returns the path."""
    parent = dirname(path)
    if parent:
        make_directories(parent)
    if _is_ram(path) and exists(path):
        remove(path)
    with open_file(path, "wb") as handle:
        handle.write(data)
        handle.flush()
    return str(path)


def write_text(path: str, text: str) -> str:
    """Writes ``text`` as UTF-8; returns the path."""
    return write_bytes(path, text.encode("utf-8"))


def read_json(path: str):
    """Parses a JSON file."""
    return json.loads(read_bytes(path))


def write_json(path: str, document, indent: int | None = 2) -> str:
    """Writes ``document`` as JSON (keys sorted; numpy scalars and other objects via ``str``)."""
    return write_text(path, json.dumps(document, indent=indent, sort_keys=True, default=str))


def copy(source: str, destination: str, overwrite: bool = True) -> str:
    """Copies one file; returns the destination."""
    if _is_ram(destination) and overwrite and exists(destination):
        remove(destination)
    tf.io.gfile.copy(str(source), str(destination), overwrite=overwrite)
    return str(destination)


def rename(source: str, destination: str) -> None:
    """Renames a file or directory (atomic on local filesystems); fails when the destination exists."""
    tf.io.gfile.rename(str(source), str(destination), overwrite=False)


def remove(path: str) -> None:
    """Deletes a file, or a directory with everything below it; nothing when it is missing."""
    if not exists(path):
        return
    if not is_directory(path):
        tf.io.gfile.remove(str(path))
    elif not _is_ram(path):
        tf.io.gfile.rmtree(str(path))
    else:
        for name in list_directory(path):
            remove(join(path, name))
        tf.io.gfile.remove(str(path))


def unique_name(prefix: str) -> str:
    """A name no other writer will pick (for temporary and staging files)."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"
