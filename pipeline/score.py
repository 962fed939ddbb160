"""`heartwatch score`: batch scoring of any supported dataset with an exported detector (Beam job).

Output CSV, one row per valid beat: ``index`` (the row number in its file), ``reconstruction_error``,
``threshold``, ``is_anomaly`` (0/1, the detector's own decision), ``label`` (1 = anomaly) and
``source_class`` when the input is labelled, and ``source`` (the row's file: ``--data`` may be a
pattern). Bad rows go to ``<out>.errors.jsonl`` with their file, row number and reason. The input is
read in parallel read tasks (``pipeline.ecg_steps.ReadValidRows``); scoring goes through Beam's
``RunInference`` with a ``ModelHandler`` that loads the detector with ``load_detector`` and delegates
to ``Detector.score``. For labelled inputs the job also computes the detection metrics from the
detector's ``anomaly_score`` through a mergeable score summary (``pipeline.evaluation``; nothing
holds all scores at once). With ``--num_shards 1`` (the default) the scores are one file; ``0``
lets the runner shard them (``<out>-SSSSS-of-NNNNN``), which keeps memory flat on large inputs.
Every output goes through Beam's IOs, so ``--out`` may be ``gs://...`` or ``ram://...``.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from models.common import files
from models.common.flags import parse_beam_flags
from models.ecg import ANOMALY, UNKNOWN_LABEL
from models.ecg.chunks import BeatChunk
from pipeline import evaluation
from pipeline.config import ScoreConfig
from pipeline.ecg_steps import ReadValidRows, resolve_spec
from pipeline.export import format_metrics
from pipeline.runner import job_pipeline

LOGGER = logging.getLogger(__name__)
CSV_COLUMNS = ("index", "anomaly_score", "reconstruction_error", "threshold", "is_anomaly", "label", "source_class",
               "source")
# The detector outputs each scored row keeps (``per_sample_error`` is left out: 140 values a beat).
ROW_OUTPUTS = ("anomaly_score", "reconstruction_error", "threshold", "is_anomaly")
METRICS_SUFFIX = ".metrics.partial"


class DetectorModelHandler(ModelHandler):
    """RunInference handler for heartwatch detectors: loads ``load_detector(path)``, delegates to ``Detector.score``.

    An example is one beat ``[BEAT_LENGTH]`` (its inference: one float per output), or with ``chunked`` a
    chunk of beats ``[n, BEAT_LENGTH]`` (its inference: one array per output), which is how the jobs
    score: one element per few thousand beats.
    """

    def __init__(self, model_path: str, max_batch_size: int = 1024, chunked: bool = False):
        super().__init__()
        self.model_path = model_path
        self.max_batch_size = max_batch_size
        self.chunked = chunked

    def load_model(self):
        from models.detection.detector import load_detector

        return load_detector(self.model_path)

    def run_inference(self, batch, model, inference_args=None):
        if not self.chunked:
            scores = model.score(np.stack(batch), batch_size=self.max_batch_size)
            return [PredictionResult(example, {key: scores[key][index].item() for key in ROW_OUTPUTS})
                    for index, example in enumerate(batch)]
        scores = model.score(np.concatenate(batch), batch_size=self.max_batch_size)
        ends = np.cumsum([len(example) for example in batch])
        return [PredictionResult(example, {key: scores[key][end - len(example):end] for key in ROW_OUTPUTS})
                for example, end in zip(batch, ends)]

    def batch_elements_kwargs(self):
        if self.chunked:
            return {"min_batch_size": 1, "max_batch_size": 1}
        return {"min_batch_size": 1, "max_batch_size": self.max_batch_size}


def _keyed_chunk(chunk: BeatChunk):
    return chunk, chunk.beats


def _text_field(value: str) -> str:
    return str(value).replace(",", " ").replace("\n", " ")


def csv_rows(keyed_result) -> list[str]:
    """The output CSV lines of one scored chunk ``(BeatChunk, PredictionResult)``."""
    chunk, result = keyed_result
    inference = result.inference
    source = _text_field(chunk.source)
    return [f"{row_number},{score:.8g},{error:.8g},{threshold:.8g},{int(flagged)},"
            f"{'' if label == UNKNOWN_LABEL else label},{_text_field(source_class)},{source}"
            for row_number, score, error, threshold, flagged, label, source_class in zip(
                chunk.row_numbers.tolist(), inference["anomaly_score"].tolist(),
                inference["reconstruction_error"].tolist(), inference["threshold"].tolist(),
                inference["is_anomaly"].tolist(), chunk.is_anomaly.tolist(), chunk.source_classes)]


def _metrics_inputs(keyed_result):
    chunk, result = keyed_result
    return zip(chunk.is_anomaly.tolist(), result.inference["anomaly_score"].tolist())


def _threshold(keyed_result) -> float:
    return float(keyed_result[1].inference["threshold"][0])


def score_metrics(summary, threshold: float | None) -> dict | None:
    """Detection metrics of a score summary at the detector's threshold; None unless every beat is labelled
    and both classes occur. Flagged means ``anomaly_score > threshold`` at the detector's own float32
    threshold, i.e. exactly the detector's ``is_anomaly``."""
    if threshold is None or not evaluation.is_evaluable(summary) or not 0 < summary.count((ANOMALY,)) < summary.count():
        return None
    return evaluation.classification(summary, threshold)


def score_summary(summary, thresholds: list, scored_rows: int, bad_rows: int) -> str:
    """The job's small result file: counts and metrics as JSON."""
    threshold = thresholds[0] if thresholds else None
    return json.dumps({"scored_rows": int(scored_rows), "bad_rows": int(bad_rows),
                       "metrics": score_metrics(summary, threshold)})


@dataclasses.dataclass
class ScoreResult:
    """Where the scores went, how many rows, and metrics when the input is labelled."""

    out: str
    errors_path: str
    scored_rows: int
    bad_rows: int
    metrics: dict | None


def read_scores(path: str) -> dict[str, np.ndarray]:
    """Reads a score CSV (or the shards of one) back into arrays sorted by source and index, through the file
    layer (for summaries and tests: it holds every row in memory)."""
    paths = [path] if files.exists(path) else files.glob(f"{path}-*-of-*")
    rows = []
    for shard in paths or [path]:
        lines = files.read_text(shard).splitlines()
        header = lines[0].strip().split(",") if lines else []
        if header != list(CSV_COLUMNS):
            raise ValueError(f"{shard} is not a heartwatch score file (header {header})")
        rows += [line.split(",") for line in lines[1:] if line.strip()]
    rows.sort(key=lambda row: (row[7], int(row[0])))
    columns = dict(zip(CSV_COLUMNS, zip(*rows) if rows else [()] * len(CSV_COLUMNS)))
    return {
        "index": np.asarray(columns["index"], dtype=np.int64),
        "anomaly_score": np.asarray(columns["anomaly_score"], dtype=np.float64),
        "reconstruction_error": np.asarray(columns["reconstruction_error"], dtype=np.float64),
        "threshold": np.asarray(columns["threshold"], dtype=np.float64),
        "is_anomaly": np.asarray(columns["is_anomaly"], dtype=np.int64),
        "label": np.asarray([int(value) if value else UNKNOWN_LABEL for value in columns["label"]], dtype=np.int64),
        "source_class": np.asarray(columns["source_class"], dtype=str),
        "source": np.asarray(columns["source"], dtype=str),
    }


def build_pipeline(pipeline: beam.Pipeline, config: ScoreConfig, model_directory: str, errors_path: str,
                   metrics_path: str) -> None:
    """Adds the scoring job to ``pipeline``: read -> validate -> RunInference -> CSV, errors and metrics."""
    spec = resolve_spec(config.dataset_spec())
    handler = KeyedModelHandler(DetectorModelHandler(model_directory, config.batch_size, chunked=True))
    beat_chunks, errors = pipeline | "ReadValidRows" >> ReadValidRows(spec)
    scored = (beat_chunks
              | "Key" >> beam.Map(_keyed_chunk)
              | "Score" >> RunInference(handler))
    single = config.num_shards == 1
    _ = (scored
         | "CsvRows" >> beam.FlatMap(csv_rows)
         | "WriteScores" >> beam.io.WriteToText(config.out, shard_name_template="" if single else None,
                                                num_shards=config.num_shards, header=",".join(CSV_COLUMNS)))
    _ = (errors
         | "ErrorLines" >> beam.Map(json.dumps)
         | "WriteErrors" >> beam.io.WriteToText(errors_path, shard_name_template="", num_shards=1))
    summary = (scored | "MetricInputs" >> beam.FlatMap(_metrics_inputs)
               | "Summarise" >> beam.CombineGlobally(evaluation.summary_fn()))
    thresholds = (scored | "Thresholds" >> beam.Map(_threshold)
                  | "OneThreshold" >> beam.combiners.Sample.FixedSizeGlobally(1))
    scored_rows = (scored | "ChunkSizes" >> beam.Map(lambda keyed: len(keyed[0]))
                   | "CountScored" >> beam.CombineGlobally(sum))
    bad_rows = errors | "CountBad" >> beam.combiners.Count.Globally()
    _ = (summary
         | "Result" >> beam.Map(score_summary, beam.pvalue.AsSingleton(thresholds),
                                beam.pvalue.AsSingleton(scored_rows), beam.pvalue.AsSingleton(bad_rows))
         | "WriteMetrics" >> beam.io.WriteToText(metrics_path, shard_name_template="", num_shards=1))


def run(argv=None, test_pipeline=None) -> ScoreResult:
    """Runs `heartwatch score`; returns counts and, for labelled data, the metrics.

    ``test_pipeline``, when given, is the pipeline the job is built on (instead of a new one).
    """
    config, beam_args = parse_beam_flags(ScoreConfig, argv, prog="heartwatch score")
    from models.detection.detector import resolve_version_directory

    model_directory = resolve_version_directory(config.model)
    errors_path = f"{config.out}.errors.jsonl"
    metrics_path = config.out + METRICS_SUFFIX
    with job_pipeline(beam_args, test_pipeline) as pipeline:
        build_pipeline(pipeline, config, model_directory, errors_path, metrics_path)
    result = json.loads(files.read_text(metrics_path))
    files.remove(metrics_path)
    LOGGER.info("scored %d beats with %s (%d bad rows) -> %s", result["scored_rows"], model_directory,
                result["bad_rows"], config.out)
    return ScoreResult(out=config.out, errors_path=errors_path, scored_rows=result["scored_rows"],
                       bad_rows=result["bad_rows"], metrics=result["metrics"])


def report(result: ScoreResult) -> str:
    """Where the scores went, and the metrics of labelled data, as text (the CLI prints it)."""
    text = f"scores: {result.out} ({result.scored_rows} beats); bad rows: {result.bad_rows} -> {result.errors_path}"
    return f"{text}\n{format_metrics(result.metrics)}" if result.metrics else text
