"""ECG autoencoders for flat beats [batch, 140]: the tutorial's dense detector, 1-D convolutional, LSTM.

All three have ``domain == "ecg"``: they map flat beats to flat beats, so the exported detector
(``models.detection.detector.DetectorModule``) wraps them unchanged. Each follows the
``models.family.base.Autoencoder`` interface and is registered by name through ``MODELS``.
"""

from __future__ import annotations

import dataclasses

import keras

from models.ecg import BEAT_LENGTH
from models.family.base import ECG_DOMAIN, Autoencoder
from models.family.configs import check_positive


@dataclasses.dataclass(frozen=True)
class DenseConfig:
    """Dense autoencoder for fixed-length beats: mirrored hidden layers around the latent layer.

    The defaults are the TensorFlow tutorial's ECG detector: 140-32-16-8 encoder, 16-32-140 decoder,
    ReLU inside and a sigmoid output (inputs are min-max scaled to [0, 1]).
    """

    input_length: int = BEAT_LENGTH
    hidden_units: tuple = (32, 16)
    latent_dim: int = 8
    output_activation: str = "sigmoid"
    dropout: float = 0.0

    def __post_init__(self):
        if self.input_length < 2 or self.latent_dim < 1 or any(units < 1 for units in self.hidden_units):
            raise ValueError(f"DenseConfig sizes must be positive, got {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@keras.saving.register_keras_serializable(package="heartwatch")
class DenseAutoencoder(Autoencoder):
    """The tutorial's dense ECG detector, generalised to any widths."""

    config_class = DenseConfig
    domain = ECG_DOMAIN

    def __init__(self, config: DenseConfig, **kwargs):
        super().__init__(config, **kwargs)
        encoder_layers = [keras.Input((config.input_length,))]
        for units in config.hidden_units:
            encoder_layers.append(keras.layers.Dense(units, activation="relu"))
            if config.dropout:
                encoder_layers.append(keras.layers.Dropout(config.dropout))
        encoder_layers.append(keras.layers.Dense(config.latent_dim, activation="relu"))
        self.encoder = keras.Sequential(encoder_layers, name="encoder")
        decoder_layers = [keras.Input((config.latent_dim,))]
        decoder_layers += [keras.layers.Dense(units, activation="relu") for units in reversed(config.hidden_units)]
        decoder_layers.append(keras.layers.Dense(config.input_length, activation=config.output_activation))
        self.decoder = keras.Sequential(decoder_layers, name="decoder")


@dataclasses.dataclass(frozen=True)
class Conv1DConfig:
    """1-D convolutional autoencoder for beats: strided Conv1D encoder, Conv1DTranspose decoder.

    ``input_length`` must be divisible by 2 ** len(filters) (140 = 4 * 35 with two stages).
    """

    input_length: int = BEAT_LENGTH
    filters: tuple = (32, 16)
    kernel_size: int = 7
    latent_dim: int = 16
    output_activation: str = "sigmoid"

    def __post_init__(self):
        if not self.filters or self.input_length % (2 ** len(self.filters)):
            raise ValueError(f"input_length {self.input_length} must be divisible by 2**{len(self.filters)}")
        if self.kernel_size < 1 or self.latent_dim < 1:
            raise ValueError(f"Conv1DConfig sizes must be positive, got {self}")


@keras.saving.register_keras_serializable(package="heartwatch")
class Conv1DAutoencoder(Autoencoder):
    """Strided 1-D convolutions down to a dense latent code and transposed convolutions back up."""

    config_class = Conv1DConfig
    domain = ECG_DOMAIN

    def __init__(self, config: Conv1DConfig, **kwargs):
        super().__init__(config, **kwargs)
        reduced_length = config.input_length // (2 ** len(config.filters))
        encoder_layers = [keras.Input((config.input_length,)), keras.layers.Reshape((config.input_length, 1))]
        for filters in config.filters:
            encoder_layers.append(keras.layers.Conv1D(filters, config.kernel_size, strides=2,
                                                      padding="same", activation="relu"))
        encoder_layers += [keras.layers.Flatten(), keras.layers.Dense(config.latent_dim)]
        self.encoder = keras.Sequential(encoder_layers, name="encoder")
        decoder_layers = [keras.Input((config.latent_dim,)),
                          keras.layers.Dense(reduced_length * config.filters[-1], activation="relu"),
                          keras.layers.Reshape((reduced_length, config.filters[-1]))]
        for filters in reversed(config.filters):
            decoder_layers.append(keras.layers.Conv1DTranspose(filters, config.kernel_size, strides=2,
                                                               padding="same", activation="relu"))
        decoder_layers += [keras.layers.Conv1D(1, config.kernel_size, padding="same",
                                               activation=config.output_activation),
                           keras.layers.Reshape((config.input_length,))]
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
        check_positive(self, "samples_per_step", "encoder_units", "embedding_dim")
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


MODELS = {"dense": DenseAutoencoder, "conv1d": Conv1DAutoencoder, "lstm": LSTMAutoencoder}
