"""The comparison grid of the denoising jobs: one column per image, rows noisy / denoised / original.

The tutorial's own figure reconstructs the *clean* test images for its "denoised" row; here the
denoised row is always the model's output on the noisy row shown above it (callers pass both).
The PNG is written through the file layer, so ``path`` may be on any scheme (``gs://``, ``ram://``).
"""

from __future__ import annotations

import io

import numpy as np

from models.common import files


def save_comparison_grid(path: str, noisy, denoised, clean=None, titles=None) -> str:
    """Writes a PNG grid; ``noisy``/``denoised``/``clean`` are lists of ``(H, W, C)`` images (sizes may differ).

    Without ``clean`` references the grid has two rows (input, denoised). Returns ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(noisy) != len(denoised) or (clean is not None and len(clean) != len(noisy)):
        raise ValueError("the grid needs as many denoised (and clean) images as noisy ones")
    if not len(noisy):
        raise ValueError("no images to draw")
    rows = [("noisy" if clean is not None else "input", noisy), ("denoised", denoised)]
    if clean is not None:
        rows.append(("original", clean))
    columns = len(noisy)
    figure, axes = plt.subplots(len(rows), columns, figsize=(1.6 * columns + 0.6, 1.7 * len(rows)), squeeze=False)
    for row_index, (label, row_images) in enumerate(rows):
        for column_index, image in enumerate(row_images):
            axis = axes[row_index][column_index]
            image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
            if image.shape[-1] == 1:
                axis.imshow(image[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0)
            else:
                axis.imshow(image)
            axis.set_xticks([])
            axis.set_yticks([])
            if column_index == 0:
                axis.set_ylabel(label)
            if row_index == 0 and titles is not None:
                axis.set_title(str(titles[column_index])[:18], fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return files.write_bytes(path, buffer.getvalue())
