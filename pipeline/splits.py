"""Deterministic, seeded, stratified train/validation/test assignment.

Every beat gets a pseudo-random key from a stable hash of (seed, source name, row number), so a split
does not depend on worker count, runner or element order. The source name is the file name without
its directory (``source_name``): the same file read as ``data/x.txt``, ``/abs/data/x.txt`` or
``gs://bucket/x.txt`` gets the same split. Within each stratum (the beat's source class,
or one stratum when there are no labels) beats are ordered by that key and the first
``round(n * test_fraction)`` go to test, the next ``round(n * validation_fraction)`` to validation and
the rest to train. The Beam pipeline and the benchmarks call the same functions, so a benchmark can
rebuild exactly the splits a training run used.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """Fractions of every stratum sent to test and validation (the rest trains)."""

    seed: int = 0
    test_fraction: float = 0.2
    validation_fraction: float = 0.2

    def __post_init__(self):
        if not 0.0 <= self.test_fraction < 1.0 or not 0.0 < self.validation_fraction < 1.0:
            raise ValueError("test_fraction must be in [0, 1) and validation_fraction in (0, 1)")
        if self.test_fraction + self.validation_fraction >= 1.0:
            raise ValueError("test_fraction + validation_fraction must leave beats to train on (< 1)")


def source_name(source: str) -> str:
    """What names a source for splitting: its file name (``synthetic:...`` specs stay whole)."""
    return source.rstrip("/").rsplit("/", 1)[-1]


def split_key(seed: int, source: str, row_number: int) -> int:
    """A stable 64-bit pseudo-random key for one beat (independent of Python's hash salt and of the path's spelling)."""
    digest = hashlib.blake2b(f"{seed}\x1f{source_name(source)}\x1f{row_number}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def stratum_assignments(keys: list[int], config: SplitConfig) -> list[str]:
    """Split names for one stratum's beats, given their keys (same order as ``keys``)."""
    count = len(keys)
    test_count = int(round(count * config.test_fraction))
    validation_count = int(round(count * config.validation_fraction))
    order = sorted(range(count), key=lambda index: keys[index])
    assignments = [TRAIN] * count
    for rank, index in enumerate(order):
        if rank < test_count:
            assignments[index] = TEST
        elif rank < test_count + validation_count:
            assignments[index] = VALIDATION
    return assignments


def assign_splits(sources, row_numbers, strata, config: SplitConfig) -> np.ndarray:
    """Split name per beat for whole arrays (what the pipeline computes, stratum by stratum)."""
    sources, row_numbers, strata = (np.asarray(values) for values in (sources, row_numbers, strata))
    result = np.empty(len(row_numbers), dtype=object)
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        keys = [split_key(config.seed, str(sources[i]), int(row_numbers[i])) for i in members]
        result[members] = stratum_assignments(keys, config)
    return result
