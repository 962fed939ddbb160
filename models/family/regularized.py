"""Regularised dense autoencoders: sparse (L1 or KL penalty on the code) and contractive (Jacobian penalty).

Both add their ``penalty`` to the training loss (``regularized = True``, see
``models.family.base.Autoencoder.call``) and take any ``input_shape``: the default is a beat (so their
registered ``domain`` is ``"ecg"``), ``(28, 28)`` makes them image models.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from models.ecg import BEAT_LENGTH
from models.family.base import ECG_DOMAIN, Autoencoder, dense_decoder, dense_encoder
from models.family.configs import check_positive, check_shape

SPARSITY_KINDS = ("l1", "kl")
_PROBABILITY_EPSILON = 1e-7


def _mean_over_batch_of_sums(values):
    """Sums every non-batch axis, then averages over the batch: a per-example total, batch-averaged."""
    flat = keras.ops.reshape(values, (keras.ops.shape(values)[0], -1))
    return keras.ops.mean(keras.ops.sum(flat, axis=-1))


@dataclasses.dataclass(frozen=True)
class SparseConfig:
    """Sparse autoencoder: a dense autoencoder whose latent activations are penalised.

    ``sparsity="l1"``: ``sparsity_weight`` times the L1 norm of the (ReLU) code, batch-averaged.
    ``sparsity="kl"``: ``sparsity_weight`` times the sum over latent units of
    KL(``target_activation`` || mean activation of the unit over the batch), with a sigmoid code.
    """

    input_shape: tuple = (BEAT_LENGTH,)
    hidden_units: tuple = (64,)
    latent_dim: int = 32
    sparsity: str = "l1"
    sparsity_weight: float = 1e-4
    target_activation: float = 0.05
    output_activation: str = "sigmoid"

    def __post_init__(self):
        check_shape("input_shape", self.input_shape)
        check_positive(self, "hidden_units", "latent_dim")
        if self.sparsity not in SPARSITY_KINDS:
            raise ValueError(f"sparsity must be one of {SPARSITY_KINDS}, got {self.sparsity!r}")
        if self.sparsity_weight <= 0:
            raise ValueError(f"sparsity_weight must be positive, got {self.sparsity_weight}")
        if not 0.0 < self.target_activation < 1.0:
            raise ValueError(f"target_activation must be strictly between 0 and 1, got {self.target_activation}")


@keras.saving.register_keras_serializable(package="heartwatch")
class SparseAutoencoder(Autoencoder):
    """Dense autoencoder with an L1 activity penalty or a KL sparsity penalty on its code."""

    config_class = SparseConfig
    domain = ECG_DOMAIN
    regularized = True

    def __init__(self, config: SparseConfig, **kwargs):
        super().__init__(config, **kwargs)
        latent_activation = "relu" if config.sparsity == "l1" else "sigmoid"
        self.encoder = dense_encoder(config.input_shape, config.hidden_units, config.latent_dim, "relu",
                                     latent_activation)
        self.decoder = dense_decoder(config.latent_dim, config.hidden_units, config.input_shape, "relu",
                                     config.output_activation)

    def penalty(self, inputs, latent=None):
        """The sparsity penalty of the batch ``inputs`` (L1 or KL, times ``sparsity_weight``)."""
        code = self.encoder(inputs) if latent is None else latent
        if self.config.sparsity == "l1":
            return self.config.sparsity_weight * _mean_over_batch_of_sums(keras.ops.abs(code))
        target = self.config.target_activation
        mean_activation = keras.ops.clip(keras.ops.mean(code, axis=0), _PROBABILITY_EPSILON,
                                         1.0 - _PROBABILITY_EPSILON)
        divergence = (target * keras.ops.log(target / mean_activation)
                      + (1.0 - target) * keras.ops.log((1.0 - target) / (1.0 - mean_activation)))
        return self.config.sparsity_weight * keras.ops.sum(divergence)


@dataclasses.dataclass(frozen=True)
class ContractiveConfig:
    """Contractive autoencoder: dense, penalised by the squared Frobenius norm of the encoder Jacobian.

    The penalty is ``contractive_weight`` times the batch mean of ||d code / d input||_F^2 (exact
    Jacobian by automatic differentiation, whatever the encoder depth and activation).
    """

    input_shape: tuple = (BEAT_LENGTH,)
    hidden_units: tuple = (32, 16)
    latent_dim: int = 8
    activation: str = "relu"
    contractive_weight: float = 1e-4
    output_activation: str = "sigmoid"

    def __post_init__(self):
        check_shape("input_shape", self.input_shape)
        check_positive(self, "hidden_units", "latent_dim")
        if self.contractive_weight <= 0:
            raise ValueError(f"contractive_weight must be positive, got {self.contractive_weight}")


@keras.saving.register_keras_serializable(package="heartwatch")
class ContractiveAutoencoder(Autoencoder):
    """Dense autoencoder whose code is made insensitive to small input changes."""

    config_class = ContractiveConfig
    domain = ECG_DOMAIN
    regularized = True

    def __init__(self, config: ContractiveConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.encoder = dense_encoder(config.input_shape, config.hidden_units, config.latent_dim, config.activation,
                                     config.activation)
        self.decoder = dense_decoder(config.latent_dim, config.hidden_units, config.input_shape, config.activation,
                                     config.output_activation)

    def jacobian_norm(self, inputs):
        """Squared Frobenius norm of the encoder Jacobian, one value per example."""
        inputs = tf.convert_to_tensor(inputs, dtype=self.compute_dtype)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            code = self.encoder(inputs)
        jacobian = tape.batch_jacobian(code, inputs)
        return tf.reduce_sum(tf.reshape(tf.square(jacobian), (tf.shape(jacobian)[0], -1)), axis=-1)

    def penalty(self, inputs, latent=None):
        """``contractive_weight`` times the batch mean of the squared Jacobian norm (``latent`` is unused)."""
        return self.config.contractive_weight * tf.reduce_mean(self.jacobian_norm(inputs))


MODELS = {"sparse": SparseAutoencoder, "contractive": ContractiveAutoencoder}
