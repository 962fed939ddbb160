"""An ensemble of ECG autoencoders trained in one fit and exported as one model, scored by normalised errors.

``EnsembleAutoencoder`` holds several registry models (its *members*). Training runs through the one
fit loop unchanged: in training mode ``call`` returns every member's reconstruction stacked
[batch, members, length] and ``compute_loss`` sums the compiled loss of each member (plus the
members' own penalties), so each member learns exactly as if trained alone, on the same batches. In
inference mode ``call`` returns the members' mean reconstruction (``reconstruct``, the validation
loss, the exported ``per_sample_error`` and ``reconstruction_error``).

The anomaly score (``score_from_error``, so ``Autoencoder.scores`` stays the one definition) is the
mean over members of each member's own ``anomaly_score`` normalised by reference statistics fixed
after training: ``combine="zscore"`` divides the distance to the reference mean by the reference
standard deviation; ``combine="rank"`` maps a score through the reference quantiles to its rank in
[0, 1] (extended linearly beyond the extremes, so anomalies stay ordered). The reference is the
beats of the fit's validation data (``reference="validation"``: held-out normal beats in
`heartwatch train`) or its training data: ``fit`` calls ``set_reference`` once Keras has restored
the best weights (normal beats only: anomalies labelled for exposure, ``models.family.exposure``,
are left out). The statistics are non-trainable variables, so they travel with the weights into
the candidate's weights file and the exported SavedModel.
"""

from __future__ import annotations

import dataclasses
import json

import keras
import numpy as np
import tensorflow as tf

from models.ecg import BEAT_LENGTH
from models.family.base import ECG_DOMAIN, Autoencoder
from models.family.configs import config_from_dict
from models.family.exposure import normal_inputs

COMBINATIONS = ("zscore", "rank")
REFERENCES = ("validation", "training")
QUANTILE_COUNT = 65
_SCALE_FLOOR = 1e-12
_REFERENCE_BATCH = 1024


@dataclasses.dataclass(frozen=True)
class EnsembleConfig:
    """Members (``{"model": registry name, "parameters": {...}}`` each, ECG models) and how scores combine.

    ``combine`` is ``"zscore"`` or ``"rank"``; ``reference`` says which of the fit's data fixes the
    normalisation (``"validation"`` or ``"training"``).
    """

    members: tuple = ({"model": "dense", "parameters": {}}, {"model": "conv1d", "parameters": {}})
    combine: str = "zscore"
    reference: str = "validation"
    input_length: int = BEAT_LENGTH

    def __post_init__(self):
        from models.family import registry

        if not isinstance(self.members, tuple) or not self.members:
            raise ValueError(f"an ensemble needs at least one member, got {self.members!r}")
        # One canonical, JSON-shaped form (lists, not tuples), so a config read back from a file equals this one.
        object.__setattr__(self, "members", tuple(json.loads(json.dumps(member)) for member in self.members))
        for member in self.members:
            if not isinstance(member, dict) or set(member) - {"model", "parameters"} or "model" not in member:
                raise ValueError(f"an ensemble member is {{\"model\": name, \"parameters\": {{...}}}}, got {member!r}")
            name = member["model"]
            if name == "ensemble" or registry.domain(name) != ECG_DOMAIN:
                raise ValueError(f"ensemble member {name!r} must be an ECG model other than the ensemble; "
                                 f"choose among {', '.join(n for n in registry.ecg_models() if n != 'ensemble')}")
            config_from_dict(registry.model_class(name).config_class, dict(member.get("parameters") or {}))
        if self.combine not in COMBINATIONS:
            raise ValueError(f"combine must be one of {COMBINATIONS}, got {self.combine!r}")
        if self.reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, got {self.reference!r}")


def reference_statistics(scores: np.ndarray) -> dict:
    """Per-member mean, standard deviation and quantiles of reference scores [beats, members]."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or len(scores) < 2 or not np.all(np.isfinite(scores)):
        raise ValueError(f"reference scores must be finite, [beats >= 2, members], got shape {scores.shape}")
    quantiles = np.quantile(scores, np.linspace(0.0, 1.0, QUANTILE_COUNT), axis=0).T
    # Strictly increasing knots keep the rank map invertible where reference scores tie.
    quantiles = quantiles + np.arange(QUANTILE_COUNT) * _SCALE_FLOOR
    return {"center": scores.mean(axis=0), "scale": np.maximum(scores.std(axis=0), _SCALE_FLOOR),
            "quantiles": quantiles}


def _inputs_of(data) -> np.ndarray:
    """The normal input beats of what Keras's fit takes: an array, an ``(inputs, targets)`` pair or a dataset.

    Beats labelled as anomalies in exposure targets (``models.family.exposure``) are left out.
    """
    if isinstance(data, tuple):
        return normal_inputs(*data)
    if isinstance(data, tf.data.Dataset):
        return np.concatenate([normal_inputs(*batch) if isinstance(batch, tuple) else np.asarray(batch)
                               for batch in data])
    if isinstance(data, keras.utils.PyDataset):
        return np.concatenate([normal_inputs(*data[index][:2]) for index in range(len(data))])
    return np.asarray(data, np.float32)


@keras.saving.register_keras_serializable(package="heartwatch")
class EnsembleAutoencoder(Autoencoder):
    """Several ECG autoencoders in one model: summed training losses, normalised-error anomaly score."""

    config_class = EnsembleConfig
    domain = ECG_DOMAIN

    def __init__(self, config: EnsembleConfig, **kwargs):
        super().__init__(config, **kwargs)
        from models.family import registry

        self.members = [registry.build(member["model"], member.get("parameters")) for member in config.members]
        count = len(self.members)
        self.score_center = self.add_weight(shape=(count,), initializer="zeros", trainable=False,
                                            name="score_center")
        self.score_scale = self.add_weight(shape=(count,), initializer="ones", trainable=False, name="score_scale")
        self.score_quantiles = self.add_weight(
            shape=(count, QUANTILE_COUNT), trainable=False, name="score_quantiles",
            initializer=keras.initializers.Constant(np.tile(np.linspace(0.0, 1.0, QUANTILE_COUNT), (count, 1))))

    @property
    def encoder(self):
        """The first member's encoder (the ensemble has no code of its own; latent plots use this one)."""
        return self.members[0].encoder

    def encode(self, inputs, training=False):
        """The first member's code."""
        return self.members[0].encode(inputs, training=training)

    def decode(self, latent, training=False):
        """The first member's decoding."""
        return self.members[0].decode(latent, training=training)

    def call(self, inputs, training=False):
        reconstructions = [member(inputs, training=training) for member in self.members]
        if training:
            return keras.ops.stack(reconstructions, axis=1)
        return keras.ops.mean(keras.ops.stack(reconstructions, axis=0), axis=0)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Training: the sum of every member's compiled loss plus their penalties; else Keras's own."""
        if not training or len(keras.ops.shape(y_pred)) != 3:
            return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        loss_function = keras.losses.get(self.loss)
        total = keras.ops.sum(keras.ops.stack(
            [keras.ops.mean(loss_function(y, y_pred[:, index])) for index in range(len(self.members))]))
        for penalty in self.losses:
            total = total + keras.ops.sum(keras.ops.cast(penalty, total.dtype))
        return total

    def member_scores(self, inputs):
        """Each member's own anomaly score, [batch, members]."""
        return keras.ops.stack([member.anomaly_score(inputs) for member in self.members], axis=1)

    def normalized_scores(self, member_scores):
        """Member scores [batch, members] mapped by the reference statistics (z-scores or ranks)."""
        if self.config.combine == "zscore":
            return (member_scores - self.score_center) / self.score_scale
        quantiles = tf.convert_to_tensor(self.score_quantiles)
        values = tf.transpose(tf.cast(member_scores, quantiles.dtype))  # [members, batch]
        last = QUANTILE_COUNT - 1
        upper = tf.clip_by_value(tf.searchsorted(quantiles, values, side="right"), 1, last)
        low_knot = tf.gather(quantiles, upper - 1, batch_dims=1)
        high_knot = tf.gather(quantiles, upper, batch_dims=1)
        inside = (tf.cast(upper - 1, values.dtype) + (values - low_knot) / (high_knot - low_knot)) / last
        span = quantiles[:, last:] - quantiles[:, :1]
        below = (values - quantiles[:, :1]) / span
        above = 1.0 + (values - quantiles[:, last:]) / span
        ranks = tf.where(values < quantiles[:, :1], below, tf.where(values > quantiles[:, last:], above, inside))
        return tf.transpose(ranks)

    def score_from_error(self, inputs, reconstruction_error):
        """The mean over members of their normalised anomaly scores (``reconstruction_error`` is unused)."""
        return keras.ops.mean(self.normalized_scores(self.member_scores(inputs)), axis=1)

    def set_reference(self, beats) -> dict:
        """Fixes the normalisation statistics from the members' scores of ``beats``; returns them."""
        beats = np.asarray(beats, np.float32)
        scores = np.concatenate([np.asarray(self.member_scores(beats[start:start + _REFERENCE_BATCH]))
                                 for start in range(0, len(beats), _REFERENCE_BATCH)])
        statistics = reference_statistics(scores)
        self.score_center.assign(statistics["center"].astype(np.float32))
        self.score_scale.assign(statistics["scale"].astype(np.float32))
        self.score_quantiles.assign(statistics["quantiles"].astype(np.float32))
        return statistics

    def fit(self, x=None, y=None, *args, validation_data=None, **kwargs):
        """Keras's fit, then ``set_reference`` on the validation (or training) inputs with the restored weights."""
        history = super().fit(x, y, *args, validation_data=validation_data, **kwargs)
        training_data = x if y is None else (x, y)
        reference = training_data if self.config.reference == "training" or validation_data is None else validation_data
        self.set_reference(_inputs_of(reference))
        return history


MODELS = {"ensemble": EnsembleAutoencoder}
