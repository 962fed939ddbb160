"""Typed model configs: building a frozen config dataclass from a dict and checking its values.

Pure Python (no Keras, no TensorFlow), so command-line validation and the training presets
(``models.training.candidates``) can use it without loading TensorFlow.
"""

from __future__ import annotations

import dataclasses


def config_from_dict(config_class, values: dict):
    """Builds a frozen config dataclass from a dict, refusing unknown keys with a clear message.

    JSON lists become tuples, so a config read back from a model card or a saved model equals the original.
    """
    known = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} fields {unknown}; known: {sorted(known)}")
    converted = {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}
    return config_class(**converted)


def check_shape(name: str, shape: tuple) -> None:
    """Refuses a shape that is not a non-empty tuple of positive integers."""
    if not shape or any(not isinstance(size, int) or size < 1 for size in shape):
        raise ValueError(f"{name} must be a non-empty tuple of positive integers, got {shape!r}")


def check_positive(config, *names: str) -> None:
    """Refuses any named field of ``config`` (a number or a tuple of numbers) that is below 1."""
    for name in names:
        value = getattr(config, name)
        values = value if isinstance(value, tuple) else (value,)
        if any(item < 1 for item in values):
            raise ValueError(f"{type(config).__name__}.{name} must be positive, got {value!r}")
