"""Writers of `heartwatch denoise run`: denoised images in their input's form, metrics rows, the summary.

* ``WriteImageFiles``: each image to ``<directory>/<relative path>`` through Beam's ``FileSystems``,
  encoded like its input (PNG or JPEG).
* ``WriteArrayRows``: the rows, in the input's dtype, as part files under ``--out`` (through the file
  layer); the driver puts them into the output array (``pipeline.denoise_plan.finish_output``).
* ``tfrecord_example`` and ``metrics_row``: the lines Beam's ``WriteToTFRecord`` / ``WriteToText``
  sinks write.
* ``SummaryFn`` combines the per-image metrics into counts and means; ``WriteReport`` draws the
  comparison grid once everything is done and passes the summary on.
"""

from __future__ import annotations

import csv
import io
import uuid

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from models.common import files
from models.images import arrays
from models.images import io as image_tools
from pipeline.denoise_read import METRICS_NAMESPACE
from pipeline.denoise_steps import METRIC_NAMES

CSV_COLUMNS = ("key", "height", "width", "channels") + METRIC_NAMES


class WriteImageFiles(beam.DoFn):
    """Writes each denoised image to ``<directory>/<relative path>`` in its input's format."""

    def __init__(self, directory: str):
        self.directory = directory

    def setup(self):
        self.written = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "images_written")

    def process(self, record: dict):
        path = files.join(self.directory, record["position"])
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            handle.write(image_tools.encode_image(record["denoised"], record["format"] or "png"))
        self.written.inc()


class WriteArrayRows(beam.DoFn):
    """Buffers denoised rows (in the input's dtype) and writes them as part files under ``parts_directory``.

    A part holds at most ``part_rows`` rows and their positions (``models.images.arrays.write_part``,
    through the file layer); the driver applies the parts to the output after the pipeline, so no
    worker writes to a disk only it can see.
    """

    def __init__(self, parts_directory: str, header: arrays.ArrayHeader, part_rows: int = 1000):
        self.parts_directory = parts_directory
        self.header = header
        self.part_rows = part_rows

    def setup(self):
        self.written = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "images_written")

    def start_bundle(self):
        self.positions, self.rows = [], []

    def process(self, record: dict):
        row = arrays.from_unit_float(record["denoised"], self.header.dtype).reshape(self.header.shape[1:])
        self.positions.append(record["position"])
        self.rows.append(row)
        if len(self.rows) >= self.part_rows:
            self._flush()

    def finish_bundle(self):
        self._flush()

    def _flush(self):
        if self.rows:
            arrays.write_part(files.join(self.parts_directory, f"part-{uuid.uuid4().hex}.npz"), self.positions,
                              np.stack(self.rows))
            self.written.inc(len(self.rows))
        self.positions, self.rows = [], []


def tfrecord_example(record: dict) -> bytes:
    """The serialized output Example of one denoised image (PNG encoded)."""
    return image_tools.make_example(record["key"], image_tools.encode_image(record["denoised"], "png"), "png")


def metrics_row(record: dict) -> str:
    """One CSV line of ``metrics.csv``."""
    height, width, channels = record["denoised"].shape
    values = [record["metrics"][name] for name in METRIC_NAMES]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(
        [record["key"], height, width, channels] + ["" if value is None else f"{value:.6g}" for value in values])
    return buffer.getvalue()


class SummaryFn(beam.CombineFn):
    """Counts denoised images and averages their metrics (identical images, PSNR = inf, counted apart)."""

    def create_accumulator(self):
        return {"denoised": 0, "with_reference": 0, "identical": 0, "finite_psnr": 0,
                **{f"sum_{name}": 0.0 for name in METRIC_NAMES}}

    def add_input(self, accumulator, metrics):
        accumulator["denoised"] += 1
        if metrics["denoised_psnr"] is None:
            return accumulator
        accumulator["with_reference"] += 1
        for name in ("noisy_ssim", "denoised_ssim"):
            accumulator[f"sum_{name}"] += metrics[name]
        if np.isfinite(metrics["noisy_psnr"]) and np.isfinite(metrics["denoised_psnr"]):
            accumulator["finite_psnr"] += 1
            accumulator["sum_noisy_psnr"] += metrics["noisy_psnr"]
            accumulator["sum_denoised_psnr"] += metrics["denoised_psnr"]
        else:
            accumulator["identical"] += 1
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for accumulator in accumulators:
            for name, value in accumulator.items():
                merged[name] += value
        return merged

    def extract_output(self, accumulator):
        return summarise_metrics(accumulator)


def summarise_metrics(accumulator: dict) -> dict:
    """Means from ``SummaryFn``'s sums (None where nothing was measured)."""
    references, finite = accumulator["with_reference"], accumulator["finite_psnr"]
    summary = {"denoised_images": accumulator["denoised"], "images_with_reference": references,
               "images_with_infinite_psnr": accumulator["identical"]}
    for name in METRIC_NAMES:
        count = finite if name.endswith("psnr") else references
        summary[f"mean_{name}"] = accumulator[f"sum_{name}"] / count if count else None
    if summary["mean_denoised_psnr"] is not None:
        summary["mean_psnr_gain"] = summary["mean_denoised_psnr"] - summary["mean_noisy_psnr"]
    return summary


class WriteReport(beam.DoFn):
    """Draws the comparison grid once everything is done; yields the summary with the error count."""

    def __init__(self, grid_path: str):
        self.grid_path = grid_path

    def process(self, _, summary, error_count, samples):
        from pipeline.denoise_figures import save_comparison_grid

        if samples:
            clean = [sample[3] for sample in samples]
            save_comparison_grid(self.grid_path, [sample[1] for sample in samples], [sample[2] for sample in samples],
                                 clean if all(image is not None for image in clean) else None,
                                 titles=[sample[0] for sample in samples])
        summary = dict(summary, bad_images=int(error_count))
        yield summary
