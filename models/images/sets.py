"""Whole image sets in memory: training data for the denoisers and the bundled offline sources.

An image set is a directory of PNG/JPEG files (searched recursively), a ``.npy`` array, a member of
a ``.npz`` archive or a ``.tfrecord`` file of ``tf.train.Example`` records (``models.images.io``'s
``make_example``). Paths go through ``models.common.files``, so they may be local, ``gs://`` or
``ram://``. ``load_image_set`` returns ``(N, H, W, C)`` float32 in [0, 1]; unusable images are
skipped with a warning, never silently.

The offline sources need no download: ``digits_images`` (scikit-learn's bundled 8x8 digits) and
``synthetic_images`` (generated shapes). ``fashion_mnist_images`` uses the Keras loader (downloaded
once into Keras' cache) or a local ``.npz`` holding ``x_train`` and ``x_test``.
"""

from __future__ import annotations

import logging

import numpy as np

from models.common import files
from models.images import IMAGE_SET_FORMATS
from models.images.arrays import array_rows_to_unit_float, check_image_array_shape, npz_member_name
from models.images.io import SUPPORTED_CHANNELS, ImageError, decode_image, is_image_file, parse_example

LOGGER = logging.getLogger(__name__)

TFRECORD_EXTENSIONS = (".tfrecord", ".tfrecords")
FASHION_MNIST_KEYS = ("x_train", "x_test")


def detect_image_set_format(path: str, image_set_format: str = "auto") -> str:
    """``images`` for a directory, ``npy``/``npz``/``tfrecord`` by extension; explicit formats pass."""
    if image_set_format not in IMAGE_SET_FORMATS:
        raise ValueError(f"unknown image set format {image_set_format!r}; choose one of {IMAGE_SET_FORMATS}")
    if image_set_format != "auto":
        return image_set_format
    lowered = path.lower().rstrip("/")
    if files.is_directory(path):
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
    if not files.is_directory(directory):
        raise FileNotFoundError(f"image directory not found: {directory}")
    prefix = files.join(directory, "")
    images, skipped = [], []
    for path in files.walk_files(directory):
        relative = path[len(prefix):]
        (images if is_image_file(relative) else skipped).append(relative)
    return sorted(images), sorted(skipped)


def load_image_set(path: str, image_set_format: str = "auto", array_key: str | None = None) -> np.ndarray:
    """Loads a whole image set into memory as ``(N, H, W, C)`` float32 (training data; same sizes needed).

    Unreadable images are skipped with a warning; an empty result is an error.
    """
    resolved = detect_image_set_format(path, image_set_format)
    if resolved in ("npy", "npz"):
        rows = _read_array(path, resolved, array_key)
        check_image_array_shape(rows.shape, path)
        decoded = array_rows_to_unit_float(rows)
    elif resolved == "images":
        names, _ = list_image_files(path)
        decoded = [_image_or_error(decode_image, files.read_bytes(files.join(path, name))) for name in names]
    else:
        import tensorflow as tf

        decoded = [_image_or_error(_decode_record, record.numpy()) for record in tf.data.TFRecordDataset(path)]
    images = [item for item in decoded if not isinstance(item, ImageError)]
    if len(images) < len(decoded):
        LOGGER.warning("%s: skipped %d unusable images", path, len(decoded) - len(images))
    if not images:
        raise ValueError(f"no usable images in {path}")
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise ValueError(f"training images in {path} differ in size ({sorted(shapes)[:4]}...); resize them first")
    return np.stack(images)


def _read_array(path: str, array_format: str, array_key: str | None) -> np.ndarray:
    """The whole array of a ``.npy`` file, or of the chosen member of a ``.npz`` archive."""
    with files.open_binary(path) as stream:
        if array_format == "npy":
            return np.load(stream)
        with np.load(stream) as archive:
            return archive[npz_member_name(path, array_key)[:-len(".npy")]]


def _decode_record(serialized: bytes) -> np.ndarray:
    """The image of one TFRecord example written by ``make_example``."""
    return decode_image(parse_example(serialized)["encoded"])


def _image_or_error(decode, data: bytes):
    """``decode(data)``, or the ``ImageError`` that says why the image is unusable."""
    try:
        return decode(data)
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


def fashion_mnist_images(path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST train and test images as ``(N, 28, 28, 1)`` float32 in [0, 1].

    Without ``path`` they come from the Keras loader (downloaded once into Keras' cache). With
    ``path``, from a local or remote ``.npz`` holding ``x_train`` and ``x_test`` (uint8 0-255 or
    floats in [0, 1], the layout of ``np.savez(path, x_train=..., x_test=...)``).
    """
    if path is not None:
        train, test = (load_image_set(path, "npz", key) for key in FASHION_MNIST_KEYS)
        return train, test
    import keras

    try:
        (train, _), (test, _) = keras.datasets.fashion_mnist.load_data()
    except Exception as error:  # noqa: BLE001 - the loader raises many kinds of network errors
        raise ValueError(f"could not load Fashion-MNIST ({type(error).__name__}: {error}); offline, pass a "
                         "downloaded .npz with x_train and x_test, or use --data digits, --data synthetic or a "
                         "directory/array of your images") from None
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
