"""Convolutional image denoisers, registered by name through ``MODELS``, and their training.

* ``denoise_tutorial``: the TensorFlow tutorial's ``Denoise``: Conv2D 16 and 8 filters with stride 2,
  two Conv2DTranspose layers back up and a sigmoid Conv2D; the baseline. Inputs are padded to a
  multiple of 4 (``size_multiple``).
* ``dncnn`` (the default): a residual DnCNN-style network (Zhang et al. 2017) without striding: a stack
  of 3x3 convolutions estimates the noise, which is subtracted from the input and clipped to [0, 1].
  Its ``encoder`` is the feature stack and its ``decoder`` the noise head, so ``decode`` returns the
  noise estimate; ``reconstruct`` and ``per_sample_error`` behave as for every autoencoder.

Both are fully convolutional (any height and width, ``channels`` fixed by the config) and follow the
``models.family.variants.base.Autoencoder`` pattern: frozen config dataclass, Keras serialisation.

``train_denoiser`` fits noisy -> clean with fresh noise drawn for every batch (``NoisyBatches``),
a fixed noisy validation set, best-``val_loss`` checkpointing and early stopping.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time

import keras
import numpy as np

from models.images import io as image_tools
from models.family.base import Autoencoder

LOGGER = logging.getLogger(__name__)
DEFAULT_MODEL = "dncnn"
# The value of ``models.family.variants.base.IMAGE_DOMAIN``: what ``models.family.registry.image_models`` selects on.
IMAGE_DOMAIN = "image"
BASELINE_MODEL = "denoise_tutorial"


def _check_channels(channels: int) -> None:
    if channels not in image_tools.SUPPORTED_CHANNELS:
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


MODELS = {BASELINE_MODEL: TutorialDenoise, DEFAULT_MODEL: DnCNN}


def build_denoiser(name: str, channels: int, parameters: dict | None = None) -> Autoencoder:
    """Builds denoiser ``name`` for ``channels``-channel images from config overrides."""
    from models.family import registry

    if name not in MODELS:
        raise ValueError(f"unknown denoiser {name!r}; denoisers: {', '.join(sorted(MODELS))}")
    return registry.build(name, {**dict(parameters or {}), "channels": channels})


def denoise_array(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Denoises a ``(N, H, W, C)`` float batch of one size: pads to the model's multiple, predicts, crops."""
    padded, (height, width) = image_tools.pad_to_multiple(np.asarray(images, np.float32), model.size_multiple)
    outputs = model.predict(padded, batch_size=batch_size, verbose=0)
    return image_tools.crop(np.asarray(outputs, np.float32), height, width)


class NoisyBatches(keras.utils.PyDataset):
    """``(noisy, clean)`` batches of shuffled clean images with fresh noise every time a batch is drawn."""

    def __init__(self, clean: np.ndarray, noise: image_tools.NoiseSpec, batch_size: int, seed: int, **kwargs):
        super().__init__(**kwargs)
        if len(clean) == 0:
            raise ValueError("no training images")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.clean = np.asarray(clean, np.float32)
        self.noise = noise
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(self.clean))

    def __len__(self):
        return int(np.ceil(len(self.clean) / self.batch_size))

    def __getitem__(self, index):
        clean = self.clean[self.order[index * self.batch_size:(index + 1) * self.batch_size]]
        return image_tools.add_noise(clean, self.noise, self.rng), clean

    def on_epoch_end(self):
        self.order = self.rng.permutation(len(self.clean))


@dataclasses.dataclass(frozen=True)
class DenoiserTrainingConfig:
    """What to train and how: model, its parameters, noise and fit settings."""

    model: str = DEFAULT_MODEL
    parameters: dict = dataclasses.field(default_factory=dict)
    noise: str = "gaussian:0.2"
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    loss: str = "mse"
    early_stopping_patience: int = 3

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"unknown denoiser {self.model!r}; denoisers: {', '.join(sorted(MODELS))}")
        if self.noise_spec().is_none:
            raise ValueError("training a denoiser needs noise (for example gaussian:0.2)")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be positive, got {self.epochs} and {self.batch_size}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.loss not in ("mse", "mae"):
            raise ValueError(f"loss must be 'mse' or 'mae', got {self.loss!r}")
        if self.early_stopping_patience < 0:
            raise ValueError("early_stopping_patience must be >= 0 (0 disables early stopping)")

    def noise_spec(self) -> image_tools.NoiseSpec:
        """The parsed noise."""
        return image_tools.NoiseSpec.parse(self.noise)


@dataclasses.dataclass
class DenoiserTrainingResult:
    """The trained model (best validation weights), its loss history and timings."""

    model: Autoencoder
    history: dict
    best_validation_loss: float
    best_epoch: int
    epochs_run: int
    seconds: float
    parameter_count: int


def fixed_noisy(images: np.ndarray, noise: image_tools.NoiseSpec, seed: int) -> np.ndarray:
    """A reproducible noisy copy of ``images`` (validation and test sets)."""
    return image_tools.add_noise(images, noise, np.random.default_rng(seed))


def train_denoiser(config: DenoiserTrainingConfig, train_images: np.ndarray, validation_images: np.ndarray,
                   seed: int = 0, checkpoint_path: str | None = None, verbose: int = 2) -> DenoiserTrainingResult:
    """Trains ``config.model`` to map noisy to clean ``(N, H, W, C)`` images in [0, 1].

    Training noise is drawn afresh per batch; validation noise is fixed (seeded) so ``val_loss`` is
    comparable across epochs. The best-``val_loss`` weights are checkpointed (``checkpoint_path``, a
    ``.weights.h5`` file, or a temporary one) and restored into the returned model.
    """
    train_images = np.asarray(train_images, np.float32)
    validation_images = np.asarray(validation_images, np.float32)
    if train_images.ndim != 4 or validation_images.ndim != 4:
        raise ValueError(f"images must be (count, height, width, channels); got {train_images.shape} and "
                         f"{validation_images.shape}")
    if len(train_images) == 0 or len(validation_images) == 0:
        raise ValueError("training needs at least one training and one validation image")
    channels = train_images.shape[-1]
    if validation_images.shape[-1] != channels:
        raise ValueError(f"training images have {channels} channels but validation images "
                         f"{validation_images.shape[-1]}")
    keras.utils.set_random_seed(seed)
    model = build_denoiser(config.model, channels, config.parameters)
    multiple = model.size_multiple
    if train_images.shape[1] % multiple or train_images.shape[2] % multiple:
        train_images = image_tools.pad_to_multiple(train_images, multiple)[0]
        validation_images = image_tools.pad_to_multiple(validation_images, multiple)[0]
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=config.loss)
    noise = config.noise_spec()
    validation_noisy = fixed_noisy(validation_images, noise, seed + 1)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = checkpoint_path or os.path.join(scratch, "best.weights.h5")
        callbacks = [keras.callbacks.ModelCheckpoint(checkpoint, monitor="val_loss", save_best_only=True,
                                                     save_weights_only=True)]
        if config.early_stopping_patience:
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss",
                                                           patience=config.early_stopping_patience))
        started = time.perf_counter()
        history = model.fit(NoisyBatches(train_images, noise, config.batch_size, seed), epochs=config.epochs,
                            validation_data=(validation_noisy, validation_images), callbacks=callbacks,
                            verbose=verbose)
        seconds = time.perf_counter() - started
        model.load_weights(checkpoint)
    losses = [float(value) for value in history.history["val_loss"]]
    best_epoch = int(np.argmin(losses))
    LOGGER.info("%s: %d epochs in %.1f s, best val_loss %.6f at epoch %d", config.model, len(losses), seconds,
                losses[best_epoch], best_epoch + 1)
    return DenoiserTrainingResult(
        model=model, history={key: [float(value) for value in values] for key, values in history.history.items()},
        best_validation_loss=losses[best_epoch], best_epoch=best_epoch + 1, epochs_run=len(losses), seconds=seconds,
        parameter_count=int(model.count_params()))


def evaluate_denoiser(model, clean: np.ndarray, noisy: np.ndarray, batch_size: int = 256) -> dict:
    """Mean PSNR/SSIM of noisy and denoised images against the clean ones (plus the gains)."""
    denoised = denoise_array(model, noisy, batch_size)
    noisy_psnr, denoised_psnr = image_tools.psnr(clean, noisy), image_tools.psnr(clean, denoised)
    noisy_ssim, denoised_ssim = image_tools.ssim(clean, noisy), image_tools.ssim(clean, denoised)
    return {"images": int(len(clean)), "noisy_psnr": float(np.mean(noisy_psnr)),
            "denoised_psnr": float(np.mean(denoised_psnr)), "noisy_ssim": float(np.mean(noisy_ssim)),
            "denoised_ssim": float(np.mean(denoised_ssim)),
            "psnr_gain": float(np.mean(denoised_psnr) - np.mean(noisy_psnr)),
            "ssim_gain": float(np.mean(denoised_ssim) - np.mean(noisy_ssim))}


def load_denoiser(path: str):
    """Loads a ``.keras`` denoiser saved by the export (the classes here are registered on import)."""
    return keras.saving.load_model(path, compile=False)
