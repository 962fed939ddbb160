"""`heartwatch denoise train`: trains an image denoiser and publishes a versioned model directory.

Data (``--data``): ``fashion_mnist`` (Keras loader; downloaded once, then cached), ``digits``
(scikit-learn's bundled 8x8 digits scaled into 28x28, offline), ``synthetic[:count=N,size=S,channels=C]``
(generated shapes), or a directory of PNG/JPEG images, a ``.npy``/``.npz`` array, a ``.tfrecord`` file,
or a glob of arrays or TFRecords (shards). ``run`` is a Beam job, then a ``tf.data`` training loop:

1. ``prepare_shards``: the Beam step of ``pipeline.denoise_shards`` reads the images on the workers,
   splits them by a stable hash of (seed, key) into train / validation / held-out test (Fashion-MNIST
   keeps its own test set) and writes record shards into the staging directory (built-in sources are
   first written there as ``.npy`` files);
2. ``models.training.denoising.train_denoiser_on_records`` streams the shards through ``tf.data``;
3. ``evaluate_on_records`` streams the held-out shards for the card's PSNR/SSIM and the grid.

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
from models.common.flags import parse_beam_flags
from models.images import arrays, sets
from pipeline import denoise_shards as shards
from pipeline.config import DenoiseTrainConfig
from pipeline.runner import job_pipeline

LOGGER = logging.getLogger(__name__)
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.json"
GRID_FILE = "comparison.png"
CHECKPOINT_FILE = "best.weights.h5"
WORK_DIRECTORY = "shards"
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


def builtin_arrays(config: DenoiseTrainConfig) -> tuple[np.ndarray, np.ndarray | None] | None:
    """``(pool, held_out)`` arrays of a built-in source (``held_out`` only for Fashion-MNIST), or None for paths.

    ``--max_images`` takes a seeded random subset of the pool here.
    """
    held_out = None
    if config.data == "fashion_mnist":
        pool, held_out = sets.fashion_mnist_images()
        if config.max_images is not None:
            held_out = held_out[:max(1, int(round(config.max_images * config.test_fraction)))]
    elif config.data == "digits":
        pool = sets.digits_images()
    elif config.data == "synthetic" or config.data.startswith("synthetic:"):
        pool = sets.synthetic_images(seed=config.seed, **parse_synthetic(config.data))
    else:
        return None
    if config.max_images is not None and len(pool) > config.max_images:
        pool = pool[np.sort(np.random.default_rng(config.seed).permutation(len(pool))[:config.max_images])]
    return pool, held_out


def training_input(config: DenoiseTrainConfig, work_directory: str) -> tuple[shards.TrainingInput, str]:
    """What the Beam step reads, and the data path its readers resolve names against.

    Built-in sources are first written as ``.npy`` files into ``work_directory`` (through the file
    layer, so workers read them like any input); paths and globs are listed where they are.
    """
    builtin = builtin_arrays(config)
    if builtin is None:
        return shards.list_training_input(config.data, config.format, config.array_key, config.max_images), config.data
    pool, held_out = builtin
    pool_path = arrays.save_array(files.join(work_directory, "pool.npy"), _compact(pool))
    listed = shards.list_training_input(pool_path)
    if held_out is not None:
        test_path = arrays.save_array(files.join(work_directory, "held_out.npy"), _compact(held_out))
        listed = dataclasses.replace(listed, test_tasks=shards.list_training_input(test_path).tasks)
    return listed, pool_path


def _compact(images: np.ndarray) -> np.ndarray:
    """uint8 when that is exact (Fashion-MNIST), else the float32 images."""
    as_bytes = arrays.from_unit_float(images, np.uint8)
    return as_bytes if np.array_equal(as_bytes.astype(np.float32) / 255.0, images) else images.astype(np.float32)


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
                 "test_images": shapes["test"], "bad_images": shapes["bad_images"], "seed": config.seed,
                 "max_images": config.max_images,
                 "split": "stable hash of (seed, image key) against the shares: counts are approximate"
                          + ("; Fashion-MNIST keeps its own test set" if config.data == "fashion_mnist" else "")},
        "noise": {"spec": str(training.noise_spec()), "kind": training.noise_spec().kind,
                  "amount": training.noise_spec().amount, "clipped_to": [0.0, 1.0],
                  "training": "drawn afresh for every batch", "validation_and_test": "fixed, seeded"},
        "training": {"epochs": training.epochs, "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                     "batch_size": training.batch_size, "learning_rate": training.learning_rate,
                     "loss": training.loss, "early_stopping_patience": training.early_stopping_patience,
                     "schedule": training.schedule, "warmup_epochs": training.warmup_epochs,
                     "weight_decay": training.weight_decay, "patch_size": training.patch_size, "flip": training.flip,
                     "shift": training.shift, "precision": training.precision,
                     "time_budget_minutes": training.time_budget_minutes,
                     "dtype_policy": result.dtype_policy,
                     "shuffle_buffer": training.shuffle_buffer, "input": "record shards streamed through tf.data",
                     "best_validation_loss": result.best_validation_loss, "seconds": round(result.seconds, 2)},
        "metrics": {"test": test_metrics},
        "libraries": artifacts.library_versions(),
    }


def export_version(staging: str, config: DenoiseTrainConfig, result, samples: list, shapes: dict,
                   test_metrics: dict) -> dict:
    """Writes the model, history and comparison grid into ``staging``; returns the model card to publish."""
    from pipeline.denoise_figures import save_comparison_grid

    result.model.save(files.join(staging, MODEL_FILE))
    files.remove(files.join(staging, CHECKPOINT_FILE))
    files.write_json(files.join(staging, HISTORY_FILE), result.history)
    save_comparison_grid(files.join(staging, GRID_FILE), [sample[1] for sample in samples],
                         [sample[2] for sample in samples], [sample[3] for sample in samples])
    return build_model_card(config, result, shapes, test_metrics)


def prepare_shards(config: DenoiseTrainConfig, beam_args: list, work_directory: str, test_pipeline=None) -> dict:
    """Runs the Beam step (read, split, record shards) into ``work_directory``; returns its checked summary."""
    listed, data_path = training_input(config, work_directory)
    LOGGER.info("preparing %s (%s, %d read tasks) into %s", config.data, listed.format,
                len(listed.tasks) + len(listed.test_tasks), work_directory)
    with job_pipeline(beam_args, test_pipeline) as pipeline:
        shards.build_preparation(pipeline, listed, data_path, work_directory, config.seed,
                                 config.validation_fraction, config.test_fraction)
    prepared = shards.read_preparation(work_directory)
    counts, shapes = prepared["counts"], prepared["shapes"]
    if prepared["bad_images"]:
        LOGGER.warning("%d unusable images skipped (their reasons go into the version's %s)",
                       prepared["bad_images"], shards.ERRORS_FILE)
    if not any(counts.values()):
        raise ValueError(f"no usable images in {config.data}")
    if len(shapes) > 1 and not config.patch_size:
        raise ValueError(f"training images in {config.data} differ in size ({shapes[:4]}...); resize them first or "
                         "train on patches (--patch_size)")
    if len({shape[-1] for shape in shapes}) > 1:
        raise ValueError(f"training images in {config.data} mix channel counts ({shapes[:4]}...)")
    too_few = [split for split in shards.SPLITS if not counts[split] and (split != "test" or config.test_fraction)]
    if too_few:
        hint = next((f"raise --{split}_fraction" for split in too_few if split != "train"), "use more images")
        raise ValueError(f"{sum(counts.values())} images are too few to split into train, validation and test "
                         f"(none fell into {', '.join(too_few)}; the split hashes each image's key: {hint})")
    if config.patch_size and min(min(shape[:2]) for shape in shapes) < config.patch_size:
        raise ValueError(f"--patch_size {config.patch_size} is larger than some images ({shapes[:4]})")
    return prepared


def run(argv=None, test_pipeline=None) -> DenoiseTrainResult:
    """Runs `heartwatch denoise train` with command-line style ``argv`` (its Beam step on ``test_pipeline``)."""
    from models.training.denoising import evaluate_on_records, train_denoiser_on_records

    config, beam_args = parse_beam_flags(DenoiseTrainConfig, argv, prog="heartwatch denoise train")
    root = denoiser_root(config.output_dir)
    staging = root.staging_directory()
    work_directory = files.join(staging, WORK_DIRECTORY)
    try:
        prepared = prepare_shards(config, beam_args, work_directory, test_pipeline)
        counts, shape = prepared["counts"], prepared["shapes"][0]
        paths = {split: shards.shard_paths(work_directory, split) for split in shards.SPLITS}
        LOGGER.info("training %s on %d images %s (validation %d, test %d), noise %s", config.model, counts["train"],
                    tuple(shape), counts["validation"], counts["test"], config.noise)
        training = config.training_config()
        result = train_denoiser_on_records(training, paths["train"], paths["validation"],
                                           (counts["train"], counts["validation"]), shape[-1],
                                           seed=config.seed, checkpoint_path=files.join(staging, CHECKPOINT_FILE),
                                           verbose=config.verbose)
        evaluated = paths["test"] or paths["validation"]
        test_metrics, samples = evaluate_on_records(result.model, evaluated, training.noise_spec(), config.seed + 2,
                                                    keep=GRID_IMAGES)
        test_metrics["split"] = "test" if paths["test"] else "validation (no test share)"
        shapes = {"image_shape": shape if len(prepared["shapes"]) == 1 else "mixed", "train": counts["train"],
                  "validation": counts["validation"], "test": counts["test"], "bad_images": prepared["bad_images"]}
        if prepared["bad_images"]:
            files.copy(files.join(work_directory, shards.ERRORS_FILE), files.join(staging, shards.ERRORS_FILE))
        files.remove(work_directory)
        card = export_version(staging, config, result, samples, shapes, test_metrics)
        version, directory = root.publish(staging, card)
    except Exception:
        files.remove(staging)
        raise
    LOGGER.info("exported %s: held-out PSNR %.2f -> %.2f dB", directory, test_metrics["noisy_psnr"],
                test_metrics["denoised_psnr"])
    return DenoiseTrainResult(version_directory=directory, model_path=files.join(directory, MODEL_FILE),
                              grid_path=files.join(directory, GRID_FILE), card={**card, "version": str(version)})


run_training = run


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
