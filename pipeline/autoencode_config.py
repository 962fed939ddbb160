"""Flags of `heartwatch autoencode` as a frozen dataclass (standard library only, so ``--help`` needs no TensorFlow).

``pipeline.autoencode`` parses them with ``models.common.flags.parse_flags``; every check here needs
no heavy import (the model configs are checked against the image shape once the data is loaded).
"""

from __future__ import annotations

import dataclasses

from models.common.flags import field
from models.images import IMAGE_SET_FORMATS
from models.training.settings import LOSSES

FASHION_MNIST = "fashion_mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
"""Fashion-MNIST's class names, label 0 first (``--label_names fashion_mnist`` uses them)."""
VERBOSITIES = (0, 1, 2)


def _positive(config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        values = value if isinstance(value, tuple) else (value,)
        if value is not None and (not values or any(isinstance(item, bool) or item < 1 for item in values)):
            raise ValueError(f"--{name} must be positive, got {value!r}")


@dataclasses.dataclass(frozen=True)
class AutoencodeConfig:
    """Flags of `heartwatch autoencode`: trains the basic dense image autoencoder and the convolutional one."""

    data: str = field(f"{FASHION_MNIST} (the Keras loader: downloaded once, then cached), digits (offline), "
                      "synthetic[:count=N,size=S,channels=C], or a path: a .npz/.npy array, a directory of PNG/JPEG "
                      "images (sub-directory names are the labels) or a .tfrecord file", default=FASHION_MNIST)
    format: str = field(f"for paths: {', '.join(IMAGE_SET_FORMATS)}", default="auto")
    array_key: str | None = field(".npz image array", default=None, default_text="images, x, x_test, x_train")
    label_key: str | None = field(".npz label array", default=None,
                                  default_text="labels, y, y_test or y_train, matching the images")
    labels: str | None = field("a .npy of one label per image (overrides the labels found with the images)",
                               default=None)
    label_names: tuple[str, ...] | None = field(f"names of integer labels 0, 1, ...; {FASHION_MNIST} for its ten "
                                                "classes", default=None,
                                                default_text=f"{FASHION_MNIST}'s names for --data {FASHION_MNIST}")
    latent_dim: int = field("code size of the basic dense autoencoder", default=64)
    z_dim: int = field("code size of the convolutional autoencoder (2 draws the latent scatter and decoder grid)",
                       default=2)
    conv_filters: tuple[int, ...] = field("filters of the stride-2 convolution stages (image sides must be "
                                          "divisible by 2 ** stages)", default=(32, 64))
    epochs: int = field("most epochs per model", default=30)
    batch_size: int = field("images per step (32, the Keras default, as in the tutorials)", default=32)
    learning_rate: float = field("Adam learning rate", default=1e-3)
    loss: str = field(f"{' or '.join(LOSSES)}", default="mse")
    early_stopping_patience: int = field("epochs without val_loss gain; 0 off", default=5)
    validation_fraction: float = field("share for validation (early stopping)", default=0.1)
    test_fraction: float = field(f"share held out for the figures and metrics ({FASHION_MNIST} uses its test set)",
                                 default=0.1)
    max_images: int | None = field("use at most this many images", default=None, default_text="all")
    reconstruction_images: int = field("held-out images in reconstructions.png", default=10)
    grid_low: float = field("decoder grid: lowest latent value on both axes", default=-5.0)
    grid_high: float = field("decoder grid: highest latent value on both axes", default=5.0)
    grid_step: float = field("decoder grid: step between latent values", default=1.0)
    seed: int = field("seed of the split and of the weights", default=0)
    output_dir: str = field("artifact root; versions below", default="artifacts/image_autoencoders")
    verbose: int = field("Keras progress: 0 silent, 1 bar, 2 a line per epoch", default=2)

    def __post_init__(self):
        """Checks every flag (none needs TensorFlow)."""
        for name in ("data", "output_dir"):
            if not getattr(self, name).strip():
                raise ValueError(f"--{name} must be a non-empty string")
        if self.format not in IMAGE_SET_FORMATS:
            raise ValueError(f"--format: unknown format {self.format!r}; choose one of {', '.join(IMAGE_SET_FORMATS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.verbose not in VERBOSITIES:
            raise ValueError(f"--verbose must be one of {', '.join(map(str, VERBOSITIES))}, got {self.verbose!r}")
        _positive(self, "latent_dim", "z_dim", "conv_filters", "epochs", "batch_size", "reconstruction_images")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning_rate must be positive, got {self.learning_rate}")
        if self.early_stopping_patience < 0:
            raise ValueError("--early_stopping_patience must be >= 0 (0 disables early stopping)")
        if not (0 < self.validation_fraction and 0 < self.test_fraction
                and self.validation_fraction + self.test_fraction < 1):
            raise ValueError(f"need 0 < --validation_fraction, 0 < --test_fraction and their sum < 1; got "
                             f"{self.validation_fraction} and {self.test_fraction}")
        if self.max_images is not None and self.max_images < 3:
            raise ValueError(f"--max_images must be >= 3 (train, validation, test), got {self.max_images}")
        if self.grid_step <= 0 or self.grid_high < self.grid_low:
            raise ValueError(f"the decoder grid needs --grid_step > 0 and --grid_high >= --grid_low; got step "
                             f"{self.grid_step}, low {self.grid_low}, high {self.grid_high}")
        if self.label_names is not None and not self.label_names:
            raise ValueError("--label_names needs at least one name")

    def names_of_labels(self) -> tuple[str, ...] | None:
        """The display names of integer labels: ``--label_names``, or Fashion-MNIST's for its loader."""
        if self.label_names == (FASHION_MNIST,):
            return FASHION_MNIST_CLASSES
        if self.label_names is None and self.data == FASHION_MNIST:
            return FASHION_MNIST_CLASSES
        return self.label_names
