"""tensorflow-transform: beat normalisation analysed on training normals, replayed in the export.

``preprocessing_fn`` scales beats with global statistics of the normal training beats: min-max to
[0, 1] (the tutorial) or z-score. The analysed graph is written by ``tft_beam.WriteTransformFn`` and
wrapped by ``TransformGraph``, which the exported detector calls on raw beats.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from models.ecg import BEAT_KEY, BEAT_LENGTH, NORMALIZED_BEAT_KEY
from pipeline.config import NORMALIZATIONS


def raw_metadata() -> dataset_metadata.DatasetMetadata:
    """Schema of the raw instances TFT sees: one fixed-length float feature, the beat."""
    feature_spec = {BEAT_KEY: tf.io.FixedLenFeature([BEAT_LENGTH], tf.float32)}
    return dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(feature_spec))


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
