"""The exported detector as a checked, compiled scoring function for micro-batches.

``load_scoring_model(path, xla)`` loads a version with ``models.detection.detector.load_detector``, wraps its
serving signature in a ``tf.function`` (XLA-compiled when asked, or with ``auto`` when TensorFlow
sees a GPU), and checks it before it may serve: the signature must score a probe batch to finite
outputs of the right shapes, and the threshold it applies must equal the model card's. One
``ScoringModel`` bundles detector, normalisation (inside the SavedModel) and threshold, so swapping
the object swaps all three at once.

With XLA, batches are padded to the next power of two (at least ``MINIMUM_BUCKET``) so that only a
handful of shapes is ever compiled. On this project's 2-core CPU machine XLA's model-only gain was
inconsistent between runs (0.7x to 1.6x) and scoring is about 8 % of the stream's CPU per beat, so
``auto`` enables it on GPUs only.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import tensorflow as tf

from models.detection.detector import load_detector
from models.ecg import BEAT_LENGTH

LOGGER = logging.getLogger(__name__)

MINIMUM_BUCKET = 64
PROBE_BEATS = 8
OUTPUT_KEYS = ("reconstruction_error", "per_sample_error", "threshold", "is_anomaly")


def scoring_device() -> str:
    """``GPU`` when TensorFlow sees one (it then places the graph there), else ``CPU``."""
    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"


def use_xla(mode: str) -> bool:
    """Whether ``mode`` (auto, on, off) means compiling with XLA on this machine."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"xla must be auto, on or off, got {mode!r}")
    return mode == "on" or (mode == "auto" and scoring_device() == "GPU")


def bucket_size(count: int) -> int:
    """The padded batch size for ``count`` beats: the next power of two, at least MINIMUM_BUCKET."""
    return max(MINIMUM_BUCKET, 1 << max(0, math.ceil(math.log2(max(count, 1)))))


@dataclasses.dataclass
class ScoringModel:
    """One servable detector version."""

    version: str
    directory: str
    threshold: float
    xla: bool
    device: str
    function: object
    detector: object

    def score(self, beats: np.ndarray) -> dict:
        """Scores float32 beats [n, BEAT_LENGTH] in one call; returns numpy arrays keyed like the signature."""
        count = beats.shape[0]
        if self.xla and bucket_size(count) != count:
            padded = np.zeros((bucket_size(count), BEAT_LENGTH), dtype=np.float32)
            padded[:count] = beats
            beats = padded
        outputs = self.function(tf.convert_to_tensor(beats, dtype=tf.float32))
        return {key: outputs[key].numpy()[:count] for key in OUTPUT_KEYS}


def _compile(signature, xla: bool):
    def serve(beats):
        return signature(beats=beats)

    return tf.function(serve, jit_compile=xla, autograph=False,
                       input_signature=None if xla else [tf.TensorSpec([None, BEAT_LENGTH], tf.float32)])


def probe_beats() -> np.ndarray:
    """A fixed batch of plausible beats (a smooth wave) used to check a model before it serves."""
    positions = np.linspace(0.0, 2.0 * np.pi, BEAT_LENGTH, dtype=np.float32)
    return np.stack([np.sin(positions + shift) for shift in np.linspace(0, 1, PROBE_BEATS)]).astype(np.float32)


def check_model(model: ScoringModel) -> None:
    """Raises ValueError when the model does not score a probe batch sanely."""
    if not math.isfinite(model.threshold) or model.threshold <= 0:
        raise ValueError(f"threshold in the model card must be a positive number, got {model.threshold}")
    outputs = model.score(probe_beats())
    expected = {"reconstruction_error": (PROBE_BEATS,), "per_sample_error": (PROBE_BEATS, BEAT_LENGTH),
                "threshold": (PROBE_BEATS,), "is_anomaly": (PROBE_BEATS,)}
    for key, shape in expected.items():
        if outputs[key].shape != shape:
            raise ValueError(f"output {key} has shape {outputs[key].shape}, expected {shape}")
    for key in ("reconstruction_error", "per_sample_error"):
        if not np.all(np.isfinite(outputs[key])):
            raise ValueError(f"output {key} is not finite on the probe batch")
    applied = float(outputs["threshold"][0])
    if not math.isclose(applied, model.threshold, rel_tol=1e-5, abs_tol=1e-9):
        raise ValueError(f"the SavedModel applies threshold {applied:.6g} but the model card says "
                         f"{model.threshold:.6g}")


def load_scoring_model(path: str, xla_mode: str = "auto") -> ScoringModel:
    """Loads, compiles and checks a detector version (or the newest under a model root)."""
    detector = load_detector(path)
    xla = use_xla(xla_mode)
    model = ScoringModel(version=detector.version, directory=detector.directory, threshold=detector.threshold,
                         xla=xla, device=scoring_device(),
                         function=_compile(detector.saved_model.signatures["serving_default"], xla),
                         detector=detector)
    check_model(model)
    LOGGER.info("detector version %s ready on %s (xla %s, threshold %.6g)", model.version, model.device,
                "on" if xla else "off", model.threshold)
    return model
