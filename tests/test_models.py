"""The autoencoder family: registry, shapes, training, penalties, save/load, detector export and the fit loop."""

import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.common import files
from models.detection import detector
from models.ecg import BEAT_LENGTH
from models.family import registry
from models.family.base import ECG_DOMAIN, IMAGE_DOMAIN
from models.family.beats import DenseAutoencoder, DenseConfig, LSTMConfig
from models.family.ensemble import EnsembleConfig, reference_statistics
from models.family.images import ImageConvConfig
from models.family.registry import FAMILY
from models.family.regularized import ContractiveConfig, SparseConfig
from models.family.variational import VAEConfig
from models.training.candidates import (
    CANDIDATES,
    DEFAULT_CANDIDATES,
    CandidateConfig,
    candidate,
    candidates_from_json,
    parse_candidates,
)
from models.training.fit import fit, train_autoencoder
from models.training.settings import FitSettings

# Small configurations of every model this family registers (name -> parameters); each is quick to train.
SMALL = {
    "dense": {"hidden_units": (16,), "latent_dim": 4},
    "conv1d": {"filters": (8, 4), "latent_dim": 4},
    "lstm": {"input_length": 28, "encoder_units": (8,), "embedding_dim": 4},
    "sparse": {"hidden_units": (16,), "latent_dim": 16},
    "contractive": {"hidden_units": (16,), "latent_dim": 4},
    "vae": {"hidden_units": (16,), "latent_dim": 2},
    "ensemble": {"members": ({"model": "dense", "parameters": {"hidden_units": (16,), "latent_dim": 4}},
                             {"model": "vae", "parameters": {"hidden_units": (8,), "latent_dim": 2}})},
    "dense_image": {"input_shape": (12, 12), "latent_dim": 8},
    "conv_image": {"input_shape": (12, 12, 1), "filters": (4, 8), "z_dim": 2},
}
ECG_MODELS = ("contractive", "conv1d", "dense", "ensemble", "lstm", "sparse", "vae")
# Models whose anomaly score is not their mean reconstruction error (checked by their own tests).
OWN_SCORE_MODELS = ("ensemble",)
IMAGE_MODELS = ("conv_image", "dense_image")
PENALISED = {
    "sparse_l1": ("sparse", {"hidden_units": (16,), "latent_dim": 16, "sparsity": "l1", "sparsity_weight": 0.01}),
    "sparse_kl": ("sparse", {"hidden_units": (16,), "latent_dim": 16, "sparsity": "kl", "sparsity_weight": 0.01}),
    "contractive": ("contractive", {"hidden_units": (16,), "latent_dim": 4, "contractive_weight": 0.01}),
    "vae": ("vae", {"hidden_units": (16,), "latent_dim": 2, "kl_weight": 1.0}),
}


def _beats(count: int, length: int, seed: int = 0) -> np.ndarray:
    """Smooth beat-like curves in [0, 1]: a bump of random position and width on a sine baseline."""
    rng = np.random.default_rng(seed)
    time = np.linspace(0.0, 1.0, length)
    centre = rng.uniform(0.3, 0.7, (count, 1))
    width = rng.uniform(0.03, 0.08, (count, 1))
    curves = 0.3 + 0.1 * np.sin(2 * np.pi * time) + 0.5 * np.exp(-((time - centre) / width) ** 2)
    return np.clip(curves, 0.0, 1.0).astype(np.float32)


def _images(count: int, shape: tuple, seed: int = 0) -> np.ndarray:
    """Small images in [0, 1]: one Gaussian blob each, at a random place."""
    rng = np.random.default_rng(seed)
    rows, columns = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    centres = rng.uniform(3, shape[0] - 3, (count, 2))
    blobs = np.exp(-((rows - centres[:, :1, None]) ** 2 + (columns - centres[:, 1:, None]) ** 2) / 6.0)
    return blobs.reshape(count, *shape).astype(np.float32)


def _inputs_for(model, count: int = 64, seed: int = 0) -> np.ndarray:
    shape = tuple(model.encoder.inputs[0].shape[1:])
    if len(shape) == 1:
        return _beats(count, shape[0], seed)
    return _images(count, shape, seed)


def test_registry_lists_the_family_with_domains():
    mine = {name for name in FAMILY.values() if name != "denoise_tutorial"}
    assert mine <= set(registry.names())
    assert set(SMALL) == mine
    assert set(registry.ecg_models()) >= set(ECG_MODELS)
    assert set(registry.image_models()) >= set(IMAGE_MODELS)
    assert not set(registry.ecg_models()) & set(registry.image_models())
    assert registry.domain("lstm") == ECG_DOMAIN and registry.domain("conv_image") == IMAGE_DOMAIN
    with pytest.raises(ValueError, match="unknown model"):
        registry.build("transformer")
    with pytest.raises(ValueError, match="unknown LSTMConfig fields"):
        registry.build("lstm", {"units": 3})


@pytest.mark.parametrize("config_class, values, message", [
    (LSTMConfig, {"embedding_dim": 0}, "embedding_dim"),
    (SparseConfig, {"sparsity": "l2"}, "sparsity must be one of"),
    (SparseConfig, {"target_activation": 1.0}, "target_activation"),
    (ContractiveConfig, {"contractive_weight": 0.0}, "contractive_weight"),
    (VAEConfig, {"score": "likelihood"}, "score must be one of"),
    (VAEConfig, {"kl_weight": -1.0}, "kl_weight"),
    (ImageConvConfig, {"input_shape": (30, 30, 1)}, "divisible"),
    (ImageConvConfig, {"input_shape": (28, 28)}, "height, width, channels"),
])
def test_configs_reject_bad_values(config_class, values, message):
    with pytest.raises(ValueError, match=message):
        config_class(**values)


def test_default_ecg_models_take_and_return_flat_beats():
    beats = _beats(3, BEAT_LENGTH)
    for name in ECG_MODELS:
        model = registry.build(name)
        assert tuple(model.reconstruct(beats).shape) == (3, BEAT_LENGTH), name
        assert tuple(model.anomaly_score(beats).shape) == (3,), name


def test_default_image_models_match_the_references():
    basic = registry.build("dense_image")
    basic.reconstruct(np.zeros((1, 28, 28), np.float32))
    assert tuple(basic.encoder.inputs[0].shape[1:]) == (28, 28)
    assert basic.encoder.outputs[0].shape[-1] == 64
    assert basic.count_params() == (784 * 64 + 64) + (64 * 784 + 784)
    convolutional = registry.build("conv_image", {"z_dim": 2})
    assert tuple(convolutional.encode(np.zeros((1, 28, 28, 1), np.float32)).shape) == (1, 2)
    layer_types = [type(layer).__name__ for layer in convolutional.decoder.layers]
    assert layer_types[:2] == ["Dense", "Reshape"] and "UpSampling2D" in layer_types


@pytest.mark.parametrize("name", sorted(SMALL))
def test_interface_shapes(name):
    model = registry.build(name, SMALL[name])
    inputs = _inputs_for(model, count=5)
    latent = model.encode(inputs)
    assert latent.shape[0] == 5 and len(latent.shape) == 2
    assert tuple(model.decode(latent).shape) == inputs.shape
    assert tuple(model.reconstruct(inputs).shape) == inputs.shape
    errors = np.asarray(model.per_sample_error(inputs))
    assert errors.shape == inputs.shape and (errors >= 0).all()
    scores = np.asarray(model.anomaly_score(inputs))
    if name in OWN_SCORE_MODELS:
        np.testing.assert_allclose(np.asarray(model.scores(inputs)["reconstruction_error"]),
                                   errors.reshape(5, -1).mean(axis=1), rtol=1e-5)
        assert scores.shape == (5,) and np.isfinite(scores).all()
    else:
        np.testing.assert_allclose(scores, errors.reshape(5, -1).mean(axis=1), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_loss_falls_on_small_data(name):
    keras.utils.set_random_seed(1)
    model = registry.build(name, SMALL[name])
    inputs = _inputs_for(model, count=64)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    before = model.evaluate(inputs, inputs, verbose=0)
    history = model.fit(inputs, inputs, epochs=25, batch_size=16, verbose=0)
    after = model.evaluate(inputs, inputs, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert after < 0.6 * before, (name, before, after)


@pytest.mark.parametrize("label", sorted(PENALISED))
def test_penalty_is_positive_has_gradients_and_enters_the_training_loss(label):
    name, parameters = PENALISED[label]
    keras.utils.set_random_seed(2)
    model = registry.build(name, parameters)
    inputs = tf.constant(_inputs_for(model, count=32))
    with tf.GradientTape() as tape:
        penalty = model.penalty(inputs)
    assert float(penalty) > 0.0
    gradients = tape.gradient(penalty, model.encoder.trainable_variables)
    assert all(gradient is not None for gradient in gradients)
    assert sum(float(tf.reduce_sum(tf.abs(gradient))) for gradient in gradients) > 0.0

    model.compile(optimizer="adam", loss="mae")
    model(inputs, training=False)
    assert not model.losses, "inference must not add the penalty"
    predictions = model(inputs, training=True)
    assert len(model.losses) == 1
    total = float(model.compute_loss(inputs, inputs, predictions, training=True))
    reconstruction = float(keras.losses.mean_absolute_error(inputs, predictions).numpy().mean())
    assert total == pytest.approx(reconstruction + float(penalty), rel=1e-4)


def test_plain_models_add_no_penalty():
    model = registry.build("dense", SMALL["dense"])
    inputs = _beats(8, BEAT_LENGTH)
    model(inputs, training=True)
    assert not model.losses
    assert float(model.penalty(inputs)) == 0.0


def test_sparse_kl_matches_the_formula():
    model = registry.build("sparse", {"hidden_units": (16,), "latent_dim": 6, "sparsity": "kl",
                                      "sparsity_weight": 0.5, "target_activation": 0.1})
    inputs = _beats(20, BEAT_LENGTH)
    activation = np.asarray(model.encode(inputs), dtype=np.float64).mean(axis=0)
    expected = 0.5 * np.sum(0.1 * np.log(0.1 / activation) + 0.9 * np.log(0.9 / (1 - activation)))
    assert float(model.penalty(inputs)) == pytest.approx(expected, rel=1e-4)


def test_sparse_l1_matches_the_formula():
    model = registry.build("sparse", {"hidden_units": (16,), "latent_dim": 6, "sparsity_weight": 0.5})
    inputs = _beats(20, BEAT_LENGTH)
    expected = 0.5 * np.abs(np.asarray(model.encode(inputs), dtype=np.float64)).sum(axis=1).mean()
    assert float(model.penalty(inputs)) == pytest.approx(expected, rel=1e-4)


def test_contractive_penalty_is_the_jacobian_norm_of_a_sigmoid_layer():
    model = registry.build("contractive", {"hidden_units": (), "latent_dim": 5, "activation": "sigmoid",
                                           "contractive_weight": 2.0})
    inputs = _beats(10, BEAT_LENGTH)
    weights, bias = (np.asarray(variable, dtype=np.float64) for variable in model.encoder.layers[-1].weights)
    code = 1.0 / (1.0 + np.exp(-(inputs.astype(np.float64) @ weights + bias)))
    expected = ((code * (1 - code)) ** 2 * (weights ** 2).sum(axis=0)).sum(axis=1)
    np.testing.assert_allclose(np.asarray(model.jacobian_norm(inputs)), expected, rtol=1e-4)
    assert float(model.penalty(inputs)) == pytest.approx(2.0 * expected.mean(), rel=1e-4)


def test_vae_kl_score_and_sampling():
    model = registry.build("vae", {"hidden_units": (16,), "latent_dim": 3, "kl_weight": 0.5,
                                   "score": "negative_elbo"})
    inputs = _beats(6, BEAT_LENGTH)
    statistics = np.asarray(model.encoder(inputs), dtype=np.float64)
    mean, log_variance = statistics[:, :3], statistics[:, 3:]
    divergence = -0.5 * np.sum(1 + log_variance - mean ** 2 - np.exp(log_variance), axis=1)
    np.testing.assert_allclose(np.asarray(model.kl_divergence(inputs)), divergence, rtol=1e-4, atol=1e-6)
    reconstruction_error = np.abs(inputs - np.asarray(model.reconstruct(inputs))).mean(axis=1)
    np.testing.assert_allclose(np.asarray(model.anomaly_score(inputs)),
                               reconstruction_error + 0.5 * divergence / BEAT_LENGTH, rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(model.encode(inputs)), mean.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(model(inputs)), np.asarray(model(inputs)))
    assert not np.array_equal(np.asarray(model(inputs, training=True)), np.asarray(model(inputs, training=True)))


@pytest.mark.parametrize("name", sorted(SMALL) + ["sparse_kl"])
def test_save_load_round_trip_gives_identical_outputs(name, tmp_path):
    model_name, parameters = ("sparse", {**SMALL["sparse"], "sparsity": "kl"}) if name == "sparse_kl" \
        else (name, SMALL[name])
    model = registry.build(model_name, parameters)
    inputs = _inputs_for(model, count=16)
    model.compile(optimizer="adam", loss="mae")
    model.fit(inputs, inputs, epochs=1, batch_size=8, verbose=0)
    path = registry.save(model, str(tmp_path / f"{name}.keras"))
    loaded = registry.load(path)
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    np.testing.assert_array_equal(np.asarray(loaded.reconstruct(inputs)), np.asarray(model.reconstruct(inputs)))
    np.testing.assert_array_equal(np.asarray(loaded.anomaly_score(inputs)), np.asarray(model.anomaly_score(inputs)))


def test_save_refuses_other_formats(tmp_path):
    with pytest.raises(ValueError, match=".keras"):
        registry.save(DenseAutoencoder(DenseConfig()), str(tmp_path / "model.h5"))


class _MinMax(tf.Module):
    """A stand-in for the pipeline's TFT graph: fixed min-max scaling of raw beats."""

    def __init__(self, minimum: float, maximum: float):
        super().__init__()
        self.minimum = tf.constant(minimum, tf.float32)
        self.span = tf.constant(maximum - minimum, tf.float32)

    def __call__(self, beats):
        return (beats - self.minimum) / self.span


@pytest.mark.parametrize("name", ECG_MODELS)
def test_ecg_models_export_as_raw_input_detectors(name, tmp_path):
    parameters = {**SMALL[name], "input_length": BEAT_LENGTH} if name == "lstm" else SMALL[name]
    model = registry.build(name, parameters)
    raw = 4.0 * _beats(12, BEAT_LENGTH, seed=3) - 2.0
    module = detector.DetectorModule(_MinMax(-2.0, 2.0), model, threshold_value=0.1)
    root = detector.artifact_root(str(tmp_path))
    staging = root.staging_directory()
    module.save(files.join(staging, detector.SAVED_MODEL_DIRECTORY))
    root.publish(staging, {"threshold": {"value": 0.1}})
    scores = detector.load_detector(str(tmp_path)).score(raw)
    expected = np.asarray(model.anomaly_score((raw + 2.0) / 4.0))
    expected_error = np.asarray(model.scores((raw + 2.0) / 4.0)["reconstruction_error"])
    if name not in OWN_SCORE_MODELS:
        np.testing.assert_allclose(scores["reconstruction_error"], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(scores["reconstruction_error"], expected_error, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(scores["anomaly_score"], expected, rtol=1e-4, atol=1e-6)
    assert scores["per_sample_error"].shape == (12, BEAT_LENGTH)
    assert math.isclose(float(scores["threshold"][0]), 0.1, rel_tol=1e-6)


# ------------------------------------------------------------------------------ the one fit loop

FIT_SETTINGS = FitSettings(epochs=6, batch_size=16, learning_rate=1e-2, loss="mae", early_stopping_patience=2)


def _validation_loss(model, inputs, targets) -> float:
    return float(np.mean(np.abs(np.asarray(model.reconstruct(inputs)) - targets)))


def _check_best_weights_and_stopping(result, settings, inputs, targets) -> None:
    """The returned weights are the best epoch's; training stopped at the end or ``patience`` epochs after it."""
    losses = result.history["val_loss"]
    assert result.best_validation_loss == min(losses) and result.best_epoch == int(np.argmin(losses)) + 1
    assert _validation_loss(result.model, inputs, targets) == pytest.approx(result.best_validation_loss, rel=1e-4)
    patience = settings.early_stopping_patience
    assert result.epochs_run == settings.epochs or (patience and result.epochs_run == result.best_epoch + patience)
    assert result.parameter_count == result.model.count_params() and result.seconds > 0


def test_train_autoencoder_keeps_the_best_weights_and_checkpoints_them(tmp_path):
    beats = _beats(96, BEAT_LENGTH)
    config = CandidateConfig("small", "dense", SMALL["dense"], epochs=6, batch_size=16, learning_rate=1e-2,
                             early_stopping_patience=2)
    checkpoint = str(tmp_path / "best.weights.h5")
    result = train_autoencoder(config, beats[:64], beats[64:], seed=1, checkpoint_path=checkpoint, verbose=0)
    assert set(result.history) == {"loss", "val_loss"} and len(result.history["loss"]) == result.epochs_run
    _check_best_weights_and_stopping(result, config.fit_settings(), beats[64:], beats[64:])
    restored = registry.build("dense", SMALL["dense"])
    restored(beats[:1])
    restored.load_weights(checkpoint)
    np.testing.assert_allclose(np.asarray(restored.reconstruct(beats)), np.asarray(result.model.reconstruct(beats)),
                               rtol=1e-6, atol=1e-7)


def test_fit_without_early_stopping_runs_every_epoch():
    beats = _beats(48, BEAT_LENGTH)
    settings = FitSettings(epochs=3, batch_size=16, learning_rate=1e-2, loss="mse", early_stopping_patience=0)
    result = fit(registry.build("dense", SMALL["dense"]), beats[:32], beats[32:], settings, verbose=0)
    assert result.epochs_run == 3 and len(result.history["val_loss"]) == 3
    assert result.best_validation_loss == min(result.history["val_loss"])


class _BeatBatches(keras.utils.PyDataset):
    """``(beats, beats)`` batches in a fixed order: the loop's Keras dataset input."""

    def __init__(self, beats, batch_size):
        super().__init__()
        self.beats, self.batch_size = beats, batch_size

    def __len__(self):
        return int(np.ceil(len(self.beats) / self.batch_size))

    def __getitem__(self, index):
        batch = self.beats[index * self.batch_size:(index + 1) * self.batch_size]
        return batch, batch


@pytest.mark.parametrize("form", ["tf.data", "PyDataset", "pair"])
def test_fit_takes_datasets_and_input_target_pairs(form):
    beats = _beats(96, BEAT_LENGTH, seed=4)
    train, validation = beats[:64], beats[64:]
    if form == "tf.data":
        train_data = tf.data.Dataset.from_tensor_slices((train, train)).batch(16)
        validation_data = tf.data.Dataset.from_tensor_slices((validation, validation)).batch(16)
    elif form == "PyDataset":
        train_data, validation_data = _BeatBatches(train, 16), (validation, validation)
    else:
        train_data, validation_data = (train, train), (validation, validation)
    keras.utils.set_random_seed(5)
    result = fit(registry.build("dense", SMALL["dense"]), train_data, validation_data, FIT_SETTINGS, verbose=0)
    _check_best_weights_and_stopping(result, FIT_SETTINGS, validation, validation)
    assert result.history["loss"][-1] < result.history["loss"][0]


def test_fit_refuses_bad_inputs():
    beats = _beats(8, BEAT_LENGTH)
    model = registry.build("dense", SMALL["dense"])
    with pytest.raises(ValueError, match="no training examples"):
        fit(model, beats[:0], beats, FIT_SETTINGS, verbose=0)
    with pytest.raises(ValueError, match="no validation examples"):
        fit(model, beats, beats[:0], FIT_SETTINGS, verbose=0)
    with pytest.raises(ValueError, match="differ in length"):
        fit(model, (beats, beats[:4]), beats, FIT_SETTINGS, verbose=0)
    with pytest.raises(ValueError, match=r"must be \(inputs, targets\)"):
        fit(model, (beats, beats, beats), beats, FIT_SETTINGS, verbose=0)


@pytest.mark.parametrize("values, message", [
    ({"epochs": 0}, "candidate bad: epochs and batch_size must be positive"),
    ({"learning_rate": 0.0}, "candidate bad: learning_rate must be positive"),
    ({"loss": "huber"}, "candidate bad: loss must be 'mae' or 'mse'"),
    ({"early_stopping_patience": -1}, "candidate bad: early_stopping_patience must be >= 0"),
])
def test_candidates_refuse_bad_fit_settings(values, message):
    with pytest.raises(ValueError, match=message):
        CandidateConfig("bad", "dense", **values)


def test_candidate_presets_and_unknown_models():
    assert candidate("tutorial") is CANDIDATES["tutorial"]
    assert candidate("tutorial").fit_settings() == FitSettings(20, 512, 1e-3, "mae", 0)
    assert CandidateConfig.from_dict(CANDIDATES["dense"].to_dict()) == CANDIDATES["dense"]
    with pytest.raises(ValueError, match="unknown candidate"):
        candidate("nonesuch")
    with pytest.raises(ValueError, match="unknown CandidateConfig fields"):
        CandidateConfig.from_dict({**CANDIDATES["dense"].to_dict(), "units": 3})
    unknown = CandidateConfig("odd", "transformer")
    with pytest.raises(ValueError, match="candidate odd: unknown model 'transformer'"):
        unknown.check_model()
    with pytest.raises(ValueError, match="unknown model"):
        train_autoencoder(unknown, _beats(4, BEAT_LENGTH), _beats(4, BEAT_LENGTH), verbose=0)


def test_candidates_and_fit_settings_import_without_tensorflow():
    code = ("import sys; import models.training.candidates as candidates; "
            "candidates.candidate('dense'); "
            "loaded = sorted(name for name in ('keras', 'tensorflow') if name in sys.modules); "
            "print(','.join(loaded) or 'none')")
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                               env={**os.environ, "PYTHONPATH": repository}, cwd=repository)
    assert completed.stdout.strip() == "none"


# ------------------------------------------------------------------------------ candidates by name and JSON


def test_every_ecg_model_is_a_preset_and_names_parse():
    assert set(registry.ecg_models()) <= set(CANDIDATES)
    assert parse_candidates("dense, conv1d") == (CANDIDATES["dense"], CANDIDATES["conv1d"])
    assert parse_candidates(("dense", "lstm,vae")) == (CANDIDATES["dense"], CANDIDATES["lstm"], CANDIDATES["vae"])
    assert {item.name for item in parse_candidates(DEFAULT_CANDIDATES)} == set(DEFAULT_CANDIDATES)
    for name, config in CANDIDATES.items():
        assert config.name == name
        config.check_model()


def test_json_candidates_override_presets_derive_from_them_or_stand_alone():
    text = ('[{"name": "lstm", "epochs": 5}, {"name": "wide", "preset": "sparse_kl", "parameters": {"latent_dim": 8}},'
            ' {"name": "mine", "model": "dense", "parameters": {"hidden_units": [64, 32]}, "epochs": 200}, "vae"]')
    lstm, wide, mine, vae = parse_candidates(text)
    assert lstm == CandidateConfig(**{**CANDIDATES["lstm"].to_dict(), "epochs": 5})
    assert wide.model == "sparse" and wide.parameters == {"sparsity": "kl", "target_activation": 0.1, "latent_dim": 8}
    assert wide.fit_settings() == CANDIDATES["sparse_kl"].fit_settings()
    assert mine == CandidateConfig("mine", "dense", {"hidden_units": [64, 32]}, epochs=200)
    assert vae is CANDIDATES["vae"]
    assert parse_candidates({"name": "dense", "batch_size": 8})[0].batch_size == 8
    assert candidates_from_json([{"name": "a", "model": "dense"}, "b"]) == ['{"name": "a", "model": "dense"}', "b"]
    assert "latent_dim" not in CANDIDATES["sparse_kl"].parameters, "a variant leaves its preset unchanged"


@pytest.mark.parametrize("value, message", [
    ("dense,nonesuch", "unknown candidate 'nonesuch'; presets: tutorial, dense, conv1d, lstm"),
    ("", "at least one candidate"),
    ("dense,dense", "names must be unique, dense repeated"),
    ('{"name": "x", "preset": "dense", "model": "lstm"}', "differs from preset 'dense'"),
    ('{"name": "new"}', "unknown candidate 'new'"),
    ('[{"name": "x", "model": "dense", "units": 3}]', "unknown CandidateConfig fields"),
    ('[{"name": "x"', "not JSON"),
    ('{"name": "a/b", "model": "dense"}', "letters, digits"),
    ('{"name": "x", "preset": "dense", "epochs": 0}', "candidate x: epochs and batch_size must be positive"),
])
def test_bad_candidates_are_refused_in_one_line(value, message):
    with pytest.raises(ValueError, match=message) as raised:
        parse_candidates(value)
    assert "\n" not in str(raised.value)


def test_candidate_models_are_checked_against_the_registry():
    with pytest.raises(ValueError, match="candidate picture: model 'dense_image' does not reconstruct beats"):
        CandidateConfig("picture", "dense_image").check_model()
    with pytest.raises(ValueError, match="candidate odd: unknown DenseConfig fields"):
        CandidateConfig("odd", "dense", {"units": 3}).check_model()
    with pytest.raises(ValueError, match="ensemble member 'conv_image' must be an ECG model"):
        CandidateConfig("mixed", "ensemble", {"members": [{"model": "conv_image"}]}).check_model()


def test_train_flags_take_candidates_by_name_json_and_config_file(tmp_path):
    from models.common.flags import parse_flags
    from pipeline.config import TrainConfig

    assert TrainConfig().candidates == DEFAULT_CANDIDATES
    config = parse_flags(TrainConfig, ["--candidates", "dense,conv1d", "--candidates", '{"name": "vae", "epochs": 7}',
                                       "--epochs", "3"])
    assert [(item.name, item.epochs) for item in config.candidate_configs()] == [("dense", 3), ("conv1d", 3),
                                                                                 ("vae", 3)]
    assert config.parsed_candidates()[2].epochs == 7
    path = tmp_path / "train.json"
    path.write_text('{"candidates": ["lstm", {"name": "wide", "preset": "dense", "parameters": {"latent_dim": 4}}]}')
    from_file = parse_flags(TrainConfig, ["--config", str(path)])
    assert [item.name for item in from_file.parsed_candidates()] == ["lstm", "wide"]
    with pytest.raises(ValueError, match="--candidates: unknown candidate 'nonesuch'; presets: "):
        parse_flags(TrainConfig, ["--candidates", "nonesuch"])
    with pytest.raises(ValueError, match="--candidates: candidate picture: model 'dense_image'"):
        parse_flags(TrainConfig, ["--candidates", '{"name": "picture", "model": "dense_image"}'])


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_every_preset_trains_exports_and_serves_its_own_score(name, tmp_path):
    beats = _beats(64, BEAT_LENGTH, seed=7)
    config = CandidateConfig(**{**CANDIDATES[name].to_dict(), "epochs": 2, "batch_size": 16})
    result = train_autoencoder(config, beats[:48], beats[48:], seed=0, verbose=0)
    assert result.epochs_run == 2 and np.isfinite(result.history["loss"]).all()
    model = result.model
    raw = 4.0 * _beats(10, BEAT_LENGTH, seed=8) - 2.0
    root = detector.artifact_root(str(tmp_path))
    staging = root.staging_directory()
    detector.DetectorModule(_MinMax(-2.0, 2.0), model, threshold_value=0.1).save(
        files.join(staging, detector.SAVED_MODEL_DIRECTORY))
    root.publish(staging, {"threshold": {"value": 0.1}})
    served = detector.load_detector(str(tmp_path)).score(raw)
    own = model.scores((raw + 2.0) / 4.0)
    np.testing.assert_allclose(served["anomaly_score"], np.asarray(own["anomaly_score"]), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(served["reconstruction_error"], np.asarray(own["reconstruction_error"]), rtol=1e-4,
                               atol=1e-6)
    if config.parameters.get("score") == "negative_elbo":
        assert np.all(served["anomaly_score"] > served["reconstruction_error"])
    np.testing.assert_array_equal(served["is_anomaly"], served["anomaly_score"] > np.float32(0.1))


# ------------------------------------------------------------------------------ the ensemble

ENSEMBLE_MEMBERS = ({"model": "dense", "parameters": {"hidden_units": (16,), "latent_dim": 4}},
                    {"model": "sparse", "parameters": {"hidden_units": (12,), "latent_dim": 8,
                                                       "sparsity_weight": 0.01}})


def test_ensemble_training_loss_is_the_sum_of_member_losses_and_penalties():
    keras.utils.set_random_seed(3)
    model = registry.build("ensemble", {"members": ENSEMBLE_MEMBERS})
    inputs = tf.constant(_beats(16, BEAT_LENGTH))
    model.compile(optimizer="adam", loss="mae")
    stacked = model(inputs, training=True)
    assert tuple(stacked.shape) == (16, 2, BEAT_LENGTH)
    dense, sparse = model.members
    expected = sum(float(np.mean(np.abs(np.asarray(inputs) - np.asarray(member(inputs, training=True)))))
                   for member in model.members) + float(sparse.penalty(inputs))
    assert float(model.compute_loss(inputs, inputs, stacked, training=True)) == pytest.approx(expected, rel=1e-4)
    mean = (np.asarray(dense.reconstruct(inputs)) + np.asarray(sparse.reconstruct(inputs))) / 2.0
    np.testing.assert_allclose(np.asarray(model.reconstruct(inputs)), mean, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("combine, reference", [("zscore", "validation"), ("zscore", "training"),
                                                ("rank", "validation")])
def test_ensemble_normalises_member_scores_by_statistics_fixed_after_training(combine, reference):
    beats = _beats(96, BEAT_LENGTH, seed=5)
    train, validation = beats[:64], beats[64:]
    config = CandidateConfig("ensemble", "ensemble", {"members": ENSEMBLE_MEMBERS, "combine": combine,
                                                      "reference": reference}, epochs=3, batch_size=16)
    model = train_autoencoder(config, train, validation, seed=0, verbose=0).model
    source = validation if reference == "validation" else train
    member_scores = np.stack([np.asarray(member.anomaly_score(source)) for member in model.members], axis=1)
    normalised = np.asarray(model.normalized_scores(member_scores))
    if combine == "zscore":
        np.testing.assert_allclose(np.asarray(model.score_center), member_scores.mean(axis=0), rtol=1e-5)
        np.testing.assert_allclose(normalised.mean(axis=0), 0.0, atol=1e-4)
        np.testing.assert_allclose(normalised.std(axis=0), 1.0, rtol=1e-3)
    else:
        assert normalised.min() >= -1e-6 and normalised.max() <= 1.0 + 1e-6
        np.testing.assert_allclose(np.median(normalised, axis=0), 0.5, atol=0.05)
        probe = np.linspace(member_scores.min() * 0.5, member_scores.max() * 3.0, 50)
        ranks = np.asarray(model.normalized_scores(np.stack([probe, probe], axis=1).astype(np.float32)))
        assert np.all(np.diff(ranks, axis=0) > 0), "the rank map is strictly increasing, beyond the extremes too"
        assert ranks[-1].min() > 1.0
    scores = np.asarray(model.anomaly_score(beats))
    all_members = np.stack([np.asarray(member.anomaly_score(beats)) for member in model.members], axis=1)
    np.testing.assert_allclose(scores, np.asarray(model.normalized_scores(all_members)).mean(axis=1), rtol=1e-5,
                               atol=1e-6)
    anomalous = np.clip(beats[:8] + 0.3 * np.sin(np.linspace(0, 20, BEAT_LENGTH)), 0, 1).astype(np.float32)
    assert np.asarray(model.anomaly_score(anomalous)).mean() > scores.mean()


def test_reference_statistics_and_ensemble_configs():
    scores = np.array([[1.0, 10.0], [2.0, 10.0], [3.0, 10.0]])
    statistics = reference_statistics(scores)
    np.testing.assert_allclose(statistics["center"], [2.0, 10.0])
    np.testing.assert_allclose(statistics["scale"], [np.std([1.0, 2.0, 3.0]), 1e-12])
    assert statistics["quantiles"].shape[0] == 2 and np.all(np.diff(statistics["quantiles"], axis=1) > 0)
    np.testing.assert_allclose(statistics["quantiles"][0, [0, -1]], [1.0, 3.0], atol=1e-9)
    with pytest.raises(ValueError, match="reference scores must be finite"):
        reference_statistics(np.array([[np.nan, 1.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="combine must be one of"):
        EnsembleConfig(combine="median")
    with pytest.raises(ValueError, match="reference must be one of"):
        EnsembleConfig(reference="test")
    with pytest.raises(ValueError, match="at least one member"):
        EnsembleConfig(members=())
    with pytest.raises(ValueError, match="other than the ensemble"):
        EnsembleConfig(members=({"model": "ensemble"},))


# ------------------------------------------------------------------------------ the score's error measure


def test_rms_score_error_is_the_root_mean_square_of_the_absolute_errors():
    model = registry.build("dense")
    beats = _beats(6, BEAT_LENGTH, seed=3)
    plain, rms = model.scores(beats), model.scores(beats, "rms")
    errors = np.asarray(plain["per_sample_error"])
    np.testing.assert_allclose(np.asarray(plain["anomaly_score"]), errors.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(rms["anomaly_score"]), np.sqrt(np.square(errors).mean(axis=1)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(rms["reconstruction_error"]), errors.mean(axis=1), rtol=1e-6)
    assert np.all(np.asarray(rms["anomaly_score"]) >= np.asarray(plain["anomaly_score"]) - 1e-7)
    np.testing.assert_allclose(np.asarray(model.anomaly_score(beats, "rms")), np.asarray(rms["anomaly_score"]))
    with pytest.raises(ValueError, match="score_error must be one of"):
        model.scores(beats, "max")


def _worst_windows(errors: np.ndarray, window: int) -> np.ndarray:
    """Largest mean of ``window`` consecutive errors per row, by cumulative sums (independent of Keras pooling)."""
    sums = np.cumsum(np.pad(errors, ((0, 0), (1, 0))), axis=1)
    return ((sums[:, window:] - sums[:, :-window]) / window).max(axis=1)


def test_window_score_error_is_the_worst_window_mean_of_the_absolute_errors():
    from models.detection import SCORE_WINDOW_SAMPLES
    from models.family.base import worst_window_error

    model = registry.build("dense")
    beats = _beats(6, BEAT_LENGTH, seed=4)
    scored = model.scores(beats, "window")
    errors = np.asarray(scored["per_sample_error"])
    np.testing.assert_allclose(np.asarray(scored["anomaly_score"]), _worst_windows(errors, SCORE_WINDOW_SAMPLES),
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(scored["reconstruction_error"]), errors.mean(axis=1), rtol=1e-6)
    assert np.all(np.asarray(scored["anomaly_score"]) >= errors.mean(axis=1) - 1e-7)
    spike = np.zeros((2, BEAT_LENGTH), np.float32)
    spike[0, 50:60] = 1.0
    spike[1, ::14] = 1.0  # the same total error spread over the beat
    windows = np.asarray(worst_window_error(spike, 30))
    np.testing.assert_allclose(windows, [10 / 30, 3 / 30], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(worst_window_error(spike, 1000)), spike.mean(axis=1), rtol=1e-6)


def _served(tmp_path, model, raw, threshold: float, score_error: str) -> dict:
    """``raw`` beats scored by ``model`` exported as a detector (min-max over [-2, 2]) on ``score_error``."""
    root = detector.artifact_root(str(tmp_path))
    staging = root.staging_directory()
    detector.DetectorModule(_MinMax(-2.0, 2.0), model, threshold_value=threshold, score_error=score_error).save(
        files.join(staging, detector.SAVED_MODEL_DIRECTORY))
    root.publish(staging, {"threshold": {"value": threshold}})
    return detector.load_detector(str(tmp_path)).score(raw)


def test_the_exported_detector_keeps_its_score_error(tmp_path):
    model = registry.build("vae", {"score": "negative_elbo"})
    raw = 4.0 * _beats(10, BEAT_LENGTH, seed=9) - 2.0
    served = _served(tmp_path, model, raw, 0.1, "rms")
    own = model.scores((raw + 2.0) / 4.0, "rms")
    np.testing.assert_allclose(served["anomaly_score"], np.asarray(own["anomaly_score"]), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(served["reconstruction_error"], served["per_sample_error"].mean(axis=1), rtol=1e-5)
    assert np.all(served["anomaly_score"] > np.sqrt(np.square(served["per_sample_error"]).mean(axis=1)))
    np.testing.assert_array_equal(served["is_anomaly"], served["anomaly_score"] > np.float32(0.1))
    with pytest.raises(ValueError, match="score_error must be one of"):
        detector.DetectorModule(tf.identity, model, 0.1, score_error="median")


def test_the_exported_detector_serves_the_window_score(tmp_path):
    from models.detection import SCORE_WINDOW_SAMPLES

    raw = 4.0 * _beats(10, BEAT_LENGTH, seed=8) - 2.0
    served = _served(tmp_path, registry.build("dense"), raw, 0.05, "window")
    expected = _worst_windows(served["per_sample_error"], SCORE_WINDOW_SAMPLES)
    np.testing.assert_allclose(served["anomaly_score"], expected, rtol=1e-5)
    np.testing.assert_array_equal(served["is_anomaly"], served["anomaly_score"] > np.float32(0.05))
