"""Fixed log-scale bins shared by every score summary, and the mergeable moments they carry.

``BinLayout`` maps a score to an integer bin key so that bins are half-open intervals ``(lower, upper]``:
key 0 is ``(-m, m]`` (``m = smallest_magnitude``), key ``k > 0`` is ``(m g^(k-1), m g^k]`` and key
``-k`` is ``(-m g^k, -m g^(k-1)]``, with ``g = 1 + relative_width``. Because a bin's upper edge is
inclusive, "score > edge" (``thresholds.is_anomalous``) is decided exactly by comparing keys. The layout
is fixed, not fitted to data, so histograms built anywhere add bin by bin.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class BinLayout:
    """The fixed log-scale bins: relative width ``relative_width``, zero bin ``(-smallest_magnitude, +]``."""

    relative_width: float = 1e-3
    smallest_magnitude: float = 1e-9

    def __post_init__(self):
        if not 0.0 < self.relative_width <= 1.0:
            raise ValueError(f"relative_width must be in (0, 1], got {self.relative_width}")
        if not self.smallest_magnitude > 0.0:
            raise ValueError(f"smallest_magnitude must be positive, got {self.smallest_magnitude}")

    def upper_edges(self, keys) -> np.ndarray:
        """Upper (inclusive) edge of each bin key; key 0 is ``(-m, m]``, key k > 0 ``(m g^(k-1), m g^k]``."""
        keys = np.asarray(keys, dtype=np.int64)
        powers = np.where(keys >= 0, keys, -keys - 1).astype(np.float64)
        magnitudes = self.smallest_magnitude * np.power(1.0 + self.relative_width, powers)
        return np.where(keys >= 0, magnitudes, -magnitudes)

    def lower_edges(self, keys) -> np.ndarray:
        """Lower (exclusive) edge of each bin key: the upper edge of the key below."""
        return self.upper_edges(np.asarray(keys, dtype=np.int64) - 1)

    def keys(self, values) -> np.ndarray:
        """Bin key of each value, consistent with ``upper_edges``: ``lower < value <= upper``."""
        values = np.asarray(values, dtype=np.float64).ravel()
        ratio = np.maximum(np.abs(values), self.smallest_magnitude) / self.smallest_magnitude
        steps = np.log(ratio) / np.log1p(self.relative_width)
        keys = np.where(values > self.smallest_magnitude, np.ceil(steps),
                        np.where(values <= -self.smallest_magnitude, -np.floor(steps) - 1, 0)).astype(np.int64)
        for _ in range(3):  # the logarithm's rounding can put a value one bin off its edges
            keys += values > self.upper_edges(keys)
            keys -= values <= self.lower_edges(keys)
        return keys


def moments(values: np.ndarray) -> tuple[int, float, float]:
    """``(count, mean, centred sum of squares)`` of an array."""
    if values.size == 0:
        return 0, 0.0, 0.0
    mean = float(values.mean())
    return int(values.size), mean, float(np.square(values - mean).sum())


def combine_moments(first: tuple, second: tuple) -> tuple[int, float, float]:
    """Chan et al.'s pairwise update of ``(count, mean, M2)``."""
    count_a, mean_a, m2_a = first
    count_b, mean_b, m2_b = second
    count = count_a + count_b
    if count == 0:
        return 0, 0.0, 0.0
    delta = mean_b - mean_a
    return count, mean_a + delta * count_b / count, m2_a + m2_b + delta * delta * count_a * count_b / count


def add_counts(keys_a, counts_a, keys_b, counts_b) -> tuple[np.ndarray, np.ndarray]:
    """Sum of two sparse histograms (sorted unique keys, int64 counts)."""
    keys, inverse = np.unique(np.concatenate((keys_a, keys_b)), return_inverse=True)
    counts = np.zeros(keys.size, dtype=np.int64)
    np.add.at(counts, inverse, np.concatenate((counts_a, counts_b)).astype(np.int64))
    return keys, counts
