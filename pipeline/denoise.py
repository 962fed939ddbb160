"""`heartwatch denoise`: `train` a convolutional denoiser, or `run` the Beam job that cleans an image set.

``heartwatch denoise train [flags]`` is ``pipeline.denoise_train``. ``heartwatch denoise run`` reads an
image set, optionally adds noise (to evaluate against the originals), denoises in batches through
Beam's ``RunInference`` with the exported model and writes the results in the same form:

==========================  ==============================================================
input                       output under ``--out``
==========================  ==============================================================
directory of PNG/JPEG       ``denoised/<same relative path and extension>``
``.npy``                    ``denoised.npy`` (same shape and dtype; unusable rows left 0)
``.npz``                    ``denoised.npz`` (the denoised array under the same name)
``.tfrecord`` (or a glob)   ``denoised.tfrecord`` (``image/key``, ``image/encoded`` PNG)
==========================  ==============================================================

Beside them: ``metrics.csv`` (one row per image: size and, with clean references, PSNR/SSIM of the
noisy input and of the denoised output against the clean image), ``errors.jsonl`` (one line per
unusable image or record with its reason), ``summary.json`` (counts and mean metrics) and
``comparison.png`` (noisy / denoised / original for the first images by key).

Clean references exist when ``--noise`` is given (the inputs are the originals), when ``--reference``
names a matching image set (same relative paths, or same rows), or for TFRecords holding an
``image/clean_encoded`` feature. Images of any size are denoised (padded by reflection to the model's
size multiple, then cropped); grayscale and RGB images must match the model unless
``--convert_color true``.

Arrays are read in row ranges (``--chunk_size``) and written in place, TFRecords and CSV are written
by shard and concatenated at the end, so memory does not grow with the number of images. The runner
comes from standard Beam flags; without one the in-process ``FnApiRunner`` runs the job (offline).
Array and image outputs are written with ``os.pwrite``/Beam file systems on a path every worker sees.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import json
import logging
import os
import shutil
import time
import zlib

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from models.images import io as image_tools
from models.common.flags import parse_beam_flags
from pipeline.config import DenoiseRunConfig
from pipeline.train import pipeline_options

LOGGER = logging.getLogger(__name__)
METRICS_NAMESPACE = "heartwatch.denoise"
SUBCOMMANDS = ("train", "run")
METRIC_NAMES = ("noisy_psnr", "denoised_psnr", "noisy_ssim", "denoised_ssim")
CSV_COLUMNS = ("key", "height", "width", "channels") + METRIC_NAMES
DENOISED_NAME = "denoised"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.csv"
ERRORS_FILE = "errors.jsonl"
GRID_FILE = "comparison.png"
SHARD_SUFFIX = "-shards"


def error_record(key: str, reason: str) -> dict:
    """One line of the errors output."""
    return {"key": key, "reason": reason}


def noise_rng(seed: int, key: str) -> np.random.Generator:
    """The generator for one image's noise: the same for a key and seed whatever the bundling."""
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def _read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read()


class ReadImageFiles(beam.DoFn):
    """Reads and decodes one image file (and its reference); unusable files go to ``errors``."""

    ERRORS = "errors"

    def __init__(self, directory: str, reference_directory: str | None = None):
        self.directory = directory
        self.reference_directory = reference_directory

    def setup(self):
        self.read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "images_read")
        self.bad = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "bad_images")

    def process(self, relative_path: str):
        extension = os.path.splitext(relative_path)[1].lower().lstrip(".")
        try:
            image = image_tools.decode_image(_read_bytes(os.path.join(self.directory, relative_path)))
            clean = None
            if self.reference_directory:
                try:
                    clean = image_tools.decode_image(_read_bytes(os.path.join(self.reference_directory,
                                                                              relative_path)))
                except (image_tools.ImageError, OSError) as error:
                    raise image_tools.ImageError(f"reference: {error}") from None
        except (image_tools.ImageError, OSError) as error:
            self.bad.inc()
            yield beam.pvalue.TaggedOutput(self.ERRORS, error_record(relative_path, str(error)))
            return
        self.read.inc()
        yield {"key": relative_path, "position": relative_path, "format": extension, "image": image, "clean": clean}


class ReadArrayRows(beam.DoFn):
    """Reads rows ``start:stop`` of a ``.npy``/``.npz`` image array (and of its reference array)."""

    ERRORS = "errors"

    def __init__(self, path: str, array_key: str | None, reference_path: str | None = None,
                 reference_key: str | None = None):
        self.path = path
        self.array_key = array_key
        self.reference_path = reference_path
        self.reference_key = reference_key

    def setup(self):
        self.read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "images_read")
        self.bad = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "bad_images")
        self.stream, self.archive = image_tools.open_array(self.path, self.array_key)
        self.header = image_tools.read_array_header(self.stream)
        self.reference_stream = self.reference_archive = self.reference_header = None
        if self.reference_path:
            self.reference_stream, self.reference_archive = image_tools.open_array(self.reference_path,
                                                                                   self.reference_key)
            self.reference_header = image_tools.read_array_header(self.reference_stream)

    def process(self, row_range):
        start, stop = row_range
        images = image_tools.array_rows_to_unit_float(image_tools.read_array_rows(self.stream, self.header, start,
                                                                                  stop))
        references = [None] * len(images)
        if self.reference_header is not None:
            references = image_tools.array_rows_to_unit_float(
                image_tools.read_array_rows(self.reference_stream, self.reference_header, start, stop))
        for offset, (image, clean) in enumerate(zip(images, references)):
            index = start + offset
            problem = image if isinstance(image, image_tools.ImageError) else None
            if problem is None and isinstance(clean, image_tools.ImageError):
                problem = f"reference: {clean}"
            if problem is not None:
                self.bad.inc()
                yield beam.pvalue.TaggedOutput(self.ERRORS, error_record(str(index), str(problem)))
                continue
            self.read.inc()
            yield {"key": str(index), "position": index, "format": None, "image": image, "clean": clean}

    def teardown(self):
        for handle in (self.stream, self.archive, self.reference_stream, self.reference_archive):
            if handle is not None:
                handle.close()


class ReadTFRecords(beam.DoFn):
    """Reads one TFRecord file of encoded-image Examples; bad records and corrupt tails go to ``errors``."""

    ERRORS = "errors"

    def setup(self):
        self.read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "images_read")
        self.bad = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "bad_images")

    def process(self, path: str):
        import tensorflow as tf

        name = os.path.basename(path)
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
                    self.bad.inc()
                    yield beam.pvalue.TaggedOutput(self.ERRORS, error_record(fallback_key, str(error)))
                    continue
                self.read.inc()
                yield {"key": key, "position": key, "format": "png", "image": image, "clean": clean}
        except tf.errors.OpError as error:
            self.bad.inc()
            yield beam.pvalue.TaggedOutput(self.ERRORS, error_record(
                f"{name}:{index}", f"corrupt TFRecord data after {index} records: {error.message}"))


class PrepareImages(beam.DoFn):
    """Matches the model's channels and, when asked, adds noise (the input then becomes the clean reference)."""

    ERRORS = "errors"

    def __init__(self, noise: str, seed: int, channels: int, convert_color: bool):
        self.noise = noise
        self.seed = seed
        self.channels = channels
        self.convert_color = convert_color

    def setup(self):
        self.noise_spec = image_tools.NoiseSpec.parse(self.noise)
        self.bad = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "bad_images")

    def process(self, record: dict):
        try:
            image, clean = prepare_image(record["image"], record["clean"], self.channels, self.convert_color)
        except image_tools.ImageError as error:
            self.bad.inc()
            yield beam.pvalue.TaggedOutput(self.ERRORS, error_record(record["key"], str(error)))
            return
        if not self.noise_spec.is_none:
            clean, image = image, image_tools.add_noise(image, self.noise_spec, noise_rng(self.seed, record["key"]))
        yield {**record, "image": image, "clean": clean}


def prepare_image(image: np.ndarray, clean, channels: int, convert_color: bool):
    """The image (and reference) with the model's channels; a reference of another size is refused."""
    image = image_tools.match_channels(image, channels, convert_color)
    if clean is not None:
        clean = image_tools.match_channels(clean, channels, convert_color)
        if clean.shape != image.shape:
            raise image_tools.ImageError(f"reference is {clean.shape[0]}x{clean.shape[1]} but the image is "
                                         f"{image.shape[0]}x{image.shape[1]}")
    return image, clean


def denoise_batch(model, images: list) -> list:
    """Denoises a list of ``(H, W, C)`` images of any sizes: same-size groups, padded, one call each."""
    outputs = [None] * len(images)
    groups: dict = {}
    for index, image in enumerate(images):
        groups.setdefault(image.shape, []).append(index)
    for indices in groups.values():
        stacked = np.stack([images[index] for index in indices])
        padded, (height, width) = image_tools.pad_to_multiple(stacked, model.size_multiple)
        denoised = image_tools.crop(np.asarray(model.predict_on_batch(padded), np.float32), height, width)
        for position, index in enumerate(indices):
            outputs[index] = denoised[position]
    return outputs


class DenoiserModelHandler(ModelHandler):
    """RunInference handler: batches of image records in, ``PredictionResult(record, denoised)`` out."""

    def __init__(self, model_path: str, batch_size: int = 256):
        super().__init__()
        self.model_path = model_path
        self.batch_size = batch_size

    def load_model(self):
        from models.family.denoisers import load_denoiser

        return load_denoiser(self.model_path)

    def run_inference(self, batch, model, inference_args=None):
        denoised = denoise_batch(model, [record["image"] for record in batch])
        return [PredictionResult(record, output) for record, output in zip(batch, denoised)]

    def batch_elements_kwargs(self):
        return {"min_batch_size": self.batch_size, "max_batch_size": self.batch_size}


def image_metrics(noisy: np.ndarray, denoised: np.ndarray, clean) -> dict:
    """PSNR/SSIM of the noisy input and of the denoised output against ``clean`` (None values without it)."""
    if clean is None:
        return {name: None for name in METRIC_NAMES}
    return {"noisy_psnr": float(image_tools.psnr(clean, noisy)), "denoised_psnr": float(image_tools.psnr(clean, denoised)),
            "noisy_ssim": float(image_tools.ssim(clean, noisy)), "denoised_ssim": float(image_tools.ssim(clean, denoised))}


def evaluate_prediction(result: PredictionResult) -> dict:
    """The output record of one denoised image: what to write, to draw and to summarise."""
    record, denoised = result.example, np.clip(result.inference, 0.0, 1.0)
    return {"key": record["key"], "position": record["position"], "format": record["format"],
            "input": record["image"], "denoised": denoised, "clean": record["clean"],
            "metrics": image_metrics(record["image"], denoised, record["clean"])}


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


class WriteImageFiles(beam.DoFn):
    """Writes each denoised image to ``<directory>/<relative path>`` in its input's format."""

    def __init__(self, directory: str):
        self.directory = directory

    def setup(self):
        self.written = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "images_written")

    def process(self, record: dict):
        path = os.path.join(self.directory, record["position"])
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            handle.write(image_tools.encode_image(record["denoised"], record["format"] or "png"))
        self.written.inc()


class WriteArrayRows(beam.DoFn):
    """Writes each denoised image into its row of a pre-sized ``.npy`` file, in the input's dtype."""

    def __init__(self, path: str, header: image_tools.ArrayHeader):
        self.path = path
        self.header = header

    def setup(self):
        self.written = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "images_written")
        self.descriptor = os.open(self.path, os.O_WRONLY)

    def process(self, record: dict):
        row = image_tools.from_unit_float(record["denoised"], self.header.dtype).reshape(self.header.shape[1:])
        image_tools.write_array_rows(self.descriptor, self.header, record["position"], row[np.newaxis])
        self.written.inc()

    def teardown(self):
        os.close(self.descriptor)


def tfrecord_example(record: dict) -> bytes:
    """The serialized output Example of one denoised image (PNG encoded)."""
    return image_tools.make_example(record["key"], image_tools.encode_image(record["denoised"], "png"), "png")


class WriteReport(beam.DoFn):
    """Writes the job summary (counts, mean metrics) and the comparison grid once everything is done."""

    def __init__(self, out: str):
        self.out = out

    def process(self, _, summary, error_count, samples):
        from pipeline.denoise_figures import save_comparison_grid

        summary = {**summary, "bad_images": int(error_count)}
        if samples:
            clean = [sample[3] for sample in samples]
            save_comparison_grid(os.path.join(self.out, GRID_FILE), [sample[1] for sample in samples],
                                 [sample[2] for sample in samples],
                                 clean if all(image is not None for image in clean) else None,
                                 titles=[sample[0] for sample in samples])
        with FileSystems.create(os.path.join(self.out, SUMMARY_FILE) + ".partial") as handle:
            handle.write(json.dumps(summary).encode("utf-8"))
        yield summary


@dataclasses.dataclass(frozen=True)
class ImageSetPlan:
    """How one input is read (tasks for the reader) and where its denoised form goes."""

    format: str
    tasks: tuple
    output_path: str
    skipped_files: int = 0
    array_header: image_tools.ArrayHeader | None = None
    npz_member: str | None = None


def plan_image_set(config: DenoiseRunConfig) -> ImageSetPlan:
    """Lists the input, checks shapes and references, and pre-sizes array outputs (before the pipeline)."""
    import tensorflow as tf

    if not os.path.exists(config.input) and not tf.io.gfile.glob(config.input):
        raise FileNotFoundError(f"input not found: {config.input}")
    resolved = image_tools.detect_image_set_format(config.input, config.format) if os.path.exists(config.input) \
        else "tfrecord"
    if resolved == "images":
        files, skipped = image_tools.list_image_files(config.input)
        if skipped:
            LOGGER.warning("%s: %d files without a PNG/JPEG extension skipped (for example %s)", config.input,
                           len(skipped), skipped[0])
        if not files:
            raise ValueError(f"no PNG/JPEG images in {config.input}")
        if config.reference and not os.path.isdir(config.reference):
            raise ValueError(f"--reference must be a directory of images like --input, got {config.reference}")
        return ImageSetPlan(resolved, tuple(files), os.path.join(config.out, DENOISED_NAME), len(skipped))
    if resolved in ("npy", "npz"):
        header = _array_header(config.input, config.array_key)
        if config.reference:
            reference_header = _array_header(config.reference, config.reference_key)
            if reference_header.shape != header.shape:
                raise ValueError(f"--reference shape {reference_header.shape} differs from the input's {header.shape}")
        if header.count == 0:
            raise ValueError(f"{config.input} holds no images")
        tasks = tuple((start, min(start + config.chunk_size, header.count))
                      for start in range(0, header.count, config.chunk_size))
        member = image_tools.npz_member_name(config.input, config.array_key) if resolved == "npz" else None
        output = os.path.join(config.out, DENOISED_NAME + ".npy" + (".partial" if member else ""))
        output_header = image_tools.create_array_file(output, header.shape, header.dtype)
        return ImageSetPlan(resolved, tasks, output, array_header=output_header, npz_member=member)
    if config.reference:
        raise ValueError("--reference is not supported for TFRecords; store the clean image of each record in its "
                         f"{image_tools.CLEAN_ENCODED_FEATURE!r} feature")
    paths = tuple(sorted(tf.io.gfile.glob(config.input)))
    return ImageSetPlan(resolved, paths, os.path.join(config.out, DENOISED_NAME + ".tfrecord"))


def _array_header(path: str, key: str | None) -> image_tools.ArrayHeader:
    stream, archive = image_tools.open_array(path, key)
    try:
        header = image_tools.read_array_header(stream)
    finally:
        stream.close()
        if archive is not None:
            archive.close()
    image_tools.check_image_array_shape(header.shape, path)
    return header


def build_pipeline(pipeline, config: DenoiseRunConfig, plan: ImageSetPlan, model_directory: str, channels: int):
    """Adds the denoising job to ``pipeline``: read -> prepare -> RunInference -> write, metrics, errors, report."""
    from pipeline.denoise_train import MODEL_FILE

    tasks = pipeline | "Tasks" >> beam.Create(list(plan.tasks))
    if plan.format == "images":
        reader = ReadImageFiles(config.input, config.reference)
    elif plan.format in ("npy", "npz"):
        reader = ReadArrayRows(config.input, config.array_key, config.reference, config.reference_key)
    else:
        reader = ReadTFRecords()
    read = tasks | "Read" >> beam.ParDo(reader).with_outputs(reader.ERRORS, main="images")
    prepared = read.images | "Prepare" >> beam.ParDo(
        PrepareImages(config.noise, config.seed, channels, config.convert_color)).with_outputs(
        PrepareImages.ERRORS, main="images")
    handler = DenoiserModelHandler(os.path.join(model_directory, MODEL_FILE), config.batch_size)
    evaluated = (prepared.images
                 | "Denoise" >> RunInference(handler)
                 | "Evaluate" >> beam.Map(evaluate_prediction))

    if plan.format == "images":
        _ = evaluated | "WriteImages" >> beam.ParDo(WriteImageFiles(plan.output_path))
    elif plan.format in ("npy", "npz"):
        _ = evaluated | "WriteArray" >> beam.ParDo(WriteArrayRows(plan.output_path, plan.array_header))
    else:
        _ = (evaluated | "Examples" >> beam.Map(tfrecord_example)
             | "WriteTFRecord" >> beam.io.WriteToTFRecord(plan.output_path + SHARD_SUFFIX))
    _ = (evaluated | "MetricRows" >> beam.Map(metrics_row)
         | "WriteMetrics" >> beam.io.WriteToText(os.path.join(config.out, METRICS_FILE) + SHARD_SUFFIX))

    errors = ((read[reader.ERRORS], prepared[PrepareImages.ERRORS]) | "AllErrors" >> beam.Flatten())
    _ = (errors | "ErrorLines" >> beam.Map(json.dumps)
         | "WriteErrors" >> beam.io.WriteToText(os.path.join(config.out, ERRORS_FILE) + SHARD_SUFFIX))
    error_count = errors | "CountErrors" >> beam.combiners.Count.Globally()
    summary = (evaluated | "Metrics" >> beam.Map(lambda record: record["metrics"])
               | "Summarise" >> beam.CombineGlobally(SummaryFn()))
    samples = (evaluated
               | "Samples" >> beam.Map(lambda record: (record["key"], record["input"], record["denoised"],
                                                       record["clean"]))
               | "FirstByKey" >> beam.combiners.Top.Smallest(max(config.grid_images, 1), key=lambda item: item[0]))
    if not config.grid_images:
        samples = samples | "NoGrid" >> beam.Map(lambda _: [])
    return (pipeline
            | "Once" >> beam.Create([None])
            | "Report" >> beam.ParDo(WriteReport(config.out), summary=beam.pvalue.AsSingleton(summary),
                                     error_count=beam.pvalue.AsSingleton(error_count),
                                     samples=beam.pvalue.AsSingleton(samples)))


def concatenate_shards(prefix: str, destination: str, header: str | None = None) -> str:
    """Joins ``<prefix>-SSSSS-of-NNNNN`` shards (text or TFRecord) into ``destination`` and removes them."""
    shards = sorted(glob.glob(glob.escape(prefix) + "-*-of-*"))
    with open(destination, "wb") as output:
        if header is not None:
            output.write((header + "\n").encode("utf-8"))
        for shard in shards:
            with open(shard, "rb") as handle:
                shutil.copyfileobj(handle, output)
            os.remove(shard)
    return destination


def pack_npz(array_path: str, destination: str, member: str) -> str:
    """Stores the ``.npy`` file at ``array_path`` as ``member`` of a new ``.npz`` (streamed), then removes it."""
    import zipfile

    with zipfile.ZipFile(destination, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        archive.write(array_path, arcname=member)
    os.remove(array_path)
    return destination


@dataclasses.dataclass
class DenoiseRunResult:
    """Where the denoised images, metrics, errors, summary and grid went."""

    output_path: str
    metrics_path: str
    errors_path: str
    summary_path: str
    grid_path: str | None
    summary: dict


def run_job(argv=None) -> DenoiseRunResult:
    """Runs `heartwatch denoise run` with command-line style ``argv``."""
    from pipeline.denoise_train import read_model_card, resolve_denoiser_directory

    config, beam_args = parse_beam_flags(DenoiseRunConfig, argv, prog="heartwatch denoise run")
    model_directory = resolve_denoiser_directory(config.model)
    card = read_model_card(model_directory)
    channels = int(card["model"]["channels"])
    os.makedirs(config.out, exist_ok=True)
    plan = plan_image_set(config)
    LOGGER.info("denoising %s (%s, %d read tasks) with %s -> %s", config.input, plan.format, len(plan.tasks),
                model_directory, config.out)
    started = time.perf_counter()
    with beam.Pipeline(options=pipeline_options(beam_args)) as pipeline:
        build_pipeline(pipeline, config, plan, model_directory, channels)
    output_path = plan.output_path
    if plan.format == "tfrecord":
        concatenate_shards(output_path + SHARD_SUFFIX, output_path)
    elif plan.format == "npz":
        output_path = pack_npz(plan.output_path, os.path.join(config.out, DENOISED_NAME + ".npz"), plan.npz_member)
    metrics_path = concatenate_shards(os.path.join(config.out, METRICS_FILE) + SHARD_SUFFIX,
                                      os.path.join(config.out, METRICS_FILE), header=",".join(CSV_COLUMNS))
    errors_path = concatenate_shards(os.path.join(config.out, ERRORS_FILE) + SHARD_SUFFIX,
                                     os.path.join(config.out, ERRORS_FILE))
    summary_path = os.path.join(config.out, SUMMARY_FILE)
    with open(summary_path + ".partial") as handle:
        summary = json.load(handle)
    os.remove(summary_path + ".partial")
    seconds = time.perf_counter() - started
    summary.update({"input": config.input, "format": plan.format, "model": model_directory,
                    "model_name": card["model"]["name"], "noise": str(config.noise_spec()),
                    "skipped_files": plan.skipped_files, "output": output_path, "seconds": round(seconds, 3),
                    "images_per_second": round(summary["denoised_images"] / seconds, 1) if seconds else None})
    with open(summary_path, "w") as handle:
        json.dump(summary, handle, indent=2, sort_keys=True)
    grid_path = os.path.join(config.out, GRID_FILE)
    LOGGER.info("denoised %d images (%d bad) in %.1f s -> %s", summary["denoised_images"], summary["bad_images"],
                seconds, output_path)
    return DenoiseRunResult(output_path=output_path, metrics_path=metrics_path, errors_path=errors_path,
                            summary_path=summary_path, grid_path=grid_path if os.path.exists(grid_path) else None,
                            summary=summary)


def report_job(result: DenoiseRunResult) -> None:
    """Prints counts, mean metrics and where everything went."""
    summary = result.summary
    print(f"denoised: {summary['denoised_images']} images -> {result.output_path} "
          f"({summary['images_per_second']} images/s with {summary['model_name']})")
    print(f"bad images: {summary['bad_images']} -> {result.errors_path}; skipped non-image files: "
          f"{summary['skipped_files']}")
    print(f"per-image metrics: {result.metrics_path}; summary: {result.summary_path}")
    if summary["mean_denoised_psnr"] is not None:
        print(f"against {summary['images_with_reference']} clean references: PSNR noisy "
              f"{summary['mean_noisy_psnr']:.2f} dB -> denoised {summary['mean_denoised_psnr']:.2f} dB "
              f"({summary['mean_psnr_gain']:+.2f} dB); SSIM {summary['mean_noisy_ssim']:.3f} -> "
              f"{summary['mean_denoised_ssim']:.3f}")
    if result.grid_path:
        print(f"comparison grid: {result.grid_path}")


def run(argv=None):
    """Dispatches ``train`` or ``run`` (the CLI passes ``["train", ...]`` or ``["run", ...]``)."""
    argv = list(argv or [])
    if not argv or argv[0] not in SUBCOMMANDS:
        raise ValueError("usage: heartwatch denoise {train|run} [flags]   (heartwatch denoise train --help)")
    if argv[0] == "train":
        from pipeline.denoise_train import run_training

        return run_training(argv[1:])
    return run_job(argv[1:])


def report(result) -> None:
    """Prints the summary of whichever subcommand ran (the CLI calls this)."""
    from pipeline.denoise_train import DenoiseTrainResult, report_training

    if isinstance(result, DenoiseTrainResult):
        report_training(result)
    else:
        report_job(result)
