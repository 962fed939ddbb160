"""Anomaly exposure: labelled anomalies in training, pushed to reconstruct badly.

An autoencoder trained on normal beats alone reconstructs some anomalies almost as well as normal
beats (they share most of their shape), and those are the anomalies it misses. When the training
split has labelled anomalies, exposure uses them: normal beats keep their reconstruction loss, and
each anomaly adds ``weight · -log(1 - exp(-error / scale))``, where ``error`` is its mean absolute
reconstruction error. That term is large when an anomaly is reconstructed well and fades once its
error is several times ``scale``, so it only pushes the anomalies the model still reconstructs; it
is the autoencoding binary classifier loss of Yamanaka et al. (AAAI 2019), on the mean absolute
error. The model stays an autoencoder, scored by its own reconstruction error.

Labels travel in the training *targets*: an exposure target is the beat with its label (1 anomaly,
0 normal) appended as one more column (``labelled_targets``), so Keras's own fit, batching and
early stopping run unchanged and one batch may mix both kinds.
"""

from __future__ import annotations

import keras
import numpy as np

DEFAULT_SCALE = 0.03  # in min-max-scaled units: a normal beat's mean absolute error is about 0.01-0.03
BASE_LOSSES = ("mae", "mse")


def labelled_targets(beats, labels) -> np.ndarray:
    """Exposure targets: ``beats`` [n, length] with ``labels`` (1 anomaly, 0 normal) as a last column."""
    beats = np.asarray(beats, np.float32)
    labels = np.asarray(labels, np.float32).reshape(-1, 1)
    if beats.ndim != 2 or len(beats) != len(labels):
        raise ValueError(f"need beats [n, length] and n labels, got {beats.shape} and {len(labels)} labels")
    return np.concatenate([beats, labels], axis=1)


def carries_labels(inputs, targets) -> bool:
    """Whether ``targets`` are exposure targets for ``inputs`` (one column more than the flat inputs)."""
    input_shape, target_shape = keras.ops.shape(inputs), keras.ops.shape(targets)
    return len(input_shape) == 2 and len(target_shape) == 2 and target_shape[-1] == input_shape[-1] + 1


def normal_inputs(inputs, targets) -> np.ndarray:
    """The rows of ``inputs`` that are not labelled anomalies (all of them when ``targets`` carry no labels)."""
    inputs = np.asarray(inputs, np.float32)
    if not carries_labels(inputs, targets):
        return inputs
    return inputs[np.asarray(targets)[:, -1] < 0.5]


def exposure_term(error, scale: float = DEFAULT_SCALE):
    """``-log(1 - exp(-error / scale))`` per example: large for a small error, near 0 past a few ``scale``."""
    scaled = keras.ops.maximum(error / scale, 1e-6)
    return -keras.ops.log(-keras.ops.expm1(-scaled))


@keras.saving.register_keras_serializable(package="heartwatch")
class AnomalyExposureLoss(keras.losses.Loss):
    """Per example: the ``base`` reconstruction loss of a normal beat, ``weight · exposure_term`` of an anomaly.

    ``y_true`` holds exposure targets (``labelled_targets``); ``y_pred`` the reconstructions.
    """

    def __init__(self, base: str = "mae", weight: float = 1.0, scale: float = DEFAULT_SCALE,
                 name: str = "anomaly_exposure", **kwargs):
        super().__init__(name=name, **kwargs)
        if base not in BASE_LOSSES:
            raise ValueError(f"base loss must be one of {', '.join(BASE_LOSSES)}, got {base!r}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0, got {weight!r}")
        self.base = base
        self.weight = float(weight)
        self.scale = float(scale)

    def call(self, y_true, y_pred):
        y_pred = keras.ops.cast(y_pred, "float32")
        y_true = keras.ops.cast(y_true, "float32")
        targets, is_anomaly = y_true[:, :-1], y_true[:, -1]
        difference = y_pred - targets
        absolute_error = keras.ops.mean(keras.ops.abs(difference), axis=-1)
        base = absolute_error if self.base == "mae" else keras.ops.mean(keras.ops.square(difference), axis=-1)
        anomaly = self.weight * exposure_term(absolute_error, self.scale)
        return keras.ops.where(is_anomaly > 0.5, anomaly, base)

    def get_config(self):
        return {**super().get_config(), "base": self.base, "weight": self.weight, "scale": self.scale}
