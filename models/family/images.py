"""Image autoencoders: the tutorial's basic dense one (latent 64) and a convolutional one with a ``z_dim`` code.

Both have ``domain == "image"``, follow the ``models.family.base.Autoencoder`` interface and are
registered by name through ``MODELS``. The image *denoisers* are in ``models.family.denoisers``.
"""

from __future__ import annotations

import dataclasses
import math

import keras

from models.family.base import IMAGE_DOMAIN, Autoencoder, dense_decoder, dense_encoder
from models.family.configs import check_positive, check_shape

IMAGE_SHAPE = (28, 28)


@dataclasses.dataclass(frozen=True)
class ImageDenseConfig:
    """The basic undercomplete autoencoder: Flatten -> Dense(latent, relu) -> Dense(784, sigmoid) -> Reshape."""

    input_shape: tuple = IMAGE_SHAPE
    latent_dim: int = 64
    output_activation: str = "sigmoid"

    def __post_init__(self):
        check_shape("input_shape", self.input_shape)
        check_positive(self, "latent_dim")


@keras.saving.register_keras_serializable(package="heartwatch")
class ImageDenseAutoencoder(Autoencoder):
    """The TensorFlow tutorial's first autoencoder (latent 64 for Fashion-MNIST)."""

    config_class = ImageDenseConfig
    domain = IMAGE_DOMAIN

    def __init__(self, config: ImageDenseConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.encoder = dense_encoder(config.input_shape, (), config.latent_dim, "relu", "relu")
        self.decoder = dense_decoder(config.latent_dim, (), config.input_shape, "relu", config.output_activation)


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
        check_shape("input_shape", self.input_shape)
        if len(self.input_shape) != 3:
            raise ValueError(f"input_shape must be (height, width, channels), got {self.input_shape}")
        if not self.filters:
            raise ValueError("filters must name at least one convolution stage")
        check_positive(self, "filters", "kernel_size", "z_dim")
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


MODELS = {"dense_image": ImageDenseAutoencoder, "conv_image": ImageConvAutoencoder}
