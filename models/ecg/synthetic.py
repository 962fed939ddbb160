"""Synthetic ECG beats with labelled abnormal kinds, for tests, demos and load benchmarks.

How a beat is built
-------------------
A beat is a sum of Gaussian bumps, one per wave, in the spirit of McSharry et al.'s ECGSYN
("A dynamical model for generating synthetic electrocardiogram signals", IEEE TBME 2003)::

    beat(t) = sum over waves of  amplitude * exp(-(t - centre)**2 / (2 * width**2))

Time ``t`` is in seconds relative to the R peak. The window is ``WINDOW_SECONDS`` (0.85 s) long and
sampled at exactly ``BEAT_LENGTH`` (140) points, with the R peak on sample ``R_PEAK_SAMPLE`` (42,
30% into the window), so it looks like a window cut around a detected R peak, as ECG5000 beats
are. The normal waves (amplitudes relative to the R wave) are:

====  ==============  ============  =========
wave  centre (s)      width (s)     amplitude
====  ==============  ============  =========
P     -0.200          0.025          0.15
Q     -0.030          0.010         -0.12
R      0.000          0.011          1.00
S      0.030          0.012         -0.25
T      0.270          0.050          0.30
====  ==============  ============  =========

Every beat varies:

* heart rate: an RR interval is drawn around ``NOMINAL_RR_SECONDS`` (about 70 bpm). Wave timings
  scale with it like Bazett's correction: P and T centres and widths are multiplied by
  ``sqrt(RR / NOMINAL_RR_SECONDS)``, the narrower QRS waves by the square root of that factor,
  so a fast heart brings P and T closer to the QRS;
* timing: the whole beat shifts by a few milliseconds and P and T move a little on their own;
* amplitude: each wave's amplitude is jittered by about 8%, and the whole beat by about 10%;
* baseline wander: a low-frequency sinusoid (0.1 to 0.5 Hz, up to 0.1 of the R amplitude) with a
  random phase, as breathing and electrode movement produce;
* noise: white Gaussian noise of ``SyntheticConfig.noise_std`` (relative to the R amplitude).

Finally each beat is z-normalised (zero mean, unit standard deviation over its samples), because
the rows of the UCR ECG5000 data set are z-normalised.

Abnormal kinds
--------------
``pvc``
    Premature ventricular contraction: no P wave; the QRS is wide (R width times 2.5 to 3.5) and
    tall (R amplitude 1.3 to 1.9) and bizarre (a slurred second peak and a deep, broad S); the T
    wave is discordant: inverted, wider and larger.
``r_on_t``
    A PVC that fires on the previous beat's T wave: the wide complex comes early, 0.12 to 0.16 s
    before the normal R position (near the start of the window), superimposed on the remains of
    the previous beat's T wave, then its inverted T wave follows.
``st_shift``
    A normal beat whose ST segment (from the end of the S wave to the T peak) is lifted onto a
    plateau of 0.12 to 0.30 of the R amplitude: depressed in two beats out of three (ischaemia),
    elevated otherwise.
``noise_burst``
    A normal beat with a burst of high-amplitude noise (standard deviation 0.25 to 0.6 of the R
    amplitude) over a random stretch of 20 to 50 samples: motion or electrode artefact.

The anomaly count is ``round(beats * anomaly_fraction)``, spread evenly over the requested kinds,
and the order of the beats is shuffled. Everything is drawn from ``numpy.random.default_rng(seed)``,
so a configuration always yields the same beats.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from models.ecg import BEAT_LENGTH

LOGGER = logging.getLogger(__name__)

NORMAL_KIND = "normal"
SYNTHETIC_KINDS = (NORMAL_KIND, "pvc", "r_on_t", "st_shift", "noise_burst")
ABNORMAL_KINDS = SYNTHETIC_KINDS[1:]

SYNTHETIC_SCHEME = "synthetic"
URI_SEPARATOR = ":"
KIND_SEPARATOR = "+"

WINDOW_SECONDS = 0.85
R_PEAK_SAMPLE = 42
NOMINAL_RR_SECONDS = 0.85
RR_STD_SECONDS = 0.08
RR_RANGE_SECONDS = (0.6, 1.2)
BEAT_SHIFT_STD_SECONDS = 0.004
WAVE_SHIFT_STD_SECONDS = 0.006
WAVE_AMPLITUDE_JITTER = 0.08
BEAT_GAIN_STD = 0.1
BEAT_GAIN_RANGE = (0.7, 1.3)
WANDER_AMPLITUDE_MAX = 0.1
WANDER_FREQUENCY_HZ = (0.1, 0.5)

ST_SHIFT_AMPLITUDE = (0.12, 0.30)
ST_DEPRESSION_PROBABILITY = 2.0 / 3.0
ST_EDGE_SECONDS = 0.008
BURST_LENGTH_SAMPLES = (20, 50)
BURST_STD = (0.25, 0.6)

CHUNK_BEATS = 16384


@dataclass(frozen=True)
class Wave:
    """One Gaussian bump of the normal beat: centre and width in seconds from the R peak."""

    name: str
    centre: float
    width: float
    amplitude: float
    is_qrs: bool


NORMAL_WAVES = (
    Wave("P", -0.200, 0.025, 0.15, is_qrs=False),
    Wave("Q", -0.030, 0.010, -0.12, is_qrs=True),
    Wave("R", 0.000, 0.011, 1.00, is_qrs=True),
    Wave("S", 0.030, 0.012, -0.25, is_qrs=True),
    Wave("T", 0.270, 0.050, 0.30, is_qrs=False),
)
WAVE_INDEX = {wave.name: index for index, wave in enumerate(NORMAL_WAVES)}


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate: how many beats, which share is abnormal and of which kinds, the seed."""

    beats: int = 2000
    anomaly_fraction: float = 0.4
    seed: int = 0
    noise_std: float = 0.03
    anomaly_kinds: tuple = ("pvc", "r_on_t", "st_shift", "noise_burst")

    def __post_init__(self) -> None:
        """Check every field, so that a bad configuration fails before any beat is made."""
        if not _is_integer(self.beats) or self.beats < 1:
            raise ValueError(f"beats must be an integer >= 1, got {self.beats!r}")
        if not _is_integer(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not _is_real(self.anomaly_fraction) or not 0.0 <= self.anomaly_fraction <= 1.0:
            raise ValueError(
                f"anomaly_fraction must be a number between 0 and 1, got {self.anomaly_fraction!r}"
            )
        if not _is_real(self.noise_std) or self.noise_std < 0.0:
            raise ValueError(f"noise_std must be a finite number >= 0, got {self.noise_std!r}")
        object.__setattr__(self, "anomaly_kinds", _checked_anomaly_kinds(self.anomaly_kinds))
        if self.anomaly_fraction > 0 and not self.anomaly_kinds:
            raise ValueError("anomaly_kinds must name at least one kind when anomaly_fraction > 0")


def _is_integer(value: object) -> bool:
    """Whether ``value`` is an integer (and not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    """Whether ``value`` is a finite real number (and not a bool)."""
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _checked_anomaly_kinds(kinds: object) -> tuple[str, ...]:
    """Return ``kinds`` as a tuple after checking that each is a known, distinct abnormal kind."""
    if isinstance(kinds, str):
        raise ValueError(f"anomaly_kinds must be a tuple of kind names, not the string {kinds!r}")
    try:
        checked = tuple(kinds)
    except TypeError as error:
        raise ValueError(f"anomaly_kinds must be a tuple of kind names, got {kinds!r}") from error
    for kind in checked:
        if kind not in ABNORMAL_KINDS:
            raise ValueError(
                f"unknown anomaly kind {kind!r}; choose from {', '.join(ABNORMAL_KINDS)}"
            )
    if len(set(checked)) != len(checked):
        raise ValueError(f"anomaly_kinds lists a kind twice: {checked!r}")
    return checked


def is_synthetic_uri(text: str) -> bool:
    """Whether ``text`` names synthetic data: ``"synthetic"`` or ``"synthetic:key=value,..."``."""
    return isinstance(text, str) and (
        text == SYNTHETIC_SCHEME or text.startswith(SYNTHETIC_SCHEME + URI_SEPARATOR)
    )


def parse_synthetic_uri(text: str) -> SyntheticConfig:
    """Parse ``"synthetic"`` or ``"synthetic:beats=2000,anomaly_fraction=0.3,..."`` into a config.

    Keys are the fields of :class:`SyntheticConfig`; ``anomaly_kinds`` joins kinds with ``+``
    (``anomaly_kinds=pvc+st_shift``). Unknown keys, repeated keys and bad values raise
    ``ValueError`` naming the key.
    """
    if not is_synthetic_uri(text):
        raise ValueError(f"not a synthetic URI: {text!r} (expected 'synthetic' or 'synthetic:...')")
    _, _, parameters = text.partition(URI_SEPARATOR)
    values: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in parameters.split(","))):
        key, equals, value = (piece.strip() for piece in item.partition("="))
        if not equals:
            raise ValueError(f"synthetic URI item {item!r} is not key=value")
        if key not in _URI_PARSERS:
            raise ValueError(
                f"unknown synthetic URI key {key!r}; known keys: {', '.join(_URI_PARSERS)}"
            )
        if key in values:
            raise ValueError(f"synthetic URI key {key!r} is given twice")
        values[key] = _parse_uri_value(key, value)
    try:
        return SyntheticConfig(**values)
    except ValueError as error:
        raise ValueError(f"bad synthetic URI {text!r}: {error}") from error


def _parse_uri_value(key: str, value: str) -> object:
    """Convert one URI value with the parser of ``key``; a bad value names the key."""
    try:
        return _URI_PARSERS[key](value)
    except ValueError as error:
        raise ValueError(f"synthetic URI key {key!r}: bad value {value!r} ({error})") from error


def _parse_kinds(value: str) -> tuple[str, ...]:
    """Split ``pvc+st_shift`` into kind names."""
    return tuple(kind.strip() for kind in value.split(KIND_SEPARATOR) if kind.strip())


_URI_PARSERS: dict[str, Callable[[str], object]] = {
    "beats": int,
    "anomaly_fraction": float,
    "seed": int,
    "noise_std": float,
    "anomaly_kinds": _parse_kinds,
}


def generate(config: SyntheticConfig) -> tuple[np.ndarray, list[str]]:
    """Generate ``config.beats`` beats and their kinds.

    Returns a float32 array of shape ``[beats, BEAT_LENGTH]`` (each row z-normalised) and the list
    of kind names, one per row (see ``SYNTHETIC_KINDS``). The same config always gives the same
    result.
    """
    rng = np.random.default_rng(config.seed)
    kinds = _shuffled_kinds(rng, config)
    kind_array = np.array(kinds)
    beats = np.empty((config.beats, BEAT_LENGTH), dtype=np.float32)
    for kind in (NORMAL_KIND, *config.anomaly_kinds):
        positions = np.flatnonzero(kind_array == kind)
        for start in range(0, positions.size, CHUNK_BEATS):
            chunk = positions[start : start + CHUNK_BEATS]
            beats[chunk] = make_beats(kind, chunk.size, rng, config.noise_std)
    LOGGER.debug("generated %d synthetic beats (%s)", config.beats, _kind_counts_text(kinds))
    return beats, kinds


def kind_counts(config: SyntheticConfig) -> dict[str, int]:
    """How many beats of each kind ``generate(config)`` makes, normal first."""
    anomalies = round(config.beats * config.anomaly_fraction)
    counts = {NORMAL_KIND: config.beats - anomalies}
    if config.anomaly_kinds:
        share, remainder = divmod(anomalies, len(config.anomaly_kinds))
        for index, kind in enumerate(config.anomaly_kinds):
            counts[kind] = share + (1 if index < remainder else 0)
    return counts


def _shuffled_kinds(rng: np.random.Generator, config: SyntheticConfig) -> list[str]:
    """The kind of every beat, in a random order."""
    pool = [kind for kind, count in kind_counts(config).items() for _ in range(count)]
    return [pool[index] for index in rng.permutation(len(pool))]


def _kind_counts_text(kinds: list[str]) -> str:
    """``"normal=3, pvc=1"`` for a log line."""
    return ", ".join(f"{kind}={kinds.count(kind)}" for kind in SYNTHETIC_KINDS if kind in kinds)


def make_beats(kind: str, count: int, rng: np.random.Generator, noise_std: float) -> np.ndarray:
    """Make ``count`` z-normalised float32 beats of one ``kind``, drawing from ``rng``."""
    if kind not in _CLEAN_BUILDERS:
        raise ValueError(
            f"unknown synthetic kind {kind!r}; choose from {', '.join(SYNTHETIC_KINDS)}"
        )
    clean = _CLEAN_BUILDERS[kind](rng, count)
    gain = np.clip(1.0 + BEAT_GAIN_STD * rng.standard_normal((count, 1)), *BEAT_GAIN_RANGE)
    noisy = clean * gain + _baseline_wander(rng, count)
    noisy += noise_std * rng.standard_normal((count, BEAT_LENGTH))
    return _z_normalise(noisy).astype(np.float32)


def sample_times() -> np.ndarray:
    """Time of each sample in seconds relative to the R peak, shape ``[BEAT_LENGTH]``."""
    return (np.arange(BEAT_LENGTH) - R_PEAK_SAMPLE) * (WINDOW_SECONDS / BEAT_LENGTH)


def _render(amplitudes: np.ndarray, centres: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Sum Gaussian bumps, given per beat and wave as ``[beats, waves]``, into ``[beats, 140]``."""
    times = sample_times()
    beats = np.zeros((amplitudes.shape[0], BEAT_LENGTH))
    for wave in range(amplitudes.shape[1]):
        offsets = (times - centres[:, wave : wave + 1]) / widths[:, wave : wave + 1]
        beats += amplitudes[:, wave : wave + 1] * np.exp(-0.5 * offsets * offsets)
    return beats


def _timing_scale(rng: np.random.Generator, count: int) -> np.ndarray:
    """Per-beat Bazett factor ``sqrt(RR / nominal RR)``, shape ``[count, 1]``."""
    rr = np.clip(
        NOMINAL_RR_SECONDS + RR_STD_SECONDS * rng.standard_normal((count, 1)), *RR_RANGE_SECONDS
    )
    return np.sqrt(rr / NOMINAL_RR_SECONDS)


def _normal_waves(rng: np.random.Generator, count: int) -> tuple[np.ndarray, ...]:
    """Amplitudes, centres and widths ``[count, 5]`` of normal P, Q, R, S, T waves."""
    base_centres = np.array([wave.centre for wave in NORMAL_WAVES])
    base_widths = np.array([wave.width for wave in NORMAL_WAVES])
    base_amplitudes = np.array([wave.amplitude for wave in NORMAL_WAVES])
    is_qrs = np.array([wave.is_qrs for wave in NORMAL_WAVES])
    timing = _timing_scale(rng, count)
    scale = np.where(is_qrs, np.sqrt(timing), timing)
    wave_shift = np.where(is_qrs, 0.0, WAVE_SHIFT_STD_SECONDS * rng.standard_normal((count, 5)))
    beat_shift = BEAT_SHIFT_STD_SECONDS * rng.standard_normal((count, 1))
    centres = base_centres * scale + wave_shift + beat_shift
    widths = base_widths * scale
    amplitudes = base_amplitudes * (1.0 + WAVE_AMPLITUDE_JITTER * rng.standard_normal((count, 5)))
    return amplitudes, centres, widths


def _ventricular_waves(
    rng: np.random.Generator, r_centres: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Amplitudes, centres, widths ``[count, 4]`` of a PVC complex whose R is at ``r_centres``.

    The waves are a wide tall R, a slurred second peak, a deep broad S and an inverted T.
    """
    count = r_centres.shape[0]
    timing = _timing_scale(rng, count)
    uniform = rng.uniform(size=(count, 8))
    amplitudes = np.column_stack(
        [
            1.3 + 0.6 * uniform[:, 0],
            0.3 + 0.4 * uniform[:, 1],
            -(0.35 + 0.35 * uniform[:, 2]),
            -(0.3 + 0.25 * uniform[:, 3]),
        ]
    )
    offsets = np.column_stack(
        [
            np.zeros(count),
            0.03 + 0.02 * uniform[:, 4],
            0.075 + 0.025 * uniform[:, 5],
            0.30 * timing[:, 0],
        ]
    )
    widths = np.column_stack(
        [
            NORMAL_WAVES[WAVE_INDEX["R"]].width * (2.5 + uniform[:, 6]),
            0.012 + 0.008 * uniform[:, 7],
            np.full(count, 0.025),
            0.07 * timing[:, 0],
        ]
    )
    return amplitudes, r_centres + offsets, widths


def _clean_normal(rng: np.random.Generator, count: int) -> np.ndarray:
    """Normal beats before gain, wander and noise."""
    return _render(*_normal_waves(rng, count))


def _clean_pvc(rng: np.random.Generator, count: int) -> np.ndarray:
    """PVC beats: no P wave, wide tall bizarre QRS at the usual R position, inverted T."""
    r_centres = BEAT_SHIFT_STD_SECONDS * rng.standard_normal((count, 1))
    return _render(*_ventricular_waves(rng, r_centres))


def _clean_r_on_t(rng: np.random.Generator, count: int) -> np.ndarray:
    """R-on-T beats: an early PVC complex on top of the previous beat's T wave."""
    r_centres = -rng.uniform(0.12, 0.16, size=(count, 1))
    amplitudes, centres, widths = _ventricular_waves(rng, r_centres)
    normal_t = NORMAL_WAVES[WAVE_INDEX["T"]]
    previous_t_amplitude = normal_t.amplitude * (
        1.0 + WAVE_AMPLITUDE_JITTER * rng.standard_normal((count, 1))
    )
    previous_t_centre = r_centres + rng.uniform(-0.02, 0.03, size=(count, 1))
    return _render(
        np.hstack([amplitudes, previous_t_amplitude]),
        np.hstack([centres, previous_t_centre]),
        np.hstack([widths, np.full((count, 1), normal_t.width)]),
    )


def _clean_st_shift(rng: np.random.Generator, count: int) -> np.ndarray:
    """Normal beats whose ST segment, from the S wave's end to the T peak, is shifted."""
    amplitudes, centres, widths = _normal_waves(rng, count)
    s_wave, t_wave = WAVE_INDEX["S"], WAVE_INDEX["T"]
    starts = centres[:, s_wave : s_wave + 1] + 2.0 * widths[:, s_wave : s_wave + 1]
    ends = centres[:, t_wave : t_wave + 1]
    signs = np.where(rng.uniform(size=(count, 1)) < ST_DEPRESSION_PROBABILITY, -1.0, 1.0)
    shifts = signs * rng.uniform(*ST_SHIFT_AMPLITUDE, size=(count, 1))
    return _render(amplitudes, centres, widths) + shifts * _smooth_box(starts, ends)


def _smooth_box(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """About 1 between ``starts`` and ``ends`` (seconds, ``[count, 1]``), else 0; soft edges."""
    times = sample_times()
    rise = np.tanh((times - starts) / (2.0 * ST_EDGE_SECONDS))
    fall = np.tanh((times - ends) / (2.0 * ST_EDGE_SECONDS))
    return 0.5 * (rise - fall)


def _clean_noise_burst(rng: np.random.Generator, count: int) -> np.ndarray:
    """Normal beats with a burst of strong noise over a random stretch of samples."""
    lengths = rng.integers(BURST_LENGTH_SAMPLES[0], BURST_LENGTH_SAMPLES[1] + 1, size=(count, 1))
    starts = rng.integers(0, BEAT_LENGTH - lengths + 1)
    samples = np.arange(BEAT_LENGTH)
    inside = (samples >= starts) & (samples < starts + lengths)
    stds = rng.uniform(*BURST_STD, size=(count, 1))
    burst = stds * rng.standard_normal((count, BEAT_LENGTH)) * inside
    return _clean_normal(rng, count) + burst


def _baseline_wander(rng: np.random.Generator, count: int) -> np.ndarray:
    """A slow sinusoid per beat with random amplitude, frequency and phase, ``[count, 140]``."""
    amplitudes = rng.uniform(0.0, WANDER_AMPLITUDE_MAX, size=(count, 1))
    frequencies = rng.uniform(*WANDER_FREQUENCY_HZ, size=(count, 1))
    phases = rng.uniform(0.0, 2.0 * np.pi, size=(count, 1))
    return amplitudes * np.sin(2.0 * np.pi * frequencies * sample_times() + phases)


def _z_normalise(beats: np.ndarray) -> np.ndarray:
    """Give every row zero mean and unit standard deviation (a flat row stays all zeros)."""
    centred = beats - beats.mean(axis=1, keepdims=True)
    spread = centred.std(axis=1, keepdims=True)
    return centred / np.where(spread > 0.0, spread, 1.0)


_CLEAN_BUILDERS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    NORMAL_KIND: _clean_normal,
    "pvc": _clean_pvc,
    "r_on_t": _clean_r_on_t,
    "st_shift": _clean_st_shift,
    "noise_burst": _clean_noise_burst,
}
