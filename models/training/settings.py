"""The settings of one fit (epochs, batch size, learning rate, loss, early stopping, anomaly exposure), checked once.

Pure Python (no Keras, no TensorFlow): the ECG candidates (``models.training.candidates``) and the
denoiser config (``models.training.denoising``) carry these fields and hand them to
``models.training.fit.fit`` through ``fit_settings()``.
"""

from __future__ import annotations

import dataclasses

LOSSES = ("mse", "mae")  # the ECG fit losses (models.training.fit)
DENOISER_LOSSES = ("mse", "mae", "psnr")  # the denoiser's: psnr is minus the per-image PSNR
SCHEDULES = ("cosine", "plateau", "constant")  # the denoiser's learning-rate schedules
PRECISIONS = ("auto", "float32", "mixed_bfloat16")  # the denoiser's training arithmetic


def check_anomaly_weight(value, name: str = "anomaly_weight") -> float:
    """An anomaly-exposure weight as a float; refused unless a finite number >= 0 (0 turns exposure off)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0 (0 trains on normal beats alone), got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """How to fit: Adam at ``learning_rate`` on ``loss``; ``early_stopping_patience`` 0 disables early stopping.

    ``batch_size`` applies to array inputs; datasets (a ``keras.utils.PyDataset``, a ``tf.data.Dataset``)
    arrive already batched. ``anomaly_weight`` > 0 trains with anomaly exposure
    (``models.family.exposure``): the targets then carry each beat's label as a last column.
    """

    epochs: int
    batch_size: int
    learning_rate: float
    loss: str
    early_stopping_patience: int
    anomaly_weight: float = 0.0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be positive, got {self.epochs} and {self.batch_size}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be 'mae' or 'mse', got {self.loss!r}")
        if self.early_stopping_patience < 0:
            raise ValueError("early_stopping_patience must be >= 0 (0 disables early stopping)")
        check_anomaly_weight(self.anomaly_weight)
