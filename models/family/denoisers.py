"""Convolutional image denoisers, registered by name through ``MODELS``.

* ``denoise_tutorial``: the TensorFlow tutorial's ``Denoise``: Conv2D 16 and 8 filters with stride 2,
  two Conv2DTranspose layers back up and a sigmoid Conv2D; the baseline. Inputs are padded to a
  multiple of 4 (``size_multiple``).
* ``dncnn`` (the previous default): a residual DnCNN-style network (Zhang et al. 2017) without
  striding: a stack of 3x3 convolutions estimates the noise, which is subtracted from the input and
  clipped to [0, 1]. Its ``encoder`` is the feature stack and its ``decoder`` the noise head, so
  ``decode`` returns the noise estimate; ``reconstruct`` and ``per_sample_error`` behave as for
  every autoencoder.
* ``unet_denoiser`` (the default, ``DEFAULT_MODEL``): a small residual U-Net whose receptive field
  covers a whole 28x28 image; ``encode`` returns the skip features, ``decode`` the noise estimate;
  outside training it averages the outputs for the image and its mirror image (``flip_ensemble``).

All are fully convolutional (any height and width, ``channels`` fixed by the config) and follow the
``models.family.base.Autoencoder`` pattern: frozen config dataclass, Keras serialisation. Training them
(noisy -> clean, streamed through ``tf.data``) is ``models.training.denoising``; loading a saved one is
``models.family.registry.load``.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from models.family import BASELINE_DENOISER
from models.family.base import IMAGE_DOMAIN, Autoencoder
from models.family.configs import config_from_dict
from models.images.io import SUPPORTED_CHANNELS

DNCNN_MODEL = "dncnn"
BASELINE_MODEL = BASELINE_DENOISER
UNET_MODEL = "unet_denoiser"
DEFAULT_MODEL = UNET_MODEL


def _check_channels(channels: int) -> None:
    if channels not in SUPPORTED_CHANNELS:
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")


@dataclasses.dataclass(frozen=True)
class TutorialDenoiseConfig:
    """The tutorial's ``Denoise``: strided Conv2D encoder, Conv2DTranspose decoder, sigmoid output."""

    channels: int = 1
    filters: tuple = (16, 8)
    kernel_size: int = 3

    def __post_init__(self):
        _check_channels(self.channels)
        if not self.filters or any(count < 1 for count in self.filters) or self.kernel_size < 1:
            raise ValueError(f"TutorialDenoiseConfig sizes must be positive, got {self}")


@keras.saving.register_keras_serializable(package="heartwatch")
class TutorialDenoise(Autoencoder):
    """The tutorial's convolutional denoising autoencoder, on any image size (padded to ``size_multiple``)."""

    config_class = TutorialDenoiseConfig
    domain = IMAGE_DOMAIN

    def __init__(self, config: TutorialDenoiseConfig, **kwargs):
        super().__init__(config, **kwargs)
        encoder_layers = [keras.Input((None, None, config.channels))]
        encoder_layers += [keras.layers.Conv2D(count, config.kernel_size, activation="relu", padding="same",
                                               strides=2) for count in config.filters]
        self.encoder = keras.Sequential(encoder_layers, name="encoder")
        decoder_layers = [keras.Input((None, None, config.filters[-1]))]
        decoder_layers += [keras.layers.Conv2DTranspose(count, config.kernel_size, strides=2, activation="relu",
                                                        padding="same") for count in reversed(config.filters)]
        decoder_layers.append(keras.layers.Conv2D(config.channels, config.kernel_size, activation="sigmoid",
                                                  padding="same"))
        self.decoder = keras.Sequential(decoder_layers, name="decoder")

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (one halving per strided layer)."""
        return 2 ** len(self.config.filters)

    @property
    def channels(self) -> int:
        """Channels of the images this model denoises."""
        return self.config.channels


@dataclasses.dataclass(frozen=True)
class DnCNNConfig:
    """Residual denoiser: ``depth`` 3x3 convolutions of ``filters`` channels predict the noise."""

    channels: int = 1
    depth: int = 7
    filters: int = 32
    kernel_size: int = 3

    def __post_init__(self):
        _check_channels(self.channels)
        if self.depth < 2 or self.filters < 1 or self.kernel_size < 1:
            raise ValueError(f"DnCNNConfig needs depth >= 2 and positive sizes, got {self}")


@keras.saving.register_keras_serializable(package="heartwatch")
class DnCNN(Autoencoder):
    """DnCNN-style residual denoiser: output = clip(input - estimated noise, 0, 1); no striding."""

    config_class = DnCNNConfig
    domain = IMAGE_DOMAIN

    def __init__(self, config: DnCNNConfig, **kwargs):
        super().__init__(config, **kwargs)
        feature_layers = [keras.Input((None, None, config.channels))]
        feature_layers += [keras.layers.Conv2D(config.filters, config.kernel_size, padding="same", activation="relu")
                           for _ in range(config.depth - 1)]
        self.encoder = keras.Sequential(feature_layers, name="encoder")
        self.decoder = keras.Sequential([keras.Input((None, None, config.filters)),
                                         keras.layers.Conv2D(config.channels, config.kernel_size, padding="same")],
                                        name="decoder")

    def call(self, inputs, training=False):
        noise = self.decoder(self.encoder(inputs, training=training), training=training)
        return keras.ops.clip(inputs - noise, 0.0, 1.0)

    @property
    def size_multiple(self) -> int:
        """Any height and width works (no striding)."""
        return 1

    @property
    def channels(self) -> int:
        """Channels of the images this model denoises."""
        return self.config.channels


@dataclasses.dataclass(frozen=True)
class UNetDenoiserConfig:
    """Residual U-Net: ``levels`` halvings, two 3x3 convolutions per level (``filters`` doubling per level).

    ``flip_ensemble`` averages, outside training, the outputs for the image and for its mirror image
    (mirrored back): a self-ensemble that costs a second pass. ``convolutions`` is the number of 3x3
    convolutions per level. ``space_to_depth`` > 1 first folds each ``space_to_depth`` x
    ``space_to_depth`` block of pixels into channels (as FFDNet, Zhang et al. 2018, does) so the
    U-Net works at that fraction of the resolution, and unfolds the noise estimate back.
    ``residual_blocks`` adds each level's input to the output of its convolutions (through a 1x1
    convolution where the widths differ) before the last activation, as in a ResNet block.
    """

    channels: int = 1
    filters: int = 24
    levels: int = 2
    flip_ensemble: bool = True
    convolutions: int = 2
    space_to_depth: int = 1
    residual_blocks: bool = False

    def __post_init__(self):
        _check_channels(self.channels)
        if self.filters < 1 or self.levels < 1 or self.convolutions < 1 or self.space_to_depth < 1:
            raise ValueError(f"UNetDenoiserConfig needs filters >= 1, levels >= 1, convolutions >= 1 and "
                             f"space_to_depth >= 1, got {self}")


def _convolutions(tensor, filters: int, count: int, residual: bool = False):
    """``count`` 3x3 ReLU convolutions; ``residual``: the input (1x1-projected to ``filters`` if need be) is
    added before the last ReLU."""
    start = tensor
    for index in range(count):
        last = index == count - 1
        tensor = keras.layers.Conv2D(filters, 3, padding="same", activation=None if residual and last else "relu")(
            tensor)
    if not residual:
        return tensor
    if start.shape[-1] != filters:
        start = keras.layers.Conv2D(filters, 1)(start)
    return keras.layers.Activation("relu")(keras.layers.Add()([start, tensor]))


@keras.saving.register_keras_serializable(package="heartwatch")
class SpaceToDepth(keras.layers.Layer):
    """Folds ``block_size`` x ``block_size`` pixel blocks into channels (``inverse``: unfolds them back)."""

    def __init__(self, block_size: int, inverse: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.block_size = block_size
        self.inverse = inverse

    def call(self, inputs):
        if self.inverse:
            return tf.nn.depth_to_space(inputs, self.block_size)
        return tf.nn.space_to_depth(inputs, self.block_size)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        factor = self.block_size if self.inverse else 1 / self.block_size

        def scaled(size):
            return None if size is None else int(size * factor)

        return batch, scaled(height), scaled(width), int(channels / factor / factor)

    def get_config(self):
        return {**super().get_config(), "block_size": self.block_size, "inverse": self.inverse}


@keras.saving.register_keras_serializable(package="heartwatch")
class UNetDenoiser(Autoencoder):
    """A small residual U-Net (Ronneberger et al. 2015): output = clip(input - estimated noise, 0, 1).

    The encoder returns the skip features of every level and the bottom (a list); the decoder maps
    that list to the noise estimate. Height and width must be multiples of ``2 ** levels`` (padded).
    """

    config_class = UNetDenoiserConfig
    domain = IMAGE_DOMAIN

    def __init__(self, config: UNetDenoiserConfig, **kwargs):
        super().__init__(config, **kwargs)
        widths = [config.filters * 2 ** level for level in range(config.levels + 1)]
        block = config.space_to_depth
        inputs = keras.Input((None, None, config.channels))
        features, tensor = [], SpaceToDepth(block)(inputs) if block > 1 else inputs
        residual = config.residual_blocks
        for width in widths[:-1]:
            tensor = _convolutions(tensor, width, config.convolutions, residual)
            features.append(tensor)
            tensor = keras.layers.MaxPooling2D()(tensor)
        features.append(_convolutions(tensor, widths[-1], config.convolutions, residual))
        self.encoder = keras.Model(inputs, features, name="encoder")
        skips = [keras.Input((None, None, width)) for width in widths]
        tensor = skips[-1]
        for width, skip in zip(reversed(widths[:-1]), reversed(skips[:-1])):
            tensor = keras.layers.Conv2DTranspose(width, 2, strides=2, padding="same")(tensor)
            tensor = _convolutions(keras.layers.Concatenate()([tensor, skip]), width, config.convolutions,
                                   residual)
        noise = keras.layers.Conv2D(config.channels * block ** 2, 1)(tensor)
        self.decoder = keras.Model(skips, SpaceToDepth(block, inverse=True)(noise) if block > 1 else noise,
                                   name="decoder")

    def _denoise(self, inputs, training=False):
        noise = self.decoder(self.encoder(inputs, training=training), training=training)
        return keras.ops.clip(inputs - noise, 0.0, 1.0)

    def call(self, inputs, training=False):
        denoised = self._denoise(inputs, training=training)
        if training or not self.config.flip_ensemble:
            return denoised
        mirrored = keras.ops.flip(self._denoise(keras.ops.flip(inputs, axis=2), training=training), axis=2)
        return (denoised + mirrored) / 2.0

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (one halving per level, times ``space_to_depth``)."""
        return 2 ** self.config.levels * self.config.space_to_depth

    @property
    def channels(self) -> int:
        """Channels of the images this model denoises."""
        return self.config.channels


MODELS = {BASELINE_MODEL: TutorialDenoise, DNCNN_MODEL: DnCNN, UNET_MODEL: UNetDenoiser}


def build_denoiser(name: str, channels: int, parameters: dict | None = None) -> Autoencoder:
    """Builds denoiser ``name`` for ``channels``-channel images from config overrides (unknown keys are refused)."""
    if name not in MODELS:
        raise ValueError(f"unknown denoiser {name!r}; denoisers: {', '.join(sorted(MODELS))}")
    model_class = MODELS[name]
    return model_class(config_from_dict(model_class.config_class, {**dict(parameters or {}), "channels": channels}))
