"""Anomaly exposure in layers: the loss math, the labelled targets, the streamed batches, real fits."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from models.ecg import ANOMALY, BEAT_LENGTH
from models.ecg.chunks import BeatChunk
from models.family.exposure import (
    AnomalyExposureLoss,
    exposure_term,
    labelled_targets,
    normal_inputs,
)
from models.training.candidates import candidate
from models.training.fit import train_autoencoder
from models.training.settings import FitSettings
from pipeline.beat_files import encode_chunk, training_dataset
from pipeline.config import TrainConfig
from pipeline.ecg_candidates import exposure_weight


def _beats(count, anomalous, seed):
    """Smooth synthetic beats; anomalies carry a sharp bump where normal beats are flat."""
    rng = np.random.default_rng(seed)
    time = np.linspace(0, 1, BEAT_LENGTH)
    beats = 0.5 + 0.3 * np.sin(2 * np.pi * time[None, :] + rng.normal(0, 0.1, (count, 1)))
    beats = beats + rng.normal(0, 0.01, (count, BEAT_LENGTH))
    if anomalous:
        beats = beats + 0.25 * np.exp(-((time[None, :] - 0.7) ** 2) / 0.002)
    return np.clip(beats, 0, 1).astype(np.float32)


def test_exposure_term_is_large_for_well_reconstructed_anomalies_and_fades():
    errors = np.array([0.001, 0.01, 0.03, 0.1, 0.3])
    term = np.asarray(exposure_term(errors, 0.03))
    np.testing.assert_allclose(term, -np.log(1 - np.exp(-errors / 0.03)), rtol=1e-5)
    assert (np.diff(term) < 0).all() and term[-1] < 1e-4 < 3 < term[0]


def test_loss_is_the_base_loss_on_normals_and_the_weighted_term_on_anomalies():
    rng = np.random.default_rng(0)
    targets, predictions = rng.uniform(size=(4, 6)), rng.uniform(size=(4, 6))
    labels = np.array([0, 1, 0, 1])
    per_example = AnomalyExposureLoss("mae", weight=2.0, scale=0.05, reduction=None)(
        labelled_targets(targets, labels), predictions.astype(np.float32))
    absolute = np.abs(predictions - targets).mean(axis=1)
    expected = np.where(labels == 1, 2.0 * -np.log(1 - np.exp(-absolute / 0.05)), absolute)
    np.testing.assert_allclose(np.asarray(per_example), expected, rtol=1e-5)
    squared = AnomalyExposureLoss("mse", reduction=None)(labelled_targets(targets, [0] * 4),
                                                         predictions.astype(np.float32))
    np.testing.assert_allclose(np.asarray(squared), ((predictions - targets) ** 2).mean(axis=1), rtol=1e-5)
    restored = AnomalyExposureLoss.from_config(AnomalyExposureLoss("mse", 0.5, 0.02).get_config())
    assert (restored.base, restored.weight, restored.scale) == ("mse", 0.5, 0.02)
    with pytest.raises(ValueError, match="base loss"):
        AnomalyExposureLoss("huber")


def test_labelled_targets_and_normal_inputs():
    beats = np.arange(12, dtype=np.float32).reshape(3, 4)
    targets = labelled_targets(beats, [0, 1, 0])
    assert targets.shape == (3, 5) and targets[:, -1].tolist() == [0, 1, 0]
    np.testing.assert_array_equal(normal_inputs(beats, targets), beats[[0, 2]])
    np.testing.assert_array_equal(normal_inputs(beats, beats), beats)
    with pytest.raises(ValueError, match="labels"):
        labelled_targets(beats, [0, 1])


def test_exposure_weights_are_checked_once_at_the_edge():
    for bad in (-1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="anomaly_weight"):
            FitSettings(epochs=1, batch_size=1, learning_rate=1e-3, loss="mae", early_stopping_patience=0,
                        anomaly_weight=bad)
        with pytest.raises(ValueError, match="--anomaly_exposure"):
            TrainConfig(data="beats.txt", anomaly_exposure=bad)
    assert TrainConfig(data="beats.txt").anomaly_exposure == 1.0
    assert exposure_weight(1.0, train_anomalies=0, name="dense") == 0.0
    assert exposure_weight(0.5, train_anomalies=3, name="dense") == 0.5


def _shards(tmp_path, normals, anomalies):
    """Two TFRecord shards of chunks that mix normal and anomalous beats (as `heartwatch train` writes them)."""
    beats = np.concatenate([normals, anomalies])
    labels = np.array([0] * len(normals) + [ANOMALY] * len(anomalies))
    order = np.random.default_rng(1).permutation(len(beats))
    paths = []
    for index, part in enumerate(np.array_split(order, 2)):
        chunk = BeatChunk(source="s", row_numbers=part.astype(np.int64), beats=beats[part], is_anomaly=labels[part],
                          source_classes=np.array(["1" if label == 0 else "2" for label in labels[part]], object),
                          sample_keys=part.astype(np.int64), split="train")
        path = str(tmp_path / f"beats-{index}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            writer.write(encode_chunk(chunk))
        paths.append(path)
    return paths


def test_training_batches_join_every_normal_batch_with_as_many_labelled_anomalies(tmp_path):
    normals, anomalies = _beats(20, False, 0), _beats(7, True, 1)
    paths = _shards(tmp_path, normals, anomalies)
    batches = list(training_dataset(paths, tf.identity, 20, 8, shuffle_buffer=64, seed=0, anomaly_beats=7))
    assert len(batches) == 3
    seen_normals, seen_anomalies = [], []
    for inputs, targets in batches:
        inputs, targets = inputs.numpy(), targets.numpy()
        labels = targets[:, -1]
        np.testing.assert_array_equal(targets[:, :-1], inputs)
        assert (labels == 0).sum() in (8, 4) and (labels == 1).sum() == 8
        seen_normals += [tuple(row) for row in inputs[labels == 0]]
        seen_anomalies += [tuple(row) for row in inputs[labels == 1]]
    assert sorted(seen_normals) == sorted(tuple(row) for row in normals), "one pass over the normal beats"
    assert set(seen_anomalies) == {tuple(row) for row in anomalies}, "the anomaly stream repeats"
    plain = list(training_dataset(paths, tf.identity, 20, 8, anomaly_beats=0))
    assert all((targets.numpy()[:, -1] == 0).all() and len(targets) <= 8 for _, targets in plain)
    unlabelled = list(training_dataset(paths, tf.identity, 20, 8))
    assert all(targets.shape == inputs.shape for inputs, targets in unlabelled)


def _anomaly_to_normal_ratio(model, normals, anomalies):
    def error(beats):
        return float(np.abs(np.asarray(model.reconstruct(beats)) - beats).mean())

    return error(anomalies) / error(normals)


def test_exposure_makes_the_autoencoder_reconstruct_labelled_anomalies_worse_than_plain_training():
    normals, anomalies = _beats(96, False, 2), _beats(48, True, 3)
    held_normals, held_anomalies = _beats(32, False, 4), _beats(32, True, 5)
    config = dataclasses.replace(candidate("dense"), epochs=40, batch_size=16, early_stopping_patience=0)
    inputs = np.concatenate([normals, anomalies])
    targets = labelled_targets(inputs, [0] * len(normals) + [1] * len(anomalies))
    validation = (np.concatenate([held_normals, held_anomalies]),
                  labelled_targets(np.concatenate([held_normals, held_anomalies]), [0] * 32 + [1] * 32))
    exposed = train_autoencoder(config, (inputs, targets), validation, seed=0, verbose=0, anomaly_weight=1.0)
    plain = train_autoencoder(config, normals, held_normals, seed=0, verbose=0)
    exposed_ratio = _anomaly_to_normal_ratio(exposed.model, held_normals, held_anomalies)
    plain_ratio = _anomaly_to_normal_ratio(plain.model, held_normals, held_anomalies)
    assert exposed_ratio > 1.5 * plain_ratio, (exposed_ratio, plain_ratio)


def test_an_exposed_ensemble_takes_its_reference_from_the_normal_beats_only():
    normals, anomalies = _beats(32, False, 6), _beats(16, True, 7)
    beats = np.concatenate([normals, anomalies])
    targets = labelled_targets(beats, [0] * 32 + [1] * 16)
    config = dataclasses.replace(candidate("ensemble"), epochs=2, batch_size=16, early_stopping_patience=0)
    result = train_autoencoder(config, (beats, targets), (beats, targets), seed=0, verbose=0, anomaly_weight=1.0)
    center = np.asarray(result.model.score_center).copy()
    with_anomalies = result.model.set_reference(beats)["center"]
    statistics = result.model.set_reference(normals)
    np.testing.assert_allclose(center, statistics["center"], rtol=1e-5)
    assert not np.allclose(center, with_anomalies, rtol=1e-3), "the anomalies would have moved the reference"
