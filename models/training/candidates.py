"""ECG training candidates: a registry model plus its fit settings, and the named presets.

A *candidate* is a model from ``models.family.registry`` plus its training hyper-parameters. The
training pipeline trains several candidates (fanned out as Beam elements) and keeps the best by
validation score. ``CANDIDATES`` holds the named presets; ``tutorial`` is the TensorFlow tutorial's
recipe verbatim. This module imports neither Keras nor TensorFlow, so the command line validates
preset names instantly; the model name is looked up in the registry when the candidate is trained
(``models.training.fit.train_autoencoder``) or by ``check_model``.
"""

from __future__ import annotations

import dataclasses

from models.family.configs import config_from_dict
from models.training.settings import FitSettings


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
        try:
            self.fit_settings()
        except ValueError as error:
            raise ValueError(f"candidate {self.name}: {error}") from None

    def fit_settings(self) -> FitSettings:
        """The settings the one fit loop uses."""
        return FitSettings(epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
                           loss=self.loss, early_stopping_patience=self.early_stopping_patience)

    def check_model(self) -> None:
        """Refuses a model name the registry does not know (imports the registry, hence Keras)."""
        from models.family import registry

        try:
            registry.model_class(self.model)
        except ValueError as error:
            raise ValueError(f"candidate {self.name}: {error}") from None

    def to_dict(self) -> dict:
        """JSON-ready form (model cards, Beam elements)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> CandidateConfig:
        """Inverse of ``to_dict``; unknown keys are refused."""
        return config_from_dict(cls, values)


CANDIDATES = {
    # The TensorFlow tutorial verbatim: dense 140-32-16-8, 20 epochs, batch 512, Adam, MAE.
    "tutorial": CandidateConfig("tutorial", "dense", {}, epochs=20, batch_size=512, early_stopping_patience=0),
    # Same network, trained to convergence with early stopping on validation loss.
    "dense": CandidateConfig("dense", "dense", {}, epochs=300, batch_size=32),
    # 1-D convolutional autoencoder.
    "conv1d": CandidateConfig("conv1d", "conv1d", {}, epochs=300, batch_size=32),
}


def candidate(name: str) -> CandidateConfig:
    """A preset candidate by name."""
    if name not in CANDIDATES:
        raise ValueError(f"unknown candidate {name!r}; presets: {', '.join(sorted(CANDIDATES))}")
    return CANDIDATES[name]
