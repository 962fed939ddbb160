"""`heartwatch autoencode`: trains the image autoencoders on an image set and publishes them with their figures.

Two models of ``models.family.images`` are trained through the one fit loop
(``models.training.fit.fit``: Adam, best-``val_loss`` weights, early stopping, a Keras line per epoch
with ``--verbose 2``) on the same seeded split (``pipeline.autoencode_data``):

- ``dense_image``: the TensorFlow tutorial's basic dense autoencoder (``--latent_dim``, 64);
- ``conv_image``: the convolutional autoencoder with a ``--z_dim`` code (2 by default, the TF2
  conv-AE reference whose seed figures are the latent scatter and the decoder grid).

A version of the artifact root (``models.common.artifacts.ArtifactRoot``, marker ``metrics.json``) is
built in a staging directory and published atomically as ``<output_dir>/<N>/``:

==========================  ==============================================================
``dense_image.keras``       the trained models (Keras 3 format, ``models.family.registry.load``)
``conv_image.keras``
``history.json``            loss and val_loss per epoch of each model
``metrics.json``            held-out reconstruction MSE, PSNR and SSIM per model (and of the
                            training mean image, as a floor to beat)
``reconstructions.png``     held-out originals above each model's reconstructions
``loss.png``                training curves
``latent_scatter.png``      held-out codes of ``conv_image`` coloured by label (``z_dim`` = 2)
``decoder_grid.png``        ``conv_image``'s decoder over the grid [-5, 5] x [-5, 5] (``z_dim`` = 2)
``index.html``              the page linking all of them
``model_card.json``         data, models, training, metrics, figures (and why any was skipped)
==========================  ==============================================================

For ``z_dim`` other than 2 the latent scatter and the decoder grid are skipped, and the card, the
page and the text report say why. Everything goes through the file layer, so ``--output_dir`` may be
``gs://...`` or ``ram://...``. No Beam pipeline runs: training is in-process.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from models.common import artifacts, files
from models.common.flags import parse_flags
from models.family import registry
from models.family.configs import config_from_dict
from models.images.quality import psnr, ssim
from pipeline.autoencode_config import AutoencodeConfig
from pipeline.autoencode_data import ImageSplits, load_splits

LOGGER = logging.getLogger(__name__)

KIND = "image autoencoders"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
PAGE_FILE = "index.html"
RECONSTRUCTIONS_FILE = "reconstructions.png"
LOSS_FILE = "loss.png"
SCATTER_FILE = "latent_scatter.png"
GRID_FILE = "decoder_grid.png"
DENSE, CONV = "dense_image", "conv_image"
MODEL_NAMES = (DENSE, CONV)
PREDICT_BATCH = 512


@dataclasses.dataclass
class AutoencodeResult:
    """Where the version went, its page and its model card (with the version number)."""

    version_directory: str
    page_path: str
    card: dict


def autoencoder_root(output_dir: str) -> artifacts.ArtifactRoot:
    """The versioned-artifact view of an image autoencoder root."""
    return artifacts.ArtifactRoot(output_dir, METRICS_FILE, KIND, hint="run `heartwatch autoencode` first")


def model_file(name: str) -> str:
    """The file name of a trained model inside a version."""
    return f"{name}{registry.KERAS_SUFFIX}"


def model_parameters(config: AutoencodeConfig, image_shape: tuple) -> dict:
    """Registry parameters of both models for images of ``image_shape`` (height, width, channels)."""
    shape = tuple(int(size) for size in image_shape)
    return {DENSE: {"input_shape": shape, "latent_dim": config.latent_dim},
            CONV: {"input_shape": shape, "filters": tuple(config.conv_filters), "z_dim": config.z_dim}}


def check_model_parameters(parameters: dict) -> None:
    """Builds every model config (no Keras model), so a shape the models cannot take fails before training."""
    for name, values in parameters.items():
        try:
            config_from_dict(registry.model_class(name).config_class, values)
        except ValueError as error:
            raise ValueError(f"{name} cannot take images of shape {values['input_shape']}: {error} "
                             "(change --conv_filters or resize the images)") from None


def model_label(name: str, parameters: dict) -> str:
    """A short name of a model for figures and tables, e.g. ``conv_image (z_dim 2)``."""
    if name == DENSE:
        return f"{DENSE} (latent {parameters['latent_dim']})"
    return f"{CONV} (z_dim {parameters['z_dim']})"


def train_models(config: AutoencodeConfig, splits: ImageSplits, parameters: dict) -> dict:
    """``{name: models.training.fit.TrainingResult}`` of both models, each seeded with ``--seed``."""
    import keras

    from models.training.fit import fit
    from models.training.settings import FitSettings

    settings = FitSettings(epochs=config.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
                           loss=config.loss, early_stopping_patience=config.early_stopping_patience)
    results = {}
    for name in MODEL_NAMES:
        keras.utils.set_random_seed(config.seed)
        model = registry.build(name, parameters[name])
        size = model.encoder.count_params() + model.decoder.count_params()
        LOGGER.info("training %s: %d parameters, %d images %s, validation %d, up to %d epochs",
                    model_label(name, parameters[name]), size, len(splits.train), splits.train.shape[1:],
                    len(splits.validation), config.epochs)
        results[name] = fit(model, splits.train, splits.validation, settings, verbose=config.verbose, name=name)
    return results


def reconstruct(model, images: np.ndarray) -> np.ndarray:
    """The model's reconstructions of ``images`` in inference mode, as float32 numpy."""
    return np.asarray(model.predict(images, batch_size=PREDICT_BATCH, verbose=0), np.float32)


def reconstruction_metrics(originals: np.ndarray, reconstructions: np.ndarray) -> dict:
    """Held-out quality: pixel MSE over all images, and mean per-image PSNR (dB, capped at 100) and SSIM, on [0, 1]."""
    originals = np.asarray(originals, np.float64)
    reconstructions = np.asarray(reconstructions, np.float64)
    if originals.shape != reconstructions.shape or originals.ndim != 4 or not len(originals):
        raise ValueError(f"need two equal, non-empty (N, H, W, C) batches, got {originals.shape} and "
                         f"{reconstructions.shape}")
    return {"images": int(len(originals)), "mse": float(np.mean((originals - reconstructions) ** 2)),
            "psnr": float(np.mean(np.minimum(psnr(originals, reconstructions), 100.0))),
            "ssim": float(np.mean(ssim(originals, reconstructions)))}


def display_label(label, names: tuple[str, ...] | None) -> str:
    """``names[label]`` for an integer label within ``names``, else the label itself as text."""
    if names and isinstance(label, (int, np.integer)) and 0 <= int(label) < len(names):
        return names[int(label)]
    return str(label)


def latent_figures(config: AutoencodeConfig, model, splits: ImageSplits, directory: str) -> tuple[dict, dict]:
    """Writes the latent scatter and decoder grid of the conv model when its code is 2-D.

    Returns ``(written {figure: file}, skipped {figure: reason})``.
    """
    from models.family import latent

    if config.z_dim != 2:
        reason = (f"--z_dim is {config.z_dim}: the latent scatter and the decoder grid are drawn for a 2-D code "
                  "only (--z_dim 2)")
        LOGGER.info("skipping the latent figures: %s", reason)
        return {}, {"latent_scatter": reason, "decoder_grid": reason}
    grid = latent.GridConfig(config.grid_low, config.grid_high, config.grid_step)
    names = config.names_of_labels()
    label_names = {label: display_label(label, names) for label in set(splits.test_labels.tolist())} \
        if splits.labelled else None
    latent.latent_scatter(model, splits.test, splits.test_labels, files.join(directory, SCATTER_FILE),
                          title=f"{CONV} codes of {len(splits.test)} held-out images", label_names=label_names,
                          grid=grid)
    latent.decoder_grid(model, files.join(directory, GRID_FILE), grid,
                        title=f"{CONV} decoder over [{grid.low:g}, {grid.high:g}]^2, step {grid.step:g}")
    return {"latent_scatter": SCATTER_FILE, "decoder_grid": GRID_FILE}, {}


def export_version(staging: str, config: AutoencodeConfig, splits: ImageSplits, parameters: dict,
                   trained: dict) -> dict:
    """Writes models, history, metrics, figures and the page into ``staging``; returns the model card."""
    from pipeline.autoencode_figures import example_indices, save_loss_curves, save_reconstructions
    from pipeline.autoencode_report import build_model_card, write_page

    labels = {name: model_label(name, parameters[name]) for name in MODEL_NAMES}
    reconstructions = {name: reconstruct(result.model, splits.test) for name, result in trained.items()}
    metrics = {name: reconstruction_metrics(splits.test, images) for name, images in reconstructions.items()}
    mean_image = np.broadcast_to(splits.train.mean(axis=0, keepdims=True), splits.test.shape)
    metrics["mean_image_baseline"] = reconstruction_metrics(splits.test, mean_image)
    for name in MODEL_NAMES:
        registry.save(trained[name].model, files.join(staging, model_file(name)))
        LOGGER.info("%s held-out: MSE %.5f, PSNR %.2f dB, SSIM %.3f", labels[name], metrics[name]["mse"],
                    metrics[name]["psnr"], metrics[name]["ssim"])
    files.write_json(files.join(staging, HISTORY_FILE), {name: result.history for name, result in trained.items()})
    shown = example_indices(splits.test_labels, config.reconstruction_images)
    titles = [display_label(label, config.names_of_labels()) for label in splits.test_labels[shown]] \
        if splits.labelled else None
    save_reconstructions(files.join(staging, RECONSTRUCTIONS_FILE), splits.test[shown],
                         [(labels[name], reconstructions[name][shown]) for name in MODEL_NAMES], titles=titles)
    save_loss_curves(files.join(staging, LOSS_FILE), {labels[name]: result.history for name, result in trained.items()})
    figures, skipped = latent_figures(config, trained[CONV].model, splits, staging)
    figures = {"reconstructions": RECONSTRUCTIONS_FILE, "loss": LOSS_FILE, **figures}
    written = {"models": {name: model_file(name) for name in MODEL_NAMES}, "history": HISTORY_FILE,
               "metrics": METRICS_FILE, "page": PAGE_FILE, "figures": figures}
    card = build_model_card(config, splits, trained, metrics, written, skipped)
    write_page(files.join(staging, PAGE_FILE), card)
    files.write_json(files.join(staging, METRICS_FILE), metrics)
    return card


def run(argv=None, test_pipeline=None) -> AutoencodeResult:
    """Runs `heartwatch autoencode` with command-line style ``argv``.

    ``test_pipeline`` is accepted for the jobs' common signature; this job runs no Beam pipeline.
    """
    config = parse_flags(AutoencodeConfig, argv, prog="heartwatch autoencode")
    splits = load_splits(config)
    parameters = model_parameters(config, splits.train.shape[1:])
    check_model_parameters(parameters)
    LOGGER.info("image set %s: %s, labels: %s", config.data, splits.counts(), splits.label_source)
    root = autoencoder_root(config.output_dir)
    staging = root.staging_directory()
    try:
        trained = train_models(config, splits, parameters)
        card = export_version(staging, config, splits, parameters, trained)
        version, directory = root.publish(staging, card)
    except Exception:
        files.remove(staging)
        raise
    LOGGER.info("published image autoencoders version %d at %s", version, directory)
    return AutoencodeResult(version_directory=directory, page_path=files.join(directory, PAGE_FILE),
                            card={**card, "version": str(version)})


def report(result: AutoencodeResult) -> str:
    """Where the version went and its held-out metrics, as text."""
    from pipeline.autoencode_report import text_report

    return text_report(result.version_directory, result.page_path, result.card)
