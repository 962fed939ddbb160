"""Candidate autoencoders of `heartwatch train`: each trained as one Beam element, from files, then ranked.

``TrainCandidate`` fits one candidate (``models.training.fit.train_autoencoder``) on the training
beats streamed from the materialised train shards (``pipeline.beat_files.training_dataset``: bounded
shuffle buffer, the TFT graph applied per batch), validating (early stopping, best weights) on the
validation shards' normal beats. It writes the best weights (restored by early stopping) once under
the run's work directory and exports a *provisional* detector there (``DetectorModule`` with
``PROVISIONAL_THRESHOLD``): the threshold is calibrated later from that detector's own validation
scores, and the final export writes it into a new SavedModel. ``rank`` is the selection rule on those
validation scores. ``fit_from_files`` is the one way a candidate is fitted from shards, shared with
the refit (``pipeline.export.refit_best``).
"""

from __future__ import annotations

import logging

import apache_beam as beam

from models.common import artifacts, files
from models.training.candidates import CandidateConfig
from pipeline import evaluation
from pipeline.ecg_steps import METRICS_NAMESPACE

LOGGER = logging.getLogger(__name__)
PROVISIONAL_THRESHOLD = 1.0
DEFAULT_SHUFFLE_BUFFER = 16_384


def weights_path(work_directory: str, name: str) -> str:
    """Where candidate ``name`` keeps its best weights during a run."""
    return files.join(work_directory, "candidates", f"{name}.weights.h5")


def detector_directory(work_directory: str, name: str) -> str:
    """Where candidate ``name``'s provisional detector (SavedModel and card) is exported during a run."""
    return files.join(work_directory, "candidates", name)


def selection(validation_summary, best_validation_loss: float) -> dict:
    """How candidates are ranked: validation ROC-AUC when both classes are labelled, else -val_loss."""
    auc = evaluation.selection_roc_auc(validation_summary)
    if auc is not None:
        return {"selection_metric": "validation_roc_auc", "selection_score": auc, "validation_roc_auc": auc}
    return {"selection_metric": "negative_validation_loss", "selection_score": -best_validation_loss,
            "validation_roc_auc": None}


def rank(item: dict, validation_summary) -> dict:
    """A trained candidate with its validation summary and selection score."""
    return {**item, "validation_summary": validation_summary,
            **selection(validation_summary, item["best_validation_loss"])}


def exposure_weight(anomaly_exposure: float, train_anomalies: int, name: str) -> float:
    """The exposure weight a fit uses: ``anomaly_exposure``, or 0 when the train split has no labelled anomaly."""
    if anomaly_exposure > 0 and not train_anomalies:
        LOGGER.info("candidate %s: no labelled anomalies in the train split, so it trains on normal beats alone "
                    "(no anomaly exposure)", name)
        return 0.0
    return float(anomaly_exposure)


def fit_from_files(config: CandidateConfig, transform, train_files: list, train_beats: int, validation_files: list,
                   validation_beats: int, seed: int, verbose: int, shuffle_buffer: int, anomaly_exposure: float = 0.0,
                   train_anomalies: int = 0, validation_anomalies: int = 0):
    """Fits ``config`` on the normal beats of ``train_files``, validating on those of ``validation_files``.

    Streams both through ``pipeline.beat_files.training_dataset`` (the training beats shuffled through
    a buffer of ``shuffle_buffer``; a split of at most that many beats is cached in memory after the
    first epoch); with ``anomaly_exposure`` > 0 and labelled anomalies in the train
    split (``train_anomalies`` of them, ``validation_anomalies`` in validation) their anomalies join
    both streams with that weight (``models.family.exposure``). Returns the
    ``models.training.fit.TrainingResult``.
    """
    from models.training.fit import train_autoencoder
    from pipeline.beat_files import training_dataset

    weight = exposure_weight(anomaly_exposure, train_anomalies, config.name)
    batch_size = config.fit_settings().batch_size
    train = training_dataset(train_files, transform, train_beats, batch_size, shuffle_buffer, seed,
                             anomaly_beats=train_anomalies if weight else None)
    validation = training_dataset(validation_files, transform, validation_beats, batch_size,
                                  anomaly_beats=validation_anomalies if weight else None, memory_beats=shuffle_buffer)
    return train_autoencoder(config, train, validation, seed=seed, verbose=verbose, anomaly_weight=weight)


class TrainCandidate(beam.DoFn):
    """Trains one candidate from the train/validation shards and exports its provisional detector."""

    def __init__(self, work_directory: str, transform_directory: str, seed: int, verbose: int, data: str,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, score_error: str = "mae", anomaly_exposure: float = 0.0):
        self.work_directory = work_directory
        self.transform_directory = transform_directory
        self.seed = seed
        self.verbose = verbose
        self.data = data
        self.shuffle_buffer = shuffle_buffer
        self.score_error = score_error
        self.anomaly_exposure = anomaly_exposure

    def setup(self):
        self.trained = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "candidates_trained")

    def process(self, candidate_dict, train_files, validation_files, train_beats, validation_beats, transform_ready,
                train_anomalies=0, validation_anomalies=0):
        from models.detection.detector import SAVED_MODEL_DIRECTORY, DetectorModule
        from pipeline.transform import TransformGraph

        config = CandidateConfig.from_dict(candidate_dict)
        if not train_beats:
            raise ValueError(f"no valid normal training rows in {self.data!r}: the train split needs normal "
                             "(or unlabelled) beats; see the errors output for rejected rows")
        if not validation_beats:
            raise ValueError(f"no normal validation beats in {self.data!r}: keeping the best weights and early "
                             "stopping need held-out normal (or unlabelled) beats; use more data or a larger "
                             "--validation_fraction")
        weight = exposure_weight(self.anomaly_exposure, train_anomalies, config.name)
        LOGGER.info("training candidate %s (%s) on %d normal beats (and %d labelled anomalies, exposure weight %g) "
                    "from %d shards, validating on %d", config.name, config.model, train_beats, train_anomalies,
                    weight, len(train_files), validation_beats)
        transform = TransformGraph(self.transform_directory)
        path = weights_path(self.work_directory, config.name)
        files.make_directories(files.dirname(path))
        result = fit_from_files(config, transform, train_files, train_beats, validation_files, validation_beats,
                                self.seed, self.verbose, self.shuffle_buffer, weight, train_anomalies,
                                validation_anomalies)
        result.model.save_weights(path)  # once: TensorFlow's ram:// appends to a file written again
        directory = detector_directory(self.work_directory, config.name)
        DetectorModule(TransformGraph(self.transform_directory), result.model, PROVISIONAL_THRESHOLD,
                       score_error=self.score_error).save(files.join(directory, SAVED_MODEL_DIRECTORY))
        artifacts.write_card(directory, {"name": f"provisional detector of candidate {config.name}",
                                         "threshold": {"value": PROVISIONAL_THRESHOLD, "method": "provisional"}})
        self.trained.inc()
        yield {
            "candidate": config.to_dict(),
            "weights_path": path,
            "detector_directory": directory,
            "history": result.history,
            "best_validation_loss": result.best_validation_loss,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "training_seconds": result.seconds,
            "parameter_count": result.parameter_count,
            "anomaly_exposure": weight,
        }


def candidate_summary(item: dict) -> dict:
    """What the model card and metrics keep of one trained candidate."""
    return {"name": item["candidate"]["name"], "model": item["candidate"]["model"],
            "selection_metric": item["selection_metric"], "selection_score": item["selection_score"],
            "validation_roc_auc": item["validation_roc_auc"], "best_validation_loss": item["best_validation_loss"],
            "epochs_run": item["epochs_run"], "training_seconds": round(item["training_seconds"], 2),
            "parameter_count": item["parameter_count"]}
