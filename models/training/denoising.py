"""Training and evaluating image denoisers: noisy -> clean, streamed through ``tf.data``.

``train_denoiser`` (in-memory arrays) and ``train_denoiser_on_records`` (record shards, as
`heartwatch denoise train` writes them) fit a denoiser of ``models.family.denoisers`` on batches of
``models.training.denoise_data`` (fresh noise for every batch, shuffled, flipped, optionally random
patches) against validation images with fixed, seeded noise, so ``val_loss`` is comparable across
epochs. ``fit_denoiser`` is Keras ``fit`` with the optimiser (Adam, or AdamW with weight decay) and the
learning-rate schedule of the config (cosine decay by default, after an optional linear warm-up;
``plateau`` or ``constant``), the best-``val_loss`` weights restored (``EarlyStopping``,
patience 0 = off), an optional best-only checkpoint and a time budget (``time_budget_minutes``: fewer
epochs, with the decay shortened to match, where the planned ones would not fit:
``models.training.time_budget``); it returns ``models.training.fit``'s
``TrainingResult``. ``precision`` (``auto`` by default) trains in mixed bfloat16 where the machine computes
bfloat16 natively (``native_bfloat16``: a CPU with AVX-512 BF16 or AMX, or a GPU of compute capability 8 or
more) and in float32 elsewhere; the returned model is always a float32 copy of the trained weights, so an
export computes the same everywhere. ``denoise_array``, ``evaluate_denoiser`` and ``evaluate_on_records`` apply a
trained model and measure PSNR/SSIM gains (the latter streaming, with running sums).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time

import keras
import numpy as np

from models.family.base import Autoencoder
from models.family.denoisers import DEFAULT_MODEL, MODELS, build_denoiser
from models.images.io import crop, pad_to_multiple
from models.images.noise import NoiseSpec, add_noise
from models.images.quality import psnr, ssim
from models.training import denoise_data
from models.training.fit import MONITOR, TrainingResult
from models.training.settings import DENOISER_LOSSES, PRECISIONS, SCHEDULES, FitSettings
from models.training.time_budget import CosineSchedule, TimeBudget

LOGGER = logging.getLogger(__name__)
PSNR_EPSILON = 1e-10
COSINE_FLOOR = 0.02
PLATEAU_FACTOR = 0.5
PLATEAU_PATIENCE = 2
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CPU_INFO = "/proc/cpuinfo"


@dataclasses.dataclass(frozen=True)
class DenoiserTrainingConfig:
    """What to train and how: model, its parameters, noise, fit settings and the input pipeline."""

    model: str = DEFAULT_MODEL
    parameters: dict = dataclasses.field(default_factory=dict)
    noise: str = "gaussian:0.2"
    epochs: int = 96
    batch_size: int = 32
    learning_rate: float = 2e-3
    loss: str = "psnr"
    early_stopping_patience: int = 0
    schedule: str = "cosine"
    patch_size: int = 0
    flip: bool = True
    shuffle_buffer: int = 4096
    shift: int = 0
    warmup_epochs: float = 0.0
    weight_decay: float = 0.0
    precision: str = "auto"
    time_budget_minutes: float = 8.0

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"unknown denoiser {self.model!r}; denoisers: {', '.join(sorted(MODELS))}")
        if self.noise_spec().is_none:
            raise ValueError("training a denoiser needs noise (for example gaussian:0.2)")
        if self.loss not in DENOISER_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(DENOISER_LOSSES)}, got {self.loss!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown learning-rate schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.patch_size < 0 or self.shuffle_buffer < 1 or self.shift < 0:
            raise ValueError(f"need patch_size >= 0, shuffle_buffer >= 1 and shift >= 0, got {self.patch_size}, "
                             f"{self.shuffle_buffer} and {self.shift}")
        if not 0 <= self.warmup_epochs < self.epochs or self.weight_decay < 0:
            raise ValueError(f"need 0 <= warmup_epochs < epochs and weight_decay >= 0, got {self.warmup_epochs} and "
                             f"{self.weight_decay}")
        if not self.time_budget_minutes >= 0:
            raise ValueError(f"need time_budget_minutes >= 0 (0: no budget), got {self.time_budget_minutes}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        self.fit_settings()

    def noise_spec(self) -> NoiseSpec:
        """The parsed noise."""
        return NoiseSpec.parse(self.noise)

    def fit_settings(self) -> FitSettings:
        """The checked epochs, batch size, learning rate and patience (the loss is ``loss_function``'s)."""
        return FitSettings(epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
                           loss="mse", early_stopping_patience=self.early_stopping_patience)


@keras.saving.register_keras_serializable(package="heartwatch")
def negative_psnr(clean, denoised):
    """Per-image ``-PSNR`` in dB (``10 * log10(MSE)``): its batch mean is minus the mean PSNR, the metric judged."""
    squared = keras.ops.square(clean - denoised)
    error = keras.ops.mean(keras.ops.reshape(squared, (keras.ops.shape(squared)[0], -1)), axis=-1)
    return 10.0 * keras.ops.log(error + PSNR_EPSILON) / keras.ops.log(10.0)


def loss_function(name: str):
    """The Keras loss of ``name``: ``mse``, ``mae`` or ``psnr`` (``negative_psnr``, per image)."""
    return negative_psnr if name == "psnr" else name


def learning_rate(config: DenoiserTrainingConfig, steps_per_epoch: int):
    """The optimiser's learning rate: for ``cosine``, a linear warm-up from ``COSINE_FLOOR`` of the rate over
    ``warmup_epochs``, then a cosine decay over the remaining steps down to ``COSINE_FLOOR`` of it
    (``models.training.time_budget.CosineSchedule``, which a time budget can shorten); else the constant rate."""
    if config.schedule != "cosine":
        return config.learning_rate
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    decay_steps = max(1, config.epochs * steps_per_epoch - warmup_steps)
    return CosineSchedule(config.learning_rate, decay_steps, COSINE_FLOOR, warmup_steps)


def optimizer(config: DenoiserTrainingConfig, steps_per_epoch: int, rate=None) -> keras.optimizers.Optimizer:
    """Adam, or AdamW when ``weight_decay`` > 0, on ``rate`` (default: ``learning_rate``'s schedule)."""
    rate = learning_rate(config, steps_per_epoch) if rate is None else rate
    if config.weight_decay:
        return keras.optimizers.AdamW(rate, weight_decay=config.weight_decay)
    return keras.optimizers.Adam(rate)


def fit_denoiser(model: keras.Model, train, validation, config: DenoiserTrainingConfig, steps_per_epoch: int,
                 checkpoint_path: str | None = None, verbose: int = 2) -> TrainingResult:
    """Compiles and fits ``model`` on ``(noisy, clean)`` datasets; returns it with its best-``val_loss`` weights."""
    settings = config.fit_settings()
    rate = learning_rate(config, steps_per_epoch)
    model.compile(optimizer=optimizer(config, steps_per_epoch, rate), loss=loss_function(config.loss))
    best = keras.callbacks.EarlyStopping(monitor=MONITOR, patience=settings.early_stopping_patience or settings.epochs,
                                         restore_best_weights=True)
    callbacks = [best]
    if config.time_budget_minutes:
        callbacks.append(TimeBudget(config.time_budget_minutes * 60, settings.epochs, steps_per_epoch,
                                    rate if isinstance(rate, CosineSchedule) else None))
    if config.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor=MONITOR, factor=PLATEAU_FACTOR,
                                                           patience=PLATEAU_PATIENCE))
    if checkpoint_path:
        callbacks.append(keras.callbacks.ModelCheckpoint(checkpoint_path, monitor=MONITOR, save_best_only=True,
                                                         save_weights_only=True))
    started = time.perf_counter()
    history = model.fit(train, validation_data=validation, epochs=settings.epochs, callbacks=callbacks,
                        verbose=verbose, shuffle=False)
    seconds = time.perf_counter() - started
    history = {key: [float(value) for value in values] for key, values in history.history.items()
               if key != "learning_rate"}
    epochs_run = len(history[MONITOR])
    best_validation_loss = history[MONITOR][best.best_epoch]
    LOGGER.info("%s: %d epochs in %.1f s (%s), best val_loss %.6f at epoch %d", config.model, epochs_run, seconds,
                model.dtype_policy.name, best_validation_loss, best.best_epoch + 1)
    return TrainingResult(model=as_float32(model), history=history, best_validation_loss=best_validation_loss,
                          best_epoch=best.best_epoch + 1, epochs_run=epochs_run, seconds=seconds,
                          parameter_count=int(model.count_params()), dtype_policy=model.dtype_policy.name)


def native_bfloat16() -> bool:
    """Whether this machine computes bfloat16 natively: a visible GPU of compute capability >= 8, or a CPU whose
    flags (Linux ``/proc/cpuinfo``) include AVX-512 BF16 or AMX BF16. Elsewhere bfloat16 is emulated and slower."""
    import tensorflow as tf

    for device in tf.config.list_physical_devices("GPU"):
        if tf.config.experimental.get_device_details(device).get("compute_capability", (0, 0))[0] >= 8:
            return True
    try:
        with open(CPU_INFO) as handle:  # a system file, not a user path
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in BFLOAT16_CPU_FLAGS)


def training_policy(precision: str) -> str:
    """The Keras dtype policy ``precision`` trains under: ``auto`` is ``mixed_bfloat16`` where ``native_bfloat16``."""
    if precision == "auto":
        return "mixed_bfloat16" if native_bfloat16() else "float32"
    return precision


@contextlib.contextmanager
def dtype_policy(name: str):
    """Keras's global dtype policy set to ``name`` for the layers built inside, restored afterwards."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_for_training(config: DenoiserTrainingConfig, channels: int) -> Autoencoder:
    """``config.model`` built under its training dtype policy (``training_policy``)."""
    with dtype_policy(training_policy(config.precision)):
        return build_denoiser(config.model, channels, config.parameters)


def as_float32(model: Autoencoder) -> Autoencoder:
    """``model`` itself when it computes in float32, else a float32 copy holding its (float32) weights."""
    if model.dtype_policy.compute_dtype == "float32":
        return model
    with dtype_policy("float32"):
        copy = type(model)(model.config)
    copy.set_weights(model.get_weights())
    return copy


def fixed_noisy(images: np.ndarray, noise: NoiseSpec, seed: int) -> np.ndarray:
    """A reproducible noisy copy of ``images`` (validation and test sets held in memory)."""
    return add_noise(images, noise, np.random.default_rng(seed))


def _check_channels(channels: int, other: int, what: str) -> None:
    if other != channels:
        raise ValueError(f"training images have {channels} channels but {what} images {other}")


def train_denoiser(config: DenoiserTrainingConfig, train_images: np.ndarray, validation_images: np.ndarray,
                   seed: int = 0, checkpoint_path: str | None = None, verbose: int = 2) -> TrainingResult:
    """Trains ``config.model`` to map noisy to clean ``(N, H, W, C)`` in-memory images in [0, 1].

    Training noise is drawn afresh per batch; validation noise is fixed (``fixed_noisy`` with
    ``seed + 1``) so ``val_loss`` is comparable across epochs. Images are padded to the model's size
    multiple. The best-``val_loss`` weights are restored into the returned model and, when
    ``checkpoint_path`` (a ``.weights.h5`` file) is given, written there.
    """
    train_images = np.asarray(train_images, np.float32)
    validation_images = np.asarray(validation_images, np.float32)
    if train_images.ndim != 4 or validation_images.ndim != 4:
        raise ValueError(f"images must be (count, height, width, channels); got {train_images.shape} and "
                         f"{validation_images.shape}")
    if len(train_images) == 0 or len(validation_images) == 0:
        raise ValueError("training needs at least one training and one validation image")
    channels = train_images.shape[-1]
    _check_channels(channels, validation_images.shape[-1], "validation")
    keras.utils.set_random_seed(seed)
    model = build_for_training(config, channels)
    batches = denoise_data.training_batches(denoise_data.array_images(train_images), config.noise_spec(),
                                            config.batch_size, seed, model.size_multiple, config.shuffle_buffer,
                                            config.patch_size, config.flip, len(train_images), config.shift)
    validation_images = pad_to_multiple(validation_images, model.size_multiple)[0]
    validation = (fixed_noisy(validation_images, config.noise_spec(), seed + 1), validation_images)
    return fit_denoiser(model, batches, validation, config, math.ceil(len(train_images) / config.batch_size),
                        checkpoint_path, verbose)


def train_denoiser_on_records(config: DenoiserTrainingConfig, train_paths: list[str], validation_paths: list[str],
                              counts: tuple[int, int], channels: int, seed: int = 0,
                              checkpoint_path: str | None = None, verbose: int = 2) -> TrainingResult:
    """Trains ``config.model`` on record shards (``models.images.records``) streamed through ``tf.data``.

    ``counts`` (images in the train and the validation shards) set the schedule's length and the
    batches per epoch; validation noise comes from each image's key with ``seed + 1``
    (``models.images.noise.noise_rng``).
    """
    train_count, validation_count = counts
    if train_count < 1:
        raise ValueError("training needs at least one training image")
    keras.utils.set_random_seed(seed)
    model = build_for_training(config, channels)
    noise = config.noise_spec()
    batches = denoise_data.training_batches(denoise_data.record_images(train_paths, channels, shuffle=True, seed=seed),
                                            noise, config.batch_size, seed, model.size_multiple,
                                            config.shuffle_buffer, config.patch_size, config.flip, train_count,
                                            config.shift)
    validation = denoise_data.fixed_noisy_batches(denoise_data.record_images(validation_paths, channels), noise,
                                                  seed + 1, config.batch_size, model.size_multiple,
                                                  config.patch_size, validation_count)
    return fit_denoiser(model, batches, validation, config, math.ceil(train_count / config.batch_size),
                        checkpoint_path, verbose)


def denoise_array(model: Autoencoder, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Denoises a ``(N, H, W, C)`` float batch of one size: pads to the model's multiple, predicts, crops."""
    padded, (height, width) = pad_to_multiple(np.asarray(images, np.float32), model.size_multiple)
    outputs = model.predict(padded, batch_size=batch_size, verbose=0)
    return crop(np.asarray(outputs, np.float32), height, width)


def quality_sums(clean: np.ndarray, noisy: np.ndarray, denoised: np.ndarray) -> dict:
    """Per-batch sums of PSNR/SSIM of the noisy and denoised images (``summarise_quality`` turns them into means)."""
    return {"images": len(clean), "noisy_psnr": float(np.sum(psnr(clean, noisy))),
            "denoised_psnr": float(np.sum(psnr(clean, denoised))), "noisy_ssim": float(np.sum(ssim(clean, noisy))),
            "denoised_ssim": float(np.sum(ssim(clean, denoised)))}


def summarise_quality(sums: dict) -> dict:
    """Mean PSNR/SSIM of noisy and denoised images and the gains, from ``quality_sums`` added up."""
    count = sums["images"]
    if not count:
        raise ValueError("no images to evaluate")
    means = {name: sums[name] / count for name in ("noisy_psnr", "denoised_psnr", "noisy_ssim", "denoised_ssim")}
    return {"images": count, **means, "psnr_gain": means["denoised_psnr"] - means["noisy_psnr"],
            "ssim_gain": means["denoised_ssim"] - means["noisy_ssim"]}


def evaluate_denoiser(model: Autoencoder, clean: np.ndarray, noisy: np.ndarray, batch_size: int = 256) -> dict:
    """Mean PSNR/SSIM of noisy and denoised images against the clean ones (plus the gains)."""
    return summarise_quality(quality_sums(clean, noisy, denoise_array(model, noisy, batch_size)))


def evaluate_on_records(model: Autoencoder, paths: list[str], noise: NoiseSpec, seed: int, batch_size: int = 256,
                        keep: int = 0) -> tuple[dict, list]:
    """Streams held-out record shards with fixed noise (``noise_rng(seed, key)``) through ``model``.

    Returns the quality summary and the first ``keep`` ``(key, noisy, denoised, clean)`` by file order.
    """
    sums = {"images": 0, "noisy_psnr": 0.0, "denoised_psnr": 0.0, "noisy_ssim": 0.0, "denoised_ssim": 0.0}
    kept = []
    images = denoise_data.fixed_noisy_images(denoise_data.record_images(paths, model.channels), noise, seed)
    for keys, noisy, clean in images.batch(batch_size).as_numpy_iterator():
        denoised = denoise_array(model, noisy, batch_size)
        for name, value in quality_sums(clean, noisy, denoised).items():
            sums[name] += value
        for index in range(min(keep - len(kept), len(keys))):
            kept.append((keys[index].decode("utf-8"), noisy[index], denoised[index], clean[index]))
    return summarise_quality(sums), kept
