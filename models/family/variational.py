"""The variational autoencoder: a diagonal Gaussian posterior, a standard normal prior, an ELBO score.

Training samples the code by reparameterisation and adds the weighted KL term to the loss; inference
decodes the posterior mean, so reconstructions are deterministic and exportable. Its anomaly score is
the reconstruction error or the negative ELBO (``VAEConfig.score``), through
``models.family.base.Autoencoder.score_from_error``, so the exported detector serves either.
"""

from __future__ import annotations

import dataclasses
import math

import keras

from models.ecg import BEAT_LENGTH
from models.family.base import ECG_DOMAIN, Autoencoder, dense_decoder, dense_encoder
from models.family.configs import check_positive, check_shape

VAE_SCORES = ("reconstruction", "negative_elbo")


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Variational autoencoder with a diagonal Gaussian posterior and a standard normal prior.

    Training adds ``kl_weight * KL(q(z|x) || N(0, I)) / D`` to the compiled reconstruction loss, where D
    is the number of input values: the compiled loss averages over those D values, so the sum is the
    per-value negative ELBO with ``kl_weight`` playing the likelihood's scale. ``score`` picks what
    ``anomaly_score`` returns: ``"reconstruction"`` (mean absolute error of the posterior-mean
    reconstruction, the exported detector's error) or ``"negative_elbo"`` (that error plus the KL term).
    ``seed`` seeds the reparameterisation noise.
    """

    input_shape: tuple = (BEAT_LENGTH,)
    hidden_units: tuple = (32, 16)
    latent_dim: int = 8
    kl_weight: float = 0.01
    score: str = "reconstruction"
    output_activation: str = "sigmoid"
    seed: int = 0

    def __post_init__(self):
        check_shape("input_shape", self.input_shape)
        check_positive(self, "hidden_units", "latent_dim")
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be non-negative, got {self.kl_weight}")
        if self.score not in VAE_SCORES:
            raise ValueError(f"score must be one of {VAE_SCORES}, got {self.score!r}")


@keras.saving.register_keras_serializable(package="heartwatch")
class VariationalAutoencoder(Autoencoder):
    """VAE: the encoder outputs the posterior mean and log-variance, ``encode`` returns the mean.

    Training samples the code by reparameterisation (mean + exp(log_var / 2) * noise); inference
    decodes the posterior mean, so reconstructions are deterministic and exportable.
    """

    config_class = VAEConfig
    domain = ECG_DOMAIN
    regularized = True

    def __init__(self, config: VAEConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.encoder = dense_encoder(config.input_shape, config.hidden_units, 2 * config.latent_dim, "relu", None)
        self.decoder = dense_decoder(config.latent_dim, config.hidden_units, config.input_shape, "relu",
                                     config.output_activation)
        self.noise_seed = keras.random.SeedGenerator(config.seed)
        self.input_size = math.prod(config.input_shape)

    def posterior(self, inputs, training=False):
        """Mean and log-variance of q(z | inputs)."""
        statistics = self.encoder(inputs, training=training)
        return statistics[:, :self.config.latent_dim], statistics[:, self.config.latent_dim:]

    def encode(self, inputs, training=False):
        """The posterior mean."""
        return self.posterior(inputs, training=training)[0]

    def call(self, inputs, training=False):
        mean, log_variance = self.posterior(inputs, training=training)
        if not training:
            return self.decoder(mean, training=False)
        self.add_loss(self._weighted_divergence(mean, log_variance))
        noise = keras.random.normal(keras.ops.shape(mean), dtype=mean.dtype, seed=self.noise_seed)
        return self.decoder(mean + keras.ops.exp(0.5 * log_variance) * noise, training=True)

    def kl_divergence(self, inputs):
        """KL(q(z | x) || N(0, I)) per example, in nats."""
        return self._divergence(*self.posterior(inputs))

    def penalty(self, inputs, latent=None):
        """The batch-mean KL term exactly as added to the training loss (``latent`` is unused)."""
        return self._weighted_divergence(*self.posterior(inputs))

    def negative_elbo(self, inputs):
        """Per-example training objective: mean absolute error plus the weighted KL term (per value)."""
        return self._negative_elbo_from_error(inputs, self.scores(inputs)["reconstruction_error"])

    def score_from_error(self, inputs, reconstruction_error):
        """Reconstruction error or negative ELBO per example, as ``config.score`` says."""
        if self.config.score == "negative_elbo":
            return self._negative_elbo_from_error(inputs, reconstruction_error)
        return reconstruction_error

    def _negative_elbo_from_error(self, inputs, reconstruction_error):
        return reconstruction_error + self.config.kl_weight * self.kl_divergence(inputs) / self.input_size

    def _divergence(self, mean, log_variance):
        return -0.5 * keras.ops.sum(1.0 + log_variance - keras.ops.square(mean) - keras.ops.exp(log_variance),
                                    axis=-1)

    def _weighted_divergence(self, mean, log_variance):
        return self.config.kl_weight * keras.ops.mean(self._divergence(mean, log_variance)) / self.input_size


MODELS = {"vae": VariationalAutoencoder}
