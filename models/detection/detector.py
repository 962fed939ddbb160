"""The exported detector: the one contract between batch training and every scorer.

A model root (e.g. ``artifacts/ecg``) holds integer-numbered versions (``models.common.artifacts``)::

    <root>/<version>/
        detector/            SavedModel, signature ``serving_default``: raw beats [batch, 140] float32 ->
                             anomaly_score [batch], reconstruction_error [batch],
                             per_sample_error [batch, 140], threshold [batch], is_anomaly [batch] (bool)
        model_card.json      data, normalisation, model config, threshold, metrics, versions (for humans)
        metrics.json, report/ (written by the training pipeline)

The SavedModel holds the normalisation graph (tensorflow-transform), the autoencoder, the threshold
and the rule ``is_anomaly = anomaly_score > threshold``, so it loads with TensorFlow alone and
training and serving cannot drift. The model card mirrors the threshold for people and tools; no
scorer reads it from there. ``anomaly_score`` is the model's own score (``Autoencoder.scores``) on the
detector's ``score_error``, fixed when it is built and traced into the SavedModel: the mean absolute
reconstruction error (``"mae"``, the default of ``DetectorModule``), the root mean square of the
absolute errors (``"rms"``), the worst 30-sample window of them (``"window"``, what `heartwatch train`
exports by default), or e.g. the VAE's negative ELBO on one of them. ``reconstruction_error`` is
always the mean absolute error. Errors are in the normalised space the autoencoder was trained in;
the threshold lives in the score's space.

``Detector`` is the one loaded form every scorer uses: ``heartwatch score`` (through a Beam model
handler), the stream, the benchmarks and the tests. Per-device adaptive thresholds in the stream are a
separate, explicit step applied to its outputs (``streaming.adaptive``).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import tensorflow as tf

from models.common import artifacts, files
from models.detection import SCORE_ERRORS, thresholds
from models.ecg import BEAT_LENGTH

LOGGER = logging.getLogger(__name__)

SAVED_MODEL_DIRECTORY = "detector"
SAVED_MODEL_MARKER = f"{SAVED_MODEL_DIRECTORY}/saved_model.pb"
SIGNATURE_NAME = "serving_default"
INPUT_KEY = "beats"
OUTPUT_KEYS = ("anomaly_score", "reconstruction_error", "per_sample_error", "threshold", "is_anomaly")
KIND = "detector"
MINIMUM_BUCKET = 64
PROBE_BEATS = 8


def artifact_root(model_root: str) -> artifacts.ArtifactRoot:
    """The versioned-artifact view of a detector model root."""
    return artifacts.ArtifactRoot(model_root, SAVED_MODEL_MARKER, KIND, hint="run `heartwatch train` first")


def resolve_version_directory(path: str) -> str:
    """Accepts a version directory or a model root (then picks the newest version)."""
    return artifact_root(path).resolve()


def is_model_root(path: str) -> bool:
    """True when ``path`` is a model root (versions below it) rather than one version directory."""
    return not artifact_root(path).is_version(path)


class DetectorModule(tf.Module):
    """Raw beats in, scores and flags out: preprocessing + autoencoder + threshold in one module.

    ``preprocess`` is any trackable callable mapping raw beats [batch, BEAT_LENGTH] to the model's
    input space (the training pipeline passes the tensorflow-transform graph). ``autoencoder`` is a
    ``models.family.base.Autoencoder``; its ``scores`` method defines every score, on ``score_error``
    (one of ``models.detection.SCORE_ERRORS``, see the module doc).
    """

    def __init__(self, preprocess, autoencoder, threshold_value: float = 0.0, beat_length: int = BEAT_LENGTH,
                 score_error: str = "mae"):
        super().__init__(name="heartwatch_detector")
        if score_error not in SCORE_ERRORS:
            raise ValueError(f"score_error must be one of {SCORE_ERRORS}, got {score_error!r}")
        self.preprocess = preprocess
        self.autoencoder = autoencoder
        self.score_error = score_error
        self.threshold = tf.Variable(float(threshold_value), dtype=tf.float32, trainable=False, name="threshold")
        self.serve = tf.function(
            self._serve, input_signature=[tf.TensorSpec([None, beat_length], tf.float32, name=INPUT_KEY)])

    def _serve(self, beats):
        normalized = tf.cast(self.preprocess(beats), tf.float32)
        scores = {key: tf.cast(value, tf.float32)
                  for key, value in self.autoencoder.scores(normalized, self.score_error).items()}
        threshold = tf.fill(tf.shape(scores["anomaly_score"]), self.threshold)
        is_anomaly = thresholds.is_anomalous(scores["anomaly_score"], threshold)
        return {**scores, "threshold": threshold, "is_anomaly": is_anomaly}

    def set_threshold(self, value: float) -> None:
        """Sets the calibrated threshold before export."""
        self.threshold.assign(float(value))

    def score(self, beats: np.ndarray, batch_size: int = 4096) -> dict:
        """Scores a numpy array in batches; returns numpy arrays keyed like the signature."""
        return score_in_batches(self.serve, beats, batch_size)

    def save(self, directory: str) -> None:
        """Writes the SavedModel with its serving signature."""
        tf.saved_model.save(self, directory, signatures={SIGNATURE_NAME: self.serve})


def _empty_outputs() -> dict:
    return {"anomaly_score": np.zeros(0, np.float32), "reconstruction_error": np.zeros(0, np.float32),
            "per_sample_error": np.zeros((0, BEAT_LENGTH), np.float32), "threshold": np.zeros(0, np.float32),
            "is_anomaly": np.zeros(0, bool)}


def check_beats(beats) -> np.ndarray:
    """Raw beats as a float32 [n, BEAT_LENGTH] array; ValueError for any other shape."""
    array = np.asarray(beats, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != BEAT_LENGTH:
        raise ValueError(f"beats must have shape [batch, {BEAT_LENGTH}], got {array.shape}")
    return array


def score_in_batches(function, beats, batch_size: int) -> dict:
    """Calls ``function`` (beats tensor -> output dict) on slices of ``batch_size``; concatenates numpy outputs."""
    array = check_beats(beats)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    parts = [function(tf.constant(array[start:start + batch_size])) for start in range(0, len(array), batch_size)]
    if not parts:
        return _empty_outputs()
    return {key: np.concatenate([part[key].numpy() for part in parts]) for key in OUTPUT_KEYS}


def scoring_device() -> str:
    """``GPU`` when TensorFlow sees one (it then places the graph there), else ``CPU``."""
    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"


def use_xla(mode: str) -> bool:
    """Whether ``mode`` (auto, on, off) means compiling with XLA on this machine (auto: on a GPU only)."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"xla must be auto, on or off, got {mode!r}")
    return mode == "on" or (mode == "auto" and scoring_device() == "GPU")


def bucket_size(count: int) -> int:
    """The padded batch size for ``count`` beats under XLA: the next power of two, at least MINIMUM_BUCKET."""
    return max(MINIMUM_BUCKET, 1 << max(0, math.ceil(math.log2(max(count, 1)))))


def probe_beats() -> np.ndarray:
    """A fixed batch of plausible beats (a smooth wave) used to check a detector before it serves."""
    positions = np.linspace(0.0, 2.0 * np.pi, BEAT_LENGTH, dtype=np.float32)
    return np.stack([np.sin(positions + shift) for shift in np.linspace(0, 1, PROBE_BEATS)]).astype(np.float32)


@dataclasses.dataclass
class Detector:
    """A loaded detector version: ``score`` raw beats; the SavedModel decides ``is_anomaly``.

    ``xla`` compiles the serving function with XLA; batches are then padded to the next power of two
    (at least ``MINIMUM_BUCKET``) so only a handful of shapes is ever compiled.
    """

    directory: str
    version: str
    model_card: dict
    threshold: float
    device: str
    xla: bool
    saved_model: object  # keeps the loaded resources alive as long as the function
    function: object

    def score(self, beats: np.ndarray, batch_size: int | None = None) -> dict:
        """Scores raw beats [n, BEAT_LENGTH]; returns numpy arrays keyed like the signature (``OUTPUT_KEYS``).

        Without ``batch_size`` all beats go in one call (the stream's micro-batches); with it, in slices.
        """
        array = check_beats(beats)
        if batch_size is not None:
            return score_in_batches(self._call, array, batch_size)
        if not len(array):
            return _empty_outputs()
        return {key: value.numpy() for key, value in self._call(tf.convert_to_tensor(array)).items()}

    def _call(self, beats):
        count = int(beats.shape[0])
        if self.xla and bucket_size(count) != count:
            beats = tf.pad(beats, [[0, bucket_size(count) - count], [0, 0]])
            return {key: value[:count] for key, value in self.function(beats).items()}
        return self.function(beats)

    def check(self) -> None:
        """Raises ValueError unless a probe batch scores to finite outputs of the right shapes."""
        if not math.isfinite(self.threshold) or self.threshold <= 0:
            raise ValueError(f"{self.directory}: the detector's threshold must be a positive number, "
                             f"got {self.threshold}")
        outputs = self.score(probe_beats())
        expected = {"anomaly_score": (PROBE_BEATS,), "reconstruction_error": (PROBE_BEATS,),
                    "per_sample_error": (PROBE_BEATS, BEAT_LENGTH), "threshold": (PROBE_BEATS,),
                    "is_anomaly": (PROBE_BEATS,)}
        for key, shape in expected.items():
            if outputs[key].shape != shape:
                raise ValueError(f"{self.directory}: output {key} has shape {outputs[key].shape}, expected {shape}")
        for key in ("anomaly_score", "reconstruction_error", "per_sample_error"):
            if not np.all(np.isfinite(outputs[key])):
                raise ValueError(f"{self.directory}: output {key} is not finite on the probe batch")


def _compile(signature, xla: bool):
    def serve(beats):
        return signature(**{INPUT_KEY: beats})

    return tf.function(serve, jit_compile=xla, autograph=False,
                       input_signature=None if xla else [tf.TensorSpec([None, BEAT_LENGTH], tf.float32)])


def load_detector(path: str, xla_mode: str = "off", check: bool = True) -> Detector:
    """Loads a detector version (or the newest under a model root) with TensorFlow alone.

    ``xla_mode`` is ``auto`` (XLA on a GPU only), ``on`` or ``off``. With ``check`` the detector must
    score a probe batch sanely before it is returned (ValueError otherwise).
    """
    directory = resolve_version_directory(path)
    card = artifacts.read_card(directory)
    loaded = tf.saved_model.load(files.join(directory, SAVED_MODEL_DIRECTORY))
    if SIGNATURE_NAME not in loaded.signatures:
        raise ValueError(f"{directory} is not a heartwatch detector: no {SIGNATURE_NAME!r} signature")
    signature = loaded.signatures[SIGNATURE_NAME]
    inputs = signature.structured_input_signature[1]
    outputs = set(signature.structured_outputs)
    if list(inputs) != [INPUT_KEY] or inputs[INPUT_KEY].shape.as_list() != [None, BEAT_LENGTH]:
        raise ValueError(f"{directory} is not a heartwatch detector: serving signature inputs {inputs}")
    if not set(OUTPUT_KEYS) <= outputs:
        raise ValueError(f"{directory} is not a current heartwatch detector: outputs {sorted(outputs)} lack "
                         f"{sorted(set(OUTPUT_KEYS) - outputs)} (re-export it with `heartwatch train`)")
    if not hasattr(loaded, "threshold"):
        raise ValueError(f"{directory} is not a heartwatch detector: the SavedModel holds no threshold")
    xla = use_xla(xla_mode)
    detector = Detector(directory=directory, version=artifacts.version_of(directory), model_card=card,
                        threshold=float(loaded.threshold.numpy()), device=scoring_device(), xla=xla,
                        saved_model=loaded, function=_compile(signature, xla))
    if check:
        detector.check()
    LOGGER.info("loaded detector version %s from %s on %s (xla %s, threshold %.6g)", detector.version, directory,
                detector.device, "on" if xla else "off", detector.threshold)
    return detector
