"""Autoencoders by name: the one place pipelines and benchmarks look models up.

``build("dense", {"latent_dim": 4})`` returns a ready Keras model; ``names()`` lists what exists and
``ecg_models()`` the ones that reconstruct flat beats (and so can be exported as a detector).
Each model module declares ``MODELS = {name: model_class}``; the modules are listed once below.
``save``/``load`` write and read the Keras 3 ``.keras`` format, loading with ``safe_mode=True``;
``load`` is the one loader of every saved model (ECG autoencoders and image denoisers alike).
``FAMILY`` maps every architecture of the family to the registry name that builds it.
"""

from __future__ import annotations

import importlib
import logging

import keras

from models.family.base import ECG_DOMAIN, IMAGE_DOMAIN
from models.family.configs import config_from_dict

LOGGER = logging.getLogger(__name__)

MODEL_MODULES = ("models.family.beats", "models.family.regularized", "models.family.variational",
                 "models.family.ensemble", "models.family.images", "models.family.denoisers")
KERAS_SUFFIX = ".keras"

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
    "ensemble of ECG autoencoders": "ensemble",
}
"""Every architecture of the family and the registry name that builds it."""


def _registry() -> dict:
    registry = {}
    for module_name in MODEL_MODULES:
        for name, cls in importlib.import_module(module_name).MODELS.items():
            if name in registry:
                raise ValueError(f"model name {name!r} registered twice ({module_name})")
            registry[name] = cls
    return registry


def names() -> tuple[str, ...]:
    """Registered model names, sorted."""
    return tuple(sorted(_registry()))


def model_class(name: str):
    """The Keras model class registered under ``name``."""
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(sorted(registry))}")
    return registry[name]


def build(name: str, parameters: dict | None = None):
    """Builds the model ``name`` from config overrides (unknown keys are refused)."""
    cls = model_class(name)
    return cls(config_from_dict(cls.config_class, dict(parameters or {})))


def domain(name: str) -> str | None:
    """The model's declared domain (``"ecg"`` or ``"image"``), or None when its class declares none."""
    return getattr(model_class(name), "domain", None)


def ecg_models() -> tuple[str, ...]:
    """Names of the models that map flat beats [batch, 140] to beats: trainable and exportable for ECG."""
    return tuple(name for name in names() if domain(name) == ECG_DOMAIN)


def image_models() -> tuple[str, ...]:
    """Names of the models declared as image models."""
    return tuple(name for name in names() if domain(name) == IMAGE_DOMAIN)


def save(model: keras.Model, path: str) -> str:
    """Saves ``model`` in the Keras 3 format; ``path`` must end in ``.keras``. Returns the path."""
    if not str(path).endswith(KERAS_SUFFIX):
        raise ValueError(f"models are saved in the Keras 3 format: the path must end in {KERAS_SUFFIX!r}, got {path!r}")
    model.save(path)
    LOGGER.info("saved %s to %s", type(model).__name__, path)
    return str(path)


def load(path: str, compile: bool = False) -> keras.Model:
    """Loads a model written by ``save`` with ``safe_mode=True`` (no arbitrary code is deserialised).

    Every registered model module is imported first, so all heartwatch classes are known to Keras.
    The model is loaded for inference; ``compile=True`` also restores the optimizer and loss it was
    saved with (to continue training).
    """
    _registry()
    return keras.saving.load_model(path, compile=compile, safe_mode=True)
