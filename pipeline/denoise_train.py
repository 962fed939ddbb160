"""`heartwatch denoise train`: trains an image denoiser and exports a versioned model directory.

Data (``--data``): ``fashion_mnist`` (Keras loader; downloaded once, then cached), ``digits``
(scikit-learn's bundled 8x8 digits scaled into 28x28, offline), ``synthetic[:count=N,size=S,channels=C]``
(generated shapes), or a directory of PNG/JPEG images, a ``.npy``/``.npz`` array or a ``.tfrecord``
file of one image size. Images are split (seeded) into train / validation / held-out test; Fashion-MNIST
keeps its own test set.

Export: ``<output_dir>/<N>/`` holds ``model.keras``, ``model_card.json`` (data, noise, training,
held-out metrics, libraries), ``history.json`` and ``comparison.png`` (held-out noisy / denoised /
original).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import platform
import re

import numpy as np

from models.images import io as image_tools
from models.common.flags import parse_flags
from pipeline.config import DenoiseTrainConfig

LOGGER = logging.getLogger(__name__)
MODEL_FILE = "model.keras"
MODEL_CARD_FILE = "model_card.json"
HISTORY_FILE = "history.json"
GRID_FILE = "comparison.png"
GRID_IMAGES = 8
_VERSION_PATTERN = re.compile(r"^\d+$")
_SYNTHETIC_FIELDS = {"count": int, "size": int, "channels": int}


@dataclasses.dataclass
class DenoiseTrainResult:
    """Where the exported denoiser went and its model card."""

    version_directory: str
    model_path: str
    grid_path: str
    card: dict


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
        train_pool, test = image_tools.fashion_mnist_images()
        if config.max_images is not None:
            rng = np.random.default_rng(config.seed)
            train_pool = train_pool[np.sort(rng.permutation(len(train_pool))[:config.max_images])]
            test = test[:max(1, int(round(config.max_images * config.test_fraction)))]
        train_index, validation_index, _ = image_tools.split_indices(len(train_pool), (config.validation_fraction, 0.0),
                                                                     config.seed)
        return train_pool[train_index], train_pool[validation_index], test
    if config.data == "digits":
        pool = image_tools.digits_images()
    elif config.data == "synthetic" or config.data.startswith("synthetic:"):
        pool = image_tools.synthetic_images(seed=config.seed, **parse_synthetic(config.data))
    elif os.path.exists(config.data):
        pool = image_tools.load_image_set(config.data, config.format, config.array_key)
    else:
        raise FileNotFoundError(f"training data {config.data!r} is neither fashion_mnist, digits, synthetic[...] "
                                "nor an existing path")
    if config.max_images is not None and len(pool) > config.max_images:
        pool = pool[np.sort(np.random.default_rng(config.seed).permutation(len(pool))[:config.max_images])]
    train_index, validation_index, test_index = image_tools.split_indices(len(pool), fractions, config.seed)
    return pool[train_index], pool[validation_index], pool[test_index]


def list_versions(model_root: str) -> list[str]:
    """Integer version directories under ``model_root`` that hold a denoiser, oldest first."""
    if not os.path.isdir(model_root):
        return []
    names = [name for name in os.listdir(model_root) if _VERSION_PATTERN.match(name)
             and os.path.exists(os.path.join(model_root, name, MODEL_FILE))]
    return sorted(names, key=int)


def next_version_directory(model_root: str) -> str:
    """One above the highest numbered directory under ``model_root``."""
    existing = [int(name) for name in (os.listdir(model_root) if os.path.isdir(model_root) else [])
                if _VERSION_PATTERN.match(name)]
    return os.path.join(model_root, str(max(existing, default=0) + 1))


def resolve_denoiser_directory(path: str) -> str:
    """A version directory as given, or the newest version under a model root."""
    if os.path.exists(os.path.join(path, MODEL_FILE)):
        return path
    versions = list_versions(path)
    if not versions:
        raise FileNotFoundError(f"no exported denoiser at {path!r}: expected {path}/<version>/{MODEL_FILE} "
                                "(run `heartwatch denoise train` first)")
    return os.path.join(path, versions[-1])


def read_model_card(version_directory: str) -> dict:
    """The model card of a denoiser version."""
    path = os.path.join(version_directory, MODEL_CARD_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model card missing: {path}")
    with open(path) as handle:
        return json.load(handle)


def _libraries() -> dict:
    import keras
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__}


def build_model_card(config: DenoiseTrainConfig, version_directory: str, result, shapes: dict,
                     test_metrics: dict) -> dict:
    """The JSON model card: what was trained on what, with which noise, and how well it denoises."""
    training = config.training_config()
    return {
        "name": "heartwatch image denoiser",
        "version": os.path.basename(version_directory),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
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
        "libraries": _libraries(),
    }


def run_training(argv=None) -> DenoiseTrainResult:
    """Runs `heartwatch denoise train` with command-line style ``argv``."""
    from models.family.denoisers import denoise_array, evaluate_denoiser, fixed_noisy, train_denoiser
    from pipeline.denoise_figures import save_comparison_grid

    config = parse_flags(DenoiseTrainConfig, argv, prog="heartwatch denoise train")
    train, validation, test = load_training_images(config)
    LOGGER.info("training %s on %d images %s (validation %d, test %d), noise %s", config.model, len(train),
                train.shape[1:], len(validation), len(test), config.noise)
    version_directory = next_version_directory(config.output_dir)
    os.makedirs(version_directory, exist_ok=True)
    training = config.training_config()
    result = train_denoiser(training, train, validation, seed=config.seed,
                            checkpoint_path=os.path.join(version_directory, "best.weights.h5"),
                            verbose=config.verbose)
    noisy_test = fixed_noisy(test, training.noise_spec(), config.seed + 2)
    test_metrics = evaluate_denoiser(result.model, test, noisy_test)
    model_path = os.path.join(version_directory, MODEL_FILE)
    result.model.save(model_path)
    os.remove(os.path.join(version_directory, "best.weights.h5"))
    with open(os.path.join(version_directory, HISTORY_FILE), "w") as handle:
        json.dump(result.history, handle, indent=2)
    shown = slice(0, min(GRID_IMAGES, len(test)))
    grid_path = save_comparison_grid(os.path.join(version_directory, GRID_FILE), noisy_test[shown],
                                     denoise_array(result.model, noisy_test[shown]), test[shown])
    shapes = {"image_shape": train.shape[1:], "train": len(train), "validation": len(validation), "test": len(test)}
    card = build_model_card(config, version_directory, result, shapes, test_metrics)
    with open(os.path.join(version_directory, MODEL_CARD_FILE), "w") as handle:
        json.dump(card, handle, indent=2, sort_keys=True)
    LOGGER.info("exported %s: held-out PSNR %.2f -> %.2f dB", version_directory, test_metrics["noisy_psnr"],
                test_metrics["denoised_psnr"])
    return DenoiseTrainResult(version_directory=version_directory, model_path=model_path, grid_path=grid_path,
                              card=card)


def report_training(result: DenoiseTrainResult) -> None:
    """Prints where the denoiser went and its held-out metrics."""
    card = result.card
    test = card["metrics"]["test"]
    print(f"denoiser: {result.model_path} ({card['model']['name']}, {card['model']['parameter_count']} parameters)")
    print(f"model card: {os.path.join(result.version_directory, MODEL_CARD_FILE)}")
    print(f"comparison grid: {result.grid_path}")
    print(f"noise {card['noise']['spec']}; {card['training']['epochs_run']} epochs, best {card['training']['best_epoch']}")
    print(f"held-out ({test['images']} images): PSNR noisy {test['noisy_psnr']:.2f} dB -> denoised "
          f"{test['denoised_psnr']:.2f} dB; SSIM {test['noisy_ssim']:.3f} -> {test['denoised_ssim']:.3f}")

