"""Image quality metrics for the denoisers: PSNR and SSIM of a restored image against its clean one.

Both work on float arrays shaped ``(height, width, channels)`` or batches of them (a leading axis)
and return one value per image. They follow the usual definitions: PSNR is
``10 log10(range^2 / MSE)`` per image (``inf`` when the images are identical), and SSIM is Wang et
al. 2004 with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, valid-mode filtering and
the mean over the map and channels, which is what ``tf.image.ssim`` computes (the tests check it
against TensorFlow). Images smaller than the window use a window as large as the image.
"""

from __future__ import annotations

import numpy as np

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(reference: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64, refused unless they are images (or batches) of the same shape."""
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
