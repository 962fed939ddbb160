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

This module holds the flags (``DenoiseRunConfig``), the Beam wiring (``build_pipeline``) and the
driver (``run_job``); the steps live in ``pipeline.denoise_plan`` (listing and output layout),
``pipeline.denoise_read``, ``pipeline.denoise_steps`` (prepare, denoise, evaluate) and
``pipeline.denoise_write``. Text outputs and TFRecords go through Beam's sinks as single files;
arrays are memory-mapped (``models.images.arrays``); everything else goes through the file layer, so
``--out`` may be ``gs://...`` or ``ram://...``. The runner comes from standard Beam flags; without
one the in-process ``FnApiRunner`` runs the job (offline).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from models.common import artifacts, files
from models.common.flags import parse_beam_flags
from pipeline.config import DenoiseRunConfig
from pipeline.denoise_plan import (
    ERRORS_FILE,
    GRID_FILE,
    METRICS_FILE,
    PARTIAL_SUFFIX,
    SUMMARY_FILE,
    ImageSetPlan,
    finish_output,
    plan_image_set,
)
from pipeline.denoise_read import ReadArrayRows, ReadImageFiles, ReadTFRecords
from pipeline.denoise_steps import DenoiserModelHandler, PrepareImages, evaluate_prediction
from pipeline.denoise_train import MODEL_FILE, resolve_denoiser_directory
from pipeline.denoise_write import (
    CSV_COLUMNS,
    SummaryFn,
    WriteArrayRows,
    WriteImageFiles,
    WriteReport,
    metrics_row,
    tfrecord_example,
)
from pipeline.runner import job_pipeline

LOGGER = logging.getLogger(__name__)
SUBCOMMANDS = ("train", "run")


def _single_file(path: str) -> dict:
    """Beam sink settings that write exactly one file at ``path`` (no shard suffix)."""
    return {"file_path_prefix": path, "num_shards": 1, "shard_name_template": ""}


def _reader(config: DenoiseRunConfig, plan: ImageSetPlan):
    if plan.format == "images":
        return ReadImageFiles(config.input, config.reference)
    if plan.format in ("npy", "npz"):
        return ReadArrayRows(config.input, config.array_key, config.reference, config.reference_key)
    return ReadTFRecords()


def build_pipeline(pipeline, config: DenoiseRunConfig, plan: ImageSetPlan, model_directory: str, channels: int):
    """Adds the denoising job to ``pipeline``: read -> prepare -> RunInference -> write, metrics, errors, report.

    Returns the PCollection holding the summary (counts and mean metrics).
    """
    reader = _reader(config, plan)
    read = (pipeline | "Tasks" >> beam.Create(list(plan.tasks))
            | "Read" >> beam.ParDo(reader).with_outputs(reader.ERRORS, main="images"))
    prepared = read.images | "Prepare" >> beam.ParDo(
        PrepareImages(config.noise, config.seed, channels, config.convert_color)).with_outputs(
        PrepareImages.ERRORS, main="images")
    handler = DenoiserModelHandler(files.join(model_directory, MODEL_FILE), config.batch_size)
    evaluated = (prepared.images
                 | "Denoise" >> RunInference(handler)
                 | "Evaluate" >> beam.Map(evaluate_prediction))

    if plan.format == "images":
        _ = evaluated | "WriteImages" >> beam.ParDo(WriteImageFiles(plan.output_path))
    elif plan.format in ("npy", "npz"):
        _ = evaluated | "WriteArray" >> beam.ParDo(WriteArrayRows(plan.parts_directory, plan.array_header,
                                                                               config.chunk_size))
    else:
        _ = (evaluated | "Examples" >> beam.Map(tfrecord_example)
             | "WriteTFRecord" >> beam.io.WriteToTFRecord(**_single_file(plan.output_path)))
    _ = (evaluated | "MetricRows" >> beam.Map(metrics_row)
         | "WriteMetrics" >> beam.io.WriteToText(**_single_file(files.join(config.out, METRICS_FILE)),
                                                 header=",".join(CSV_COLUMNS)))

    errors = ((read[reader.ERRORS], prepared[PrepareImages.ERRORS]) | "AllErrors" >> beam.Flatten())
    _ = (errors | "ErrorLines" >> beam.Map(json.dumps)
         | "WriteErrors" >> beam.io.WriteToText(**_single_file(files.join(config.out, ERRORS_FILE))))
    error_count = errors | "CountErrors" >> beam.combiners.Count.Globally()
    summary = (evaluated | "Metrics" >> beam.Map(lambda record: record["metrics"])
               | "Summarise" >> beam.CombineGlobally(SummaryFn()))
    samples = (evaluated
               | "Samples" >> beam.Map(lambda record: (record["key"], record["input"], record["denoised"],
                                                       record["clean"]))
               | "FirstByKey" >> beam.combiners.Top.Smallest(max(config.grid_images, 1), key=lambda item: item[0]))
    if not config.grid_images:
        samples = samples | "NoGrid" >> beam.Map(lambda _: [])
    reported = (pipeline
                | "Once" >> beam.Create([None])
                | "Report" >> beam.ParDo(WriteReport(files.join(config.out, GRID_FILE)),
                                         summary=beam.pvalue.AsSingleton(summary),
                                         error_count=beam.pvalue.AsSingleton(error_count),
                                         samples=beam.pvalue.AsSingleton(samples)))
    _ = (reported | "SummaryLine" >> beam.Map(json.dumps)
         | "WriteSummary" >> beam.io.WriteToText(**_single_file(files.join(config.out, SUMMARY_FILE) + PARTIAL_SUFFIX)))
    return reported


@dataclasses.dataclass
class DenoiseRunResult:
    """Where the denoised images, metrics, errors, summary and grid went."""

    output_path: str
    metrics_path: str
    errors_path: str
    summary_path: str
    grid_path: str | None
    summary: dict


def run_job(argv=None, test_pipeline=None) -> DenoiseRunResult:
    """Runs `heartwatch denoise run` with command-line style ``argv`` (on ``test_pipeline`` when given)."""
    config, beam_args = parse_beam_flags(DenoiseRunConfig, argv, prog="heartwatch denoise run")
    model_directory = resolve_denoiser_directory(config.model)
    card = artifacts.read_card(model_directory)
    channels = int(card["model"]["channels"])
    files.make_directories(config.out)
    plan = plan_image_set(config)
    LOGGER.info("denoising %s (%s, %d read tasks) with %s -> %s", config.input, plan.format, len(plan.tasks),
                model_directory, config.out)
    started = time.perf_counter()
    with job_pipeline(beam_args, test_pipeline) as pipeline:
        build_pipeline(pipeline, config, plan, model_directory, channels)
    output_path = finish_output(plan)
    summary_path = files.join(config.out, SUMMARY_FILE)
    summary = json.loads(files.read_text(summary_path + PARTIAL_SUFFIX))
    files.remove(summary_path + PARTIAL_SUFFIX)
    seconds = time.perf_counter() - started
    summary.update({"input": config.input, "format": plan.format, "model": model_directory,
                    "model_name": card["model"]["name"], "noise": str(config.noise_spec()),
                    "skipped_files": plan.skipped_files, "output": output_path, "seconds": round(seconds, 3),
                    "images_per_second": round(summary["denoised_images"] / seconds, 1) if seconds else None})
    files.write_json(summary_path, summary)
    grid_path = files.join(config.out, GRID_FILE)
    LOGGER.info("denoised %d images (%d bad) in %.1f s -> %s", summary["denoised_images"], summary["bad_images"],
                seconds, output_path)
    return DenoiseRunResult(output_path=output_path, metrics_path=files.join(config.out, METRICS_FILE),
                            errors_path=files.join(config.out, ERRORS_FILE), summary_path=summary_path,
                            grid_path=grid_path if files.exists(grid_path) else None, summary=summary)


def report_job(result: DenoiseRunResult) -> str:
    """Counts, mean metrics and where everything went, as text."""
    lines = []
    summary = result.summary
    lines.append(f"denoised: {summary['denoised_images']} images -> {result.output_path} "
                 f"({summary['images_per_second']} images/s with {summary['model_name']})")
    lines.append(f"bad images: {summary['bad_images']} -> {result.errors_path}; skipped non-image files: "
                 f"{summary['skipped_files']}")
    lines.append(f"per-image metrics: {result.metrics_path}; summary: {result.summary_path}")
    if summary["mean_denoised_psnr"] is not None:
        lines.append(f"against {summary['images_with_reference']} clean references: PSNR noisy "
                     f"{summary['mean_noisy_psnr']:.2f} dB -> denoised {summary['mean_denoised_psnr']:.2f} dB "
                     f"({summary['mean_psnr_gain']:+.2f} dB); SSIM {summary['mean_noisy_ssim']:.3f} -> "
                     f"{summary['mean_denoised_ssim']:.3f}")
    if result.grid_path:
        lines.append(f"comparison grid: {result.grid_path}")
    return "\n".join(lines)


def run(argv=None, test_pipeline=None):
    """Dispatches ``train`` or ``run`` (the CLI passes ``["train", ...]`` or ``["run", ...]``).

    ``test_pipeline`` runs the Beam part of either: the whole of ``run``, the data preparation of ``train``.
    """
    argv = list(argv or [])
    if not argv or argv[0] not in SUBCOMMANDS:
        raise ValueError("usage: heartwatch denoise {train|run} [flags]   (heartwatch denoise train --help)")
    if argv[0] == "train":
        from pipeline import denoise_train

        return denoise_train.run(argv[1:], test_pipeline)
    return run_job(argv[1:], test_pipeline)


def report(result) -> str:
    """The summary of whichever action ran, as text (the CLI prints it)."""
    from pipeline.denoise_train import DenoiseTrainResult, report_training

    if isinstance(result, DenoiseTrainResult):
        return report_training(result)
    else:
        return report_job(result)
