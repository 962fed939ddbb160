"""`heartwatch denoise train`: trains an image denoiser and publishes a versioned model directory.

Data (``--data``): ``fashion_mnist`` (Keras loader; downloaded once, then cached), ``digits``
(scikit-learn's bundled 8x8 digits scaled into 28x28, offline), ``synthetic[:count=N,size=S,channels=C]``
(generated shapes), or a directory of PNG/JPEG images, a ``.npy``/``.npz`` array or a ``.tfrecord``
file of one image size. Images are split (seeded) into train / validation / held-out test; Fashion-MNIST
keeps its own test set.

Export: a version of the denoiser root (``denoiser_root(output_dir)``, the same
``models.common.artifacts.ArtifactRoot`` as the ECG detectors, marker ``model.keras``) is built in a
staging directory and published atomically as ``<output_dir>/<N>/``: ``model.keras``,
``model_card.json`` (data, noise, training, held-out metrics, libraries), ``history.json`` and
``comparison.png`` (held-out noisy / denoised / original). Everything goes through the file layer,
so ``--output_dir`` may be ``gs://...`` or ``ram://...``.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from models.common import artifacts, files
from models.common.flags import parse_flags
from models.images import sets
from pipeline.config import DenoiseTrainConfig

LOGGER = logging.getLogger(__name__)
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.json"
GRID_FILE = "comparison.png"
CHECKPOINT_FILE = "best.weights.h5"
GRID_IMAGES = 8
KIND = "denoiser"
_SYNTHETIC_FIELDS = {"count": int, "size": int, "channels": int}


@dataclasses.dataclass
class DenoiseTrainResult:
    """Where the exported denoiser went and its model card."""

    version_directory: str
    model_path: str
    grid_path: str
    card: dict


def denoiser_root(model_root: str) -> artifacts.ArtifactRoot:
    """The versioned-artifact view of a denoiser model root."""
    return artifacts.ArtifactRoot(model_root, MODEL_FILE, KIND, hint="run `heartwatch denoise train` first")


def resolve_denoiser_directory(path: str) -> str:
    """A version directory as given, or the newest version under a model root."""
    return denoiser_root(path).resolve()


def parse_synthetic(spec: str) -> dict:
    """``synthetic:count=200,size=32,channels=3`` -> keyword arguments of ``synthetic_images``."""
    _, _, options = spec.partition(":")
    values = {"count": 2000, "size": 28, "channels": 1}
    for item in filter(None, (part.strip() for part in options.split(","))):
        name, _, text = item.partition("=")
        if name not in _SYNTHETIC_FIELDS:
            raise ValueError(f"unknown synthetic option {name!r}; known: {sorted(_SYNTHETIC_FIELDS)}")
        try:
            values[name] = _SYNTHETIC_FIELDS[name](text)
        except ValueError:
            raise ValueError(f"synthetic option {name} needs a number, got {text!r}") from None
    return values


def load_training_images(config: DenoiseTrainConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train, validation, test)`` image arrays for ``config.data``."""
    fractions = (config.validation_fraction, config.test_fraction)
    if config.data == "fashion_mnist":
        train_pool, test = sets.fashion_mnist_images()
        if config.max_images is not None:
            rng = np.random.default_rng(config.seed)
            train_pool = train_pool[np.sort(rng.permutation(len(train_pool))[:config.max_images])]
            test = test[:max(1, int(round(config.max_images * config.test_fraction)))]
        train_index, validation_index, _ = sets.split_indices(len(train_pool), (config.validation_fraction, 0.0),
                                                              config.seed)
        return train_pool[train_index], train_pool[validation_index], test
    if config.data == "digits":
        pool = sets.digits_images()
    elif config.data == "synthetic" or config.data.startswith("synthetic:"):
        pool = sets.synthetic_images(seed=config.seed, **parse_synthetic(config.data))
    elif files.exists(config.data):
        pool = sets.load_image_set(config.data, config.format, config.array_key)
    else:
        raise FileNotFoundError(f"training data {config.data!r} is neither fashion_mnist, digits, synthetic[...] "
                                "nor an existing path")
    if config.max_images is not None and len(pool) > config.max_images:
        pool = pool[np.sort(np.random.default_rng(config.seed).permutation(len(pool))[:config.max_images])]
    train_index, validation_index, test_index = sets.split_indices(len(pool), fractions, config.seed)
    return pool[train_index], pool[validation_index], pool[test_index]


def build_model_card(config: DenoiseTrainConfig, result, shapes: dict, test_metrics: dict) -> dict:
    """The JSON model card (without its version: ``ArtifactRoot.publish`` adds it)."""
    training = config.training_config()
    return {
        "name": "heartwatch image denoiser",
        "created": artifacts.utc_now(),
        "files": {"model": MODEL_FILE, "history": HISTORY_FILE, "comparison_grid": GRID_FILE},
        "signature": {"input": "float32 [batch, height, width, channels] in [0, 1] (noisy)",
                      "output": "float32, same shape, denoised, in [0, 1]",
                      "size_multiple": int(result.model.size_multiple),
                      "note": "`heartwatch denoise run` pads other sizes to size_multiple and crops back"},
        "model": {"name": training.model, "config": dataclasses.asdict(result.model.config),
                  "channels": int(result.model.channels), "parameter_count": result.parameter_count},
        "data": {"source": config.data, "image_shape": list(shapes["image_shape"]),
                 "train_images": shapes["train"], "validation_images": shapes["validation"],
                 "test_images": shapes["test"], "seed": config.seed, "max_images": config.max_images},
        "noise": {"spec": str(training.noise_spec()), "kind": training.noise_spec().kind,
                  "amount": training.noise_spec().amount, "clipped_to": [0.0, 1.0],
                  "training": "drawn afresh for every batch", "validation_and_test": "fixed, seeded"},
        "training": {"epochs": training.epochs, "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                     "batch_size": training.batch_size, "learning_rate": training.learning_rate,
                     "loss": training.loss, "early_stopping_patience": training.early_stopping_patience,
                     "best_validation_loss": result.best_validation_loss, "seconds": round(result.seconds, 2)},
        "metrics": {"test": test_metrics},
        "libraries": artifacts.library_versions(),
    }


def export_version(staging: str, config: DenoiseTrainConfig, result, test: np.ndarray, noisy_test: np.ndarray,
                   shapes: dict, test_metrics: dict) -> dict:
    """Writes the model, history and comparison grid into ``staging``; returns the model card to publish."""
    from models.training.denoising import denoise_array
    from pipeline.denoise_figures import save_comparison_grid

    result.model.save(files.join(staging, MODEL_FILE))
    files.remove(files.join(staging, CHECKPOINT_FILE))
    files.write_json(files.join(staging, HISTORY_FILE), result.history)
    shown = slice(0, min(GRID_IMAGES, len(test)))
    save_comparison_grid(files.join(staging, GRID_FILE), noisy_test[shown],
                         denoise_array(result.model, noisy_test[shown]), test[shown])
    return build_model_card(config, result, shapes, test_metrics)


def run_training(argv=None) -> DenoiseTrainResult:
    """Runs `heartwatch denoise train` with command-line style ``argv``."""
    from models.training.denoising import evaluate_denoiser, fixed_noisy, train_denoiser

    config = parse_flags(DenoiseTrainConfig, argv, prog="heartwatch denoise train")
    train, validation, test = load_training_images(config)
    LOGGER.info("training %s on %d images %s (validation %d, test %d), noise %s", config.model, len(train),
                train.shape[1:], len(validation), len(test), config.noise)
    root = denoiser_root(config.output_dir)
    staging = root.staging_directory()
    try:
        training = config.training_config()
        result = train_denoiser(training, train, validation, seed=config.seed,
                                checkpoint_path=files.join(staging, CHECKPOINT_FILE), verbose=config.verbose)
        noisy_test = fixed_noisy(test, training.noise_spec(), config.seed + 2)
        test_metrics = evaluate_denoiser(result.model, test, noisy_test)
        shapes = {"image_shape": train.shape[1:], "train": len(train), "validation": len(validation),
                  "test": len(test)}
        card = export_version(staging, config, result, test, noisy_test, shapes, test_metrics)
        version, directory = root.publish(staging, card)
    except Exception:
        files.remove(staging)
        raise
    LOGGER.info("exported %s: held-out PSNR %.2f -> %.2f dB", directory, test_metrics["noisy_psnr"],
                test_metrics["denoised_psnr"])
    return DenoiseTrainResult(version_directory=directory, model_path=files.join(directory, MODEL_FILE),
                              grid_path=files.join(directory, GRID_FILE), card={**card, "version": str(version)})


def report_training(result: DenoiseTrainResult) -> str:
    """Where the denoiser went and its held-out metrics, as text."""
    lines = []
    card = result.card
    test = card["metrics"]["test"]
    model = card["model"]
    lines.append(f"denoiser: {result.model_path} ({model['name']}, {model['parameter_count']} parameters, "
                 f"version {card['version']})")
    lines.append(f"model card: {files.join(result.version_directory, artifacts.MODEL_CARD_FILE)}")
    lines.append(f"comparison grid: {result.grid_path}")
    training = card["training"]
    lines.append(f"noise {card['noise']['spec']}; {training['epochs_run']} epochs, best {training['best_epoch']}")
    lines.append(f"held-out ({test['images']} images): PSNR noisy {test['noisy_psnr']:.2f} dB -> denoised "
                 f"{test['denoised_psnr']:.2f} dB; SSIM {test['noisy_ssim']:.3f} -> {test['denoised_ssim']:.3f}")
    return "\n".join(lines)
