"""Readers of `heartwatch denoise run`: one DoFn per image-set form, bad images to an ``errors`` output.

Each reader yields image records ``{"key", "position", "format", "image", "clean"}``: ``key`` names
the image in outputs and metrics, ``position`` is where its denoised form is written (a relative
path or an array row), ``image`` is float32 ``(H, W, C)`` in [0, 1] and ``clean`` its reference or
None. Whatever cannot be used goes to the ``errors`` output as ``{"key", "reason"}``; nothing is
dropped silently.

* ``ReadImageFiles``: one PNG/JPEG file per element, read through Beam's ``FileSystems``.
* ``ReadArrayRows``: one row range per element of a ``.npy``/``.npz`` array (and its reference), or
  of one of many array shards, memory-mapped by ``models.images.arrays``.
* ``ReadTFRecords``: one TFRecord file per element (``tf.data``, any scheme TensorFlow reads); the
  records before a corrupt tail are kept.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from models.common import files
from models.images import arrays
from models.images import io as image_tools

METRICS_NAMESPACE = "heartwatch.denoise"
ERRORS = "errors"


def error_record(key: str, reason: str) -> dict:
    """One line of the errors output."""
    return {"key": key, "reason": reason}


def _read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read()


def _extension(relative_path: str) -> str:
    name = files.basename(relative_path)
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


class _Reader(beam.DoFn):
    """Counters shared by the readers."""

    ERRORS = ERRORS

    def setup(self):
        self.read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "images_read")
        self.bad = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "bad_images")

    def _error(self, key: str, reason: str):
        self.bad.inc()
        return beam.pvalue.TaggedOutput(ERRORS, error_record(key, reason))


class ReadImageFiles(_Reader):
    """Reads and decodes one image file (and its reference); unusable files go to ``errors``."""

    def __init__(self, directory: str, reference_directory: str | None = None):
        self.directory = directory
        self.reference_directory = reference_directory

    def process(self, relative_path: str):
        try:
            image = image_tools.decode_image(_read_bytes(files.join(self.directory, relative_path)))
            clean = None
            if self.reference_directory:
                try:
                    clean = image_tools.decode_image(_read_bytes(files.join(self.reference_directory,
                                                                            relative_path)))
                except (image_tools.ImageError, OSError) as error:
                    raise image_tools.ImageError(f"reference: {error}") from None
        except (image_tools.ImageError, OSError) as error:
            yield self._error(relative_path, str(error))
            return
        self.read.inc()
        yield {"key": relative_path, "position": relative_path, "format": _extension(relative_path), "image": image,
               "clean": clean}


class ReadArrayRows(_Reader):
    """Reads rows ``start:stop`` of a ``.npy``/``.npz`` image array (and of its reference array).

    With ``path`` None the elements are ``(path, start, stop)`` over many array files (shards; keys
    ``<file name>:<row>``, at most one file mapped at a time); else ``(start, stop)`` of ``path`` (keys
    are row numbers).
    """

    def __init__(self, path: str | None, array_key: str | None, reference_path: str | None = None,
                 reference_key: str | None = None):
        self.path = path
        self.array_key = array_key
        self.reference_path = reference_path
        self.reference_key = reference_key

    def setup(self):
        super().setup()
        self.source = arrays.ArrayRows(self.path, self.array_key) if self.path else None
        self.reference = arrays.ArrayRows(self.reference_path, self.reference_key) if self.reference_path else None

    def _source_of(self, path: str):
        if self.source is None or self.source.path != path:
            if self.source is not None:
                self.source.close()
            self.source = arrays.ArrayRows(path, self.array_key)
        return self.source

    def process(self, row_range):
        if self.path is None:
            path, start, stop = row_range
            source, prefix = self._source_of(path), files.basename(path) + ":"
        else:
            (start, stop), source, prefix = row_range, self.source, ""
        images = arrays.array_rows_to_unit_float(source.read(start, stop))
        references = [None] * len(images)
        if self.reference is not None:
            references = arrays.array_rows_to_unit_float(self.reference.read(start, stop))
        for offset, (image, clean) in enumerate(zip(images, references)):
            index = start + offset
            problem = image if isinstance(image, image_tools.ImageError) else None
            if problem is None and isinstance(clean, image_tools.ImageError):
                problem = f"reference: {clean}"
            if problem is not None:
                yield self._error(f"{prefix}{index}", str(problem))
                continue
            self.read.inc()
            yield {"key": f"{prefix}{index}", "position": index, "format": None, "image": image, "clean": clean}

    def teardown(self):
        for source in (self.source, self.reference):
            if source is not None:
                source.close()


class ReadTFRecords(_Reader):
    """Reads one TFRecord file of encoded-image Examples; bad records and corrupt tails go to ``errors``."""

    def process(self, path: str):
        import tensorflow as tf

        name = files.basename(path)
        index = 0
        try:
            for serialized in tf.data.TFRecordDataset(path):
                fallback_key = f"{name}:{index}"
                index += 1
                try:
                    parsed = image_tools.parse_example(serialized.numpy())
                    key = parsed["key"] or fallback_key
                    image = image_tools.decode_image(parsed["encoded"])
                    clean = None
                    if parsed["clean_encoded"] is not None:
                        clean = image_tools.decode_image(parsed["clean_encoded"])
                except image_tools.ImageError as error:
                    yield self._error(fallback_key, str(error))
                    continue
                self.read.inc()
                yield {"key": key, "position": key, "format": "png", "image": image, "clean": clean}
        except tf.errors.OpError as error:
            yield self._error(f"{name}:{index}", f"corrupt TFRecord data after {index} records: {error.message}")
