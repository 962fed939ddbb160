"""The labelled image set of `heartwatch autoencode`, split (seeded) into train, validation and held-out test.

Images come from ``models.images.sets`` (every image input it supports); the labels, which only
colour the latent scatter, come from wherever the images have them:

- ``fashion_mnist``: the Keras loader's labels (its own test set is the held-out set);
- ``digits``: scikit-learn's digit targets; ``synthetic[...]``: none;
- a ``.npz``: the label member that matches the image member (``images`` -> ``labels``, ``x`` -> ``y``,
  ``x_test`` -> ``y_test``, ``x_train`` -> ``y_train``) or ``--label_key``;
- a directory: the first sub-directory of every image (``coat/0001.png`` is a ``coat``);
- anything: ``--labels`` (a ``.npy`` of one label per image) overrides the above.

Without labels every image is ``unlabelled`` and ``label_source`` says why (``unlabelled: <reason>``).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from models.common import files
from models.images import sets
from models.images.arrays import npz_member_name
from pipeline.autoencode_config import FASHION_MNIST, AutoencodeConfig

LOGGER = logging.getLogger(__name__)
UNLABELLED = "unlabelled"
MATCHING_LABEL_KEYS = {"images": "labels", "x": "y", "x_test": "y_test", "x_train": "y_train"}
OFFLINE_HINT = ("pass the images as --data <path> instead (a .npz/.npy array, a directory of PNG/JPEG images or a "
                ".tfrecord file, e.g. a Fashion-MNIST .npz), or use --data digits or --data synthetic")


@dataclasses.dataclass(frozen=True)
class ImageSplits:
    """Train, validation and held-out test images ``(N, H, W, C)`` in [0, 1], test labels and their source."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    label_source: str

    @property
    def labelled(self) -> bool:
        """Whether the test images carry real labels."""
        return not self.label_source.startswith(UNLABELLED)

    def counts(self) -> dict:
        """Images per split."""
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def keras_fashion_mnist() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``((train, labels), (test, labels))`` from the Keras loader, images ``(N, 28, 28, 1)`` in [0, 1].

    A failed download (offline) raises a one-line ``ValueError`` naming ``--data <path>`` as the alternative.
    """
    import keras

    try:
        (train, train_labels), (test, test_labels) = keras.datasets.fashion_mnist.load_data()
    except Exception as error:  # noqa: BLE001 - the loader raises many kinds of network errors
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise ValueError(f"--data {FASHION_MNIST}: the Keras loader could not download Fashion-MNIST ({reason}); "
                         f"{OFFLINE_HINT}") from None

    def scaled(images):
        return (images.astype(np.float32) / 255.0)[..., np.newaxis]

    return (scaled(train), train_labels), (scaled(test), test_labels)


def _read_npz_member(path: str, key: str) -> np.ndarray:
    with files.open_binary(path) as stream, np.load(stream) as archive:
        if key not in archive.files:
            raise ValueError(f"{path} has no array {key!r}; arrays: {', '.join(archive.files)}")
        return archive[key]


def _npz_labels(path: str, array_key: str | None, label_key: str | None) -> tuple[np.ndarray | None, str]:
    if label_key is not None:
        return _read_npz_member(path, label_key), f"{path}[{label_key}]"
    image_key = npz_member_name(path, array_key)[:-len(".npy")]
    matching = MATCHING_LABEL_KEYS.get(image_key)
    with files.open_binary(path) as stream, np.load(stream) as archive:
        if matching in archive.files:
            return archive[matching], f"{path}[{matching}]"
    return None, f"{path} has no label array matching {image_key!r} (pass --label_key)"


def _directory_labels(path: str, count: int) -> tuple[np.ndarray | None, str]:
    names, _ = sets.list_image_files(path)
    if len(names) != count:
        return None, f"{len(names) - count} unusable images in {path}, so labels could not be matched to images"
    if not all("/" in name for name in names):
        return None, f"not every image of {path} lies in a class sub-directory"
    return np.array([name.split("/", 1)[0] for name in names]), f"sub-directories of {path}"


def _read_label_file(path: str) -> np.ndarray:
    if not files.exists(path):
        raise FileNotFoundError(f"--labels {path}: no such file")
    with files.open_binary(path) as stream:
        return np.load(stream).ravel()


def load_pool(config: AutoencodeConfig) -> tuple[np.ndarray, np.ndarray | None, str]:
    """``(images, labels or None, label source or the reason there are none)`` of a non-Keras ``--data``."""
    data = config.data
    if data == "digits":
        from sklearn.datasets import load_digits

        return sets.digits_images(), load_digits().target, "scikit-learn digits targets"
    if data == "synthetic" or data.startswith("synthetic:"):
        from pipeline.denoise_train import parse_synthetic

        return sets.synthetic_images(seed=config.seed, **parse_synthetic(data)), None, "synthetic images have none"
    if not files.exists(data):
        raise FileNotFoundError(f"--data {data!r} is neither {FASHION_MNIST}, digits, synthetic[...] nor an existing "
                                "path (a .npz/.npy array, a directory of PNG/JPEG images or a .tfrecord file)")
    images = sets.load_image_set(data, config.format, config.array_key)
    image_format = sets.detect_image_set_format(data, config.format)
    if image_format == "npz":
        labels, source = _npz_labels(data, config.array_key, config.label_key)
    elif image_format == "images":
        labels, source = _directory_labels(data, len(images))
    else:
        labels, source = None, f"a {image_format} image set carries no labels (pass --labels)"
    return images, labels, source


def _subset(count: int, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).permutation(count)[:limit])


def load_splits(config: AutoencodeConfig) -> ImageSplits:
    """The seeded train / validation / test split of ``--data``, with the test labels."""
    if config.data == FASHION_MNIST:
        (pool, pool_labels), (test, test_labels) = keras_fashion_mnist()
        chosen = _subset(len(pool), config.max_images, config.seed)
        pool, pool_labels = pool[chosen], pool_labels[chosen]
        if config.max_images is not None:
            kept = max(1, int(round(config.max_images * config.test_fraction)))
            test, test_labels = test[:kept], test_labels[:kept]
        train_index, validation_index, _ = sets.split_indices(len(pool), (config.validation_fraction, 0.0),
                                                              config.seed)
        return ImageSplits(pool[train_index], pool[validation_index], test, test_labels, "Keras Fashion-MNIST labels")
    pool, labels, source = load_pool(config)
    if config.labels is not None:
        labels, source = _read_label_file(config.labels), config.labels
    if labels is not None and len(labels) != len(pool):
        raise ValueError(f"{source}: {len(labels)} labels for {len(pool)} images")
    chosen = _subset(len(pool), config.max_images, config.seed)
    pool = pool[chosen]
    if labels is None:
        LOGGER.info("no labels: %s; the latent scatter is drawn in one colour", source)
        labels, source = np.full(len(chosen), UNLABELLED), f"{UNLABELLED}: {source}"
    else:
        labels = np.asarray(labels).ravel()[chosen]
    train_index, validation_index, test_index = sets.split_indices(
        len(pool), (config.validation_fraction, config.test_fraction), config.seed)
    return ImageSplits(pool[train_index], pool[validation_index], pool[test_index], labels[test_index], source)
