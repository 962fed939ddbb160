"""Beam sees the schemes only TensorFlow knows: ``ram://`` as a Beam ``FileSystem``.

Beam's IOs (``ReadFromText``, ``WriteToText``, ``WriteToTFRecord``, ``FileSystems.open``) find a
filesystem by URL scheme among the subclasses of ``apache_beam.io.filesystem.FileSystem``; importing
this module registers ``RamFileSystem`` for ``ram://``, TensorFlow's in-memory filesystem, backed by
the file layer (``models.common.files``, i.e. ``tf.io.gfile``). A Beam sink and a SavedModel export
then read and write the same ``ram://`` files, in one process: the tests run every job with
``--output_dir ram://...`` / ``--out ram://...`` on the in-process runner this way. ``ram://`` holds
nothing across processes, so it is only for in-process runners (``FnApiRunner`` and ``DirectRunner``
without multi-processing).

Every pipeline job imports this module. ``gs://`` needs no such bridge: Beam (with
``apache-beam[gcp]``) and TensorFlow both speak it natively.
"""

from __future__ import annotations

import io
import posixpath
import zlib

import tensorflow as tf
from apache_beam.io.filesystem import BeamIOError, CompressedFile, CompressionTypes, FileMetadata, FileSystem

from models.common import files

RAM_SCHEME = "ram"
CHECKSUM_CHUNK_BYTES = 1 << 20


def renames_directories(path: str) -> bool:
    """False for ``ram://``: TensorFlow's in-memory filesystem renames a directory's entry, not its contents.

    Libraries that publish a directory by renaming it (tensorflow-transform's ``WriteTransformFn``)
    need their scratch space elsewhere when the output is on ``ram://``.
    """
    return not str(path).startswith(f"{RAM_SCHEME}://")




class RamFileSystem(FileSystem):
    """Beam ``FileSystem`` for TensorFlow's ``ram://`` files (directories exist; listing is recursive)."""

    @classmethod
    def scheme(cls):
        """The URL scheme this filesystem serves."""
        return RAM_SCHEME

    def join(self, basepath, *paths):
        """Joins path components with ``/``."""
        return files.join(basepath, *paths)

    def split(self, path):
        """``(head, tail)`` of a ``ram://`` path, the scheme kept on the head."""
        scheme, rest = self._split_scheme(path)
        if scheme != RAM_SCHEME:
            raise ValueError(f"{path!r} is not a {RAM_SCHEME}:// path")
        head, tail = posixpath.split(rest)
        return self._combine_scheme(scheme, head), tail

    def mkdirs(self, path):
        """Creates ``path`` and its parents; IOError when it already exists (as Beam's local filesystem)."""
        if files.exists(path):
            raise OSError(f"{path} already exists")
        files.make_directories(path)

    def has_dirs(self):
        """``ram://`` has directories."""
        return True

    def _list(self, dir_or_prefix):
        """Metadata of every file below a directory (recursive, like the local filesystem)."""
        if not files.is_directory(dir_or_prefix):
            return
        try:
            for path in files.walk_files(dir_or_prefix):
                yield self.metadata(path)
        except Exception as error:  # noqa: BLE001 - Beam reports listing failures as BeamIOError
            raise BeamIOError("List operation failed", {dir_or_prefix: error}) from error

    def create(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        """A write channel for ``path`` (parent directories created, so listings see the file).

        An existing file is removed first: TensorFlow's ``ram://`` appends to a file opened for writing
        instead of truncating it.
        """
        if files.is_file(path):
            files.remove(path)
        _make_parent(path)
        return self._wrap(_WriteChannel(files.open_file(path, "wb")), path, compression_type)

    def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        """A read channel for ``path``; FileNotFoundError when there is no such file (as the local filesystem)."""
        if not files.is_file(path):
            raise FileNotFoundError(f"no such file: {path}")
        return self._wrap(files.open_binary(path), path, compression_type)

    @staticmethod
    def _wrap(handle, path, compression_type):
        compression_type = FileSystem._get_compression_type(path, compression_type)
        if compression_type == CompressionTypes.UNCOMPRESSED:
            return handle
        return CompressedFile(handle, compression_type=compression_type)

    def copy(self, source_file_names, destination_file_names):
        """Copies files, or directory trees, to their destinations (replacing what is there)."""
        self._each(source_file_names, destination_file_names, _copy_tree, "Copy")

    def rename(self, source_file_names, destination_file_names):
        """Moves files, or directory trees, to their destinations (replacing files that are there)."""
        self._each(source_file_names, destination_file_names, _move, "Rename")

    @staticmethod
    def _each(sources, destinations, operation, name):
        if len(sources) != len(destinations):
            raise BeamIOError(f"{name} needs as many destinations as sources: {len(sources)} vs {len(destinations)}")
        failures = {}
        for source, destination in zip(sources, destinations):
            try:
                operation(source, destination)
            except Exception as error:
                failures[(source, destination)] = error
        if failures:
            raise BeamIOError(f"{name} operation failed", failures)

    def exists(self, path):
        """True when a file or directory exists at ``path``."""
        return files.exists(path)

    def size(self, path):
        """Size of a file in bytes (0 for a directory)."""
        try:
            return 0 if files.is_directory(path) else files.size(path)
        except Exception as error:  # noqa: BLE001 - Beam reports it as BeamIOError
            raise BeamIOError("Size operation failed", {path: error}) from error

    def last_updated(self, path):
        """Modification time in seconds since the epoch (``ram://`` keeps none: 0.0)."""
        if not files.exists(path):
            raise BeamIOError(f"Path does not exist: {path}")
        if files.is_directory(path):
            return 0.0
        return files.stat_signature(path)[1] / 1e9

    def checksum(self, path):
        """Size and CRC-32 of the content: tells a rewritten file of the same size from the old one."""
        if not files.is_file(path):
            raise BeamIOError(f"Path does not exist or is a directory: {path}")
        crc = 0
        with files.open_binary(path) as handle:
            for chunk in iter(lambda: handle.read(CHECKSUM_CHUNK_BYTES), b""):
                crc = zlib.crc32(chunk, crc)
        return f"{files.size(path)}-{crc:08x}"

    def metadata(self, path):
        """``FileMetadata`` (path, size, modification time) of ``path``."""
        if not files.exists(path):
            raise BeamIOError(f"Path does not exist: {path}")
        return FileMetadata(path, self.size(path), self.last_updated(path))

    def delete(self, paths):
        """Deletes the files and directory trees matching ``paths``; a pattern matching nothing is an error."""
        failures = {}
        for result in self.match(paths):
            if not result.metadata_list:
                failures[result.pattern] = OSError(f"No files found to delete under: {result.pattern}")
            for metadata in result.metadata_list:
                try:
                    files.remove(metadata.path)
                except Exception as error:
                    failures[metadata.path] = error
        if failures:
            raise BeamIOError("Delete operation failed", failures)


class _WriteChannel(io.RawIOBase):
    """A file being written that counts its bytes: ``ram://`` cannot ``tell()`` a file opened for writing,
    and Beam's compressed writer asks. The file exists from the start (a GFile creates it on its first
    write), so an empty output is still a file."""

    mode = "wb"

    def __init__(self, handle):
        super().__init__()
        self._handle = handle
        self._handle.write(b"")
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._handle.write(bytes(data))
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        if not self.closed:
            self._handle.close()
        super().close()


def _make_parent(path: str) -> None:
    parent = files.dirname(path)
    if parent:
        files.make_directories(parent)


def _copy_tree(source: str, destination: str) -> None:
    """Copies a file, or every file of a directory tree, to ``destination`` (replacing what is there)."""
    files.remove(destination)
    if not files.is_directory(source):
        _make_parent(destination)
        files.copy(source, destination)
        return
    files.make_directories(destination)
    for path in files.walk_files(source):
        target = files.join(destination, path[len(source):].lstrip("/"))
        files.make_directories(files.dirname(target))
        files.copy(path, target)


def _move(source: str, destination: str) -> None:
    """Renames a file (replacing the destination); directories are copied, then removed (``ram://``
    renames a directory entry without its contents)."""
    if files.is_directory(source):
        _copy_tree(source, destination)
        files.remove(source)
        return
    _make_parent(destination)
    tf.io.gfile.rename(source, destination, overwrite=True)
