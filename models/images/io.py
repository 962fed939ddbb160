"""Single images for the denoisers: decoding, encoding, pixel types, channels, padding and TFRecord examples.

Images are float32 arrays in [0, 1] shaped ``(height, width, channels)`` (batches add a leading
axis); ``channels`` is 1 (grayscale) or 3 (RGB). PIL decodes and encodes PNG/JPEG bytes and
TensorFlow's protobufs hold the TFRecord examples; every problem with one image is an
``ImageError`` whose message is the reason written to the errors output. Noise lives in
``models.images.noise``, PSNR/SSIM in ``models.images.quality`` and whole image sets in
``models.images.sets``.

Array files (``.npy`` and the members of ``.npz``) are read and written by row ranges in
``models.images.arrays``.
"""

from __future__ import annotations

import io
import logging
import os

import numpy as np

LOGGER = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SUPPORTED_CHANNELS = (1, 3)
# PIL modes read as they are, and the modes converted first (alpha is dropped, palettes expanded).
DIRECT_MODES = {"L": 1, "RGB": 3}
CONVERTED_MODES = {"1": "L", "P": "RGB", "LA": "L", "RGBA": "RGB", "PA": "RGB", "I;16": None}
SIXTEEN_BIT_MAXIMUM = 65535.0
JPEG_QUALITY = 95
KEY_FEATURE = "image/key"
ENCODED_FEATURE = "image/encoded"
FORMAT_FEATURE = "image/format"
CLEAN_ENCODED_FEATURE = "image/clean_encoded"


class ImageError(ValueError):
    """One image cannot be used; the message is the reason written to the errors output."""


# ------------------------------------------------------------------------------------ shape handling


def as_channels_last(image: np.ndarray) -> np.ndarray:
    """A 2-D grayscale image gets a channel axis; 3-D images with 1 or 3 channels pass through."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, np.newaxis]
    if image.ndim != 3:
        raise ImageError(f"expected a (height, width[, channels]) image, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"zero-size image {image.shape[0]}x{image.shape[1]}")
    if image.shape[2] not in SUPPORTED_CHANNELS:
        raise ImageError(f"unsupported channel count {image.shape[2]} (shape {image.shape}); "
                         "only grayscale (1) and RGB (3) images are denoised")
    return image


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """Converts uint8 (0-255), uint16 (0-65535) or float ([0, 1]) pixels to float32 in [0, 1]."""
    image = as_channels_last(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255.0)
    if image.dtype == np.uint16:
        return image.astype(np.float32) / np.float32(SIXTEEN_BIT_MAXIMUM)
    if image.dtype.kind not in "fiub":
        raise ImageError(f"unsupported pixel type {image.dtype}")
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        raise ImageError("non-finite pixel values (NaN or infinity)")
    low, high = float(image.min()), float(image.max())
    if low < 0.0 or high > 1.0:
        raise ImageError(f"pixel values outside [0, 1] (min {low:.4g}, max {high:.4g}); scale float images to [0, 1]")
    return image


def match_channels(image: np.ndarray, channels: int, convert: bool = False) -> np.ndarray:
    """Returns ``image`` with ``channels`` channels, converting grayscale <-> RGB only when ``convert``."""
    present = image.shape[-1]
    if present == channels:
        return image
    if not convert:
        names = {1: "grayscale", 3: "RGB"}
        raise ImageError(f"{names.get(present, present)} image but the model denoises {names.get(channels, channels)} "
                         "images (pass --convert_color true to convert, or use a model trained on this kind)")
    if channels == 1:
        luma = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
        return np.tensordot(image, luma, axes=([-1], [0]))[..., np.newaxis].astype(np.float32)
    return np.repeat(image, channels, axis=-1)


def pad_to_multiple(images: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Pads the height and width of ``(..., H, W, C)`` up to a multiple by reflection (edge for tiny images).

    Returns the padded array and the original ``(height, width)`` for ``crop``.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    height, width = images.shape[-3], images.shape[-2]
    extra_height, extra_width = -height % multiple, -width % multiple
    if not extra_height and not extra_width:
        return images, (height, width)
    padding = [(0, 0)] * (images.ndim - 3) + [(0, extra_height), (0, extra_width), (0, 0)]
    mode = "reflect" if extra_height < height and extra_width < width else "edge"
    return np.pad(images, padding, mode=mode), (height, width)


def crop(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """The top-left ``height`` x ``width`` of ``(..., H, W, C)`` images (undoes ``pad_to_multiple``)."""
    return images[..., :height, :width, :]


# ------------------------------------------------------------------------------- encoded image files


def decode_image(data: bytes) -> np.ndarray:
    """Decodes PNG/JPEG bytes to float32 ``(H, W, C)`` in [0, 1]; ``ImageError`` says why it cannot."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            image = opened
            if image.mode in CONVERTED_MODES:
                target = CONVERTED_MODES[image.mode]
                if target is None:
                    return to_unit_float(np.asarray(image, dtype=np.uint16))
                image = image.convert(target)
            if image.mode not in DIRECT_MODES:
                raise ImageError(f"unsupported image mode {image.mode!r}; supported: "
                                 f"{', '.join(sorted(DIRECT_MODES) + sorted(CONVERTED_MODES))}")
            return to_unit_float(np.asarray(image, dtype=np.uint8))
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("unreadable or corrupt image: not a recognised PNG/JPEG file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(f"unreadable or corrupt image: {error}") from None


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Rounds [0, 1] floats to 0-255 bytes."""
    return np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def encode_image(image: np.ndarray, image_format: str = "png") -> bytes:
    """Encodes a [0, 1] float ``(H, W, C)`` image as PNG or JPEG bytes."""
    from PIL import Image

    image_format = image_format.lower().lstrip(".")
    pixels = to_uint8(image)
    pixels = pixels[:, :, 0] if pixels.shape[-1] == 1 else pixels
    buffer = io.BytesIO()
    if image_format == "png":
        Image.fromarray(pixels).save(buffer, format="PNG")
    elif image_format in ("jpg", "jpeg"):
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        raise ValueError(f"cannot encode images as {image_format!r}; use png or jpeg")
    return buffer.getvalue()


def is_image_file(name: str) -> bool:
    """True for the file extensions the directory reader picks up."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------------------- TFRecords


def make_example(key: str, encoded: bytes, image_format: str = "png", clean_encoded: bytes | None = None) -> bytes:
    """A serialized ``tf.train.Example`` holding one encoded image (and optionally its clean reference)."""
    import tensorflow as tf

    def bytes_feature(value: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    features = {KEY_FEATURE: bytes_feature(key.encode("utf-8")), ENCODED_FEATURE: bytes_feature(encoded),
                FORMAT_FEATURE: bytes_feature(image_format.encode("utf-8"))}
    if clean_encoded is not None:
        features[CLEAN_ENCODED_FEATURE] = bytes_feature(clean_encoded)
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def parse_example(serialized: bytes) -> dict:
    """``{"key", "encoded", "format", "clean_encoded"}`` of a record written by ``make_example``.

    ``key`` is None when the record has none (the reader then numbers it); a record that is not an
    Example or has no ``image/encoded`` raises ``ImageError``.
    """
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    try:
        example = tf.train.Example.FromString(serialized)
    except DecodeError as error:
        raise ImageError(f"record is not a tf.train.Example: {error}") from None
    feature = example.features.feature

    def first_bytes(name: str) -> bytes | None:
        values = feature[name].bytes_list.value if name in feature else []
        return values[0] if values else None

    encoded = first_bytes(ENCODED_FEATURE)
    if encoded is None:
        raise ImageError(f"example has no {ENCODED_FEATURE!r} bytes feature")
    key = first_bytes(KEY_FEATURE)
    image_format = first_bytes(FORMAT_FEATURE)
    return {"key": key.decode("utf-8", "replace") if key is not None else None, "encoded": encoded,
            "format": image_format.decode("utf-8", "replace") if image_format else "png",
            "clean_encoded": first_bytes(CLEAN_ENCODED_FEATURE)}
