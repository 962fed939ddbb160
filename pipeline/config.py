"""Flags of the pipeline jobs (`train`, `score`, `denoise train`, `denoise run`) as frozen dataclasses.

One definition for the command line, ``--config`` JSON files and code (``models.common.flags``
parses them). This module imports only the standard library, so ``heartwatch SUB --help`` and flag
errors answer before TensorFlow loads:

- ``__post_init__`` checks what needs no heavy import: names against the constants below, ranges,
  and the split and threshold settings (``pipeline.splits`` and ``models.detection.thresholds``
  need numpy only, imported when a config is built);
- ``deep_checks()`` builds what needs pandas or Keras: the dataset spec (``models.ecg.sources``),
  the candidate presets (``models.training.candidates``) and the denoiser settings
  (``models.training.denoising``). ``parse_flags``/``parse_beam_flags`` run it inside each job's
  ``run()``, before any work; the CLI's fast check skips it.
"""

from __future__ import annotations

import dataclasses
import json

from models.common.flags import field
from models.detection import SCORE_ERRORS, THRESHOLD_METHODS
from models.ecg import DATASET_FORMATS
from models.family import DEFAULT_DENOISER
from models.family import DENOISERS as DENOISER_MODELS
from models.images import IMAGE_SET_FORMATS
from models.training.candidates import CANDIDATES, candidates_from_json
from models.training.settings import DENOISER_LOSSES, PRECISIONS, SCHEDULES, check_anomaly_weight

# Names shown in --help and checked at parse time; their owners above import no TensorFlow, Keras or pandas.
CANDIDATE_PRESETS = tuple(sorted(CANDIDATES))
NORMALIZATIONS = ("minmax", "zscore")  # pipeline.transform applies them
VERBOSITIES = (0, 1, 2)


def _check_text(config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"--{name} must be a non-empty string, got {value!r}")


def _check_choice(config, name: str, choices, noun: str | None = None) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"--{name}: unknown {noun or name} {value!r}; choose one of "
                         f"{', '.join(str(choice) for choice in choices)}")


def _check_positive(config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and (isinstance(value, bool) or value < 1):
            raise ValueError(f"--{name} must be positive, got {value!r}")


@dataclasses.dataclass(frozen=True)
class DatasetFlags:
    """The input flags shared by `heartwatch train` and `heartwatch score`."""

    data: str = field("input: a file path, glob pattern or URL (ecg.csv, UCR .txt/.tsv/.arff, CSV, Parquet, "
                      "TFRecord), 'tf-ecg' for TensorFlow's ecg.csv (downloaded and cached), or "
                      "'synthetic[:beats=N,...]' for generated beats",
                      default="synthetic")
    format: str = field(f"one of {', '.join(DATASET_FORMATS)}", default="auto")
    label_column: str | None = field("CSV/Parquet label column (TFRecord: label feature)", default=None,
                                     default_text="none")
    feature_columns: tuple[str, ...] | None = field("comma-separated CSV/Parquet sample columns (TFRecord: the beat "
                                                    "feature)", default=None,
                                                    default_text="all but the label")
    normal_label: str = field("label value meaning normal (CSV/Parquet)", default="1")

    def __post_init__(self):
        """Checks the input flags that need no file and no pandas."""
        _check_text(self, "data", "normal_label")
        _check_choice(self, "format", DATASET_FORMATS)

    def dataset_spec(self):
        """The ``models.ecg.sources.DatasetSpec`` shared with scoring and replay (imports pandas)."""
        from models.ecg import sources

        return sources.DatasetSpec(path=self.data, format=self.format, label_column=self.label_column,
                                   feature_columns=self.feature_columns, normal_label=self.normal_label)

    def deep_checks(self) -> None:
        """Builds the dataset spec (columns, synthetic options); the job runs this before any work."""
        self.dataset_spec()


@dataclasses.dataclass(frozen=True)
class TrainConfig(DatasetFlags):
    """Flags of `heartwatch train` (same names in --config JSON files and in code)."""

    output_dir: str = field("model root; versions go below", default="artifacts/ecg")
    seed: int = field("seed of the split and of training", default=0)
    test_fraction: float = field("share of every class held out for test", default=0.2)
    validation_fraction: float = field("share of every class for validation (early stopping, calibration, "
                                       "selection)", default=0.2)
    normalization: str = field(f"{' or '.join(NORMALIZATIONS)} (TFT)", default="minmax")
    candidates: tuple[str, ...] = field(
        f"comma-separated presets among {', '.join(CANDIDATE_PRESETS)}, or JSON: an object "
        '{"name": ..., "preset" or "model": ..., "parameters": {...}, "epochs": ...} or a list of names and '
        "objects; repeatable", default=("dense",), separator=None, from_json=candidates_from_json)
    epochs: int | None = field("override every candidate's epochs", default=None,
                               default_text="each candidate's own")
    score_error: str = field("what the anomaly score is built on: window (the largest mean absolute "
                             "reconstruction error over any 30 consecutive samples of a beat), rms (the root mean "
                             "square of its absolute errors) or mae (their mean, the tutorial's)", default="window")
    anomaly_exposure: float = field("weight of anomaly exposure: the train split's labelled anomalies join "
                                    "training and are pushed to reconstruct badly (models.family.exposure); "
                                    "0 trains on normal beats alone (off when the data has no labelled "
                                    "anomalies)", default=1.0)
    refit: bool = field("after selection and calibration on validation, fit the chosen candidate again on the train "
                        "and validation normals together (the first fit's best epoch count) and export that; "
                        "the test split stays held out", default=False)
    threshold_method: str = field(f"one of {', '.join(THRESHOLD_METHODS)}", default="max_f1")
    threshold_k: float = field("k of mean_std", default=1.0)
    target_false_positive_rate: float = field("for percentile", default=0.01)
    verbose: int = field("Keras progress: 0 silent, 1 bar, 2 a line/epoch", default=2)
    report: bool = field("write the PNG/HTML report", default=True)
    shuffle_buffer: int = field("beats in the training shuffle buffer (bounds training memory; a split that "
                                "fits is shuffled whole and cached in memory after the first epoch)", default=16384)

    def __post_init__(self):
        """Checks every flag that needs no pandas and no Keras (see ``deep_checks``)."""
        super().__post_init__()
        _check_text(self, "output_dir")
        _check_positive(self, "shuffle_buffer")
        _check_choice(self, "normalization", NORMALIZATIONS)
        _check_choice(self, "verbose", VERBOSITIES)
        _check_choice(self, "threshold_method", THRESHOLD_METHODS, noun="threshold method")
        _check_choice(self, "score_error", SCORE_ERRORS, noun="score error")
        _check_positive(self, "epochs")
        check_anomaly_weight(self.anomaly_exposure, "--anomaly_exposure")
        self.parsed_candidates()
        self.split_config()
        self.threshold_config()

    def split_config(self):
        """The ``pipeline.splits.SplitConfig`` of the split settings."""
        from pipeline import splits

        return splits.SplitConfig(self.seed, self.test_fraction, self.validation_fraction)

    def threshold_config(self):
        """The ``models.detection.thresholds.ThresholdConfig`` of the calibration settings."""
        from models.detection import thresholds

        return thresholds.ThresholdConfig(method=self.threshold_method, k=self.threshold_k,
                                          target_false_positive_rate=self.target_false_positive_rate)

    def parsed_candidates(self) -> tuple:
        """The ``CandidateConfig`` of every ``--candidates`` item (names and JSON; no Keras)."""
        from models.training.candidates import parse_candidates

        try:
            return parse_candidates(self.candidates)
        except ValueError as error:
            raise ValueError(f"--candidates: {error}") from None

    def candidate_configs(self) -> list:
        """The candidates with ``epochs`` applied, their models checked against the registry (imports Keras)."""
        chosen = list(self.parsed_candidates())
        if self.epochs is not None:
            chosen = [dataclasses.replace(item, epochs=self.epochs) for item in chosen]
        for item in chosen:
            try:
                item.check_model()
            except ValueError as error:
                raise ValueError(f"--candidates: {error}") from None
        return chosen

    def deep_checks(self) -> None:
        """Builds the dataset spec and the candidates (pandas, Keras); the job runs this before any work."""
        super().deep_checks()
        self.candidate_configs()


@dataclasses.dataclass(frozen=True)
class ScoreConfig(DatasetFlags):
    """Flags of `heartwatch score`."""

    model: str = field("a detector version directory, or a model root (the newest version is used)",
                       default="artifacts/ecg")
    out: str = field("output CSV path", default="scores.csv")
    batch_size: int = field("largest batch per detector call", default=1024)
    num_shards: int = field("score files: 1 writes one file at --out, 0 lets the runner shard it "
                            "(<out>-SSSSS-of-NNNNN; flat memory on large inputs), N writes N shards", default=1)

    def __post_init__(self):
        """Checks the flags (the dataset spec itself is built by ``deep_checks``)."""
        super().__post_init__()
        _check_text(self, "model", "out")
        _check_positive(self, "batch_size")
        if isinstance(self.num_shards, bool) or self.num_shards < 0:
            raise ValueError(f"--num_shards must be 0 (runner decides) or positive, got {self.num_shards!r}")


@dataclasses.dataclass(frozen=True)
class DenoiseTrainConfig:
    """Flags of `heartwatch denoise train`."""

    data: str = field("fashion_mnist (Keras loader, cached), digits (offline), synthetic[:count=N,size=S,channels=C], "
                      "or a directory of PNG/JPEG, a .npy/.npz array or a .tfrecord file, or a glob of arrays or "
                      "TFRecords (shards; streamed, never loaded whole)", default="fashion_mnist")
    format: str = field(f"for paths: {', '.join(IMAGE_SET_FORMATS)}", default="auto")
    array_key: str | None = field(".npz array name", default=None, default_text="images, x")
    model: str = field(f"one of {', '.join(DENOISER_MODELS)}", default=DEFAULT_DENOISER)
    model_parameters: str = field('JSON config overrides, e.g. {"filters": 32} (unet_denoiser), {"depth": 9} (dncnn)',
                                  default="{}")
    noise: str = field("training noise kind[:amount]: gaussian:0.2 (tutorial), gaussian:0.6 (book), speckle, "
                       "salt_and_pepper", default="gaussian:0.2")
    epochs: int = field("most epochs", default=96)
    batch_size: int = field("images per step", default=32)
    learning_rate: float = field("Adam learning rate (the start of the cosine decay, after any warm-up)", default=2e-3)
    loss: str = field(f"{', '.join(DENOISER_LOSSES)} (psnr: minus the per-image PSNR, so the mean PSNR itself)",
                      default="psnr")
    early_stopping_patience: int = field("epochs without val_loss gain; 0 off (the best epoch is kept anyway)",
                                         default=0)
    schedule: str = field("learning rate: cosine (decay over all steps), plateau (halve on a val_loss plateau) or "
                          "constant", default="cosine")
    patch_size: int = field("train on random square patches of this size (0: whole images)", default=0)
    flip: bool = field("random horizontal flips of training images", default=True)
    shift: int = field("random shifts of training images by up to this many pixels (0: none)", default=0)
    warmup_epochs: float = field("cosine schedule: linear warm-up over this many epochs first", default=0.0)
    weight_decay: float = field("decoupled weight decay (AdamW) when > 0, else Adam", default=0.0)
    precision: str = field("training arithmetic: auto (mixed_bfloat16 where the CPU or GPU computes bfloat16 "
                           "natively, else float32), float32 or mixed_bfloat16; the export is float32",
                           default="auto")
    shuffle_buffer: int = field("training images in the shuffle buffer (bounds memory)", default=4096)
    time_budget_minutes: float = field("stop training at the last epoch that fits in this many minutes, the "
                                       "learning-rate decay shortened to end there (0: always run --epochs)",
                                       default=8.0)
    validation_fraction: float = field("share for validation (picks the best epoch; 0.03 leaves more to train on)",
                                       default=0.03)
    test_fraction: float = field("share held out for the model card metrics (Fashion-MNIST uses its test set)",
                                 default=0.1)
    max_images: int | None = field("use at most this many images", default=None, default_text="all")
    seed: int = field("seed of the split, the noise and the weights", default=0)
    output_dir: str = field("model root; versions below", default="artifacts/denoise")
    verbose: int = field("Keras progress: 0 silent, 1 bar, 2 a line/epoch", default=2)

    def __post_init__(self):
        """Checks every flag that needs no Keras (the fit settings are checked by ``deep_checks``)."""
        _check_text(self, "data", "output_dir")
        _check_choice(self, "format", IMAGE_SET_FORMATS)
        _check_choice(self, "model", DENOISER_MODELS, noun="denoiser")
        self.parameters()
        if not (0 < self.validation_fraction and 0 <= self.test_fraction
                and self.validation_fraction + self.test_fraction < 1):
            raise ValueError(f"need 0 < --validation_fraction, 0 <= --test_fraction and their sum < 1; got "
                             f"{self.validation_fraction} and {self.test_fraction}")
        _check_choice(self, "loss", DENOISER_LOSSES)
        _check_choice(self, "schedule", SCHEDULES)
        _check_choice(self, "precision", PRECISIONS)
        if self.patch_size < 0 or self.shuffle_buffer < 1 or self.shift < 0:
            raise ValueError(f"need --patch_size >= 0, --shuffle_buffer >= 1 and --shift >= 0, got {self.patch_size}, "
                             f"{self.shuffle_buffer} and {self.shift}")
        if not 0 <= self.warmup_epochs < self.epochs or self.weight_decay < 0:
            raise ValueError(f"need 0 <= --warmup_epochs < --epochs and --weight_decay >= 0, got {self.warmup_epochs} "
                             f"and {self.weight_decay}")
        if not self.time_budget_minutes >= 0:
            raise ValueError(f"need --time_budget_minutes >= 0 (0: no budget), got {self.time_budget_minutes}")
        if self.max_images is not None and self.max_images < 3:
            raise ValueError(f"--max_images must be >= 3 (train, validation, test), got {self.max_images}")
        _check_choice(self, "verbose", VERBOSITIES)

    def parameters(self) -> dict:
        """The parsed ``model_parameters`` JSON."""
        try:
            parameters = json.loads(self.model_parameters or "{}")
        except json.JSONDecodeError as error:
            raise ValueError(f"--model_parameters is not JSON: {error}") from None
        if not isinstance(parameters, dict):
            raise ValueError(f"--model_parameters must be a JSON object, got {self.model_parameters!r}")
        return parameters

    def training_config(self):
        """The ``models.family.denoisers.DenoiserTrainingConfig`` of the model and fit settings (imports Keras)."""
        from models.training.denoising import DenoiserTrainingConfig

        return DenoiserTrainingConfig(model=self.model, parameters=self.parameters(), noise=self.noise,
                                      epochs=self.epochs, batch_size=self.batch_size,
                                      learning_rate=self.learning_rate, loss=self.loss,
                                      early_stopping_patience=self.early_stopping_patience, schedule=self.schedule,
                                      patch_size=self.patch_size, flip=self.flip,
                                      shuffle_buffer=self.shuffle_buffer, shift=self.shift,
                                      warmup_epochs=self.warmup_epochs, weight_decay=self.weight_decay,
                                      precision=self.precision, time_budget_minutes=self.time_budget_minutes)

    def deep_checks(self) -> None:
        """Checks the noise and fit settings (Keras); the job runs this before any work."""
        self.training_config()


@dataclasses.dataclass(frozen=True)
class DenoiseRunConfig:
    """Flags of `heartwatch denoise run`."""

    input: str | None = field("image set: a directory of PNG/JPEG, a .npy/.npz array, or a .tfrecord file (or glob)",
                              default=None, default_text="required")
    format: str = field(f"one of {', '.join(IMAGE_SET_FORMATS)}", default="auto")
    array_key: str | None = field(".npz array name", default=None, default_text="images, x")
    model: str = field("a denoiser version directory, or a model root (the newest version is used)",
                       default="artifacts/denoise")
    out: str = field("output directory", default="denoised_output")
    noise: str = field("add noise before denoising (evaluation): none, gaussian[:0.2], speckle[:0.2], "
                       "salt_and_pepper[:0.05]", default="none")
    seed: int = field("noise seed (noise depends on seed and image key)", default=0)
    reference: str | None = field("clean references for noisy inputs: same form, same relative paths or rows",
                                  default=None)
    reference_key: str | None = field(".npz array name of the reference", default=None)
    batch_size: int = field("images per model call", default=256)
    chunk_size: int = field("array rows per read task", default=1000)
    convert_color: bool = field("convert grayscale <-> RGB to the model's channels instead of refusing such images",
                                default=False)
    grid_images: int = field("images in comparison.png (0: none)", default=8)

    def __post_init__(self):
        """Checks every flag (the noise is parsed by ``models.images.io``, which needs numpy only)."""
        if not self.input:
            raise ValueError("--input is required: a directory of images, a .npy/.npz array or a .tfrecord file")
        noise = self.noise_spec()
        if self.reference and not noise.is_none:
            raise ValueError("--reference and --noise both define the clean images; give one of them")
        if self.format not in IMAGE_SET_FORMATS:
            raise ValueError(f"--format: unknown format {self.format!r}; choose one of {', '.join(IMAGE_SET_FORMATS)}")
        if self.batch_size < 1 or self.chunk_size < 1 or self.grid_images < 0:
            raise ValueError("--batch_size and --chunk_size must be positive and --grid_images >= 0")

    def noise_spec(self):
        """The parsed ``models.images.noise.NoiseSpec`` to add (``none`` adds nothing)."""
        from models.images.noise import NoiseSpec

        try:
            return NoiseSpec.parse(self.noise)
        except ValueError as error:
            raise ValueError(f"--noise: {error}") from None
