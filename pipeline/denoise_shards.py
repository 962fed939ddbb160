"""The Beam step of `heartwatch denoise train`: any image set in, train / validation / test record shards out.

The input is listed on the driver (``list_training_input``: the files of an image directory, row
ranges of ``.npy``/``.npz`` arrays or of a glob of them, TFRecord files or a glob), read by the readers
of `heartwatch denoise run` (``pipeline.denoise_read``; unusable images go to ``data_errors.jsonl``
with their reason), split by a stable hash of (seed, image key) (``split_of``: no grouping, so the
shares are approximate and the model card gives the actual counts) and written as sharded TFRecords
of ``models.images.records`` through Beam's ``WriteToTFRecord`` (the runner picks the shard count;
nothing is grouped). A summary line (counts per split, image shapes, bad images) goes to
``prepared.json``. Everything is written under the job's work directory through Beam's file systems,
so the workers share no local disk with the driver.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import apache_beam as beam

from models.common import files
from models.images import arrays, sets
from models.images.records import encode_record
from pipeline.denoise_read import ERRORS, ReadArrayRows, ReadImageFiles, ReadTFRecords

SPLITS = ("train", "validation", "test")
SHARD_SUFFIX = ".tfrecord"
PREPARED_FILE = "prepared.json"
ERRORS_FILE = "data_errors.jsonl"
MAX_SHAPES = 8
ARRAY_TASK_ROWS = 1000


@dataclasses.dataclass(frozen=True)
class TrainingInput:
    """What the Beam step reads: the reader's form and tasks, plus tasks whose images are all held out."""

    format: str
    tasks: tuple
    test_tasks: tuple = ()
    array_key: str | None = None


def _array_tasks(paths: list[str], array_key: str | None, limit: int | None) -> tuple:
    tasks, remaining = [], limit
    for path in paths:
        header = arrays.read_array_header(path, array_key)
        arrays.check_image_array_shape(header.shape, path)
        count = header.count if remaining is None else min(header.count, remaining)
        tasks += [(path, start, min(start + ARRAY_TASK_ROWS, count)) for start in range(0, count, ARRAY_TASK_ROWS)]
        if remaining is not None:
            remaining -= count
            if remaining <= 0:
                break
    return tuple(tasks)


def list_training_input(data: str, image_set_format: str = "auto", array_key: str | None = None,
                        limit: int | None = None) -> TrainingInput:
    """The reader form and tasks of a path or glob (``limit``: at most this many images, the first ones)."""
    paths = [data] if files.exists(data) else files.glob(data)
    if not paths:
        raise FileNotFoundError(f"training data {data!r} is neither fashion_mnist, digits, synthetic[...] nor an "
                                "existing path or glob")
    formats = {sets.detect_image_set_format(path, image_set_format) for path in paths}
    if len(formats) > 1:
        raise ValueError(f"{data!r} mixes forms ({', '.join(sorted(formats))}); give one kind of file")
    resolved = formats.pop()
    if resolved == "images":
        if len(paths) > 1:
            raise ValueError(f"{data!r}: give one image directory, not a glob of directories")
        names, _ = sets.list_image_files(data)
        if not names:
            raise ValueError(f"no PNG/JPEG images in {data}")
        return TrainingInput("images", tuple(names[:limit] if limit else names))
    if resolved in ("npy", "npz"):
        return TrainingInput("arrays", _array_tasks(sorted(paths), array_key, limit), array_key=array_key)
    if limit:
        raise ValueError("--max_images is not supported for TFRecord inputs; write fewer records instead")
    return TrainingInput("tfrecord", tuple(sorted(paths)))


def split_of(key: str, seed: int, validation_fraction: float, test_fraction: float) -> str:
    """The split of one image: a stable hash of (seed, key) mapped to [0, 1) against the shares."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    position = int.from_bytes(digest, "big") / 2 ** 64
    if position < test_fraction:
        return "test"
    if position < test_fraction + validation_fraction:
        return "validation"
    return "train"


class ToSplitRecords(beam.DoFn):
    """Encodes each image as a record and sends it to its split's output (``fixed_split`` overrides the hash)."""

    def __init__(self, seed: int, validation_fraction: float, test_fraction: float, fixed_split: str | None = None):
        self.seed = seed
        self.validation_fraction = validation_fraction
        self.test_fraction = test_fraction
        self.fixed_split = fixed_split

    def setup(self):
        self.counters = {split: beam.metrics.Metrics.counter("heartwatch.denoise_train", f"{split}_images")
                         for split in SPLITS}

    def process(self, record: dict):
        split = self.fixed_split or split_of(record["key"], self.seed, self.validation_fraction, self.test_fraction)
        self.counters[split].inc()
        yield beam.pvalue.TaggedOutput(split, (encode_record(record["key"], record["image"]), record["image"].shape))


class ShapesFn(beam.CombineFn):
    """The distinct image shapes seen (at most ``MAX_SHAPES`` are kept: enough to refuse mixed sizes)."""

    def create_accumulator(self):
        return set()

    def add_input(self, accumulator, shape):
        if len(accumulator) < MAX_SHAPES:
            accumulator.add(tuple(int(size) for size in shape))
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = set()
        for accumulator in accumulators:
            merged |= accumulator
        return set(sorted(merged)[:MAX_SHAPES])

    def extract_output(self, accumulator):
        return sorted(accumulator)


def _reader(training_input: TrainingInput, data: str):
    if training_input.format == "images":
        return ReadImageFiles(data)
    if training_input.format == "arrays":
        return ReadArrayRows(None, training_input.array_key)
    return ReadTFRecords()


def _summary(_, bad_images, shapes, **counts):
    return json.dumps({"counts": {split: int(counts[split]) for split in SPLITS}, "bad_images": int(bad_images),
                       "shapes": [list(shape) for shape in shapes]})


def build_preparation(pipeline, training_input: TrainingInput, data: str, work_directory: str, seed: int,
                      validation_fraction: float, test_fraction: float):
    """Adds read -> split -> record shards (and the summary and errors files) under ``work_directory``."""
    reader = _reader(training_input, data)
    branches = [("Pool", training_input.tasks, None)]
    if training_input.test_tasks:
        branches.append(("HeldOut", training_input.test_tasks, "test"))
    split_outputs, errors = {split: [] for split in SPLITS}, []
    for label, tasks, fixed_split in branches:
        read = (pipeline | f"{label}Tasks" >> beam.Create(list(tasks))
                | f"{label}Read" >> beam.ParDo(reader).with_outputs(ERRORS, main="images"))
        errors.append(read[ERRORS])
        split = read.images | f"{label}Split" >> beam.ParDo(
            ToSplitRecords(seed, validation_fraction, 0.0 if training_input.test_tasks else test_fraction,
                           fixed_split)).with_outputs(*SPLITS)
        for name in SPLITS:
            split_outputs[name].append(split[name])
    counts, shapes = {}, []
    for name in SPLITS:
        records = tuple(split_outputs[name]) | f"All{name.title()}" >> beam.Flatten()
        _ = (records | f"{name.title()}Bytes" >> beam.Map(lambda item: item[0])
             | f"Write{name.title()}" >> beam.io.WriteToTFRecord(files.join(work_directory, name),
                                                                 file_name_suffix=SHARD_SUFFIX))
        counts[name] = beam.pvalue.AsSingleton(records | f"Count{name.title()}" >> beam.combiners.Count.Globally())
        shapes.append(records | f"{name.title()}Shapes" >> beam.Map(lambda item: item[1]))
    all_errors = tuple(errors) | "AllErrors" >> beam.Flatten()
    _ = (all_errors | "ErrorLines" >> beam.Map(json.dumps)
         | "WriteErrors" >> beam.io.WriteToText(files.join(work_directory, ERRORS_FILE), num_shards=1,
                                                shard_name_template=""))
    bad = beam.pvalue.AsSingleton(all_errors | "CountErrors" >> beam.combiners.Count.Globally())
    distinct = beam.pvalue.AsSingleton(tuple(shapes) | "AllShapes" >> beam.Flatten()
                                       | "Shapes" >> beam.CombineGlobally(ShapesFn()))
    summary = (pipeline | "Once" >> beam.Create([None])
               | "Summary" >> beam.Map(_summary, bad_images=bad, shapes=distinct, **counts))
    return summary | "WriteSummary" >> beam.io.WriteToText(files.join(work_directory, PREPARED_FILE), num_shards=1,
                                                           shard_name_template="")


def shard_paths(work_directory: str, split: str) -> list[str]:
    """The record shards of one split written by ``build_preparation``."""
    return sorted(files.glob(files.join(work_directory, f"{split}-*{SHARD_SUFFIX}")))


def read_preparation(work_directory: str) -> dict:
    """The summary ``build_preparation`` wrote."""
    return json.loads(files.read_text(files.join(work_directory, PREPARED_FILE)))
