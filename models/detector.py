"""The exported detector: the contract between batch training and every scorer.

A model root (e.g. ``artifacts/ecg``) holds integer-numbered version directories. Each version is::

    <root>/<version>/
        detector/            SavedModel, signature ``serving_default``: raw beats [batch, 140] float32 ->
                             reconstruction_error [batch], per_sample_error [batch, 140],
                             threshold [batch], is_anomaly [batch] (bool)
        model_card.json      data, normalisation, model config, threshold, metrics, versions
        metrics.json, report/ (written by the training pipeline)

The SavedModel contains the normalisation graph (tensorflow-transform), the autoencoder and the
threshold, so it loads with TensorFlow alone and training and serving cannot drift. Errors are in the
normalised space the autoencoder was trained in; the threshold lives in the same space.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re

import numpy as np
import tensorflow as tf

from models.ecg import BEAT_LENGTH

LOGGER = logging.getLogger(__name__)

SAVED_MODEL_DIRECTORY = "detector"
MODEL_CARD_FILE = "model_card.json"
SIGNATURE_NAME = "serving_default"
OUTPUT_KEYS = ("reconstruction_error", "per_sample_error", "threshold", "is_anomaly")
_VERSION_PATTERN = re.compile(r"^\d+$")


def reconstruction_errors(beats, reconstructions):
    """Per-sample absolute error and its per-beat mean (TensorFlow ops, used inside the export)."""
    per_sample_error = tf.abs(beats - reconstructions)
    return per_sample_error, tf.reduce_mean(per_sample_error, axis=-1)


class DetectorModule(tf.Module):
    """Raw beats in, errors and flags out: preprocessing + autoencoder + threshold in one module.

    ``preprocess`` is any trackable callable mapping raw beats [batch, BEAT_LENGTH] to the model's
    input space (the training pipeline passes the tensorflow-transform graph).
    """

    def __init__(self, preprocess, autoencoder, threshold_value: float = 0.0, beat_length: int = BEAT_LENGTH):
        super().__init__(name="heartwatch_detector")
        self.preprocess = preprocess
        self.autoencoder = autoencoder
        self.threshold = tf.Variable(float(threshold_value), dtype=tf.float32, trainable=False, name="threshold")
        self.serve = tf.function(
            self._serve, input_signature=[tf.TensorSpec([None, beat_length], tf.float32, name="beats")])

    def _serve(self, beats):
        normalized = tf.cast(self.preprocess(beats), tf.float32)
        reconstructions = tf.cast(self.autoencoder(normalized, training=False), tf.float32)
        per_sample_error, reconstruction_error = reconstruction_errors(normalized, reconstructions)
        threshold = tf.fill(tf.shape(reconstruction_error), self.threshold)
        return {
            "reconstruction_error": reconstruction_error,
            "per_sample_error": per_sample_error,
            "threshold": threshold,
            "is_anomaly": reconstruction_error > threshold,
        }

    def set_threshold(self, value: float) -> None:
        """Sets the calibrated threshold before export."""
        self.threshold.assign(float(value))

    def score(self, beats: np.ndarray, batch_size: int = 4096) -> dict:
        """Scores a numpy array in batches; returns numpy arrays keyed like the signature."""
        return _score_in_batches(self.serve, beats, batch_size)

    def save(self, directory: str) -> None:
        """Writes the SavedModel with its serving signature."""
        tf.saved_model.save(self, directory, signatures={SIGNATURE_NAME: self.serve})


def _score_in_batches(function, beats, batch_size: int) -> dict:
    array = np.asarray(beats, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != BEAT_LENGTH:
        raise ValueError(f"beats must have shape [batch, {BEAT_LENGTH}], got {array.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    parts = [function(tf.constant(array[start:start + batch_size])) for start in range(0, len(array), batch_size)]
    if not parts:
        return {"reconstruction_error": np.zeros(0, np.float32),
                "per_sample_error": np.zeros((0, BEAT_LENGTH), np.float32),
                "threshold": np.zeros(0, np.float32), "is_anomaly": np.zeros(0, bool)}
    return {key: np.concatenate([part[key].numpy() for part in parts]) for key in OUTPUT_KEYS}


@dataclasses.dataclass
class Detector:
    """A loaded detector version: call ``score`` with raw beats."""

    directory: str
    version: str
    model_card: dict
    function: object
    saved_model: object = None  # keeps the loaded resources alive as long as the function

    @property
    def threshold(self) -> float:
        """The calibrated threshold, from the model card."""
        return float(self.model_card["threshold"]["value"])

    def score(self, beats: np.ndarray, batch_size: int = 4096) -> dict:
        """Scores raw beats [n, BEAT_LENGTH] in batches; returns numpy arrays keyed like the signature."""
        return _score_in_batches(self.function, beats, batch_size)


def list_versions(model_root: str) -> list[str]:
    """Integer version directories under ``model_root`` that hold a SavedModel, oldest first."""
    if not tf.io.gfile.isdir(model_root):
        return []
    versions = [name.rstrip("/") for name in tf.io.gfile.listdir(model_root)]
    versions = [name for name in versions if _VERSION_PATTERN.match(name)
                and tf.io.gfile.exists(os.path.join(model_root, name, SAVED_MODEL_DIRECTORY, "saved_model.pb"))]
    return sorted(versions, key=int)


def next_version_directory(model_root: str) -> str:
    """The directory for a new version: one above the highest existing number (any contents)."""
    existing = [int(name.rstrip("/")) for name in (tf.io.gfile.listdir(model_root) if tf.io.gfile.isdir(model_root) else [])
                if _VERSION_PATTERN.match(name.rstrip("/"))]
    return os.path.join(model_root, str(max(existing, default=0) + 1))


def resolve_version_directory(path: str) -> str:
    """Accepts a version directory or a model root (then picks the newest version)."""
    if tf.io.gfile.exists(os.path.join(path, SAVED_MODEL_DIRECTORY, "saved_model.pb")):
        return path
    versions = list_versions(path)
    if not versions:
        raise FileNotFoundError(
            f"no exported detector at {path!r}: expected {path}/<version>/{SAVED_MODEL_DIRECTORY}/saved_model.pb "
            "(run `heartwatch train` first)")
    return os.path.join(path, versions[-1])


def write_model_card(version_directory: str, card: dict) -> str:
    """Writes the model card JSON beside the SavedModel; returns its path."""
    path = os.path.join(version_directory, MODEL_CARD_FILE)
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(json.dumps(card, indent=2, sort_keys=True, default=str))
    return path


def read_model_card(version_directory: str) -> dict:
    """Reads a version's model card; a missing card is an error (every export writes one)."""
    path = os.path.join(version_directory, MODEL_CARD_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"model card missing: {path}")
    with tf.io.gfile.GFile(path) as handle:
        return json.loads(handle.read())


def load_detector(path: str) -> Detector:
    """Loads a detector version (or the newest under a model root) with TensorFlow alone."""
    directory = resolve_version_directory(path)
    card = read_model_card(directory)
    loaded = tf.saved_model.load(os.path.join(directory, SAVED_MODEL_DIRECTORY))
    function = loaded.signatures[SIGNATURE_NAME]
    signature_inputs = function.structured_input_signature[1]
    if list(signature_inputs) != ["beats"] or signature_inputs["beats"].shape.as_list() != [None, BEAT_LENGTH]:
        raise ValueError(f"{directory} is not a heartwatch detector: serving signature inputs {signature_inputs}")

    def call(beats):
        return function(beats=beats)

    version = os.path.basename(os.path.normpath(directory))
    LOGGER.info("loaded detector version %s from %s (threshold %.6g)", version, directory,
                float(card["threshold"]["value"]))
    return Detector(directory=directory, version=version, model_card=card, function=call, saved_model=loaded)
