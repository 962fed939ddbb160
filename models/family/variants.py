"""The rest of the autoencoder family: image autoencoders, LSTM, sparse, contractive and variational.

Every model here follows the ``models.family.variants.base.Autoencoder`` interface (typed frozen config,
``encode``/``decode``/``reconstruct``/``per_sample_error``/``anomaly_score``, Keras 3 serialisation)
and is registered by name through ``MODELS``; ``models.family.registry`` builds them.

ECG-capable models (``domain == "ecg"``) map flat beats [batch, 140] to flat beats, so the exported
detector (``models.detection.detector.DetectorModule``) wraps them unchanged. The sparse, contractive and
variational autoencoders take any ``input_shape``: their default is a beat, ``(28, 28)`` makes them
image models (their registered ``domain`` stays the default's).

The convolutional *denoiser* of the family (Conv2D encoder, Conv2DTranspose decoder) is the
TensorFlow tutorial's ``Denoise`` model, registered as ``"denoise_tutorial"`` by ``models.family.denoisers``;
``FAMILY`` maps every architecture of the family to its registry name.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import tensorflow as tf

from models.family.base import ECG_DOMAIN, IMAGE_DOMAIN, Autoencoder
from models.ecg import BEAT_LENGTH

IMAGE_SHAPE = (28, 28)
SPARSITY_KINDS = ("l1", "kl")
VAE_SCORES = ("reconstruction", "negative_elbo")
_PROBABILITY_EPSILON = 1e-7


def _check_shape(name: str, shape: tuple) -> None:
    if not shape or any(not isinstance(size, int) or size < 1 for size in shape):
        raise ValueError(f"{name} must be a non-empty tuple of positive integers, got {shape!r}")


def _check_positive(config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        values = value if isinstance(value, tuple) else (value,)
        if any(item < 1 for item in values):
            raise ValueError(f"{type(config).__name__}.{name} must be positive, got {value!r}")


def _dense_encoder(input_shape: tuple, hidden_units: tuple, latent_dim: int, activation: str,
                   latent_activation: str | None) -> keras.Sequential:
    """Flatten (for multi-dimensional inputs) -> hidden Dense layers -> latent Dense layer."""
    layers = [keras.Input(input_shape)]
    if len(input_shape) > 1:
        layers.append(keras.layers.Flatten())
    layers += [keras.layers.Dense(units, activation=activation) for units in hidden_units]
    layers.append(keras.layers.Dense(latent_dim, activation=latent_activation))
    return keras.Sequential(layers, name="encoder")


def _dense_decoder(latent_dim: int, hidden_units: tuple, output_shape: tuple, activation: str,
                   output_activation: str) -> keras.Sequential:
    """Mirrored hidden Dense layers -> Dense to the flat output size -> Reshape (multi-dimensional)."""
    layers = [keras.Input((latent_dim,))]
    layers += [keras.layers.Dense(units, activation=activation) for units in reversed(hidden_units)]
    layers.append(keras.layers.Dense(math.prod(output_shape), activation=output_activation))
    if len(output_shape) > 1:
        layers.append(keras.layers.Reshape(output_shape))
    return keras.Sequential(layers, name="decoder")


def _mean_over_batch_of_sums(values):
    """Sums every non-batch axis, then averages over the batch: a per-example total, batch-averaged."""
    flat = keras.ops.reshape(values, (keras.ops.shape(values)[0], -1))
    return keras.ops.mean(keras.ops.sum(flat, axis=-1))


@dataclasses.dataclass(frozen=True)
class ImageDenseConfig:
    """The basic undercomplete autoencoder: Flatten -> Dense(latent, relu) -> Dense(784, sigmoid) -> Reshape."""

    input_shape: tuple = IMAGE_SHAPE
    latent_dim: int = 64
    output_activation: str = "sigmoid"

    def __post_init__(self):
        _check_shape("input_shape", self.input_shape)
        _check_positive(self, "latent_dim")


@keras.saving.register_keras_serializable(package="heartwatch")
class ImageDenseAutoencoder(Autoencoder):
    """The TensorFlow tutorial's first autoencoder (latent 64 for Fashion-MNIST)."""

    config_class = ImageDenseConfig
    domain = IMAGE_DOMAIN

    def __init__(self, config: ImageDenseConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.encoder = _dense_encoder(config.input_shape, (), config.latent_dim, "relu", "relu")
        self.decoder = _dense_decoder(config.latent_dim, (), config.input_shape, "relu", config.output_activation)


@dataclasses.dataclass(frozen=True)
class ImageConvConfig:
    """Convolutional image autoencoder with a ``z_dim`` latent code (the TF2 conv AE reference).

    Encoder: stride-2 ``Conv2D`` per entry of ``filters`` -> Flatten -> Dense(z_dim). Decoder:
    Dense -> Reshape -> (Conv2D, UpSampling2D) per entry in reverse -> Conv2D to the input channels.
    Height and width must be divisible by ``2 ** len(filters)`` (28 = 4 * 7 with two stages).
    """

    input_shape: tuple = (*IMAGE_SHAPE, 1)
    filters: tuple = (32, 64)
    kernel_size: int = 3
    z_dim: int = 10
    output_activation: str = "sigmoid"

    def __post_init__(self):
        _check_shape("input_shape", self.input_shape)
        if len(self.input_shape) != 3:
            raise ValueError(f"input_shape must be (height, width, channels), got {self.input_shape}")
        if not self.filters:
            raise ValueError("filters must name at least one convolution stage")
        _check_positive(self, "filters", "kernel_size", "z_dim")
        factor = 2 ** len(self.filters)
        if self.input_shape[0] % factor or self.input_shape[1] % factor:
            raise ValueError(f"image height and width {self.input_shape[:2]} must be divisible by {factor}")


@keras.saving.register_keras_serializable(package="heartwatch")
class ImageConvAutoencoder(Autoencoder):
    """Stride-2 convolutions to a ``z_dim`` code; Dense + Reshape + Conv2D/UpSampling2D back up."""

    config_class = ImageConvConfig
    domain = IMAGE_DOMAIN

    def __init__(self, config: ImageConvConfig, **kwargs):
        super().__init__(config, **kwargs)
        height, width, channels = config.input_shape
        factor = 2 ** len(config.filters)
        encoder_layers = [keras.Input(config.input_shape)]
        encoder_layers += [keras.layers.Conv2D(filters, config.kernel_size, strides=2, padding="same",
                                               activation="relu") for filters in config.filters]
        encoder_layers += [keras.layers.Flatten(), keras.layers.Dense(config.z_dim)]
        self.encoder = keras.Sequential(encoder_layers, name="encoder")
        reduced_shape = (height // factor, width // factor, config.filters[-1])
        decoder_layers = [keras.Input((config.z_dim,)),
                          keras.layers.Dense(math.prod(reduced_shape), activation="relu"),
                          keras.layers.Reshape(reduced_shape)]
        for filters in reversed(config.filters):
            decoder_layers += [keras.layers.Conv2D(filters, config.kernel_size, padding="same", activation="relu"),
                               keras.layers.UpSampling2D(2)]
        decoder_layers.append(keras.layers.Conv2D(channels, config.kernel_size, padding="same",
                                                  activation=config.output_activation))
        self.decoder = keras.Sequential(decoder_layers, name="decoder")


@dataclasses.dataclass(frozen=True)
class LSTMConfig:
    """LSTM sequence autoencoder for beats.

    The beat is read as a sequence of ``input_length / samples_per_step`` time steps of
    ``samples_per_step`` consecutive samples (1 gives one sample per step, as in the reference; the
    default 4 reads 35 steps, four times faster on a CPU). Encoder: LSTMs of ``encoder_units``
    returning sequences, then an LSTM of ``embedding_dim`` returning its last state (the embedding).
    Decoder: the embedding repeated once per time step, an LSTM of ``embedding_dim`` and the mirrored
    ``encoder_units`` LSTMs, then a time-distributed Dense(``samples_per_step``).
    """

    input_length: int = BEAT_LENGTH
    samples_per_step: int = 4
    encoder_units: tuple = (64,)
    embedding_dim: int = 32
    output_activation: str = "sigmoid"

    def __post_init__(self):
        _check_positive(self, "samples_per_step", "encoder_units", "embedding_dim")
        if self.input_length < 2 or self.input_length % self.samples_per_step:
            raise ValueError(f"input_length {self.input_length} must be at least 2 and divisible by "
                             f"samples_per_step {self.samples_per_step}")


@keras.saving.register_keras_serializable(package="heartwatch")
class LSTMAutoencoder(Autoencoder):
    """Sequence-to-sequence LSTM autoencoder on flat beats [batch, input_length]."""

    config_class = LSTMConfig
    domain = ECG_DOMAIN

    def __init__(self, config: LSTMConfig, **kwargs):
        super().__init__(config, **kwargs)
        length = config.input_length
        steps, width = length // config.samples_per_step, config.samples_per_step
        encoder_layers = [keras.Input((length,)), keras.layers.Reshape((steps, width))]
        encoder_layers += [keras.layers.LSTM(units, return_sequences=True) for units in config.encoder_units]
        encoder_layers.append(keras.layers.LSTM(config.embedding_dim))
        self.encoder = keras.Sequential(encoder_layers, name="encoder")
        decoder_layers = [keras.Input((config.embedding_dim,)), keras.layers.RepeatVector(steps),
                          keras.layers.LSTM(config.embedding_dim, return_sequences=True)]
        decoder_layers += [keras.layers.LSTM(units, return_sequences=True) for units in reversed(config.encoder_units)]
        decoder_layers += [keras.layers.TimeDistributed(keras.layers.Dense(width, activation=config.output_activation)),
                           keras.layers.Reshape((length,))]
        self.decoder = keras.Sequential(decoder_layers, name="decoder")


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
        _check_shape("input_shape", self.input_shape)
        _check_positive(self, "hidden_units", "latent_dim")
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
        self.encoder = _dense_encoder(config.input_shape, config.hidden_units, config.latent_dim, "relu",
                                      latent_activation)
        self.decoder = _dense_decoder(config.latent_dim, config.hidden_units, config.input_shape, "relu",
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
        _check_shape("input_shape", self.input_shape)
        _check_positive(self, "hidden_units", "latent_dim")
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
        self.encoder = _dense_encoder(config.input_shape, config.hidden_units, config.latent_dim, config.activation,
                                      config.activation)
        self.decoder = _dense_decoder(config.latent_dim, config.hidden_units, config.input_shape, config.activation,
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
        _check_shape("input_shape", self.input_shape)
        _check_positive(self, "hidden_units", "latent_dim")
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
        self.encoder = _dense_encoder(config.input_shape, config.hidden_units, 2 * config.latent_dim, "relu", None)
        self.decoder = _dense_decoder(config.latent_dim, config.hidden_units, config.input_shape, "relu",
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
        reconstruction_error = self.scores(inputs)["reconstruction_error"]
        return reconstruction_error + self.config.kl_weight * self.kl_divergence(inputs) / self.input_size

    def score_from_error(self, inputs, reconstruction_error):
        """Reconstruction error or negative ELBO per example, as ``config.score`` says."""
        if self.config.score == "negative_elbo":
            return reconstruction_error + self.config.kl_weight * self.kl_divergence(inputs) / self.input_size
        return reconstruction_error

    def _divergence(self, mean, log_variance):
        return -0.5 * keras.ops.sum(1.0 + log_variance - keras.ops.square(mean) - keras.ops.exp(log_variance),
                                    axis=-1)

    def _weighted_divergence(self, mean, log_variance):
        return self.config.kl_weight * keras.ops.mean(self._divergence(mean, log_variance)) / self.input_size


FAMILY = {
    "basic dense undercomplete (images)": "dense_image",
    "ECG dense detector": "dense",
    "convolutional with z_dim (images)": "conv_image",
    "convolutional denoiser (images)": "denoise_tutorial",
    "LSTM sequence (ECG)": "lstm",
    "1-D convolutional (ECG)": "conv1d",
    "sparse (L1 or KL)": "sparse",
    "contractive": "contractive",
    "variational": "vae",
}
"""Every architecture of the family and the registry name that builds it."""

MODELS = {
    "dense_image": ImageDenseAutoencoder,
    "conv_image": ImageConvAutoencoder,
    "lstm": LSTMAutoencoder,
    "sparse": SparseAutoencoder,
    "contractive": ContractiveAutoencoder,
    "vae": VariationalAutoencoder,
}
