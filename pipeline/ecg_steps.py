"""The ECG jobs' shared Beam steps: read a dataset's rows in parallel, validate them, split them.

``heartwatch train`` and ``heartwatch score`` both start with ``ReadValidRows``. The dataset is cut
into read tasks (``models.ecg.shards``): the files a pattern matches (``FileSystems.match``), cut into
byte ranges (line formats), row groups (parquet) or generated shards (synthetic). Tasks are spread
over workers with a ``Reshuffle`` (only the small task descriptions move), so many shards, and large
text files, are read by many workers at once. Line numbers of split text files come from a first,
cheap pass that counts the newlines of every range (a side input of one count per range). Every row
is then validated (``ValidateRows``), a batch at a time: the good rows of a batch become one
``BeatChunk`` (many beats of one file as columns: one Beam element per few thousand beats), bad rows
go to the ``errors`` output, one each, with their file, row number and reason. ``AssignSplits`` cuts
chunks by split, each beat placed by its own hash (``pipeline.splits``): nothing groups a class.
Every file is opened through Beam's ``FileSystems``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from models.ecg import ANOMALY, chunks, shards, sources
from models.ecg.chunks import BeatChunk
from models.ecg.download import TF_ECG_ALIAS, is_http_url
from pipeline import splits

METRICS_NAMESPACE = "heartwatch"
HASH_CHUNK_BYTES = 1 << 20


def open_with_beam_filesystems(path: str, mode: str = "r"):
    """Opens local or remote (gs://, s3://, hdfs://, ram://) files the same way on every Beam worker."""
    stream = FileSystems.open(path)
    return stream if "b" in mode else io.TextIOWrapper(stream, encoding="utf-8", newline="")


def match_with_beam_filesystems(pattern: str) -> list[str]:
    """The files a glob pattern matches, through Beam's ``FileSystems`` (sorted)."""
    return sorted(metadata.path for metadata in FileSystems.match([pattern])[0].metadata_list)


def resolve_spec(spec: sources.DatasetSpec) -> sources.DatasetSpec:
    """``spec`` with its format pinned, detected through Beam's filesystems (the driver does this once)."""
    return sources.with_resolved_format(spec, open_with_beam_filesystems, match_with_beam_filesystems)


def readable_path(path: str, cache_dir: str | None) -> str:
    """What a worker opens for ``path``: the path itself, or for a URL its download in this worker's cache."""
    return sources.resolve_path(path, cache_dir)


def file_sha256(path: str, cache_dir: str | None = None) -> tuple[str, str]:
    """``(path, hex SHA-256 of its bytes)``, read through Beam's ``FileSystems`` (a URL: its download)."""
    digest = hashlib.sha256()
    with FileSystems.open(readable_path(path, cache_dir)) as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return path, digest.hexdigest()


def combined_sha256(digests) -> str | None:
    """The data fingerprint of a model card: one file's own SHA-256, or the SHA-256 of every file's
    ``path:digest`` line (sorted) for a pattern; None for generated data."""
    digests = sorted(digests)
    if not digests:
        return None
    if len(digests) == 1:
        return digests[0][1]
    return hashlib.sha256("".join(f"{path}:{digest}\n" for path, digest in digests).encode()).hexdigest()


class PlanTasks(beam.DoFn):
    """One file -> its read tasks (parquet footers are read here, on a worker).

    A URL is one whole-file task: each worker that reads it downloads it into its own cache.
    """

    def __init__(self, spec: sources.DatasetSpec, block_bytes: int):
        self.spec = spec
        self.block_bytes = block_bytes

    def process(self, path: str):
        spec = self.spec
        if is_http_url(path) or path == TF_ECG_ALIAS:
            yield shards.ReadTask(source=path, location=path, data_format=spec.format, part=shards.FILE,
                                  label_column=spec.label_column, feature_columns=spec.feature_columns)
            return
        matched = FileSystems.match([path])[0].metadata_list
        if not matched:
            raise FileNotFoundError(f"data file not found: {path}")
        size = matched[0].size_in_bytes
        yield from shards.plan_file(path, path, size, spec.format, open_with_beam_filesystems, self.block_bytes,
                                    spec.label_column, spec.feature_columns)


def count_task_newlines(task: shards.ReadTask):
    """``((file, task index), newlines)`` of a ``lines`` task (the numbering pass)."""
    return (task.file_key, task.index), shards.count_newlines(task, open_with_beam_filesystems)


def number_task(task: shards.ReadTask, newline_counts: dict) -> shards.ReadTask:
    """The task with its first line number, from the newline counts of the ranges before it in its file."""
    if task.part != shards.LINES:
        return task
    return shards.number_task(task, sum(newline_counts[(task.file_key, index)] for index in range(task.index)))


class ReadTaskRows(beam.DoFn):
    """One read task -> its raw rows in batches: ``(source, [(row_number, values, label_text), ...])``.

    The worker opens the file; a batch holds at most ``chunks.CHUNK_BEATS`` rows.
    """

    def __init__(self, cache_dir: str | None = None):
        self.cache_dir = cache_dir

    def setup(self):
        self.tasks_read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "read_tasks")

    def process(self, task: shards.ReadTask):
        self.tasks_read.inc()
        task = dataclasses.replace(task, location=readable_path(task.location, self.cache_dir))
        for batch in chunks.batched(shards.task_rows(task, open_with_beam_filesystems)):
            yield task.source, batch


class ValidateRows(beam.DoFn):
    """Turns a batch of raw rows of one file into a ``BeatChunk`` of its valid beats; bad rows go to the
    ``errors`` output, one each, with their source, row number and reason (``sources.validate_rows``)."""

    ERRORS = "errors"

    def __init__(self, spec: sources.DatasetSpec):
        self.spec = spec

    def setup(self):
        self.valid_rows = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "valid_rows")
        self.bad_rows = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "bad_rows")
        self.specs = {}

    def process(self, source_rows):
        source, rows = source_rows
        spec = self.specs.get(source)
        if spec is None:
            spec = self.specs[source] = sources.file_spec(self.spec, source)
        chunk, errors = sources.validate_rows(rows, spec)
        self.valid_rows.inc(len(chunk))
        self.bad_rows.inc(len(errors))
        for error in errors:
            yield beam.pvalue.TaggedOutput(self.ERRORS, error)
        if len(chunk):
            yield chunk


class ReadValidRows(beam.PTransform):
    """Dataset spec -> ``(chunks, errors)``: ``BeatChunk`` s of valid beats and the bad rows with their reasons.

    ``block_bytes`` is the byte range of one read task in split text files. ``digests``, after
    expansion, is the PCollection of ``(path, sha256)`` of every file read (empty for synthetic data).
    """

    def __init__(self, spec: sources.DatasetSpec, block_bytes: int = shards.TEXT_BLOCK_BYTES):
        super().__init__()
        if spec.format == "auto":
            raise ValueError("ReadValidRows needs a spec with its format pinned (see resolve_spec)")
        self.spec = spec
        self.block_bytes = block_bytes
        self.digests = None

    def expand(self, pipeline):
        if self.spec.format == "synthetic":
            tasks = pipeline | "SyntheticShards" >> beam.Create(shards.plan_synthetic(self.spec.path))
            self.digests = pipeline | "NoFiles" >> beam.Create([])
        else:
            matched = sources.match_files(self.spec.path, match_with_beam_filesystems)
            spread = pipeline | "Files" >> beam.Create(matched) | "SpreadFiles" >> beam.Reshuffle()
            self.digests = spread | "Fingerprint" >> beam.Map(file_sha256, self.spec.cache_dir)
            tasks = spread | "PlanTasks" >> beam.ParDo(PlanTasks(self.spec, self.block_bytes))
        tasks = tasks | "SpreadTasks" >> beam.Reshuffle()
        newline_counts = (tasks | "LineTasks" >> beam.Filter(lambda task: task.part == shards.LINES)
                          | "CountNewlines" >> beam.Map(count_task_newlines))
        rows = (tasks
                | "NumberLines" >> beam.Map(number_task, newline_counts=beam.pvalue.AsDict(newline_counts))
                | "ReadTasks" >> beam.ParDo(ReadTaskRows(self.spec.cache_dir)))
        validated = rows | "Validate" >> beam.ParDo(ValidateRows(self.spec)).with_outputs(ValidateRows.ERRORS,
                                                                                           main="records")
        return validated.records, validated[ValidateRows.ERRORS]


def split_chunk(chunk: BeatChunk, config: splits.SplitConfig) -> list[BeatChunk]:
    """The chunk cut by split (``pipeline.splits``, beat by beat), each part with its beats' ``sample_keys``."""
    assigned = [splits.split_of(config, chunk.source, int(row_number), str(source_class))
                for row_number, source_class in zip(chunk.row_numbers, chunk.source_classes)]
    names = np.asarray([name for name, _ in assigned], dtype=object)
    keyed = dataclasses.replace(chunk, sample_keys=np.asarray([key for _, key in assigned], dtype=np.int64))
    return [dataclasses.replace(keyed.take(names == name), split=name) for name in splits.SPLITS
            if (names == name).any()]


class AssignSplits(beam.PTransform):
    """Chunks -> chunks of one split each, every beat placed on its own: seeded, stratified by class hashing."""

    def __init__(self, config: splits.SplitConfig):
        super().__init__()
        self.config = config

    def expand(self, chunks_of_beats):
        return chunks_of_beats | "AssignSplit" >> beam.FlatMap(split_chunk, self.config)


def training_normals(chunk: BeatChunk) -> BeatChunk:
    """The beats that train the model: normal or unlabelled; known anomalies never do."""
    return chunk.take(chunk.is_anomaly != ANOMALY)


def error_sort_key(error: dict) -> tuple:
    """Bad rows are written sorted by file, then row number."""
    return str(error.get("source", "")), int(error["row_number"])
