"""ECG training candidates: a registry model plus its fit settings, the named presets, and the parser.

A *candidate* is a model from ``models.family.registry`` plus its training hyper-parameters. The
training pipeline trains several candidates (fanned out as Beam elements) and keeps the best by
validation score. ``CANDIDATES`` holds the named presets: one per registered ECG model (``dense``,
``conv1d``, ``lstm``, ``sparse``, ``contractive``, ``vae``), the variants ``sparse_l1``,
``sparse_kl`` and ``vae_elbo``, the ensembles, and ``tutorial`` (the TensorFlow tutorial's recipe
verbatim). ``parse_candidates`` reads what ``--candidates`` and ``--config`` files give:

- names: ``"dense,conv1d,lstm"`` (a preset each);
- JSON: an object or a list of names and objects. An object names a candidate and says how it
  differs from a preset: ``{"name": "lstm", "epochs": 50}`` overrides the preset ``lstm``;
  ``{"name": "wide", "preset": "dense", "parameters": {"hidden_units": [64, 32]}}`` is a new
  candidate based on ``dense`` (its ``parameters`` are merged into the preset's);
  ``{"name": "wide", "model": "dense", "parameters": {...}, "epochs": 200}`` is built from scratch
  (unset fit settings take the ``CandidateConfig`` defaults).

This module imports neither Keras nor TensorFlow, so the command line validates candidates
instantly; the model name is looked up in the registry when the candidate is trained
(``models.training.fit.train_autoencoder``) or by ``check_model``.
"""

from __future__ import annotations

import dataclasses
import json
import re

from models.family.configs import config_from_dict
from models.training.settings import FitSettings

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
PRESET_KEY = "preset"


@dataclasses.dataclass(frozen=True)
class CandidateConfig:
    """One model configuration to train: registry name, model parameters and fit settings."""

    name: str
    model: str
    parameters: dict = dataclasses.field(default_factory=dict)
    epochs: int = 300
    batch_size: int = 32
    learning_rate: float = 1e-3
    loss: str = "mae"
    early_stopping_patience: int = 40

    def __post_init__(self):
        if not isinstance(self.name, str) or not NAME_PATTERN.match(self.name):
            raise ValueError(f"candidate name {self.name!r} must be letters, digits, '_', '-' or '.' "
                             "(it names the candidate's weights file)")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"candidate {self.name}: model must be a registry name, got {self.model!r}")
        if not isinstance(self.parameters, dict):
            raise ValueError(f"candidate {self.name}: parameters must be an object, got {self.parameters!r}")
        try:
            self.fit_settings()
        except (TypeError, ValueError) as error:
            raise ValueError(f"candidate {self.name}: {error}") from None

    def fit_settings(self) -> FitSettings:
        """The settings the one fit loop uses."""
        return FitSettings(epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
                           loss=self.loss, early_stopping_patience=self.early_stopping_patience)

    def check_model(self) -> None:
        """Refuses a model the registry does not know or that is not an ECG model, and bad parameters.

        Imports the registry, hence Keras; builds nothing.
        """
        from models.family import registry
        from models.family.base import ECG_DOMAIN

        try:
            model_class = registry.model_class(self.model)
            if getattr(model_class, "domain", None) != ECG_DOMAIN:
                raise ValueError(f"model {self.model!r} does not reconstruct beats; ECG models: "
                                 f"{', '.join(registry.ecg_models())}")
            config_from_dict(model_class.config_class, dict(self.parameters))
        except (TypeError, ValueError) as error:
            raise ValueError(f"candidate {self.name}: {error}") from None

    def to_dict(self) -> dict:
        """JSON-ready form (model cards, Beam elements)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> CandidateConfig:
        """Inverse of ``to_dict``; unknown keys are refused."""
        return config_from_dict(cls, values)


# Members of the default ensemble: three small reconstructions of the same beats, two architectures.
ENSEMBLE_MEMBERS = (
    {"model": "dense", "parameters": {}},
    {"model": "conv1d", "parameters": {}},
    {"model": "sparse", "parameters": {"sparsity": "kl", "target_activation": 0.1}},
)

CANDIDATES = {
    # The TensorFlow tutorial verbatim: dense 140-32-16-8, 20 epochs, batch 512, Adam, MAE.
    "tutorial": CandidateConfig("tutorial", "dense", {}, epochs=20, batch_size=512, early_stopping_patience=0),
    # Same network, trained to convergence with early stopping on validation loss.
    "dense": CandidateConfig("dense", "dense", {}, epochs=300, batch_size=32),
    # 1-D convolutional autoencoder.
    "conv1d": CandidateConfig("conv1d", "conv1d", {}, epochs=300, batch_size=32),
    # LSTM sequence autoencoder (35 steps of 4 samples): larger steps and rate, the slowest to train.
    "lstm": CandidateConfig("lstm", "lstm", {}, epochs=150, batch_size=16, learning_rate=3e-3,
                            early_stopping_patience=30),
    # Sparse autoencoders: L1 on a ReLU code (the model's default) and KL toward activation 0.1.
    "sparse": CandidateConfig("sparse", "sparse", {}, epochs=300, batch_size=32),
    "sparse_l1": CandidateConfig("sparse_l1", "sparse", {"sparsity": "l1"}, epochs=300, batch_size=32),
    "sparse_kl": CandidateConfig("sparse_kl", "sparse", {"sparsity": "kl", "target_activation": 0.1},
                                 epochs=300, batch_size=32),
    # Contractive (encoder Jacobian penalty).
    "contractive": CandidateConfig("contractive", "contractive", {}, epochs=300, batch_size=32),
    # Variational: scored by reconstruction error, or by its negative ELBO.
    "vae": CandidateConfig("vae", "vae", {}, epochs=300, batch_size=32),
    "vae_elbo": CandidateConfig("vae_elbo", "vae", {"score": "negative_elbo"}, epochs=300, batch_size=32),
    # One SavedModel of several members trained in one fit, scored by their z-normalised errors.
    "ensemble": CandidateConfig("ensemble", "ensemble", {"members": [dict(item) for item in ENSEMBLE_MEMBERS]},
                                epochs=300, batch_size=32),
}

DEFAULT_CANDIDATES = ("dense",)
"""What `heartwatch train` trains without ``--candidates`` (``pipeline.config.TrainConfig`` repeats it).

The dense detector alone, the cheapest to train: through the whole pipeline on the 10 seeded splits of
the real sample (``docs/models.md``) it beat ``dense,conv1d`` (choosing between them by ~100 validation
beats picked the worse model on the weak splits) and ``sparse_kl`` alone (mean test ROC-AUC 0.9960
against 0.9951, accuracy 0.980 against 0.976), although ``bench/models.py``'s in-process fits over 5
splits ranked ``sparse_kl`` first."""


def candidate(name: str) -> CandidateConfig:
    """A preset candidate by name."""
    if name not in CANDIDATES:
        raise ValueError(f"unknown candidate {name!r}; presets: {', '.join(CANDIDATES)}; or give a JSON object "
                         '{"name": ..., "model": ..., "parameters": {...}}')
    return CANDIDATES[name]


def candidate_from_dict(values: dict) -> CandidateConfig:
    """One candidate from its JSON object: a preset override, a preset-based variant or a full config."""
    if not isinstance(values, dict):
        raise ValueError(f"a candidate must be a name or a JSON object, got {values!r}")
    values = dict(values)
    name = values.get("name")
    if not isinstance(name, str):
        raise ValueError(f"a candidate object needs a \"name\", got {json.dumps(values)}")
    preset = values.pop(PRESET_KEY, None)
    if preset is None and "model" not in values:
        preset = name
    if preset is None:
        return CandidateConfig.from_dict(values)
    base = candidate(preset).to_dict()
    if "model" in values and values["model"] != base["model"]:
        raise ValueError(f"candidate {name}: model {values['model']!r} differs from preset {preset!r}'s "
                         f"{base['model']!r}; drop \"preset\" to build a candidate from scratch")
    parameters = values.pop("parameters", {})
    if not isinstance(parameters, dict):
        raise ValueError(f"candidate {name}: parameters must be an object, got {parameters!r}")
    return CandidateConfig.from_dict({**base, **values, "parameters": {**base["parameters"], **parameters}})


def _items(value) -> list:
    """Flattens what a flag or file gives into names and candidate objects."""
    if isinstance(value, dict):
        return [value]
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("[", "{")):
            try:
                return _items(json.loads(text))
            except json.JSONDecodeError as error:
                raise ValueError(f"not JSON ({error}): {text}") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        return [item for part in value for item in _items(part)]
    raise ValueError(f"candidates are names or JSON objects, got {value!r}")


def parse_candidates(value) -> tuple[CandidateConfig, ...]:
    """The candidates of ``--candidates``: comma-separated preset names and/or JSON (see the module doc).

    ``value`` is text, a dict or a sequence of those (the flag may be repeated). Names must be unique.
    """
    configs = tuple(candidate(item) if isinstance(item, str) else candidate_from_dict(item) for item in _items(value))
    if not configs:
        raise ValueError("at least one candidate is needed (e.g. --candidates dense,conv1d)")
    names = [config.name for config in configs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"candidate names must be unique, {', '.join(repeated)} repeated "
                         '(rename one with {"name": "other", "preset": ...})')
    return configs


def candidates_from_json(value):
    """A ``--config`` file's ``candidates`` (text, an object or a list of names and objects) as flag texts."""
    if isinstance(value, dict):
        return [json.dumps(value)]
    if isinstance(value, list):
        return [item if isinstance(item, str) else json.dumps(item) for item in value]
    return value
