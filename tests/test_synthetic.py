"""Tests of the synthetic ECG generator: configuration, determinism, counts and morphology."""

import numpy as np
import pytest

from models.ecg import BEAT_LENGTH
from models.ecg.synthetic import (
    ABNORMAL_KINDS,
    R_PEAK_SAMPLE,
    SYNTHETIC_KINDS,
    SyntheticConfig,
    generate,
    is_synthetic_uri,
    kind_counts,
    parse_synthetic_uri,
)


@pytest.fixture(scope="module")
def default_beats():
    """The default configuration's beats and kinds (2000 beats, 40% abnormal)."""
    beats, kinds = generate(SyntheticConfig())
    return beats, np.array(kinds)


def test_kinds_are_the_documented_ones():
    assert SYNTHETIC_KINDS == ("normal", "pvc", "r_on_t", "st_shift", "noise_burst")
    assert SyntheticConfig().anomaly_kinds == ("pvc", "r_on_t", "st_shift", "noise_burst")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"beats": 0}, "beats"),
        ({"beats": 2.5}, "beats"),
        ({"anomaly_fraction": -0.1}, "anomaly_fraction"),
        ({"anomaly_fraction": 1.5}, "anomaly_fraction"),
        ({"anomaly_fraction": float("nan")}, "anomaly_fraction"),
        ({"noise_std": -0.01}, "noise_std"),
        ({"seed": -1}, "seed"),
        ({"anomaly_kinds": ("pvc", "bigeminy")}, "bigeminy"),
        ({"anomaly_kinds": ("normal",)}, "normal"),
        ({"anomaly_kinds": ("pvc", "pvc")}, "twice"),
        ({"anomaly_kinds": "pvc"}, "string"),
        ({"anomaly_kinds": ()}, "at least one kind"),
    ],
)
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**changes)


def test_config_accepts_a_list_of_kinds_and_no_kinds_without_anomalies():
    assert SyntheticConfig(anomaly_kinds=["pvc"]).anomaly_kinds == ("pvc",)
    assert SyntheticConfig(anomaly_fraction=0.0, anomaly_kinds=()).anomaly_kinds == ()


def test_generate_shape_dtype_and_z_normalisation(default_beats):
    beats, kinds = default_beats
    assert beats.shape == (2000, BEAT_LENGTH)
    assert beats.dtype == np.float32
    assert len(kinds) == 2000
    np.testing.assert_allclose(beats.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(beats.std(axis=1), 1.0, atol=1e-5)


def test_generate_is_deterministic_for_a_seed():
    first, first_kinds = generate(SyntheticConfig(beats=300, seed=7))
    second, second_kinds = generate(SyntheticConfig(beats=300, seed=7))
    other, _ = generate(SyntheticConfig(beats=300, seed=8))
    np.testing.assert_array_equal(first, second)
    assert first_kinds == second_kinds
    assert not np.allclose(first, other)


def test_anomalies_are_counted_spread_evenly_and_shuffled():
    config = SyntheticConfig(beats=1001, anomaly_fraction=0.3)
    _, kinds = generate(config)
    counts = {kind: kinds.count(kind) for kind in SYNTHETIC_KINDS}
    assert counts == kind_counts(config)
    assert sum(counts[kind] for kind in ABNORMAL_KINDS) == round(1001 * 0.3)
    abnormal_counts = [counts[kind] for kind in ABNORMAL_KINDS]
    assert max(abnormal_counts) - min(abnormal_counts) <= 1
    first_abnormal = next(index for index, kind in enumerate(kinds) if kind != "normal")
    assert first_abnormal < 20


def test_only_requested_kinds_appear():
    _, kinds = generate(SyntheticConfig(beats=200, anomaly_fraction=0.5, anomaly_kinds=("pvc",)))
    assert set(kinds) == {"normal", "pvc"}
    assert kinds.count("pvc") == 100


@pytest.mark.parametrize(("fraction", "normal_count"), [(0.0, 50), (1.0, 0)])
def test_extreme_fractions(fraction, normal_count):
    _, kinds = generate(SyntheticConfig(beats=50, anomaly_fraction=fraction))
    assert kinds.count("normal") == normal_count


def test_normal_beat_maximum_is_the_r_peak(default_beats):
    beats, kinds = default_beats
    peaks = beats[kinds == "normal"].argmax(axis=1)
    assert np.all(np.abs(peaks - R_PEAK_SAMPLE) <= 3)
    assert BEAT_LENGTH / 5 <= R_PEAK_SAMPLE <= BEAT_LENGTH / 3


def test_every_abnormal_kind_differs_clearly_from_normal(default_beats):
    beats, kinds = default_beats
    normal = beats[kinds == "normal"]
    halves_difference = np.abs(normal[::2].mean(axis=0) - normal[1::2].mean(axis=0)).mean()
    for kind in ABNORMAL_KINDS:
        kind_difference = np.abs(normal.mean(axis=0) - beats[kinds == kind].mean(axis=0)).mean()
        assert kind_difference > 5 * halves_difference, kind


def test_abnormal_kinds_have_their_documented_shapes(default_beats):
    beats, kinds = default_beats
    average = {kind: beats[kinds == kind].mean(axis=0) for kind in SYNTHETIC_KINDS}
    normal_average = average["normal"]
    assert average["r_on_t"].argmax() < R_PEAK_SAMPLE - 10
    pvc_width = np.sum(average["pvc"] > average["pvc"].max() / 2)
    normal_width = np.sum(normal_average > normal_average.max() / 2)
    assert pvc_width > 2 * normal_width
    st_segment = slice(R_PEAK_SAMPLE + 10, R_PEAK_SAMPLE + 35)
    assert abs(average["st_shift"][st_segment] - normal_average[st_segment]).mean() > 0.1
    roughness = {
        kind: np.abs(np.diff(beats[kinds == kind], axis=1)).mean() for kind in SYNTHETIC_KINDS
    }
    assert roughness["noise_burst"] > 1.5 * roughness["normal"]


def test_noise_std_zero_gives_smooth_beats():
    beats, _ = generate(SyntheticConfig(beats=20, anomaly_fraction=0.0, noise_std=0.0))
    noisy, _ = generate(SyntheticConfig(beats=20, anomaly_fraction=0.0, noise_std=0.2))
    assert np.abs(np.diff(beats, n=2, axis=1)).mean() < np.abs(np.diff(noisy, n=2, axis=1)).mean()


def test_parse_plain_uri_gives_defaults():
    assert parse_synthetic_uri("synthetic") == SyntheticConfig()
    assert parse_synthetic_uri("synthetic:") == SyntheticConfig()


def test_parse_full_uri():
    config = parse_synthetic_uri(
        "synthetic:beats=2000,anomaly_fraction=0.3,seed=1,noise_std=0.05,anomaly_kinds=pvc+st_shift"
    )
    assert config == SyntheticConfig(
        beats=2000, anomaly_fraction=0.3, seed=1, noise_std=0.05, anomaly_kinds=("pvc", "st_shift")
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("synthetic:colour=red", "colour"),
        ("synthetic:beats=many", "beats"),
        ("synthetic:anomaly_fraction=lots", "anomaly_fraction"),
        ("synthetic:seed=1.5", "seed"),
        ("synthetic:beats=0", "beats"),
        ("synthetic:anomaly_kinds=pvc+flutter", "flutter"),
        ("synthetic:beats", "key=value"),
        ("synthetic:seed=1,seed=2", "seed"),
        ("synthetics", "not a synthetic URI"),
        ("data.csv", "not a synthetic URI"),
    ],
)
def test_parse_rejects_bad_uris(text, message):
    with pytest.raises(ValueError, match=message):
        parse_synthetic_uri(text)


def test_is_synthetic_uri():
    assert is_synthetic_uri("synthetic")
    assert is_synthetic_uri("synthetic:beats=5")
    assert not is_synthetic_uri("synthetic.csv")
    assert not is_synthetic_uri("data/synthetic")
