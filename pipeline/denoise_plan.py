"""Planning `heartwatch denoise run` before its pipeline starts: what to read, where the results go.

``plan_image_set`` lists the input (files of an image directory, row ranges of an array, TFRecord
files), checks shapes and references, and pre-sizes the ``.npy`` that array outputs are written into
(``models.images.arrays``: the driver's memory map; for an ``.npz`` or a URL destination a local working
file). Workers write their rows as part files under ``--out`` through the file layer, and
``finish_output`` applies them to the working file and moves it into place after the pipeline.
Problems with the whole input stop the job here, before anything runs.

Output layout under ``--out``: ``denoised/`` (images), ``denoised.npy``, ``denoised.npz`` or
``denoised.tfrecord``, plus ``metrics.csv``, ``errors.jsonl``, ``summary.json`` and ``comparison.png``.
"""

from __future__ import annotations

import dataclasses
import logging

from models.common import files
from models.images import arrays, sets
from models.images import io as image_tools

LOGGER = logging.getLogger(__name__)
DENOISED_NAME = "denoised"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.csv"
ERRORS_FILE = "errors.jsonl"
GRID_FILE = "comparison.png"
PARTIAL_SUFFIX = ".partial"
PARTS_PREFIX = ".parts-"


@dataclasses.dataclass(frozen=True)
class ImageSetPlan:
    """How one input is read (tasks for the reader) and where its denoised form goes.

    For arrays, ``parts_directory`` is where the workers write their rows (part files, through the
    file layer), ``working_path`` the driver's ``.npy`` the parts are applied to and ``npz_member``
    the member name when the output is an ``.npz``.
    """

    format: str
    tasks: tuple
    output_path: str
    skipped_files: int = 0
    array_header: arrays.ArrayHeader | None = None
    working_path: str | None = None
    npz_member: str | None = None
    parts_directory: str | None = None


def _array_header(path: str, key: str | None) -> arrays.ArrayHeader:
    header = arrays.read_array_header(path, key)
    arrays.check_image_array_shape(header.shape, path)
    return header


def plan_image_set(config) -> ImageSetPlan:
    """Lists the input, checks shapes and references, and pre-sizes array outputs (``config``: DenoiseRunConfig)."""
    exists = files.exists(config.input)
    if not exists and not files.glob(config.input):
        raise FileNotFoundError(f"input not found: {config.input}")
    resolved = sets.detect_image_set_format(config.input, config.format) if exists else "tfrecord"
    if resolved == "images":
        names, skipped = sets.list_image_files(config.input)
        if skipped:
            LOGGER.warning("%s: %d files without a PNG/JPEG extension skipped (for example %s)", config.input,
                           len(skipped), skipped[0])
        if not names:
            raise ValueError(f"no PNG/JPEG images in {config.input}")
        if config.reference and not files.is_directory(config.reference):
            raise ValueError(f"--reference must be a directory of images like --input, got {config.reference}")
        return ImageSetPlan(resolved, tuple(names), files.join(config.out, DENOISED_NAME), len(skipped))
    if resolved in ("npy", "npz"):
        return _plan_array(config, resolved)
    if config.reference:
        raise ValueError("--reference is not supported for TFRecords; store the clean image of each record in its "
                         f"{image_tools.CLEAN_ENCODED_FEATURE!r} feature")
    paths = tuple(files.glob(config.input))
    return ImageSetPlan(resolved, paths, files.join(config.out, DENOISED_NAME + ".tfrecord"))


def _plan_array(config, resolved: str) -> ImageSetPlan:
    header = _array_header(config.input, config.array_key)
    if config.reference:
        reference_header = _array_header(config.reference, config.reference_key)
        if reference_header.shape != header.shape:
            raise ValueError(f"--reference shape {reference_header.shape} differs from the input's {header.shape}")
    if header.count == 0:
        raise ValueError(f"{config.input} holds no images")
    tasks = tuple((start, min(start + config.chunk_size, header.count))
                  for start in range(0, header.count, config.chunk_size))
    member = arrays.npz_member_name(config.input, config.array_key) if resolved == "npz" else None
    output = files.join(config.out, DENOISED_NAME + (".npz" if member else ".npy"))
    working = arrays.working_array_path(output)
    output_header = arrays.create_array_file(working, header.shape, header.dtype)
    parts = files.join(config.out, files.unique_name(PARTS_PREFIX))
    return ImageSetPlan(resolved, tasks, output, array_header=output_header, working_path=working, npz_member=member,
                        parts_directory=parts)


def finish_output(plan: ImageSetPlan) -> str:
    """Applies the workers' array parts to the working file and moves it into place (packed into the ``.npz``).

    Returns the output path; other forms are written by the pipeline itself.
    """
    if plan.working_path is not None:
        target = arrays.open_array_for_writing(plan.working_path)
        parts = files.glob(files.join(plan.parts_directory, "part-*.npz")) if files.exists(plan.parts_directory) \
            else []
        rows = sum(arrays.apply_part(target, part) for part in parts)
        target.flush()
        del target
        files.remove(plan.parts_directory)
        LOGGER.info("applied %d array parts (%d rows) to %s", len(parts), rows, plan.working_path)
        arrays.publish_array(plan.working_path, plan.output_path, plan.npz_member)
    return plan.output_path
