"""Denoisers and the denoising job in layers: models and training, DoFns, TestPipeline, then end-to-end runs."""

import csv
import dataclasses
import io
import json
import os
import uuid

import apache_beam as beam
import keras
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

import heartwatch_cli
from models.common import files
from models.family import denoisers, registry
from models.images import io as images
from models.images import noise, quality, records, sets
from models.training import denoise_data, denoising, time_budget
from pipeline import denoise, denoise_plan, denoise_read, denoise_shards, denoise_steps, denoise_train, denoise_write
from pipeline.config import DenoiseTrainConfig

TINY_DNCNN = '{"depth": 4, "filters": 16}'
IMAGE_SIZE = 16


def _png(path, image):
    pixels = images.to_uint8(image)
    Image.fromarray(pixels[:, :, 0] if pixels.shape[-1] == 1 else pixels).save(path)


def _pixels(path):
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small DnCNN trained and exported by `heartwatch denoise train` on generated images."""
    root = tmp_path_factory.mktemp("denoisers")
    return denoise.run(["train", "--data", f"synthetic:count=400,size={IMAGE_SIZE}", "--epochs", "4",
                        "--batch_size", "32", "--model", "dncnn", "--model_parameters", TINY_DNCNN,
                        "--output_dir", str(root), "--verbose", "0", "--seed", "0"])


@pytest.fixture(scope="module")
def image_directory(tmp_path_factory):
    """Clean PNGs (one in a sub-directory, one larger, one JPEG), plus corrupt, empty, RGB and text files."""
    directory = tmp_path_factory.mktemp("images")
    clean = sets.synthetic_images(5, IMAGE_SIZE, seed=7)
    for index in range(4):
        _png(directory / f"img{index}.png", clean[index])
    (directory / "nested").mkdir()
    _png(directory / "nested" / "wide.png", sets.synthetic_images(1, 21, seed=8)[0][:, :19])
    Image.fromarray(images.to_uint8(clean[4])[:, :, 0]).save(directory / "photo.jpg", quality=95)
    _png(directory / "colour.png", sets.synthetic_images(1, IMAGE_SIZE, channels=3, seed=9)[0])
    (directory / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (directory / "empty.png").write_bytes(b"")
    (directory / "README.txt").write_text("not an image")
    return directory


BAD_FILES = {"colour.png": "RGB image but the model denoises grayscale", "corrupt.png": "corrupt",
             "empty.png": "empty file"}
GOOD_FILES = ["img0.png", "img1.png", "img2.png", "img3.png", "nested/wide.png", "photo.jpg"]


# ------------------------------------------------------------------------------ models and training


def test_denoisers_are_registered_and_fully_convolutional():
    assert {"denoise_tutorial", "dncnn"} <= set(registry.names())
    tutorial = denoisers.build_denoiser("denoise_tutorial", 1)
    for shape in ((2, 28, 28, 1), (1, 32, 12, 1)):
        assert tutorial(np.zeros(shape, np.float32)).shape == shape
    assert tutorial.size_multiple == 4 and tutorial.count_params() == 3217  # the tutorial's Denoise
    dncnn = denoisers.build_denoiser("dncnn", 3, {"depth": 3, "filters": 8})
    assert dncnn.size_multiple == 1 and dncnn.channels == 3
    output = dncnn(np.full((1, 13, 17, 3), 0.5, np.float32)).numpy()
    assert output.shape == (1, 13, 17, 3) and output.min() >= 0.0 and output.max() <= 1.0
    errors = dncnn.per_sample_error(np.full((1, 5, 5, 3), 0.5, np.float32))
    assert errors.shape == (1, 5, 5, 3)
    with pytest.raises(ValueError, match="channels must be 1"):
        denoisers.build_denoiser("dncnn", 2)
    with pytest.raises(ValueError, match="unknown denoiser"):
        denoisers.build_denoiser("dense", 1)


def test_denoisers_survive_keras_save_and_load(tmp_path):
    for name in denoisers.MODELS:
        model = denoisers.build_denoiser(name, 1)
        batch = np.random.default_rng(0).random((2, 12, 8, 1)).astype(np.float32)
        path = str(tmp_path / f"{name}.keras")
        model(batch)
        model.save(path)
        loaded = registry.load(path)
        assert type(loaded) is type(model) and loaded.config == model.config
        np.testing.assert_allclose(loaded.predict(batch, verbose=0), model.predict(batch, verbose=0), atol=1e-6)


def test_training_batches_draw_fresh_noise_over_shuffled_clean_images():
    clean = sets.synthetic_images(10, 8, seed=1)
    batches = denoise_data.training_batches(denoise_data.array_images(clean), noise.NoiseSpec("gaussian", 0.2),
                                            batch_size=4, seed=0, flip=False, count=len(clean))
    assert len(batches) == 3
    first_pass = list(batches.as_numpy_iterator())
    noisy, targets = first_pass[0]
    assert noisy.shape == targets.shape == (4, 8, 8, 1) and not np.array_equal(noisy, targets)
    assert all(any(np.array_equal(target, image) for image in clean) for target in targets)
    second_pass = list(batches.as_numpy_iterator())
    assert not np.array_equal(np.concatenate([batch[1] for batch in first_pass]),
                              np.concatenate([batch[1] for batch in second_pass])), "reshuffled every epoch"
    again = {target.tobytes(): image for image, target in zip(*map(np.concatenate, zip(*second_pass)))}
    assert not np.array_equal(noisy[0], again[targets[0].tobytes()]), "noise is drawn afresh every time"
    assert sum(len(batch[1]) for batch in first_pass) == 10
    flipped = denoise_data.training_batches(denoise_data.array_images(clean), noise.NoiseSpec("gaussian", 0.2),
                                            batch_size=10, seed=0, patch_size=5)
    _, patches = next(iter(flipped.as_numpy_iterator()))
    assert patches.shape == (10, 5, 5, 1)


def test_random_shift_translates_within_the_image_and_keeps_its_shape():
    image = np.arange(36, dtype=np.float32).reshape(6, 6, 1)
    padded = np.pad(image, [(2, 2), (2, 2), (0, 0)], mode="reflect")
    windows = {padded[top:top + 6, left:left + 6].tobytes() for top in range(5) for left in range(5)}
    shifted = [denoise_data.random_shift(tf.constant(image), 2, seed=None).numpy() for _ in range(30)]
    assert all(result.shape == image.shape and result.tobytes() in windows for result in shifted)
    assert len({result.tobytes() for result in shifted}) > 1, "the offsets vary"
    batches = denoise_data.training_batches(denoise_data.array_images(np.stack([image] * 4)),
                                            noise.NoiseSpec("gaussian", 0.1), batch_size=4, seed=0, flip=False,
                                            shift=2)
    _, targets = next(iter(batches.as_numpy_iterator()))
    assert targets.shape == (4, 6, 6, 1) and all(target.tobytes() in windows for target in targets)
    with pytest.raises(ValueError, match="shift >= 0"):
        denoise_data.training_batches(denoise_data.array_images(np.stack([image])), noise.NoiseSpec(), 1, 0,
                                      shift=-1)


def test_fixed_noise_of_held_out_images_depends_on_seed_and_key_only():
    clean = sets.synthetic_images(3, 8, seed=1)
    spec = noise.NoiseSpec("gaussian", 0.2)
    fixed = list(denoise_data.fixed_noisy_images(denoise_data.array_images(clean), spec, 7).as_numpy_iterator())
    for key, noisy, image in fixed:
        np.testing.assert_array_equal(noisy, noise.add_noise(image, spec, noise.noise_rng(7, key.decode())))
    again = list(denoise_data.fixed_noisy_images(denoise_data.array_images(clean), spec, 7).as_numpy_iterator())
    np.testing.assert_array_equal(fixed[2][1], again[2][1])


def test_train_denoiser_restores_the_best_validation_weights(tmp_path):
    clean = sets.synthetic_images(60, 12, seed=2)
    config = denoising.DenoiserTrainingConfig(model="dncnn", parameters={"depth": 3, "filters": 8}, epochs=3,
                                              batch_size=16, early_stopping_patience=0, loss="mse",
                                              precision="float32")  # val_loss recomputed exactly below
    result = denoising.train_denoiser(config, clean[:48], clean[48:], seed=3,
                                      checkpoint_path=str(tmp_path / "best.weights.h5"), verbose=0)
    losses = result.history["val_loss"]
    assert result.epochs_run == 3 and result.best_validation_loss == min(losses)
    assert result.best_epoch == int(np.argmin(losses)) + 1 and os.path.exists(tmp_path / "best.weights.h5")
    validation_noisy = denoising.fixed_noisy(clean[48:], config.noise_spec(), 3 + 1)
    recomputed = float(np.mean((result.model.predict(validation_noisy, verbose=0) - clean[48:]) ** 2))
    assert recomputed == pytest.approx(result.best_validation_loss, rel=1e-4)
    with pytest.raises(ValueError, match="needs noise"):
        denoising.DenoiserTrainingConfig(noise="none")


def test_mixed_bfloat16_training_returns_a_float32_model_with_the_trained_weights():
    clean = sets.synthetic_images(40, 12, seed=2)
    config = denoising.DenoiserTrainingConfig(model="unet_denoiser", parameters={"filters": 4, "levels": 1},
                                              epochs=2, batch_size=16, precision="mixed_bfloat16")
    trained = denoising.build_for_training(config, 1)
    assert trained.dtype_policy.name == "mixed_bfloat16" and keras.config.dtype_policy().name == "float32"
    copy = denoising.as_float32(trained)
    assert copy.dtype_policy.name == "float32" and copy.config == trained.config
    for copied, original in zip(copy.get_weights(), trained.get_weights(), strict=True):
        np.testing.assert_array_equal(copied, original)
    result = denoising.train_denoiser(config, clean[:32], clean[32:], seed=3, verbose=0)
    assert result.dtype_policy == "mixed_bfloat16" and result.model.dtype_policy.name == "float32"
    assert keras.config.dtype_policy().name == "float32", "the global policy is restored"
    noisy = denoising.fixed_noisy(clean[32:], config.noise_spec(), 4)
    output = result.model.predict(noisy, verbose=0)
    assert output.dtype == np.float32 and np.isfinite(output).all()
    assert denoising.evaluate_denoiser(result.model, clean[32:], noisy)["psnr_gain"] > 0, "it learned something"
    float32 = denoising.train_denoiser(dataclasses.replace(config, precision="float32"), clean[:32], clean[32:],
                                       seed=3, verbose=0)
    assert float32.dtype_policy == "float32" and denoising.as_float32(float32.model) is float32.model
    assert denoising.training_policy("auto") == ("mixed_bfloat16" if denoising.native_bfloat16() else "float32")
    with pytest.raises(ValueError, match="precision must be one of"):
        denoising.DenoiserTrainingConfig(precision="float16")
    with pytest.raises(ValueError, match="--precision"):
        DenoiseTrainConfig(data="x.npy", precision="half")


def test_unet_denoiser_is_residual_and_pads_to_its_levels():
    unet = denoisers.build_denoiser("unet_denoiser", 1, {"filters": 4, "levels": 2, "flip_ensemble": False})
    assert unet.size_multiple == 4 and unet.channels == 1
    batch = np.random.default_rng(0).random((2, 12, 8, 1)).astype(np.float32)
    output = unet(batch).numpy()
    assert output.shape == batch.shape and output.min() >= 0.0 and output.max() <= 1.0
    skips = unet.encode(batch)
    assert [tuple(skip.shape[1:3]) for skip in skips] == [(12, 8), (6, 4), (3, 2)]
    np.testing.assert_allclose(output, np.clip(batch - unet.decode(skips).numpy(), 0, 1), atol=1e-6)
    ensemble = denoisers.build_denoiser("unet_denoiser", 1, {"filters": 4, "levels": 2})
    ensemble(batch)
    ensemble.set_weights(unet.get_weights())
    mirrored = unet(batch[:, :, ::-1]).numpy()[:, :, ::-1]
    np.testing.assert_allclose(ensemble(batch).numpy(), (output + mirrored) / 2, atol=1e-6)
    np.testing.assert_allclose(ensemble(batch, training=True).numpy(), output, atol=1e-6)
    assert denoise_steps.denoise_batch(unet, [batch[0, :10, :7]])[0].shape == (10, 7, 1)
    with pytest.raises(ValueError, match="levels >= 1"):
        denoisers.build_denoiser("unet_denoiser", 1, {"levels": 0})
    single = denoisers.build_denoiser("unet_denoiser", 1, {"filters": 4, "levels": 2, "convolutions": 1})
    assert single(batch).shape == batch.shape and single.count_params() < unet.count_params()
    with pytest.raises(ValueError, match="convolutions >= 1"):
        denoisers.build_denoiser("unet_denoiser", 1, {"convolutions": 0})


def test_space_to_depth_unet_folds_pixel_blocks_and_survives_save_and_load(tmp_path):
    folded = denoisers.build_denoiser("unet_denoiser", 1, {"filters": 4, "levels": 1, "space_to_depth": 2,
                                                           "flip_ensemble": False})
    assert folded.size_multiple == 4
    batch = np.random.default_rng(0).random((2, 12, 8, 1)).astype(np.float32)
    skips = folded.encode(batch)
    assert [tuple(skip.shape[1:]) for skip in skips] == [(6, 4, 4), (3, 2, 8)]
    noise_estimate = folded.decode(skips).numpy()
    assert noise_estimate.shape == batch.shape
    np.testing.assert_allclose(folded(batch).numpy(), np.clip(batch - noise_estimate, 0, 1), atol=1e-6)
    block = denoisers.SpaceToDepth(2)
    np.testing.assert_array_equal(denoisers.SpaceToDepth(2, inverse=True)(block(batch)).numpy(), batch)
    assert block(batch).numpy()[0, 0, 0].tolist() == batch[0, :2, :2, 0].ravel().tolist()
    path = str(tmp_path / "folded.keras")
    folded.save(path)
    loaded = registry.load(path)
    assert loaded.config == folded.config
    np.testing.assert_allclose(loaded.predict(batch, verbose=0), folded.predict(batch, verbose=0), atol=1e-6)
    with pytest.raises(ValueError, match="space_to_depth >= 1"):
        denoisers.build_denoiser("unet_denoiser", 1, {"space_to_depth": 0})


def test_residual_unet_blocks_add_their_input_and_round_trip(tmp_path):
    batch = np.random.default_rng(1).random((2, 8, 12, 1)).astype(np.float32)
    plain = denoisers.build_denoiser("unet_denoiser", 1, {"filters": 4})
    residual = denoisers.build_denoiser("unet_denoiser", 1, {"filters": 4, "residual_blocks": True})
    plain(batch), residual(batch)
    adds = [layer for part in (residual.encoder, residual.decoder) for layer in part.layers
            if isinstance(layer, keras.layers.Add)]
    assert len(adds) == 5, "one per block: two encoder levels, the bottom and two decoder levels"
    assert not any(isinstance(layer, keras.layers.Add) for layer in plain.encoder.layers + plain.decoder.layers)
    projections = (1 * 4 + 4) + (4 * 8 + 8) + (8 * 16 + 16) + (16 * 8 + 8) + (8 * 4 + 4)
    assert residual.count_params() == plain.count_params() + projections, "a 1x1 projection where widths change"
    path = str(tmp_path / "residual.keras")
    residual.save(path)
    loaded = registry.load(path)
    assert loaded.config.residual_blocks and loaded.config == residual.config
    np.testing.assert_allclose(loaded.predict(batch, verbose=0), residual.predict(batch, verbose=0), atol=1e-6)


def test_cosine_schedule_decays_over_every_step_and_configs_are_checked():
    config = denoising.DenoiserTrainingConfig(epochs=4, learning_rate=2e-3)
    schedule = denoising.learning_rate(config, steps_per_epoch=10)
    assert float(schedule(0)) == pytest.approx(2e-3) and float(schedule(40)) == pytest.approx(2e-3 * 0.02)
    assert denoising.learning_rate(dataclasses.replace(config, schedule="constant"), 10) == 2e-3
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        denoising.DenoiserTrainingConfig(schedule="step")
    with pytest.raises(ValueError, match="patch_size"):
        denoising.DenoiserTrainingConfig(patch_size=-1)
    with pytest.raises(ValueError, match="loss must be one of"):
        denoising.DenoiserTrainingConfig(loss="huber")


def test_warm_up_then_cosine_and_adamw_when_weight_decay_is_set():
    config = denoising.DenoiserTrainingConfig(epochs=4, learning_rate=2e-3, warmup_epochs=1)
    schedule = denoising.learning_rate(config, steps_per_epoch=10)
    assert float(schedule(0)) == pytest.approx(2e-3 * 0.02)
    assert float(schedule(5)) == pytest.approx(2e-3 * (0.02 + 0.98 / 2), rel=1e-4), "linear warm-up"
    assert float(schedule(10)) == pytest.approx(2e-3) and float(schedule(40)) == pytest.approx(2e-3 * 0.02)
    assert float(schedule(25)) == pytest.approx(2e-3 * (0.02 + 0.98 / 2), rel=1e-4), "cosine half-way after it"
    assert type(denoising.optimizer(config, 10)) is keras.optimizers.Adam
    decayed = denoising.optimizer(dataclasses.replace(config, weight_decay=1e-4), 10)
    assert type(decayed) is keras.optimizers.AdamW and decayed.weight_decay == pytest.approx(1e-4)
    for bad in ({"warmup_epochs": 4}, {"warmup_epochs": -1}, {"weight_decay": -0.1}, {"shift": -1}):
        with pytest.raises(ValueError, match="need"):
            denoising.DenoiserTrainingConfig(epochs=4, **bad)


def test_affordable_epochs_fit_the_budget_leaving_out_the_first_epochs_tracing():
    assert time_budget.affordable_epochs(96, [10.0], 600) == 96, "the first (tracing) epoch alone decides nothing"
    assert time_budget.affordable_epochs(96, [700.0], 600) == 1, "unless it spent the budget"
    assert time_budget.affordable_epochs(96, [30.0, 10.0], 100) == 8, "the first epoch is not typical"
    assert time_budget.affordable_epochs(96, [30.0, 5.0, 20.0, 5.0], 100) == 12, "the median of the later epochs"
    assert time_budget.affordable_epochs(96, [30.0, 5.0, 5.0], 600) == 96, "never more than planned"
    assert time_budget.affordable_epochs(96, [50.0, 60.0], 100) == 2, "never fewer than already run"
    with pytest.raises(ValueError, match="at least one epoch timed"):
        time_budget.affordable_epochs(96, [], 100)


def test_a_time_budget_stops_training_and_ends_the_cosine_decay_at_the_new_last_epoch():
    inputs = np.random.default_rng(0).random((8, 3)).astype(np.float32)

    def fit(budget_seconds):
        ticks = iter(range(0, 10_000, 5))  # every epoch takes 5 s on this clock
        schedule = time_budget.CosineSchedule(1e-2, decay_steps=20, floor=0.02)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])
        model.compile(keras.optimizers.Adam(schedule), "mse")
        budget = time_budget.TimeBudget(budget_seconds, planned_epochs=10, steps_per_epoch=2, schedule=schedule,
                                        clock=lambda: next(ticks))
        history = model.fit(inputs, inputs, batch_size=4, epochs=10, callbacks=[budget], verbose=0, shuffle=False)
        return len(history.history["loss"]), int(model.optimizer.iterations), schedule, budget

    epochs, steps, schedule, budget = fit(22)
    assert (epochs, steps, budget.epochs, budget.planned_epochs) == (4, 8, 4, 10)
    assert float(schedule(4)) == pytest.approx(1e-2 * (0.02 + 0.98 / 2), rel=1e-4), "half-way at epoch 2 of 4"
    assert float(schedule(8)) == pytest.approx(1e-2 * 0.02), "the decay ends with the last step run"
    epochs, steps, schedule, budget = fit(1000)
    assert (epochs, steps, budget.epochs) == (10, 20, 10) and int(schedule.decay_steps.numpy()) == 20
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert copy.get_config() == schedule.get_config() and float(copy(10)) == pytest.approx(float(schedule(10)))
    assert DenoiseTrainConfig(time_budget_minutes=2.5).training_config().time_budget_minutes == 2.5
    with pytest.raises(ValueError, match="--time_budget_minutes >= 0"):
        DenoiseTrainConfig(time_budget_minutes=-1)
    with pytest.raises(ValueError, match="time_budget_minutes >= 0"):
        denoising.DenoiserTrainingConfig(time_budget_minutes=-1)


def test_psnr_loss_is_minus_the_per_image_psnr():
    clean = np.random.default_rng(0).random((3, 8, 8, 1)).astype(np.float32)
    noisy = noise.gaussian_noise(clean, 0.1, np.random.default_rng(1))
    np.testing.assert_allclose(np.asarray(denoising.negative_psnr(clean, noisy)), -quality.psnr(clean, noisy),
                               rtol=1e-5)
    assert denoising.loss_function("psnr") is denoising.negative_psnr and denoising.loss_function("mse") == "mse"


def test_denoise_batch_pads_groups_of_sizes_for_strided_models():
    model = denoisers.build_denoiser("denoise_tutorial", 1)
    batch = [sets.synthetic_images(1, 10, seed=1)[0], sets.synthetic_images(1, 16, seed=2)[0],
             sets.synthetic_images(1, 10, seed=3)[0]]
    outputs = denoise_steps.denoise_batch(model, batch)
    assert [output.shape for output in outputs] == [(10, 10, 1), (16, 16, 1), (10, 10, 1)]
    padded, _ = images.pad_to_multiple(batch[0][np.newaxis], 4)
    np.testing.assert_allclose(outputs[0], model(padded).numpy()[0, :10, :10], atol=1e-5)


# ---------------------------------------------------------------------------------- pure job parts


def test_image_metrics_summary_and_csv_rows():
    clean = np.full((8, 8, 1), 0.5, np.float32)
    metrics = denoise_steps.image_metrics(clean + 0.1, clean + 0.01, clean)
    assert metrics["noisy_psnr"] == pytest.approx(20.0, abs=1e-4)
    assert metrics["denoised_psnr"] == pytest.approx(40.0, abs=1e-3)
    assert denoise_steps.image_metrics(clean, clean, None) == {name: None for name in denoise_steps.METRIC_NAMES}
    combine = denoise_write.SummaryFn()
    parts = [combine.add_input(combine.create_accumulator(), item)
             for item in (metrics, denoise_steps.image_metrics(clean, clean, clean),
                          denoise_steps.image_metrics(clean, clean, None))]
    summary = combine.extract_output(combine.merge_accumulators(parts))
    assert summary["denoised_images"] == 3 and summary["images_with_reference"] == 2
    assert summary["images_with_infinite_psnr"] == 1 and summary["mean_psnr_gain"] == pytest.approx(20.0, abs=1e-3)
    row = denoise_write.metrics_row({"key": "a,b.png", "denoised": clean, "metrics": metrics})
    assert next(csv.reader([row]))[:4] == ["a,b.png", "8", "8", "1"]


def test_train_flags_reach_the_training_config():
    config = DenoiseTrainConfig(shift=2, warmup_epochs=1.5, weight_decay=1e-4, epochs=6)
    training = config.training_config()
    assert (training.shift, training.warmup_epochs, training.weight_decay, training.epochs) == (2, 1.5, 1e-4, 6)
    with pytest.raises(ValueError, match="--shift >= 0"):
        DenoiseTrainConfig(shift=-1)
    with pytest.raises(ValueError, match="--warmup_epochs < --epochs"):
        DenoiseTrainConfig(warmup_epochs=6, epochs=6)


def test_run_config_validation():
    with pytest.raises(ValueError, match="--input is required"):
        denoise.DenoiseRunConfig()
    with pytest.raises(ValueError, match="give one of them"):
        denoise.DenoiseRunConfig(input="x", noise="gaussian", reference="y")
    with pytest.raises(ValueError, match="usage"):
        denoise.run(["fit"])


# -------------------------------------------------------------------------------- DoFn.process


def test_read_image_files_dofn_decodes_or_routes_errors(image_directory):
    function = denoise_read.ReadImageFiles(str(image_directory))
    function.setup()
    good = list(function.process("nested/wide.png"))
    assert good[0]["key"] == "nested/wide.png" and good[0]["image"].shape == (21, 19, 1) and good[0]["clean"] is None
    bad = list(function.process("corrupt.png"))
    assert bad[0].tag == "errors" and bad[0].value["key"] == "corrupt.png" and "corrupt" in bad[0].value["reason"]
    missing = list(function.process("absent.png"))
    assert missing[0].tag == "errors"


def test_prepare_images_dofn_adds_reproducible_noise_and_refuses_wrong_channels():
    function = denoise_steps.PrepareImages("gaussian:0.2", seed=5, channels=1, convert_color=False)
    function.setup()
    image = sets.synthetic_images(1, 8)[0]
    record = {"key": "k", "position": "k", "format": "png", "image": image, "clean": None}
    prepared = list(function.process(record))[0]
    np.testing.assert_array_equal(prepared["clean"], image)
    np.testing.assert_array_equal(prepared["image"], noise.gaussian_noise(image, 0.2, denoise_steps.noise_rng(5, "k")))
    rgb = {**record, "image": np.repeat(image, 3, axis=-1)}
    assert list(function.process(rgb))[0].tag == "errors"
    converting = denoise_steps.PrepareImages("none", seed=5, channels=1, convert_color=True)
    converting.setup()
    assert list(converting.process(rgb))[0]["image"].shape == (8, 8, 1)


def test_read_array_rows_dofn_reports_unusable_rows(tmp_path):
    array = np.random.default_rng(0).random((6, 5, 5)).astype(np.float32)
    array[2, 0, 0] = np.nan
    array[4, 1, 1] = 3.0
    np.save(tmp_path / "x.npy", array)
    function = denoise_read.ReadArrayRows(str(tmp_path / "x.npy"), None)
    function.setup()
    outputs = list(function.process((0, 6)))
    function.teardown()
    errors = {output.value["key"]: output.value["reason"] for output in outputs if hasattr(output, "tag")}
    assert set(errors) == {"2", "4"} and "non-finite" in errors["2"] and "outside [0, 1]" in errors["4"]
    good = [output for output in outputs if not hasattr(output, "tag")]
    assert [record["position"] for record in good] == [0, 1, 3, 5]
    np.testing.assert_array_equal(good[1]["image"][..., 0], array[1])


def test_read_tfrecords_dofn_keeps_good_records_before_a_corrupt_tail(tmp_path):
    path = str(tmp_path / "set.tfrecord")
    encoded = images.encode_image(sets.synthetic_images(1, 8)[0])
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(images.make_example("first", encoded))
        writer.write(b"\x01\x02 not an example")
        writer.write(images.make_example("third", encoded))
    with open(path, "ab") as handle:
        handle.write(b"\x00" * 30)
    function = denoise_read.ReadTFRecords()
    function.setup()
    outputs = list(function.process(path))
    assert [output["key"] for output in outputs if not hasattr(output, "tag")] == ["first", "third"]
    reasons = [output.value["reason"] for output in outputs if hasattr(output, "tag")]
    assert len(reasons) == 2 and "not a tf.train.Example" in reasons[0] and "corrupt TFRecord" in reasons[1]


# ------------------------------------------------------------------------ TestPipeline + assert_that


def test_pipeline_over_a_small_image_directory_with_a_corrupt_file(exported, image_directory, tmp_path):
    config = denoise.DenoiseRunConfig(input=str(image_directory), model=exported.version_directory,
                                      out=str(tmp_path), noise="gaussian:0.2", grid_images=3)
    plan = denoise_plan.plan_image_set(config)
    assert plan.format == "images" and plan.skipped_files == 1
    with TestPipeline(runner="FnApiRunner") as pipeline:
        read = (pipeline | beam.Create(list(plan.tasks))
                | beam.ParDo(denoise_read.ReadImageFiles(config.input)).with_outputs("errors", main="images"))
        assert_that(read["errors"] | beam.Map(lambda error: error["key"]), equal_to(["corrupt.png", "empty.png"]),
                    label="ReadErrors")
        summary = denoise.build_pipeline(pipeline, config, plan, exported.version_directory, channels=1)
        assert_that(summary | beam.Map(lambda item: (item["denoised_images"], item["bad_images"],
                                                     item["images_with_reference"])),
                    equal_to([(len(GOOD_FILES), len(BAD_FILES), len(GOOD_FILES))]), label="Summary")
    assert sorted(os.listdir(tmp_path / "denoised")) == ["img0.png", "img1.png", "img2.png", "img3.png", "nested",
                                                         "photo.jpg"]


# --------------------------------------------------------------------------------- end to end


def test_train_export_run_round_trip_on_an_image_directory(exported, image_directory, tmp_path):
    card = json.loads(open(os.path.join(exported.version_directory, "model_card.json")).read())
    assert card["model"]["name"] == "dncnn" and card["noise"]["spec"] == "gaussian:0.2"
    assert card["metrics"]["test"]["denoised_psnr"] > card["metrics"]["test"]["noisy_psnr"] + 1.0
    assert os.path.exists(exported.model_path) and os.path.exists(exported.grid_path)

    out = tmp_path / "out"
    model_root = os.path.dirname(exported.version_directory)
    result = denoise.run(["run", "--input", str(image_directory), "--model", model_root, "--out", str(out),
                          "--noise", "gaussian:0.2", "--seed", "11", "--batch_size", "4"])
    summary = result.summary
    assert (summary["denoised_images"], summary["bad_images"], summary["skipped_files"]) == (len(GOOD_FILES), 3, 1)
    assert summary["mean_denoised_psnr"] > summary["mean_noisy_psnr"] + 1.0
    errors = {json.loads(line)["key"]: json.loads(line)["reason"] for line in open(result.errors_path)}
    assert set(errors) == set(BAD_FILES) and all(BAD_FILES[key] in errors[key] for key in BAD_FILES)
    rows = list(csv.DictReader(open(result.metrics_path)))
    assert sorted(row["key"] for row in rows) == sorted(GOOD_FILES)
    wide = next(row for row in rows if row["key"] == "nested/wide.png")
    assert (wide["height"], wide["width"]) == ("21", "19") and float(wide["denoised_ssim"]) > float(wide["noisy_ssim"])
    assert result.grid_path and os.path.exists(result.grid_path)

    model = registry.load(exported.model_path)
    clean = images.decode_image((image_directory / "img2.png").read_bytes())
    noisy = noise.gaussian_noise(clean, 0.2, denoise_steps.noise_rng(11, "img2.png"))
    expected = images.to_uint8(model.predict(noisy[np.newaxis], verbose=0)[0])[:, :, 0]
    written = _pixels(out / "denoised" / "img2.png")
    assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1, "the job denoises the noisy image"
    assert _pixels(out / "denoised" / "nested" / "wide.png").shape == (21, 19)
    assert Image.open(out / "denoised" / "photo.jpg").format == "JPEG"


def test_round_trip_on_arrays_and_tfrecords_through_the_cli(exported, tmp_path, capsys):
    clean = sets.synthetic_images(7, IMAGE_SIZE, seed=21)
    array = images.to_uint8(clean[..., 0])
    np.save(tmp_path / "set.npy", array)
    model = registry.load(exported.model_path)
    expected = images.to_uint8(model.predict(array[..., np.newaxis].astype(np.float32) / 255.0, verbose=0))[..., 0]

    status = heartwatch_cli.main(["denoise", "run", "--input", str(tmp_path / "set.npy"), "--model",
                                  exported.version_directory, "--out", str(tmp_path / "npy_out"), "--chunk_size", "3",
                                  "--batch_size", "2"])
    assert status == 0 and "denoised: 7 images" in capsys.readouterr().out
    written = np.load(tmp_path / "npy_out" / "denoised.npy")
    assert written.dtype == np.uint8 and written.shape == array.shape
    assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1

    noisy = noise.gaussian_noise(clean, 0.2, np.random.default_rng(0))
    with tf.io.TFRecordWriter(str(tmp_path / "set.tfrecord")) as writer:
        for index in range(len(clean)):
            writer.write(images.make_example(f"r{index}", images.encode_image(noisy[index]),
                                             clean_encoded=images.encode_image(clean[index])))
    result = denoise.run(["run", "--input", str(tmp_path / "set.tfrecord"), "--model", exported.version_directory,
                          "--out", str(tmp_path / "tf_out")])
    records = [images.parse_example(record.numpy()) for record in tf.data.TFRecordDataset(result.output_path)]
    assert sorted(record["key"] for record in records) == [f"r{index}" for index in range(7)]
    assert images.decode_image(records[0]["encoded"]).shape == (IMAGE_SIZE, IMAGE_SIZE, 1)
    assert result.summary["images_with_reference"] == 7
    assert result.summary["mean_denoised_psnr"] > result.summary["mean_noisy_psnr"]

    assert heartwatch_cli.main(["denoise", "run", "--input", str(tmp_path / "missing.npy"), "--model",
                                exported.version_directory]) == 2
    assert "input not found" in capsys.readouterr().err


def test_rgb_model_and_npz_reference_round_trip(tmp_path):
    trained = denoise.run(["train", "--data", "synthetic:count=40,size=12,channels=3", "--epochs", "1",
                           "--validation_fraction", "0.2",
                           "--model", "denoise_tutorial", "--output_dir", str(tmp_path / "models"), "--verbose", "0"])
    assert trained.card["model"]["channels"] == 3 and trained.card["signature"]["size_multiple"] == 4
    clean = sets.synthetic_images(5, 10, channels=3, seed=3)
    noisy = noise.gaussian_noise(clean, 0.2, np.random.default_rng(1))
    np.savez(tmp_path / "noisy.npz", images=noisy)
    np.save(tmp_path / "clean.npy", clean)
    result = denoise.run(["run", "--input", str(tmp_path / "noisy.npz"), "--reference", str(tmp_path / "clean.npy"),
                          "--model", trained.version_directory, "--out", str(tmp_path / "out")])
    with np.load(result.output_path) as archive:
        assert archive.files == ["images"] and archive["images"].shape == (5, 10, 10, 3)
    assert result.summary["images_with_reference"] == 5
    assert result.summary["mean_noisy_psnr"] == pytest.approx(float(np.mean(quality.psnr(clean, noisy))), abs=1e-3)
    keras.backend.clear_session()


def test_train_and_run_on_ram_filesystem(image_directory, tmp_path):
    """`denoise train` -> `denoise run` with the model root and every output on TensorFlow's ram:// scheme."""
    root = f"ram://{uuid.uuid4().hex}"
    trained = denoise.run(["train", "--data", "synthetic:count=60,size=12", "--epochs", "1", "--batch_size", "16",
                           "--validation_fraction", "0.2",
                           "--model", "dncnn", "--model_parameters", '{"depth": 3, "filters": 8}',
                           "--output_dir", f"{root}/models", "--verbose", "0"])
    assert trained.version_directory == f"{root}/models/1" and trained.card["version"] == "1"
    assert files.list_directory(f"{root}/models") == ["1"], "the staging directory is gone after publishing"
    assert files.list_directory(trained.version_directory) == ["comparison.png", "history.json", "model.keras",
                                                              "model_card.json"]
    assert files.read_json(files.join(trained.version_directory, "model_card.json")) == trained.card

    out = f"{root}/images_out"
    result = denoise.run(["run", "--input", str(image_directory), "--model", f"{root}/models", "--out", out,
                          "--noise", "gaussian:0.2", "--batch_size", "4"],
                         test_pipeline=TestPipeline(runner="FnApiRunner"))
    summary = result.summary
    assert (summary["denoised_images"], summary["bad_images"], summary["skipped_files"]) == (len(GOOD_FILES), 3, 1)
    assert summary["model"] == trained.version_directory and files.read_json(result.summary_path) == summary
    assert files.list_directory(out) == ["comparison.png", "denoised", "errors.jsonl", "metrics.csv", "summary.json"]
    assert sorted(path[len(out) + len("/denoised/"):] for path in files.walk_files(files.join(out, "denoised"))) == \
        sorted(GOOD_FILES)
    assert Image.open(io.BytesIO(files.read_bytes(f"{out}/denoised/photo.jpg"))).format == "JPEG"
    rows = list(csv.DictReader(io.StringIO(files.read_text(result.metrics_path))))
    assert sorted(row["key"] for row in rows) == sorted(GOOD_FILES)
    errors = [json.loads(line) for line in files.read_text(result.errors_path).splitlines()]
    assert sorted(error["key"] for error in errors) == sorted(BAD_FILES)

    clean = sets.synthetic_images(5, 10, seed=4)
    buffer = io.BytesIO()
    np.savez(buffer, images=images.to_uint8(clean))
    files.write_bytes(f"{root}/inputs/set.npz", buffer.getvalue())
    result = denoise.run(["run", "--input", f"{root}/inputs/set.npz", "--model", trained.version_directory,
                          "--out", f"{root}/npz_out", "--chunk_size", "2"])
    assert result.output_path == f"{root}/npz_out/denoised.npz" and result.summary["denoised_images"] == 5
    with np.load(io.BytesIO(files.read_bytes(result.output_path))) as archive:
        assert archive.files == ["images"] and archive["images"].shape == (5, 10, 10, 1)
        assert archive["images"].dtype == np.uint8 and archive["images"].max() > 0
    assert sorted(files.list_directory(f"{root}/npz_out")) == ["comparison.png", "denoised.npz", "errors.jsonl",
                                                               "metrics.csv", "summary.json"]


def test_split_is_a_stable_hash_of_seed_and_key_with_the_asked_shares():
    keys = [f"set.npy:{index}" for index in range(4000)]
    splits = [denoise_shards.split_of(key, 0, 0.1, 0.2) for key in keys]
    assert splits == [denoise_shards.split_of(key, 0, 0.1, 0.2) for key in keys], "stable"
    shares = {name: splits.count(name) / len(keys) for name in denoise_shards.SPLITS}
    assert shares["test"] == pytest.approx(0.2, abs=0.03) and shares["validation"] == pytest.approx(0.1, abs=0.03)
    assert splits != [denoise_shards.split_of(key, 1, 0.1, 0.2) for key in keys], "the seed changes the split"


def test_train_streams_array_shards_through_beam_and_tf_data(tmp_path):
    """`denoise train` on a glob of .npy shards (one bad row): record shards per split, counts, errors, export."""
    clean = sets.synthetic_images(90, 12, seed=5)
    shards_directory = tmp_path / "shards"
    shards_directory.mkdir()
    for index in range(3):
        part = images.to_uint8(clean[index * 30:(index + 1) * 30]).astype(np.float32) / 255.0
        if index == 1:
            part[3, 0, 0, 0] = np.nan
        np.save(shards_directory / f"shard-{index}.npy", part)
    work = str(tmp_path / "work")
    listed = denoise_shards.list_training_input(str(shards_directory / "shard-*.npy"))
    assert listed.format == "arrays" and len(listed.tasks) == 3
    with TestPipeline(runner="FnApiRunner") as pipeline:
        denoise_shards.build_preparation(pipeline, listed, str(shards_directory), work, 0, 0.2, 0.2)
    prepared = denoise_shards.read_preparation(work)
    keys = [f"shard-{index // 30}.npy:{index % 30}" for index in range(90) if index != 33]
    expected = {name: sum(denoise_shards.split_of(key, 0, 0.2, 0.2) == name for key in keys)
                for name in denoise_shards.SPLITS}
    assert prepared == {"counts": expected, "bad_images": 1, "shapes": [[12, 12, 1]]}
    written = {name: [records.decode_record(record.numpy())[0]
                      for record in tf.data.TFRecordDataset(denoise_shards.shard_paths(work, name))]
               for name in denoise_shards.SPLITS}
    assert sorted(sum(written.values(), [])) == sorted(keys)
    assert all(denoise_shards.split_of(key, 0, 0.2, 0.2) == name for name, found in written.items() for key in found)
    error = json.loads(open(os.path.join(work, denoise_shards.ERRORS_FILE)).read())
    assert error["key"] == "shard-1.npy:3" and "non-finite" in error["reason"]

    trained = denoise_train.run(["--data", str(shards_directory / "shard-*.npy"), "--epochs", "1", "--batch_size",
                                 "16", "--model", "dncnn", "--model_parameters", '{"depth": 3, "filters": 8}',
                                 "--validation_fraction", "0.2", "--test_fraction", "0.2", "--output_dir",
                                 str(tmp_path / "models"), "--verbose", "0"],
                                test_pipeline=TestPipeline(runner="FnApiRunner"))
    data = trained.card["data"]
    assert (data["train_images"], data["validation_images"], data["test_images"], data["bad_images"]) == \
        (expected["train"], expected["validation"], expected["test"], 1)
    assert trained.card["metrics"]["test"]["images"] == expected["test"]
    assert sorted(os.listdir(trained.version_directory)) == ["comparison.png", "data_errors.jsonl", "history.json",
                                                             "model.keras", "model_card.json"]
    with pytest.raises(ValueError, match="too few to split"):
        denoise_train.run(["--data", str(shards_directory / "shard-0.npy"), "--max_images", "3", "--epochs", "1",
                           "--output_dir", str(tmp_path / "few"), "--verbose", "0"])
