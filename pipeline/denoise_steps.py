"""The per-image steps of `heartwatch denoise run`: prepare, denoise (RunInference), evaluate.

``PrepareImages`` matches the model's channels and, for evaluation runs, adds seeded noise (the input
then becomes the clean reference). ``DenoiserModelHandler`` is the ``RunInference`` handler: it loads
the exported ``model.keras`` with ``models.family.registry.load`` and denoises a batch of any image sizes with
``denoise_batch``. ``evaluate_prediction`` turns each result into the output record with its
PSNR/SSIM against the clean reference.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from models.images import io as image_tools
from models.images import noise, quality
from models.images.noise import noise_rng
from pipeline.denoise_read import METRICS_NAMESPACE, error_record

METRIC_NAMES = ("noisy_psnr", "denoised_psnr", "noisy_ssim", "denoised_ssim")


def prepare_image(image: np.ndarray, clean, channels: int, convert_color: bool):
    """The image (and reference) with the model's channels; a reference of another size is refused."""
    image = image_tools.match_channels(image, channels, convert_color)
    if clean is not None:
        clean = image_tools.match_channels(clean, channels, convert_color)
        if clean.shape != image.shape:
            raise image_tools.ImageError(f"reference is {clean.shape[0]}x{clean.shape[1]} but the image is "
                                         f"{image.shape[0]}x{image.shape[1]}")
    return image, clean


class PrepareImages(beam.DoFn):
    """Matches the model's channels and, when asked, adds noise (the input then becomes the clean reference)."""

    ERRORS = "errors"

    def __init__(self, noise_text: str, seed: int, channels: int, convert_color: bool):
        self.noise_text = noise_text
        self.seed = seed
        self.channels = channels
        self.convert_color = convert_color

    def setup(self):
        self.noise_spec = noise.NoiseSpec.parse(self.noise_text)
        self.bad = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "bad_images")

    def process(self, record: dict):
        try:
            image, clean = prepare_image(record["image"], record["clean"], self.channels, self.convert_color)
        except image_tools.ImageError as error:
            self.bad.inc()
            yield beam.pvalue.TaggedOutput(self.ERRORS, error_record(record["key"], str(error)))
            return
        if not self.noise_spec.is_none:
            clean, image = image, noise.add_noise(image, self.noise_spec, noise_rng(self.seed, record["key"]))
        yield {**record, "image": image, "clean": clean}


def denoise_batch(model, images: list) -> list:
    """Denoises a list of ``(H, W, C)`` images of any sizes: same-size groups, padded, one call each."""
    outputs = [None] * len(images)
    groups: dict = {}
    for index, image in enumerate(images):
        groups.setdefault(image.shape, []).append(index)
    for indices in groups.values():
        stacked = np.stack([images[index] for index in indices])
        padded, (height, width) = image_tools.pad_to_multiple(stacked, model.size_multiple)
        denoised = image_tools.crop(np.asarray(model.predict_on_batch(padded), np.float32), height, width)
        for position, index in enumerate(indices):
            outputs[index] = denoised[position]
    return outputs


class DenoiserModelHandler(ModelHandler):
    """RunInference handler: batches of image records in, ``PredictionResult(record, denoised)`` out."""

    def __init__(self, model_path: str, batch_size: int = 256):
        super().__init__()
        self.model_path = model_path
        self.batch_size = batch_size

    def load_model(self):
        from models.family import registry

        return registry.load(self.model_path)

    def run_inference(self, batch, model, inference_args=None):
        denoised = denoise_batch(model, [record["image"] for record in batch])
        return [PredictionResult(record, output) for record, output in zip(batch, denoised)]

    def batch_elements_kwargs(self):
        return {"min_batch_size": self.batch_size, "max_batch_size": self.batch_size}


def image_metrics(noisy: np.ndarray, denoised: np.ndarray, clean) -> dict:
    """PSNR/SSIM of the noisy input and of the denoised output against ``clean`` (None values without it)."""
    if clean is None:
        return {name: None for name in METRIC_NAMES}
    return {"noisy_psnr": float(quality.psnr(clean, noisy)), "denoised_psnr": float(quality.psnr(clean, denoised)),
            "noisy_ssim": float(quality.ssim(clean, noisy)), "denoised_ssim": float(quality.ssim(clean, denoised))}


def evaluate_prediction(result: PredictionResult) -> dict:
    """The output record of one denoised image: what to write, to draw and to summarise."""
    record, denoised = result.example, np.clip(result.inference, 0.0, 1.0)
    return {"key": record["key"], "position": record["position"], "format": record["format"],
            "input": record["image"], "denoised": denoised, "clean": record["clean"],
            "metrics": image_metrics(record["image"], denoised, record["clean"])}
