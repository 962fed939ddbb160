"""Training an autoencoder on normal data: one function, shared by the pipeline and the benchmarks.

A *candidate* is a model from the registry plus its training hyper-parameters. The pipeline trains
several candidates (fanned out as Beam elements) and keeps the best by validation score.
``CANDIDATES`` holds the named presets; ``tutorial`` is the TensorFlow tutorial's recipe verbatim.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import keras
import numpy as np

from models.family import registry
from models.family.base import config_from_dict

LOGGER = logging.getLogger(__name__)


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
        registry.model_class(self.model)
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"candidate {self.name}: epochs and batch_size must be positive")
        if self.learning_rate <= 0:
            raise ValueError(f"candidate {self.name}: learning_rate must be positive")
        if self.early_stopping_patience < 0:
            raise ValueError(f"candidate {self.name}: early_stopping_patience must be >= 0 (0 disables it)")
        if self.loss not in ("mae", "mse"):
            raise ValueError(f"candidate {self.name}: loss must be 'mae' or 'mse', got {self.loss!r}")

    def to_dict(self) -> dict:
        """JSON-ready form (model cards, Beam elements)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "CandidateConfig":
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


@dataclasses.dataclass
class TrainingResult:
    """What training produced: the model with its best weights, the loss history and timings."""

    model: keras.Model
    history: dict
    best_validation_loss: float
    epochs_run: int
    seconds: float
    parameter_count: int


def train_autoencoder(config: CandidateConfig, train_inputs: np.ndarray, validation_inputs: np.ndarray,
                      seed: int = 0, checkpoint_path: str | None = None, verbose: int = 2) -> TrainingResult:
    """Fits ``config``'s model to reconstruct ``train_inputs``; keeps the best ``val_loss`` weights.

    The best weights are checkpointed to ``checkpoint_path`` (a ``.weights.h5`` file) when given, and
    always restored into the returned model. ``verbose`` is Keras's progress setting.
    """
    train_inputs = np.asarray(train_inputs, dtype=np.float32)
    validation_inputs = np.asarray(validation_inputs, dtype=np.float32)
    if len(train_inputs) == 0:
        raise ValueError("no training examples: training needs at least one normal beat")
    if len(validation_inputs) == 0:
        raise ValueError("no validation examples: early stopping and checkpointing need held-out normal beats")
    keras.utils.set_random_seed(seed)
    model = registry.build(config.model, config.parameters)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=config.loss)
    best = _BestWeights()
    callbacks = [best]
    if config.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.early_stopping_patience))
    if checkpoint_path:
        callbacks.append(keras.callbacks.ModelCheckpoint(checkpoint_path, monitor="val_loss",
                                                         save_best_only=True, save_weights_only=True))
    started = time.perf_counter()
    history = model.fit(train_inputs, train_inputs, epochs=config.epochs, batch_size=config.batch_size,
                        validation_data=(validation_inputs, validation_inputs), shuffle=True,
                        callbacks=callbacks, verbose=verbose)
    seconds = time.perf_counter() - started
    model.set_weights(best.weights)
    LOGGER.info("candidate %s: %d epochs in %.1f s, best val_loss %.5f at epoch %d", config.name,
                len(history.history["loss"]), seconds, best.loss, best.epoch + 1)
    return TrainingResult(model=model, history={key: [float(v) for v in values] for key, values in history.history.items()},
                          best_validation_loss=float(best.loss), epochs_run=len(history.history["loss"]),
                          seconds=seconds, parameter_count=int(model.count_params()))


class _BestWeights(keras.callbacks.Callback):
    """Remembers the weights of the epoch with the lowest ``val_loss`` (in memory)."""

    def __init__(self):
        super().__init__()
        self.loss = float("inf")
        self.epoch = -1
        self.weights = None

    def on_epoch_end(self, epoch, logs=None):
        loss = float((logs or {}).get("val_loss", float("inf")))
        if loss < self.loss or self.weights is None:
            self.loss, self.epoch, self.weights = loss, epoch, self.model.get_weights()
