"""Deterministic, seeded, stratified train/validation/test assignment, one beat at a time.

Every beat's split comes from a stable hash of (seed, source class, source name, row number) alone,
so it needs no other beat: no grouping, no ranking, no shuffle, and it does not depend on worker
count, runner, sharding or element order. The source name is the file name without its directory
(``source_name``): the same file read as ``data/x.txt``, ``/abs/data/x.txt`` or ``gs://bucket/x.txt``
gets the same split.

Stratification by class is per-class hashing: the class is part of the hashed text, so each class
is split by its own independent stream of uniform numbers ``u`` in [0, 1): ``u < test_fraction``
goes to test, ``u < test_fraction + validation_fraction`` to validation, the rest trains. Every
class is therefore split in the given fractions in expectation; the counts are binomial (a class of
``n`` beats puts ``n * f`` +- ``sqrt(n * f * (1 - f))`` in a split of fraction ``f``), so fractions
are approximate on small classes and exact in the limit. The training job reports the actual counts
per split in the model card. The Beam pipeline and the benchmarks call the same functions, so a
benchmark can rebuild exactly the splits a training run used.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)
KEY_BITS = 63  # keys fit a signed 64-bit integer (TFRecord features, numpy int64)
KEY_SPACE = float(1 << KEY_BITS)


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """Fractions of every class sent to test and validation (the rest trains)."""

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


def split_key(seed: int, source: str, row_number: int, stratum: str = "") -> int:
    """A stable 63-bit pseudo-random key for one beat of class ``stratum``.

    Independent of Python's hash salt and of the path's spelling; the same inputs give the same key on
    every machine.
    """
    text = f"{seed}\x1f{stratum}\x1f{source_name(source)}\x1f{row_number}"
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - KEY_BITS)


def split_of_key(key: int, config: SplitConfig) -> str:
    """The split a key falls in: its position ``key / 2**63`` in [0, 1) against the fractions."""
    position = key / KEY_SPACE
    if position < config.test_fraction:
        return TEST
    if position < config.test_fraction + config.validation_fraction:
        return VALIDATION
    return TRAIN


def split_of(config: SplitConfig, source: str, row_number: int, stratum: str) -> tuple[str, int]:
    """``(split name, key)`` of one beat: what the pipeline computes for every record."""
    key = split_key(config.seed, source, row_number, stratum)
    return split_of_key(key, config), key


def assign_splits(sources, row_numbers, strata, config: SplitConfig) -> np.ndarray:
    """Split name per beat for whole arrays (exactly what the pipeline assigns, beat by beat)."""
    sources, row_numbers, strata = (np.asarray(values) for values in (sources, row_numbers, strata))
    if not sources.shape == row_numbers.shape == strata.shape:
        raise ValueError(f"sources, row numbers and strata differ in length: {sources.size}, {row_numbers.size}, "
                         f"{strata.size}")
    result = np.empty(len(row_numbers), dtype=object)
    for index, (source, row_number, stratum) in enumerate(zip(sources, row_numbers, strata)):
        result[index] = split_of(config, str(source), int(row_number), str(stratum))[0]
    return result
