"""Training and evaluating image denoisers: noisy -> clean through the one fit loop.

``train_denoiser`` fits a denoiser of ``models.family.denoisers`` with fresh noise drawn for every
batch (``NoisyBatches``, a ``keras.utils.PyDataset``) against a fixed, seeded noisy validation set
(``fixed_noisy``), through ``models.training.fit.fit`` (best-``val_loss`` weights, early stopping,
optional checkpoint). ``denoise_array`` and ``evaluate_denoiser`` apply a trained model and measure
PSNR/SSIM gains.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from models.family.base import Autoencoder
from models.family.denoisers import DEFAULT_MODEL, MODELS, build_denoiser
from models.images.io import crop, pad_to_multiple
from models.images.noise import NoiseSpec, add_noise
from models.images.quality import psnr, ssim
from models.training.fit import TrainingResult, fit
from models.training.settings import FitSettings


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
        self.fit_settings()

    def noise_spec(self) -> NoiseSpec:
        """The parsed noise."""
        return NoiseSpec.parse(self.noise)

    def fit_settings(self) -> FitSettings:
        """The settings the one fit loop uses."""
        return FitSettings(epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
                           loss=self.loss, early_stopping_patience=self.early_stopping_patience)


class NoisyBatches(keras.utils.PyDataset):
    """``(noisy, clean)`` batches of shuffled clean images with fresh noise every time a batch is drawn."""

    def __init__(self, clean: np.ndarray, noise: NoiseSpec, batch_size: int, seed: int, **kwargs):
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
        return add_noise(clean, self.noise, self.rng), clean

    def on_epoch_end(self):
        self.order = self.rng.permutation(len(self.clean))


def fixed_noisy(images: np.ndarray, noise: NoiseSpec, seed: int) -> np.ndarray:
    """A reproducible noisy copy of ``images`` (validation and test sets)."""
    return add_noise(images, noise, np.random.default_rng(seed))


def train_denoiser(config: DenoiserTrainingConfig, train_images: np.ndarray, validation_images: np.ndarray,
                   seed: int = 0, checkpoint_path: str | None = None, verbose: int = 2) -> TrainingResult:
    """Trains ``config.model`` to map noisy to clean ``(N, H, W, C)`` images in [0, 1].

    Training noise is drawn afresh per batch; validation noise is fixed (seeded with ``seed + 1``) so
    ``val_loss`` is comparable across epochs. Images are padded to the model's size multiple. The
    best-``val_loss`` weights are restored into the returned model and, when ``checkpoint_path`` (a
    ``.weights.h5`` file) is given, written there.
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
    train_images = pad_to_multiple(train_images, model.size_multiple)[0]
    validation_images = pad_to_multiple(validation_images, model.size_multiple)[0]
    noise = config.noise_spec()
    validation = (fixed_noisy(validation_images, noise, seed + 1), validation_images)
    return fit(model, NoisyBatches(train_images, noise, config.batch_size, seed), validation, config.fit_settings(),
               checkpoint_path=checkpoint_path, verbose=verbose, name=config.model)


def denoise_array(model: Autoencoder, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Denoises a ``(N, H, W, C)`` float batch of one size: pads to the model's multiple, predicts, crops."""
    padded, (height, width) = pad_to_multiple(np.asarray(images, np.float32), model.size_multiple)
    outputs = model.predict(padded, batch_size=batch_size, verbose=0)
    return crop(np.asarray(outputs, np.float32), height, width)


def evaluate_denoiser(model: Autoencoder, clean: np.ndarray, noisy: np.ndarray, batch_size: int = 256) -> dict:
    """Mean PSNR/SSIM of noisy and denoised images against the clean ones (plus the gains)."""
    denoised = denoise_array(model, noisy, batch_size)
    noisy_psnr, denoised_psnr = psnr(clean, noisy), psnr(clean, denoised)
    noisy_ssim, denoised_ssim = ssim(clean, noisy), ssim(clean, denoised)
    return {"images": len(clean), "noisy_psnr": float(np.mean(noisy_psnr)),
            "denoised_psnr": float(np.mean(denoised_psnr)), "noisy_ssim": float(np.mean(noisy_ssim)),
            "denoised_ssim": float(np.mean(denoised_ssim)),
            "psnr_gain": float(np.mean(denoised_psnr) - np.mean(noisy_psnr)),
            "ssim_gain": float(np.mean(denoised_ssim) - np.mean(noisy_ssim))}
