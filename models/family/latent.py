"""Latent-space pictures of a trained autoencoder, written as PNG files.

- ``latent_scatter``: every example's code as a point coloured by its label (optionally named, and
  with the decoder grid's square outlined). Codes with more than two dimensions are projected onto
  their first two principal components.
- ``decoder_grid``: for a two-dimensional code, the decoding of every point of a regular grid
  (default [-5, 5] in steps of 1, i.e. 11 x 11 points). Images are drawn as images, beats as curves
  on one shared vertical scale.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot state, no display needed) and
written through the file layer (``models.common.files``), so ``path`` may be local, ``ram://`` or ``gs://``.
"""

from __future__ import annotations

import dataclasses
import io
import logging

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from models.common import files

LOGGER = logging.getLogger(__name__)


def write_png(figure: Figure, path: str, dpi: int) -> str:
    """Writes ``figure`` as a PNG through the file layer; returns ``path``."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return files.write_bytes(path, buffer.getvalue())


@dataclasses.dataclass(frozen=True)
class GridConfig:
    """The decoder grid: both latent axes run from ``low`` to ``high`` (inclusive) in steps of ``step``."""

    low: float = -5.0
    high: float = 5.0
    step: float = 1.0

    def __post_init__(self):
        if self.step <= 0:
            raise ValueError(f"step must be positive, got {self.step}")
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must not be below low ({self.low})")

    def values(self) -> np.ndarray:
        """The grid's values along one axis, ``low`` first."""
        count = int(np.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return self.low + self.step * np.arange(count)


def latent_codes(model, inputs: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """The model's codes for ``inputs``, in batches, as a [n, latent_dim] numpy array."""
    parts = [np.asarray(model.encode(inputs[start:start + batch_size])) for start in range(0, len(inputs), batch_size)]
    codes = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    return codes.reshape(len(codes), -1)


def project_to_two_dimensions(codes: np.ndarray) -> tuple[np.ndarray, str]:
    """Codes as 2-D points: unchanged when already 2-D, else their first two principal components."""
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or codes.shape[1] < 2:
        raise ValueError(f"need codes of shape [n, >= 2], got {codes.shape}")
    if codes.shape[1] == 2:
        return codes, "latent"
    centred = codes - codes.mean(axis=0)
    _, _, directions = np.linalg.svd(centred, full_matrices=False)
    return centred @ directions[:2].T, "principal component"


def latent_scatter(model, inputs: np.ndarray, labels, path: str, title: str = "latent space",
                   label_names: dict | None = None, grid: GridConfig | None = None) -> str:
    """Writes a PNG scatter of the codes of ``inputs`` coloured by ``labels``; returns ``path``.

    ``label_names`` maps a label to the name the legend shows; ``grid``, for a 2-D code, outlines the
    square the decoder grid covers.
    """
    labels = np.asarray(labels).ravel()
    if len(labels) != len(inputs):
        raise ValueError(f"inputs and labels differ in length: {len(inputs)} vs {len(labels)}")
    points, axis_name = project_to_two_dimensions(latent_codes(model, inputs))
    label_names = label_names or {}
    figure = Figure(figsize=(6.5, 5))
    axes = figure.add_subplot()
    classes = sorted(set(labels.tolist()))
    palette = [f"C{index % 10}" for index in range(len(classes))]
    for label, colour in zip(classes, palette):
        members = labels == label
        axes.scatter(points[members, 0], points[members, 1], s=6, color=colour,
                     label=str(label_names.get(label, label)), alpha=0.7)
    if grid is not None and axis_name == "latent":
        axes.add_patch(Rectangle((grid.low, grid.low), grid.high - grid.low, grid.high - grid.low, fill=False,
                                 linestyle="--", edgecolor="black", label="decoder grid"))
    axes.set_xlabel(f"{axis_name} 1")
    axes.set_ylabel(f"{axis_name} 2")
    axes.set_title(title)
    axes.legend(title="label", markerscale=2, fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.tight_layout()
    write_png(figure, path, dpi=100)
    LOGGER.info("wrote latent scatter of %d examples to %s", len(inputs), path)
    return path


def _check_two_dimensional(model) -> None:
    latent_dim = model.decoder.inputs[0].shape[-1]
    if latent_dim != 2:
        raise ValueError(f"decoder grids need a 2-D latent code, the model's code is {latent_dim}-D")


def decoded_grid(model, config: GridConfig = GridConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Decodings of the grid: ``(values, outputs)``, outputs [rows, columns, *output_shape].

    Row ``i`` has latent coordinate 2 equal to ``values[-1 - i]`` (high at the top), column ``j``
    has coordinate 1 equal to ``values[j]``.
    """
    _check_two_dimensional(model)
    values = config.values()
    first, second = np.meshgrid(values, values[::-1])
    codes = np.stack([first.ravel(), second.ravel()], axis=-1).astype(np.float32)
    outputs = np.asarray(model.decode(codes))
    return values, outputs.reshape(len(values), len(values), *outputs.shape[1:])


def decoder_grid(model, path: str, config: GridConfig = GridConfig(), title: str = "decoded latent grid") -> str:
    """Writes a PNG of the decoder's output over the grid (images, or beats as curves); returns ``path``."""
    values, outputs = decoded_grid(model, config)
    count = len(values)
    figure = Figure(figsize=(max(4.0, 0.8 * count), max(4.0, 0.8 * count)))
    grid = figure.add_gridspec(count, count, wspace=0.05, hspace=0.05, left=0.07, right=0.98, bottom=0.07,
                               top=0.94)
    is_image = outputs.ndim >= 4
    low, high = float(outputs.min()), float(outputs.max())
    margin = 0.05 * max(high - low, 1e-6)
    for row in range(count):
        for column in range(count):
            axes = figure.add_subplot(grid[row, column])
            output = outputs[row, column]
            if is_image:
                axes.imshow(np.squeeze(output), cmap="gray", vmin=0.0, vmax=1.0)
            else:
                axes.plot(output, linewidth=0.8)
                axes.set_ylim(low - margin, high + margin)
            axes.set_xticks([])
            axes.set_yticks([])
            if row == count - 1:
                axes.set_xlabel(f"{values[column]:g}", fontsize="x-small")
            if column == 0:
                axes.set_ylabel(f"{values[count - 1 - row]:g}", fontsize="x-small")
    figure.suptitle(title)
    figure.supxlabel("latent 1", fontsize="small")
    figure.supylabel("latent 2", fontsize="small")
    write_png(figure, path, dpi=80)
    LOGGER.info("wrote %d x %d decoder grid to %s", count, count, path)
    return path
