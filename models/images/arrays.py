"""Image arrays in ``.npy`` files and ``.npz`` members, read and written by row ranges with numpy's own I/O.

A job's memory does not depend on the size of the array: rows are memory-mapped, not loaded.

* Reading: ``read_array_header`` parses the header with ``np.lib.format`` (through the file layer,
  so any scheme works) and refuses truncated files; ``ArrayRows`` maps the rows read-only with
  ``np.load(mmap_mode="r")``. A local ``.npy`` is mapped in place. A ``.npz`` member, or a ``.npy`` on
  a URL scheme (``gs://``, ``ram://``), cannot be mapped where it is: it is first staged into a local
  temporary ``.npy`` (copied with the file layer, a member decompressed once), which is mapped and
  removed on ``close``.
* Parts: Beam workers share no disk with the driver, so they write their rows as part files
  (``write_part``: positions and rows, through the file layer, under the output directory) and the
  driver applies each part (``apply_part``) to its own working file: memory stays one part.
* Writing: ``create_array_file`` pre-sizes a local ``.npy`` with ``np.lib.format.open_memmap``
  (sparse on disk); writers map it with ``open_array_for_writing`` and fill rows in place
  (``write_rows``). ``working_array_path`` picks where such a file is built for a destination (the
  destination itself when it is a local ``.npy``, beside a local ``.npz``, a local temporary file for
  a URL) and ``publish_array``
  moves it to the destination, packed into an ``.npz`` member (``np.savez``) when asked, and copied
  with the file layer to URL schemes.

Memory-mapped files are local to the process that maps them (a worker's staged input, the driver's
working output); nothing is mapped by two processes.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import shutil
import tempfile
import zipfile

import numpy as np

from models.common import files
from models.images.io import SIXTEEN_BIT_MAXIMUM, SUPPORTED_CHANNELS, ImageError, to_uint8, to_unit_float

LOGGER = logging.getLogger(__name__)

NPY_SUFFIX = ".npy"
NPZ_SUFFIX = ".npz"
DEFAULT_NPZ_KEYS = ("images", "x", "x_test", "x_train")
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


@dataclasses.dataclass(frozen=True)
class ArrayHeader:
    """What the rows of an array file hold: its shape (rows first) and dtype."""

    shape: tuple
    dtype: str

    @property
    def count(self) -> int:
        """Number of rows (images)."""
        return int(self.shape[0])

    @property
    def row_bytes(self) -> int:
        """Bytes per row."""
        return int(np.prod(self.shape[1:], dtype=np.int64)) * np.dtype(self.dtype).itemsize

    @property
    def data_bytes(self) -> int:
        """Bytes of all rows."""
        return self.count * self.row_bytes


def is_npz(path: str) -> bool:
    """True for ``.npz`` archives (by extension)."""
    return str(path).lower().endswith(NPZ_SUFFIX)


def npz_member_name(path: str, key: str | None) -> str:
    """The member of an ``.npz`` holding ``key`` (default: ``images``, ``x``, ``x_test`` or the only one)."""
    with files.open_binary(path) as stream, zipfile.ZipFile(stream) as archive:
        names = [name[:-len(NPY_SUFFIX)] for name in archive.namelist() if name.endswith(NPY_SUFFIX)]
    if key is not None:
        if key not in names:
            raise ValueError(f"{path} has no array {key!r}; arrays: {', '.join(names)}")
        return key + NPY_SUFFIX
    for candidate in DEFAULT_NPZ_KEYS:
        if candidate in names:
            return candidate + NPY_SUFFIX
    if len(names) == 1:
        return names[0] + NPY_SUFFIX
    raise ValueError(f"{path} holds several arrays ({', '.join(names)}); choose one with --array_key")


def _parse_header(stream, source: str) -> tuple[ArrayHeader, int]:
    """The header of an ``.npy`` stream at its start, and the offset of its first row."""
    version = np.lib.format.read_magic(stream)
    if version not in _HEADER_READERS:
        raise ValueError(f"{source}: unsupported .npy format version {version[0]}.{version[1]}")
    shape, fortran_order, dtype = _HEADER_READERS[version](stream)
    if fortran_order:
        raise ValueError(f"{source}: Fortran-ordered arrays are not supported; save with "
                         "np.save(np.ascontiguousarray(x))")
    if dtype.hasobject:
        raise ValueError(f"{source}: object arrays are not supported")
    return ArrayHeader(shape=tuple(int(size) for size in shape), dtype=dtype.str), stream.tell()


def read_array_header(path: str, key: str | None = None) -> ArrayHeader:
    """The header of a ``.npy`` file or of an ``.npz`` member; ValueError when the rows it promises are missing."""
    with files.open_binary(path) as stream:
        if not is_npz(path):
            header, offset = _parse_header(stream, path)
            available = files.size(path) - offset
        else:
            with zipfile.ZipFile(stream) as archive:
                member = npz_member_name(path, key)
                with archive.open(member) as member_stream:
                    header, offset = _parse_header(member_stream, f"{path}:{member}")
                available = archive.getinfo(member).file_size - offset
    if available < header.data_bytes:
        raise ValueError(f"{path}: array file truncated: the header promises {header.count} rows of shape "
                         f"{header.shape[1:]} ({header.data_bytes} bytes) but {available} bytes follow")
    return header


def check_image_array_shape(shape: tuple, source: str) -> None:
    """Refuses arrays that are not ``(N, H, W)`` or ``(N, H, W, 1|3)`` with a clear message."""
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in SUPPORTED_CHANNELS):
        raise ValueError(f"{source}: expected images shaped (count, height, width) or (count, height, width, 1|3), "
                         f"got {shape}")
    if shape[1] == 0 or shape[2] == 0:
        raise ValueError(f"{source}: zero-size images {shape[1]}x{shape[2]}")


def _local_temporary(suffix: str = NPY_SUFFIX) -> str:
    descriptor, path = tempfile.mkstemp(prefix="heartwatch-array-", suffix=suffix)
    os.close(descriptor)
    return path


def _stage_locally(path: str, key: str | None) -> str:
    """Copies a remote ``.npy`` or an ``.npz`` member into a local temporary ``.npy``; returns its path."""
    local = _local_temporary()
    with files.open_binary(path) as source, files.open_file(local, "wb") as target:
        if is_npz(path):
            with zipfile.ZipFile(source) as archive, archive.open(npz_member_name(path, key)) as member:
                shutil.copyfileobj(member, target)
        else:
            shutil.copyfileobj(source, target)
    LOGGER.info("staged %s%s into %s to map it", path, f" ({key})" if key else "", local)
    return local


class ArrayRows:
    """The rows of a ``.npy`` file or ``.npz`` member, memory-mapped read-only; ``read(start, stop)`` a range.

    Use as a context manager (or call ``close``): a staged local copy is removed on close.
    """

    def __init__(self, path: str, key: str | None = None):
        self.path = path
        self.header = read_array_header(path, key)
        in_place = not is_npz(path) and not files.has_scheme(path)
        self.staged_path = None if in_place else _stage_locally(path, key)
        self.rows = np.load(path if in_place else self.staged_path, mmap_mode="r", allow_pickle=False)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (clipped to the array) as an in-memory array."""
        return np.array(self.rows[start:min(stop, self.header.count)])

    def close(self) -> None:
        """Unmaps the rows and removes a staged copy."""
        self.rows = None
        if self.staged_path is not None:
            files.remove(self.staged_path)
            self.staged_path = None

    def __enter__(self) -> ArrayRows:
        return self

    def __exit__(self, *_) -> None:
        self.close()


def create_array_file(path: str, shape: tuple, dtype) -> ArrayHeader:
    """Creates a local ``.npy`` of ``shape`` filled with zeros (sparse on disk) for ``write_rows``."""
    dtype = np.dtype(dtype)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))
    array.flush()
    del array
    return ArrayHeader(shape=tuple(int(size) for size in shape), dtype=dtype.str)


def open_array_for_writing(path: str) -> np.memmap:
    """A writable memory map of a local ``.npy`` made by ``create_array_file``."""
    return np.lib.format.open_memmap(path, mode="r+")


def write_rows(array: np.ndarray, start: int, rows: np.ndarray) -> None:
    """Writes ``rows`` into ``array`` (a writable map) at row ``start``; ValueError when they do not fit."""
    rows = np.asarray(rows, dtype=array.dtype)
    if rows.shape[1:] != array.shape[1:] or start < 0 or start + len(rows) > len(array):
        raise ValueError(f"rows {start}:{start + len(rows)} of shape {rows.shape[1:]} do not fit {array.shape}")
    array[start:start + len(rows)] = rows


def working_array_path(destination: str) -> str:
    """Where to build the ``.npy`` bound for ``destination``: itself for a local ``.npy``, beside it for a local
    ``.npz`` (``<name>.npy.partial``), a local temporary file for a URL."""
    if files.has_scheme(destination):
        return _local_temporary()
    if is_npz(destination):
        return destination[:-len(NPZ_SUFFIX)] + NPY_SUFFIX + ".partial"
    return destination


def publish_array(working_path: str, destination: str, member: str | None = None) -> str:
    """Moves a finished working ``.npy`` to ``destination``; with ``member`` it becomes that ``.npz`` member.

    The ``.npz`` is written by ``np.savez`` (uncompressed, rows streamed from the memory map); URL
    destinations get a copy through the file layer. Returns ``destination``.
    """
    if member is not None:
        packed = destination if not files.has_scheme(destination) else _local_temporary(NPZ_SUFFIX)
        np.savez(packed, **{member[:-len(NPY_SUFFIX)]: np.load(working_path, mmap_mode="r")})
        files.remove(working_path)
        working_path = packed
    if working_path != destination:
        files.copy(working_path, destination)
        files.remove(working_path)
    return destination


def array_rows_to_unit_float(rows: np.ndarray) -> list:
    """Converts each row of an array to a [0, 1] float image, or to the ``ImageError`` it raises."""
    converted = []
    for row in rows:
        try:
            converted.append(to_unit_float(row))
        except ImageError as error:
            converted.append(error)
    return converted


def from_unit_float(images: np.ndarray, dtype) -> np.ndarray:
    """Converts [0, 1] floats back to ``dtype`` (uint8/uint16 rescaled, floats as they are)."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return to_uint8(images)
    if dtype == np.uint16:
        return np.clip(np.rint(np.asarray(images, np.float32) * SIXTEEN_BIT_MAXIMUM), 0,
                       SIXTEEN_BIT_MAXIMUM).astype(np.uint16)
    return np.asarray(images, dtype=dtype)


def save_array(path: str, array: np.ndarray) -> str:
    """Writes ``array`` as a ``.npy`` file through the file layer (any scheme); returns the path."""
    files.make_directories(files.dirname(path))
    with files.open_file(path, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
    return path


PART_POSITIONS = "positions"
PART_ROWS = "rows"


def write_part(path: str, positions, rows: np.ndarray) -> str:
    """Writes rows bound for ``positions`` of an array as one part file (``.npz``) through the file layer."""
    positions = np.asarray(positions, np.int64)
    rows = np.asarray(rows)
    if positions.ndim != 1 or len(positions) != len(rows):
        raise ValueError(f"a part needs one position per row; got {positions.shape} positions for {len(rows)} rows")
    buffer = io.BytesIO()
    np.savez(buffer, **{PART_POSITIONS: positions, PART_ROWS: rows})
    return files.write_bytes(path, buffer.getvalue())


def apply_part(array: np.ndarray, path: str) -> int:
    """Writes the rows of a part file (``write_part``) into ``array`` (a writable map); returns the row count."""
    with np.load(io.BytesIO(files.read_bytes(path)), allow_pickle=False) as part:
        positions, rows = part[PART_POSITIONS], part[PART_ROWS]
    if len(positions) and (positions.min() < 0 or positions.max() >= len(array) or rows.shape[1:] != array.shape[1:]):
        raise ValueError(f"part {path} (rows {positions.min()}..{positions.max()} of shape {rows.shape[1:]}) does "
                         f"not fit {array.shape}")
    array[positions] = rows.astype(array.dtype, copy=False)
    return len(positions)
