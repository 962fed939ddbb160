"""Noise models for the denoisers: what a clean image is corrupted with before it is restored.

Images are float32 arrays in [0, 1] shaped ``(height, width, channels)`` (batches add a leading
axis). Noise is drawn from the caller's ``numpy.random.Generator`` (so runs repeat with a seed) and
is always clipped back to [0, 1]:

* ``gaussian``: ``x + amount * N(0, 1)``: the tutorial's ``noise_factor`` (0.2 there, 0.6 in the book);
* ``speckle``: ``x + amount * x * N(0, 1)`` (multiplicative, like scikit-image's ``speckle`` with
  ``var = amount ** 2``);
* ``salt_and_pepper``: a fraction ``amount`` of pixels set to 0 or 1 with equal odds (all channels).

``noise_rng(seed, key)`` is the generator of one image's fixed noise: it depends only on the seed and
the image's key, so `denoise run` and the held-out images of `denoise train` get the same noise
however the work is split.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

NOISE_KINDS = ("none", "gaussian", "speckle", "salt_and_pepper")
DEFAULT_NOISE_AMOUNTS = {"none": 0.0, "gaussian": 0.2, "speckle": 0.2, "salt_and_pepper": 0.05}


@dataclasses.dataclass(frozen=True)
class NoiseSpec:
    """A noise kind and its strength, written ``kind[:amount]`` on the command line."""

    kind: str = "gaussian"
    amount: float = DEFAULT_NOISE_AMOUNTS["gaussian"]

    def __post_init__(self):
        if self.kind not in NOISE_KINDS:
            raise ValueError(f"unknown noise {self.kind!r}; choose one of {', '.join(NOISE_KINDS)}")
        if not np.isfinite(self.amount) or self.amount < 0:
            raise ValueError(f"noise amount must be a finite number >= 0, got {self.amount}")
        if self.kind == "salt_and_pepper" and self.amount > 1:
            raise ValueError(f"salt_and_pepper amount is a fraction of pixels in [0, 1], got {self.amount}")

    @classmethod
    def parse(cls, text: str) -> NoiseSpec:
        """``"gaussian:0.6"``, ``"speckle"`` (default amount), ``"salt_and_pepper:0.1"`` or ``"none"``."""
        kind, _, amount_text = text.strip().partition(":")
        kind = kind.strip().lower().replace("-", "_")
        if kind not in NOISE_KINDS:
            raise ValueError(f"unknown noise {kind!r} in {text!r}; choose one of {', '.join(NOISE_KINDS)}")
        if not amount_text.strip():
            return cls(kind, DEFAULT_NOISE_AMOUNTS[kind])
        try:
            amount = float(amount_text)
        except ValueError:
            raise ValueError(f"noise amount in {text!r} is not a number") from None
        return cls(kind, amount)

    def __str__(self) -> str:
        return "none" if self.kind == "none" else f"{self.kind}:{self.amount:g}"

    @property
    def is_none(self) -> bool:
        """True when this noise leaves images unchanged."""
        return self.kind == "none" or self.amount == 0


def gaussian_noise(images: np.ndarray, noise_factor: float, rng: np.random.Generator) -> np.ndarray:
    """``images + noise_factor * N(0, 1)`` clipped to [0, 1] (the tutorial's and the book's noise)."""
    images = np.asarray(images, dtype=np.float32)
    noisy = images + np.float32(noise_factor) * rng.standard_normal(images.shape, dtype=np.float32)
    return np.clip(noisy, 0.0, 1.0)


def speckle_noise(images: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative noise ``images * (1 + amount * N(0, 1))`` clipped to [0, 1]."""
    images = np.asarray(images, dtype=np.float32)
    noisy = images + images * np.float32(amount) * rng.standard_normal(images.shape, dtype=np.float32)
    return np.clip(noisy, 0.0, 1.0)


def salt_and_pepper_noise(images: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Sets a fraction ``amount`` of pixel positions (every channel) to 0 or 1 with equal odds."""
    images = np.asarray(images, dtype=np.float32)
    positions = images.shape[:-1] + (1,)
    hit = rng.random(positions) < amount
    salt = rng.random(positions) < 0.5
    noisy = np.where(hit, salt.astype(np.float32), images)
    return np.clip(noisy, 0.0, 1.0)


NOISE_FUNCTIONS = {"gaussian": gaussian_noise, "speckle": speckle_noise, "salt_and_pepper": salt_and_pepper_noise}


def add_noise(images: np.ndarray, spec: NoiseSpec, rng: np.random.Generator) -> np.ndarray:
    """Applies ``spec`` to channel-last images (one or a batch); ``none`` returns a float32 copy."""
    if spec.is_none:
        return np.array(images, dtype=np.float32)
    return NOISE_FUNCTIONS[spec.kind](images, spec.amount, rng)


def noise_rng(seed: int, key: str) -> np.random.Generator:
    """The generator for one image's noise: the same for a key and seed whatever the bundling."""
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])
