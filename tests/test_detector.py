"""The detector contract: export with DetectorModule, publish as a version, load with load_detector.

Real Keras models and real SavedModels on local disk and on TensorFlow's in-memory ``ram://``
filesystem; no training is needed to check the contract itself.
"""

import numpy as np
import pytest
import tensorflow as tf

from models.common import artifacts, files
from models.detection import detector as detector_module
from models.detection.detector import SAVED_MODEL_DIRECTORY, DetectorModule, load_detector
from models.ecg import BEAT_LENGTH
from models.family import registry


def _built(name: str, parameters: dict | None = None):
    model = registry.build(name, parameters)
    model(np.zeros((1, BEAT_LENGTH), np.float32))
    return model


def _publish(root: str, module: DetectorModule, card: dict | None = None) -> str:
    target = detector_module.artifact_root(root)
    staging = target.staging_directory()
    module.save(files.join(staging, SAVED_MODEL_DIRECTORY))
    return target.publish(staging, card or {"threshold": {"value": float(module.threshold.numpy())}})[1]


def _beats(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, BEAT_LENGTH), dtype=np.float32)


@pytest.fixture(params=["local", "ram"])
def model_root(request, tmp_path):
    root = str(tmp_path / "ecg") if request.param == "local" else files.unique_name("ram://test_detector_")
    yield root
    files.remove(root)


def test_outputs_threshold_and_rule_come_from_the_saved_model(model_root):
    module = DetectorModule(tf.identity, _built("dense"), threshold_value=0.25)
    directory = _publish(model_root, module, card={"threshold": {"value": 999.0}})
    detector = load_detector(model_root)
    assert detector.directory == directory and detector.version == "1"
    assert detector.threshold == pytest.approx(0.25)
    beats = _beats(9)
    outputs = detector.score(beats)
    assert set(outputs) == set(detector_module.OUTPUT_KEYS)
    assert outputs["per_sample_error"].shape == (9, BEAT_LENGTH)
    np.testing.assert_allclose(outputs["threshold"], 0.25)
    np.testing.assert_array_equal(outputs["is_anomaly"], outputs["anomaly_score"] > 0.25)
    np.testing.assert_allclose(outputs["reconstruction_error"], outputs["per_sample_error"].mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(outputs["anomaly_score"], outputs["reconstruction_error"])
    # The card mirrors the threshold for people; scoring never reads it (999 would flag nothing).
    assert detector.model_card["threshold"]["value"] == 999.0


def test_newest_version_is_served_and_a_version_directory_is_accepted(model_root):
    first = _publish(model_root, DetectorModule(tf.identity, _built("dense"), 0.1))
    second = _publish(model_root, DetectorModule(tf.identity, _built("dense"), 0.2))
    assert load_detector(model_root).directory == second
    assert load_detector(first).threshold == pytest.approx(0.1)
    assert detector_module.is_model_root(model_root) and not detector_module.is_model_root(first)


def test_vae_negative_elbo_is_exported_and_served(tmp_path):
    model = _built("vae", {"score": "negative_elbo", "kl_weight": 1.0})
    beats = _beats(6, seed=3)
    expected = model.anomaly_score(beats).numpy()
    detector = load_detector(_publish(str(tmp_path), DetectorModule(tf.identity, model, 1e-3)))
    outputs = detector.score(beats)
    np.testing.assert_allclose(outputs["anomaly_score"], expected, rtol=1e-5)
    assert np.all(outputs["anomaly_score"] > outputs["reconstruction_error"])


def test_batching_and_xla_padding_give_the_same_scores(tmp_path):
    root = str(tmp_path)
    _publish(root, DetectorModule(tf.identity, _built("dense"), 0.2))
    plain = load_detector(root, xla_mode="off")
    compiled = load_detector(root, xla_mode="on")
    assert compiled.xla and not plain.xla
    beats = _beats(100, seed=1)
    reference = plain.score(beats)
    for outputs in (plain.score(beats, batch_size=7), compiled.score(beats)):
        np.testing.assert_allclose(outputs["anomaly_score"], reference["anomaly_score"], rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(outputs["is_anomaly"], reference["is_anomaly"])
    assert plain.score(np.zeros((0, BEAT_LENGTH), np.float32))["anomaly_score"].shape == (0,)


def test_bad_inputs_and_bad_detectors_are_refused_clearly(tmp_path):
    root = str(tmp_path / "ecg")
    with pytest.raises(FileNotFoundError, match="heartwatch train"):
        load_detector(root)
    detector = load_detector(_publish(root, DetectorModule(tf.identity, _built("dense"), 0.2)))
    with pytest.raises(ValueError, match=r"shape \[batch, 140\]"):
        detector.score(np.zeros((2, 10), np.float32))
    zero_threshold = _publish(root, DetectorModule(tf.identity, _built("dense"), 0.0))
    with pytest.raises(ValueError, match="threshold must be a positive number"):
        load_detector(zero_threshold)
    not_finite = _publish(root, DetectorModule(lambda beats: beats * np.inf, _built("dense"), 0.2))
    with pytest.raises(ValueError, match="not finite on the probe batch"):
        load_detector(not_finite)


def test_a_detector_without_the_current_outputs_is_refused(tmp_path):
    class OldDetector(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, BEAT_LENGTH], tf.float32, name="beats")])
        def serve(self, beats):
            error = tf.reduce_mean(beats, axis=-1)
            return {"reconstruction_error": error, "is_anomaly": error > 0.5}

    old = OldDetector()
    staging = str(tmp_path / "1")
    tf.saved_model.save(old, files.join(staging, SAVED_MODEL_DIRECTORY), signatures={"serving_default": old.serve})
    artifacts.write_card(staging, {})
    with pytest.raises(ValueError, match="re-export it"):
        load_detector(staging)
