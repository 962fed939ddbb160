"""The figures of `heartwatch autoencode` besides the latent ones: reconstructions and training curves.

- ``reconstructions.png``: held-out originals in the first row, each model's reconstruction of them
  in the rows below (one example per class first, when the images are labelled);
- ``loss.png``: training and validation loss per epoch of every model.

The latent scatter and the decoder grid are ``models.family.latent``'s. Figures are built with
``matplotlib.figure.Figure`` (no pyplot state) and written through the file layer, so paths may be on any
scheme (``gs://``, ``ram://``).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from models.family.latent import write_png


def example_indices(labels, count: int) -> np.ndarray:
    """``count`` indices into ``labels`` that cover the classes in turn (in order of first appearance)."""
    labels = np.asarray(labels).ravel()
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    _, first = np.unique(labels, return_index=True)
    classes = labels[np.sort(first)]
    members = [list(np.flatnonzero(labels == label)) for label in classes]
    chosen = []
    while len(chosen) < min(count, len(labels)):
        for queue in members:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return np.array(chosen, dtype=np.int64)


def _show(axes, image: np.ndarray) -> None:
    image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    if image.shape[-1] == 1:
        axes.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        axes.imshow(image)
    axes.set_xticks([])
    axes.set_yticks([])


def save_reconstructions(path: str, originals: np.ndarray, rows: list[tuple[str, np.ndarray]],
                         titles=None) -> str:
    """Writes originals above each ``(row label, reconstructions)`` row, one column per image; returns ``path``."""
    if not len(originals):
        raise ValueError("no images to draw")
    for label, images in rows:
        if np.shape(images) != np.shape(originals):
            raise ValueError(f"row {label!r} has shape {np.shape(images)}, the originals {np.shape(originals)}")
    table = [("original", originals), *rows]
    columns = len(originals)
    figure = Figure(figsize=(1.3 * columns + 1.4, 1.45 * len(table) + 0.3))
    grid = figure.subplots(len(table), columns, squeeze=False)
    for row, (label, images) in enumerate(table):
        for column, image in enumerate(images):
            axes = grid[row][column]
            _show(axes, image)
            if column == 0:
                axes.set_ylabel(label.replace(" (", "\n("), fontsize="small")
            if row == 0 and titles is not None:
                axes.set_title(str(titles[column])[:14], fontsize="x-small")
    figure.suptitle("held-out images and their reconstructions")
    figure.tight_layout()
    return write_png(figure, path, dpi=100)


def save_loss_curves(path: str, histories: dict) -> str:
    """Writes training (solid) and validation (dashed) loss per epoch of every model; returns ``path``."""
    figure = Figure(figsize=(7, 4))
    axes = figure.add_subplot()
    for index, (name, history) in enumerate(histories.items()):
        colour = f"C{index % 10}"
        epochs = np.arange(1, len(history.get("loss", [])) + 1)
        axes.plot(epochs, history.get("loss", []), color=colour, label=f"{name} training")
        axes.plot(epochs[:len(history.get("val_loss", []))], history.get("val_loss", []), color=colour,
                  linestyle="--", label=f"{name} validation")
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    axes.set_yscale("log")
    axes.legend(fontsize="small")
    axes.set_title("training of the image autoencoders")
    figure.tight_layout()
    return write_png(figure, path, dpi=100)
