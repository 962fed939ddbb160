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
from models.family.images import ImageConvConfig
from models.family.registry import FAMILY
from models.family.regularized import ContractiveConfig, SparseConfig
from models.family.variational import VAEConfig
from models.training.candidates import CANDIDATES, CandidateConfig, candidate
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
    "dense_image": {"input_shape": (12, 12), "latent_dim": 8},
    "conv_image": {"input_shape": (12, 12, 1), "filters": (4, 8), "z_dim": 2},
}
ECG_MODELS = ("contractive", "conv1d", "dense", "lstm", "sparse", "vae")
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
    np.testing.assert_allclose(scores["reconstruction_error"], expected, rtol=1e-4, atol=1e-6)
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
