"""Candidate autoencoders of `heartwatch train`: each trained as one Beam element, then ranked.

``TrainCandidate`` fits one candidate (``models.training.fit``) on the normalised training normals,
keeps its best weights under the run's work directory and scores the raw validation beats through a
``DetectorModule`` (the same graph the export serves), so the ranking uses each model's own
``anomaly_score``. ``validation_selection_score`` is the ranking rule.
"""

from __future__ import annotations

import logging

import apache_beam as beam
import numpy as np

from models.common import files
from models.detection import metrics
from models.ecg import ANOMALY, BEAT_KEY, NORMALIZED_BEAT_KEY
from models.training.candidates import CandidateConfig
from pipeline.ecg_steps import METRICS_NAMESPACE, labels, stack

LOGGER = logging.getLogger(__name__)


def validation_selection_score(validation_labels: np.ndarray, scores: np.ndarray, best_validation_loss: float) -> dict:
    """How candidates are ranked: validation ROC-AUC when both classes are labelled, else -val_loss."""
    labelled = (validation_labels.size and np.isin(validation_labels, (0, 1)).all()
                and 0 < int((validation_labels == ANOMALY).sum()) < validation_labels.size)
    if labelled:
        auc = metrics.roc_auc(validation_labels, scores)
        return {"selection_metric": "validation_roc_auc", "selection_score": auc, "validation_roc_auc": auc}
    return {"selection_metric": "negative_validation_loss", "selection_score": -best_validation_loss,
            "validation_roc_auc": None}


def weights_path(work_directory: str, name: str) -> str:
    """Where candidate ``name`` keeps its best weights during a run."""
    return files.join(work_directory, "candidates", f"{name}.weights.h5")


class TrainCandidate(beam.DoFn):
    """Trains one candidate on normalised training normals and scores it on the validation split."""

    def __init__(self, work_directory: str, transform_directory: str, seed: int, verbose: int, data: str):
        self.work_directory = work_directory
        self.transform_directory = transform_directory
        self.seed = seed
        self.verbose = verbose
        self.data = data

    def setup(self):
        self.trained = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "candidates_trained")

    def process(self, candidate_dict, train_rows, validation_rows, validation_records, transform_ready):
        from models.detection.detector import DetectorModule
        from models.training.fit import train_autoencoder
        from pipeline.transform import TransformGraph

        config = CandidateConfig.from_dict(candidate_dict)
        if not train_rows:
            raise ValueError(f"no valid normal training rows in {self.data!r}: the train split needs normal "
                             "(or unlabelled) beats; see the errors output for rejected rows")
        LOGGER.info("training candidate %s (%s) on %d normal beats, validating on %d", config.name, config.model,
                    len(train_rows), len(validation_rows))
        path = weights_path(self.work_directory, config.name)
        files.make_directories(files.dirname(path))
        result = train_autoencoder(config, stack(train_rows, NORMALIZED_BEAT_KEY),
                                   stack(validation_rows, NORMALIZED_BEAT_KEY), seed=self.seed,
                                   checkpoint_path=path, verbose=self.verbose)
        result.model.save_weights(path)
        detector = DetectorModule(TransformGraph(self.transform_directory), result.model)
        scores = detector.score(stack(validation_records, BEAT_KEY))["anomaly_score"]
        self.trained.inc()
        yield {
            "candidate": config.to_dict(),
            "weights_path": path,
            "history": result.history,
            "best_validation_loss": result.best_validation_loss,
            "epochs_run": result.epochs_run,
            "training_seconds": result.seconds,
            "parameter_count": result.parameter_count,
            **validation_selection_score(labels(validation_records), scores, result.best_validation_loss),
        }


def candidate_summary(item: dict) -> dict:
    """What the model card and metrics keep of one trained candidate."""
    return {"name": item["candidate"]["name"], "model": item["candidate"]["model"],
            "selection_metric": item["selection_metric"], "selection_score": item["selection_score"],
            "validation_roc_auc": item["validation_roc_auc"], "best_validation_loss": item["best_validation_loss"],
            "epochs_run": item["epochs_run"], "training_seconds": round(item["training_seconds"], 2),
            "parameter_count": item["parameter_count"]}
