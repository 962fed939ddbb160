"""The autoencoder family: registry, shapes, training, penalties, save/load and detector export."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.detection import detector
from models.family import registry
from models.family.base import ECG_DOMAIN, IMAGE_DOMAIN, DenseAutoencoder, DenseConfig
from models.ecg import BEAT_LENGTH
from models.family.variants import FAMILY, ContractiveConfig, ImageConvConfig, LSTMConfig, SparseConfig, VAEConfig

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
    version = tmp_path / "1"
    module.save(str(version / detector.SAVED_MODEL_DIRECTORY))
    detector.write_model_card(str(version), {"threshold": {"value": 0.1}})
    scores = detector.load_detector(str(tmp_path)).score(raw)
    expected = np.asarray(model.anomaly_score((raw + 2.0) / 4.0))
    np.testing.assert_allclose(scores["reconstruction_error"], expected, rtol=1e-4, atol=1e-6)
    assert scores["per_sample_error"].shape == (12, BEAT_LENGTH)
    assert math.isclose(float(scores["threshold"][0]), 0.1, rel_tol=1e-6)
