"""The one fit loop of every heartwatch model, and its ECG entry point ``train_autoencoder``.

``fit`` compiles a model (Adam, the settings' loss), fits it with Keras's own callbacks (early
stopping on ``val_loss``, which also keeps and restores the best-``val_loss`` weights; an optional
best-only weights checkpoint) and Keras's verbose progress, and returns a ``TrainingResult``.
Training and validation data may be

* an array: an autoencoder's inputs, which are also its targets;
* an ``(inputs, targets)`` pair of arrays (e.g. noisy and clean images);
* a ``keras.utils.PyDataset`` or a ``tf.data.Dataset`` yielding ``(inputs, targets)`` batches (so
  data can be streamed from files; ``batch_size`` then belongs to the dataset); a ``tf.data.Dataset``
  of input batches alone is an autoencoder's, each batch its own target. Arrays are shuffled every
  epoch, a ``PyDataset``'s batch order too; a ``tf.data.Dataset`` keeps its own order (shuffle it in
  the dataset, through a bounded buffer, to keep memory flat). A dataset that declares its
  cardinality (``tf.data.experimental.assert_cardinality``) gives Keras the epoch length for its
  progress bar; one known to be empty is refused.

``train_autoencoder`` trains an ECG candidate (``models.training.candidates``) to reconstruct beats;
``models.training.denoising.train_denoiser`` trains an image denoiser through the same loop.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import keras
import numpy as np
import tensorflow as tf

from models.family import registry
from models.family.exposure import AnomalyExposureLoss
from models.training.candidates import CandidateConfig
from models.training.settings import FitSettings

LOGGER = logging.getLogger(__name__)
MONITOR = "val_loss"
DATASET_TYPES = (keras.utils.PyDataset, tf.data.Dataset)


@dataclasses.dataclass
class TrainingResult:
    """What training produced: the model with its best weights, the loss history and timings.

    ``best_epoch`` counts from 1; ``history`` maps each Keras log key (``loss``, ``val_loss``) to its
    value per epoch run.
    """

    model: keras.Model
    history: dict
    best_validation_loss: float
    best_epoch: int
    epochs_run: int
    seconds: float
    parameter_count: int
    dtype_policy: str = "float32"  # the Keras policy it trained under (the model returned computes in float32)


def _dataset_pairs(dataset: tf.data.Dataset, role: str) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` of ``(inputs, targets)`` batches; a dataset of input batches alone gets them as targets."""
    if dataset.cardinality() == 0:
        raise ValueError(f"no {role} examples: the {role} dataset is empty")
    if isinstance(dataset.element_spec, tf.TensorSpec):
        return dataset.map(lambda batch: (batch, batch))
    return dataset


def _keras_data(data, role: str):
    """A dataset (as pairs), else ``(inputs, targets)`` float32 arrays from an array (its own targets) or a pair."""
    if isinstance(data, tf.data.Dataset):
        return _dataset_pairs(data, role)
    if isinstance(data, DATASET_TYPES):
        return data
    if isinstance(data, tuple):
        if len(data) != 2:
            raise ValueError(f"{role} data given as a tuple must be (inputs, targets), got {len(data)} items")
        inputs, targets = (np.asarray(part, np.float32) for part in data)
    else:
        inputs = targets = np.asarray(data, np.float32)
    if len(inputs) == 0:
        raise ValueError(f"no {role} examples: keeping the best weights and early stopping need "
                         "training and held-out validation examples")
    if len(inputs) != len(targets):
        raise ValueError(f"{role} inputs and targets differ in length: {len(inputs)} vs {len(targets)}")
    return inputs, targets


def training_loss(settings: FitSettings):
    """The compiled loss: ``settings.loss`` by name, or with anomaly exposure its ``AnomalyExposureLoss``."""
    if settings.anomaly_weight > 0:
        return AnomalyExposureLoss(base=settings.loss, weight=settings.anomaly_weight)
    return settings.loss


def fit(model: keras.Model, train, validation, settings: FitSettings, checkpoint_path: str | None = None,
        verbose: int = 2, name: str | None = None) -> TrainingResult:
    """Fits ``model`` on ``train``, validating on ``validation``; returns it with its best-``val_loss`` weights.

    ``settings`` says how (``early_stopping_patience`` 0 runs every epoch, still keeping the best
    weights); ``checkpoint_path`` (a ``.weights.h5`` file), when given, also receives the best
    weights as they improve; ``verbose`` is Keras's progress setting; ``name`` labels the log line.
    """
    train_data = _keras_data(train, "training")
    if isinstance(train_data, DATASET_TYPES):
        inputs = {"x": train_data, "shuffle": not isinstance(train_data, tf.data.Dataset)}
    else:
        inputs = {"x": train_data[0], "y": train_data[1], "batch_size": settings.batch_size, "shuffle": True}
    validation_data = _keras_data(validation, "validation")
    model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss=training_loss(settings))
    best = keras.callbacks.EarlyStopping(monitor=MONITOR, patience=settings.early_stopping_patience or settings.epochs,
                                         restore_best_weights=True)
    callbacks = [best]
    if checkpoint_path:
        callbacks.append(keras.callbacks.ModelCheckpoint(checkpoint_path, monitor=MONITOR, save_best_only=True,
                                                         save_weights_only=True))
    started = time.perf_counter()
    history = model.fit(**inputs, validation_data=validation_data, epochs=settings.epochs, callbacks=callbacks,
                        verbose=verbose)
    seconds = time.perf_counter() - started
    history = {key: [float(value) for value in values] for key, values in history.history.items()}
    epochs_run = len(history[MONITOR])
    best_validation_loss = history[MONITOR][best.best_epoch]
    LOGGER.info("%s: %d epochs in %.1f s, best val_loss %.6f at epoch %d", name or type(model).__name__,
                epochs_run, seconds, best_validation_loss, best.best_epoch + 1)
    return TrainingResult(model=model, history=history, best_validation_loss=best_validation_loss,
                          best_epoch=best.best_epoch + 1, epochs_run=epochs_run, seconds=seconds,
                          parameter_count=int(model.count_params()))


def train_autoencoder(config: CandidateConfig, train_inputs, validation_inputs, seed: int = 0,
                      checkpoint_path: str | None = None, verbose: int = 2,
                      anomaly_weight: float = 0.0) -> TrainingResult:
    """Builds the seeded model of ``config`` and fits it to ``train_inputs``, keeping the best ``val_loss`` weights.

    Inputs are beat arrays (their own targets), ``tf.data`` datasets of beat batches (streamed from files,
    their own targets) or datasets of ``(inputs, targets)`` batches, as ``fit`` takes them;
    ``checkpoint_path`` and ``verbose`` are ``fit``'s. ``anomaly_weight`` > 0 trains with anomaly
    exposure: the targets (training and validation) are then ``models.family.exposure.labelled_targets``.
    """
    config.check_model()
    keras.utils.set_random_seed(seed)
    model = registry.build(config.model, config.parameters)
    settings = dataclasses.replace(config.fit_settings(), anomaly_weight=anomaly_weight)
    return fit(model, train_inputs, validation_inputs, settings, checkpoint_path=checkpoint_path,
               verbose=verbose, name=f"candidate {config.name}")
