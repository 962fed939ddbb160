"""Images for the denoisers: noise, quality metrics, padding, decoding and image-set storage.

Images are float32 arrays in [0, 1] shaped ``(height, width, channels)`` (batches add a leading
axis); ``channels`` is 1 (grayscale) or 3 (RGB). Everything here is plain NumPy (PIL for PNG/JPEG,
TensorFlow's protobufs for TFRecord examples) so the training code, the Beam job and the tests share it.

Noise (always clipped back to [0, 1]):

* ``gaussian``: ``x + amount * N(0, 1)``: the tutorial's ``noise_factor`` (0.2 there, 0.6 in the book);
* ``speckle``: ``x + amount * x * N(0, 1)`` (multiplicative, like scikit-image's ``speckle`` with
  ``var = amount ** 2``);
* ``salt_and_pepper``: a fraction ``amount`` of pixels set to 0 or 1 with equal odds (all channels).

Metrics follow the usual definitions: PSNR ``10 log10(range^2 / MSE)`` per image (``inf`` when the
images are identical), and SSIM as in Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5),
K1 = 0.01, K2 = 0.03, valid-mode filtering and the mean over the map and channels, which is what
``tf.image.ssim`` computes. Images smaller than the window use a window as large as the image.

Array files (``.npy`` and the members of ``.npz``) are read and written by row ranges in
``models.images.arrays``.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os

import numpy as np

LOGGER = logging.getLogger(__name__)

NOISE_KINDS = ("none", "gaussian", "speckle", "salt_and_pepper")
DEFAULT_NOISE_AMOUNTS = {"none": 0.0, "gaussian": 0.2, "speckle": 0.2, "salt_and_pepper": 0.05}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
IMAGE_SET_FORMATS = ("auto", "images", "npy", "npz", "tfrecord")
TFRECORD_EXTENSIONS = (".tfrecord", ".tfrecords")
SUPPORTED_CHANNELS = (1, 3)
# PIL modes read as they are, and the modes converted first (alpha is dropped, palettes expanded).
DIRECT_MODES = {"L": 1, "RGB": 3}
CONVERTED_MODES = {"1": "L", "P": "RGB", "LA": "L", "RGBA": "RGB", "PA": "RGB", "I;16": None}
SIXTEEN_BIT_MAXIMUM = 65535.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
JPEG_QUALITY = 95
KEY_FEATURE = "image/key"
ENCODED_FEATURE = "image/encoded"
FORMAT_FEATURE = "image/format"
CLEAN_ENCODED_FEATURE = "image/clean_encoded"


class ImageError(ValueError):
    """One image cannot be used; the message is the reason written to the errors output."""


# --------------------------------------------------------------------------------------------- noise


@dataclasses.dataclass(frozen=True)
class NoiseSpec:
    """A noise kind and its strength, written ``kind[:amount]`` on the command line."""

    kind: str = "gaussian"
    amount: float = DEFAULT_NOISE_AMOUNTS["gaussian"]

    def __post_init__(self):
        if self.kind not in NOISE_KINDS:
            raise ValueError(f"unknown noise {self.kind!r}; choose one of {', '.join(NOISE_KINDS)}")
        if not np.isfinite(self.amount) or self.amount < 0:
            raise ValueError(f"noise amount must be a finite number >= 0, got {self.amount}")
        if self.kind == "salt_and_pepper" and self.amount > 1:
            raise ValueError(f"salt_and_pepper amount is a fraction of pixels in [0, 1], got {self.amount}")

    @classmethod
    def parse(cls, text: str) -> "NoiseSpec":
        """``"gaussian:0.6"``, ``"speckle"`` (default amount), ``"salt_and_pepper:0.1"`` or ``"none"``."""
        kind, _, amount_text = text.strip().partition(":")
        kind = kind.strip().lower().replace("-", "_")
        if kind not in NOISE_KINDS:
            raise ValueError(f"unknown noise {kind!r} in {text!r}; choose one of {', '.join(NOISE_KINDS)}")
        if not amount_text.strip():
            return cls(kind, DEFAULT_NOISE_AMOUNTS[kind])
        try:
            amount = float(amount_text)
        except ValueError:
            raise ValueError(f"noise amount in {text!r} is not a number") from None
        return cls(kind, amount)

    def __str__(self) -> str:
        return "none" if self.kind == "none" else f"{self.kind}:{self.amount:g}"

    @property
    def is_none(self) -> bool:
        """True when this noise leaves images unchanged."""
        return self.kind == "none" or self.amount == 0


def gaussian_noise(images: np.ndarray, noise_factor: float, rng: np.random.Generator) -> np.ndarray:
    """``images + noise_factor * N(0, 1)`` clipped to [0, 1] (the tutorial's and the book's noise)."""
    images = np.asarray(images, dtype=np.float32)
    noisy = images + np.float32(noise_factor) * rng.standard_normal(images.shape, dtype=np.float32)
    return np.clip(noisy, 0.0, 1.0)


def speckle_noise(images: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative noise ``images * (1 + amount * N(0, 1))`` clipped to [0, 1]."""
    images = np.asarray(images, dtype=np.float32)
    noisy = images + images * np.float32(amount) * rng.standard_normal(images.shape, dtype=np.float32)
    return np.clip(noisy, 0.0, 1.0)


def salt_and_pepper_noise(images: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Sets a fraction ``amount`` of pixel positions (every channel) to 0 or 1 with equal odds."""
    images = np.asarray(images, dtype=np.float32)
    positions = images.shape[:-1] + (1,)
    hit = rng.random(positions) < amount
    salt = rng.random(positions) < 0.5
    noisy = np.where(hit, salt.astype(np.float32), images)
    return np.clip(noisy, 0.0, 1.0)


def add_noise(images: np.ndarray, spec: NoiseSpec, rng: np.random.Generator) -> np.ndarray:
    """Applies ``spec`` to channel-last images (one or a batch); ``none`` returns a float32 copy."""
    if spec.is_none:
        return np.array(images, dtype=np.float32)
    function = {"gaussian": gaussian_noise, "speckle": speckle_noise,
                "salt_and_pepper": salt_and_pepper_noise}[spec.kind]
    return function(images, spec.amount, rng)


# ------------------------------------------------------------------------------------------- metrics


def _check_pair(reference: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference = np.asarray(reference, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if reference.shape != test.shape:
        raise ValueError(f"images to compare differ in shape: {reference.shape} vs {test.shape}")
    if reference.ndim < 3:
        raise ValueError(f"images must be (height, width, channels) or batches of them, got shape {reference.shape}")
    return reference, test


def psnr(reference, test, data_range: float = 1.0):
    """Peak signal-to-noise ratio in dB over the last three axes (``inf`` for identical images)."""
    reference, test = _check_pair(reference, test)
    mean_squared_error = np.mean((reference - test) ** 2, axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range ** 2 / mean_squared_error)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian weights of odd or even ``size`` centred on the middle sample."""
    if size < 1 or sigma <= 0:
        raise ValueError(f"window size must be >= 1 and sigma > 0, got {size} and {sigma}")
    positions = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    weights = np.exp(-(positions ** 2) / (2.0 * sigma ** 2))
    return weights / weights.sum()


def _filter_valid(images: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable valid-mode filtering over the height and width axes of ``(..., H, W, C)`` arrays."""
    size = window.size
    rows = np.lib.stride_tricks.sliding_window_view(images, size, axis=-3)
    filtered = np.tensordot(rows, window, axes=([-1], [0]))
    columns = np.lib.stride_tricks.sliding_window_view(filtered, size, axis=-2)
    return np.tensordot(columns, window, axes=([-1], [0]))


def ssim(reference, test, data_range: float = 1.0, window_size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA):
    """Structural similarity (Wang et al. 2004, Gaussian window) over the last three axes.

    Same definition as ``tf.image.ssim`` with its defaults. Images smaller than ``window_size`` on a
    side use a window of that side, with sigma scaled in proportion.
    """
    reference, test = _check_pair(reference, test)
    size = min(window_size, reference.shape[-3], reference.shape[-2])
    if size < 1:
        raise ValueError(f"cannot compute SSIM of zero-size images {reference.shape}")
    window = gaussian_window(size, sigma * size / window_size)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mean_reference = _filter_valid(reference, window)
    mean_test = _filter_valid(test, window)
    mean_product = mean_reference * mean_test
    mean_squares = mean_reference ** 2 + mean_test ** 2
    luminance = (2.0 * mean_product + c1) / (mean_squares + c1)
    cross = 2.0 * _filter_valid(reference * test, window) - 2.0 * mean_product
    variances = _filter_valid(reference ** 2 + test ** 2, window) - mean_squares
    contrast_structure = (cross + c2) / (variances + c2)
    return np.mean(luminance * contrast_structure, axis=(-3, -2, -1))


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


# ----------------------------------------------------------------------------- image sets in memory


def detect_image_set_format(path: str, image_set_format: str = "auto") -> str:
    """``images`` for a directory, ``npy``/``npz``/``tfrecord`` by extension; explicit formats pass."""
    if image_set_format not in IMAGE_SET_FORMATS:
        raise ValueError(f"unknown image set format {image_set_format!r}; choose one of {IMAGE_SET_FORMATS}")
    if image_set_format != "auto":
        return image_set_format
    lowered = path.lower().rstrip("/")
    if os.path.isdir(path):
        return "images"
    if lowered.endswith(".npy"):
        return "npy"
    if lowered.endswith(".npz"):
        return "npz"
    if lowered.endswith(TFRECORD_EXTENSIONS):
        return "tfrecord"
    raise ValueError(f"cannot tell the format of {path!r}: expected a directory of PNG/JPEG images, a .npy/.npz "
                     "array or a .tfrecord file (or pass --format)")


def list_image_files(directory: str) -> tuple[list[str], list[str]]:
    """Image files under ``directory`` (relative paths, sorted) and the other files that were skipped."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"image directory not found: {directory}")
    images, skipped = [], []
    for root, _, files in os.walk(directory):
        for name in files:
            relative = os.path.relpath(os.path.join(root, name), directory)
            (images if is_image_file(name) else skipped).append(relative)
    return sorted(images), sorted(skipped)


def load_image_set(path: str, image_set_format: str = "auto", array_key: str | None = None) -> np.ndarray:
    """Loads a whole image set into memory as ``(N, H, W, C)`` float32 (training data; same sizes needed).

    Unreadable images are skipped with a warning; an empty result is an error.
    """
    import tensorflow as tf

    resolved = detect_image_set_format(path, image_set_format)
    images, problems = [], 0
    if resolved in ("npy", "npz"):
        if resolved == "npy":
            rows = np.load(path, mmap_mode="r")
        else:
            with np.load(path) as archive:
                rows = archive[npz_member_name(path, array_key)[:-len(".npy")]]
        check_image_array_shape(rows.shape, path)
        decoded = array_rows_to_unit_float(np.asarray(rows))
    elif resolved == "images":
        files, _ = list_image_files(path)
        decoded = []
        for name in files:
            with open(os.path.join(path, name), "rb") as handle:
                decoded.append(_decoded_or_error(handle.read()))
    else:
        decoded = [_decoded_or_error(parse_example(record.numpy())["encoded"])
                   for record in tf.data.TFRecordDataset(path)]
    for item in decoded:
        if isinstance(item, ImageError):
            problems += 1
        else:
            images.append(item)
    if problems:
        LOGGER.warning("%s: skipped %d unusable images", path, problems)
    if not images:
        raise ValueError(f"no usable images in {path}")
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise ValueError(f"training images in {path} differ in size ({sorted(shapes)[:4]}...); resize them first")
    return np.stack(images)


def _decoded_or_error(data: bytes):
    try:
        return decode_image(data)
    except ImageError as error:
        return error


def digits_images(size: int = 28) -> np.ndarray:
    """scikit-learn's bundled 8x8 digits (offline), upscaled bilinearly and centred in ``size`` x ``size``."""
    from PIL import Image
    from sklearn.datasets import load_digits

    inner = (size * 6) // 7
    digits = load_digits().images.astype(np.float32) / 16.0
    scaled = np.stack([np.asarray(Image.fromarray(image).resize((inner, inner), Image.BILINEAR)) for image in digits])
    before = (size - inner) // 2
    padded = np.pad(scaled, ((0, 0), (before, size - inner - before), (before, size - inner - before)))
    return np.clip(padded, 0.0, 1.0)[..., np.newaxis].astype(np.float32)


def fashion_mnist_images() -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST train and test images through the Keras loader (downloaded once, then cached)."""
    import keras

    try:
        (train, _), (test, _) = keras.datasets.fashion_mnist.load_data()
    except Exception as error:  # noqa: BLE001 - the loader raises many kinds of network errors
        raise ValueError(f"could not load Fashion-MNIST ({type(error).__name__}: {error}); offline, use "
                         "--data digits, --data synthetic or a directory/array of your images") from None
    return (train.astype(np.float32) / 255.0)[..., np.newaxis], (test.astype(np.float32) / 255.0)[..., np.newaxis]


def synthetic_images(count: int, size: int = 28, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Generated images: a smooth background with a few bright rectangles and discs, in [0, 1]."""
    if count < 1 or size < 1 or channels not in SUPPORTED_CHANNELS:
        raise ValueError(f"synthetic images need count >= 1, size >= 1 and 1 or 3 channels; got {count}, {size}, "
                         f"{channels}")
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    images = np.empty((count, size, size, channels), np.float32)
    for index in range(count):
        direction = rng.uniform(-1, 1, 2)
        image = np.repeat((0.15 * (direction[0] * rows + direction[1] * columns) + 0.2)[..., np.newaxis],
                          channels, axis=-1)
        for _ in range(int(rng.integers(1, 4))):
            colour = rng.uniform(0.4, 1.0, channels).astype(np.float32)
            centre_row, centre_column = rng.uniform(0.2, 0.8, 2)
            extent = rng.uniform(0.1, 0.3)
            if rng.random() < 0.5:
                mask = (np.abs(rows - centre_row) < extent) & (np.abs(columns - centre_column) < extent * 0.7)
            else:
                mask = (rows - centre_row) ** 2 + (columns - centre_column) ** 2 < extent ** 2
            image[mask] = colour
        images[index] = image
    return np.clip(images, 0.0, 1.0)


def split_indices(count: int, fractions: tuple[float, float], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded train / validation / test index arrays; ``fractions`` are the validation and test shares."""
    validation_fraction, test_fraction = fractions
    if validation_fraction <= 0 or test_fraction < 0 or validation_fraction + test_fraction >= 1:
        raise ValueError(f"need 0 < validation share, 0 <= test share and their sum < 1; got {fractions}")
    order = np.random.default_rng(seed).permutation(count)
    test_count = int(round(count * test_fraction))
    validation_count = max(1, int(round(count * validation_fraction)))
    if count - test_count - validation_count < 1:
        raise ValueError(f"{count} images are too few to split into train, validation and test")
    return (np.sort(order[test_count + validation_count:]), np.sort(order[test_count:test_count + validation_count]),
            np.sort(order[:test_count]))
