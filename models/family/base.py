"""The autoencoder interface and the ECG autoencoders the training pipeline starts with.

Every autoencoder is a Keras 3 model built from a frozen, typed config and exposes the same methods:
``encode``, ``decode``, ``reconstruct``, ``per_sample_error`` and ``anomaly_score``. The registry in
``models.family.registry`` builds them by name; the batch pipelines and benchmarks only ever go through it.

Errors are absolute differences (the tutorial's mean absolute error), so ``anomaly_score`` of a beat is
its mean absolute reconstruction error: the same number the exported detector calls
``reconstruction_error``.

Every model also declares its ``domain``: ``"ecg"`` for models that map flat beats [batch, 140] to
flat beats (these can be wrapped by ``models.detection.detector.DetectorModule`` and exported), ``"image"`` for
image models. Regularised models (sparse, contractive, variational) add their penalty to the training
loss with ``add_loss`` inside ``call`` when ``training`` is true, so a plain
``model.compile(loss="mae"); model.fit(x, x)`` trains them; ``penalty(inputs)`` returns the same term
for inspection and tests.
"""

from __future__ import annotations

import dataclasses

import keras

from models.ecg import BEAT_LENGTH

ECG_DOMAIN = "ecg"
IMAGE_DOMAIN = "image"
DOMAINS = (ECG_DOMAIN, IMAGE_DOMAIN)


def config_from_dict(config_class, values: dict):
    """Builds a frozen config dataclass from a dict, refusing unknown keys with a clear message."""
    known = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} fields {unknown}; known: {sorted(known)}")
    converted = {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}
    return config_class(**converted)


class Autoencoder(keras.Model):
    """Base class: subclasses set ``self.encoder`` and ``self.decoder`` and define ``config_class``.

    ``domain`` says what the model reconstructs (``ECG_DOMAIN`` or ``IMAGE_DOMAIN``); ``regularized``
    says whether ``penalty`` is added to the training loss.
    """

    config_class = None
    domain = None
    regularized = False

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.config = config

    def call(self, inputs, training=False):
        latent = self.encoder(inputs, training=training)
        if training and self.regularized:
            self.add_loss(self.penalty(inputs, latent))
        return self.decoder(latent, training=training)

    def penalty(self, inputs, latent=None):
        """The regularisation term added to the training loss (a scalar; zero for plain autoencoders).

        ``latent`` may pass the already computed code of ``inputs`` to avoid encoding twice.
        """
        return keras.ops.zeros((), dtype=self.compute_dtype)

    def encode(self, inputs, training=False):
        """Maps inputs to their latent code."""
        return self.encoder(inputs, training=training)

    def decode(self, latent, training=False):
        """Maps latent codes back to input space."""
        return self.decoder(latent, training=training)

    def reconstruct(self, inputs):
        """Reconstruction of ``inputs`` in inference mode."""
        return self(inputs, training=False)

    def per_sample_error(self, inputs):
        """Absolute reconstruction error, same shape as the inputs."""
        return keras.ops.abs(inputs - self.reconstruct(inputs))

    def scores(self, inputs) -> dict:
        """The one definition of what a model scores, used by training, evaluation and the export.

        Returns ``per_sample_error`` (absolute error, shaped like the inputs), ``reconstruction_error``
        (its mean per example) and ``anomaly_score`` (higher = more anomalous): the reconstruction
        error unless the model defines its own score (``score_from_error``), e.g. the VAE's negative ELBO.
        """
        per_sample_error = self.per_sample_error(inputs)
        flat = keras.ops.reshape(per_sample_error, (keras.ops.shape(per_sample_error)[0], -1))
        reconstruction_error = keras.ops.mean(flat, axis=-1)
        return {"per_sample_error": per_sample_error, "reconstruction_error": reconstruction_error,
                "anomaly_score": self.score_from_error(inputs, reconstruction_error)}

    def score_from_error(self, inputs, reconstruction_error):
        """The anomaly score given the reconstruction error; subclasses with their own score override this."""
        return reconstruction_error

    def anomaly_score(self, inputs):
        """Anomaly score per example (see ``scores``)."""
        return self.scores(inputs)["anomaly_score"]

    def get_config(self):
        return {"config": dataclasses.asdict(self.config)}

    @classmethod
    def from_config(cls, config):
        return cls(config_from_dict(cls.config_class, config["config"]))


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


MODELS = {"dense": DenseAutoencoder, "conv1d": Conv1DAutoencoder}
