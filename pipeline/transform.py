"""tensorflow-transform: beat normalisation analysed on training normals, replayed in the export.

``preprocessing_fn`` scales beats with global statistics of the normal training beats: min-max to
[0, 1] (the tutorial) or z-score. The training job hands TFT the training normals as Arrow record
batches (``beats_record_batch``: a chunk's beats as one column, no per-beat encoding). The analysed
graph is written by ``WriteTransform`` and wrapped by ``TransformGraph``, which the training input
pipeline applies to every batch and the exported detector calls on raw beats.

``WriteTransform`` does what ``tft_beam.WriteTransformFn`` does (the same directory layout, read by
``tft.TFTransformOutput``) without renaming directories: it copies the analysed SavedModel file by
file through the file layer, so the transform directory may be on any scheme, ``ram://`` included
(TensorFlow's ``ram://`` renames a directory's entry but not its contents).
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow as tf
import tensorflow_transform as tft
from tensorflow_transform.beam.tft_beam_io import beam_metadata_io
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from models.common import files
from models.ecg import BEAT_KEY, BEAT_LENGTH, NORMALIZED_BEAT_KEY
from pipeline.config import NORMALIZATIONS


def raw_metadata() -> dataset_metadata.DatasetMetadata:
    """Schema of the raw instances TFT sees: one fixed-length float feature, the beat."""
    feature_spec = {BEAT_KEY: tf.io.FixedLenFeature([BEAT_LENGTH], tf.float32)}
    return dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(feature_spec))


def tensor_adapter_config():
    """How TFT reads beats given as Arrow record batches (``beats_record_batch``): one dense float [140] column."""
    from tfx_bsl.tfxio import tf_example_record

    return tf_example_record.TFExampleBeamRecord(physical_format="inmem",
                                                 schema=raw_metadata().schema).TensorAdapterConfig()


def beats_record_batch(beats: np.ndarray) -> pa.RecordBatch:
    """Beats ``[n, BEAT_LENGTH]`` as the record batch TFT analyses (``tensor_adapter_config``): no per-beat encoding."""
    beats = np.ascontiguousarray(beats, dtype=np.float32)
    offsets = pa.array(np.arange(0, beats.size + 1, BEAT_LENGTH, dtype=np.int64), pa.int64())
    column = pa.LargeListArray.from_arrays(offsets, pa.array(beats.reshape(-1), pa.float32()))
    return pa.RecordBatch.from_arrays([column], [BEAT_KEY])


def make_preprocessing_fn(normalization: str):
    """The TFT preprocessing function for ``normalization`` ("minmax" or "zscore")."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; choose one of {NORMALIZATIONS}")

    def preprocessing_fn(inputs):
        beats = inputs[BEAT_KEY]
        if normalization == "minmax":
            minimum = tft.min(beats)
            span = tft.max(beats) - minimum
            normalized = (beats - minimum) / tf.maximum(span, 1e-12)
        else:
            normalized = tft.scale_to_z_score(beats)
        return {NORMALIZED_BEAT_KEY: normalized}

    return preprocessing_fn


def copy_tree(source: str, destination: str) -> str:
    """Copies every file below ``source`` to the same place below ``destination``; returns ``destination``."""
    files.remove(destination)
    files.make_directories(destination)
    for path in files.walk_files(source):
        target = files.join(destination, path[len(source):].lstrip("/"))
        files.make_directories(files.dirname(target))
        files.copy(path, target)
    return destination


class WriteTransform(beam.PTransform):
    """``transform_fn`` -> the analysed graph written to ``directory`` (TFTransformOutput layout); emits it once."""

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory

    def _extract_input_pvalues(self, transform_fn):
        saved_model_directory, metadata = transform_fn
        return transform_fn, [saved_model_directory, metadata.deferred_metadata]

    def expand(self, transform_fn):
        saved_model_directory, metadata = transform_fn
        metadata_directory = files.join(self.directory, tft.TFTransformOutput.TRANSFORMED_METADATA_DIR)
        graph_directory = files.join(self.directory, tft.TFTransformOutput.TRANSFORM_FN_DIR)
        written_metadata = metadata | "WriteMetadata" >> beam_metadata_io.WriteMetadata(
            metadata_directory, saved_model_directory.pipeline)
        return (saved_model_directory
                | "CopyGraph" >> beam.Map(copy_tree, graph_directory)
                | "AfterMetadata" >> beam.Map(lambda _, written: self.directory,
                                              written=beam.pvalue.AsSingleton(written_metadata)))


class TransformGraph(tf.Module):
    """The analysed TFT graph as a callable on raw beats [batch, BEAT_LENGTH] -> normalised beats."""

    def __init__(self, transform_output_directory: str):
        super().__init__(name="tft_transform")
        self.layer = tft.TFTransformOutput(transform_output_directory).transform_features_layer()

    def __call__(self, beats):
        return self.layer({BEAT_KEY: beats})[NORMALIZED_BEAT_KEY]


def affine_statistics(transform: TransformGraph, normalization: str) -> dict:
    """Recovers the analysed statistics from the (affine) transform, for the model card."""
    probe = transform(tf.constant(np.stack([np.zeros(BEAT_LENGTH), np.ones(BEAT_LENGTH)]), tf.float32)).numpy()
    offset, scale = float(probe[0, 0]), float(probe[1, 0] - probe[0, 0])
    if normalization == "minmax":
        minimum = -offset / scale
        return {"normalization": "minmax", "min": minimum, "max": minimum + 1.0 / scale}
    return {"normalization": "zscore", "mean": -offset / scale, "std": 1.0 / scale}
