"""Autoencoders by name: the one place pipelines and benchmarks look models up.

``build("dense", {"latent_dim": 4})`` returns a ready Keras model; ``names()`` lists what exists.
New architectures register themselves here with their config class.
"""

from __future__ import annotations

from models.autoencoders import Conv1DAutoencoder, DenseAutoencoder, config_from_dict

_REGISTRY = {
    "dense": DenseAutoencoder,
    "conv1d": Conv1DAutoencoder,
}

# Models whose input is a flat beat of BEAT_LENGTH samples (usable by the ECG pipeline).
ECG_MODELS = ("dense", "conv1d")


def names() -> tuple[str, ...]:
    """Registered model names, sorted."""
    return tuple(sorted(_REGISTRY))


def model_class(name: str):
    """The Keras model class registered under ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(names())}")
    return _REGISTRY[name]


def build(name: str, parameters: dict | None = None):
    """Builds the model ``name`` from config overrides (unknown keys are refused)."""
    cls = model_class(name)
    return cls(config_from_dict(cls.config_class, dict(parameters or {})))
