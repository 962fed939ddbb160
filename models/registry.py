"""Autoencoders by name: the one place pipelines and benchmarks look models up.

``build("dense", {"latent_dim": 4})`` returns a ready Keras model; ``names()`` lists what exists.
Each model module declares ``MODELS = {name: model_class}``; the modules are listed once below.
"""

from __future__ import annotations

import importlib

from models.autoencoders import config_from_dict

MODEL_MODULES = ("models.autoencoders", "models.family", "models.denoisers")


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
