"""`heartwatch autoencode`: the image autoencoders job end to end on real Fashion-MNIST images, and its errors."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from models.common import artifacts, files
from models.common.flags import parse_flags
from models.family import registry
from pipeline import autoencode, autoencode_config, autoencode_data, autoencode_figures

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent
SHARED_FILE = pathlib.Path("shared", "data", "fashion_mnist", "fashion_mnist_t10k_first3443.npz")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMALL_RUN = ["--max_images", "300", "--epochs", "2", "--batch_size", "64", "--verbose", "0", "--seed", "0"]
VERSION_FILES = ("dense_image.keras", "conv_image.keras", "history.json", "metrics.json", "reconstructions.png",
                 "loss.png", "latent_scatter.png", "decoder_grid.png", "index.html", artifacts.MODEL_CARD_FILE)
FIGURES = ("reconstructions.png", "loss.png", "latent_scatter.png", "decoder_grid.png")


@pytest.fixture(scope="module")
def fashion_mnist_path() -> str:
    """The 3,443 real Fashion-MNIST images (``HEARTWATCH_FASHION_MNIST``, or ``shared/`` beside the repository
    or beside the folder of worktrees)."""
    candidates = [os.environ.get("HEARTWATCH_FASHION_MNIST"), REPOSITORY.parent / SHARED_FILE,
                  REPOSITORY.parent.parent / SHARED_FILE]
    for candidate in filter(None, candidates):
        if os.path.exists(candidate):
            return str(candidate)
    pytest.fail(f"real Fashion-MNIST sample not found ({SHARED_FILE}); set HEARTWATCH_FASHION_MNIST")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, fashion_mnist_path):
    """The job with z_dim 2 on 300 real images, two epochs."""
    root = tmp_path_factory.mktemp("autoencoders")
    argv = ["--data", fashion_mnist_path, "--output_dir", str(root), "--label_names", "fashion_mnist", *SMALL_RUN]
    return argv, autoencode.run(argv)


def _is_png(path: str) -> bool:
    return files.read_bytes(path)[:8] == PNG_SIGNATURE


def test_the_job_writes_models_figures_metrics_card_and_page(small_run):
    argv, result = small_run
    directory = result.version_directory
    assert artifacts.version_of(directory) == "1" and result.card["version"] == "1"
    for name in VERSION_FILES:
        assert files.exists(files.join(directory, name)), name
    for name in FIGURES:
        assert _is_png(files.join(directory, name)), name
    card = artifacts.read_card(directory)
    assert card["skipped_figures"] == {}
    assert card["data"]["train"] + card["data"]["validation"] + card["data"]["test"] == 300
    assert card["data"]["labels"].endswith("[labels]")
    assert card["models"]["dense_image"]["config"]["latent_dim"] == 64
    assert card["models"]["conv_image"]["config"]["z_dim"] == 2
    history = files.read_json(files.join(directory, "history.json"))
    assert set(history) == {"dense_image", "conv_image"}
    assert all(1 <= len(item["val_loss"]) <= 2 for item in history.values())
    page = files.read_text(result.page_path)
    for name in FIGURES:
        assert f'href="{name}"' in page and f'src="{name}"' in page
    assert "Skipped" not in page
    text = autoencode.report(result)
    assert "PSNR" in text and result.page_path in text and "skipped" not in text


def test_metrics_are_those_of_the_saved_models_on_the_held_out_images(small_run):
    argv, result = small_run
    metrics = files.read_json(files.join(result.version_directory, "metrics.json"))
    splits = autoencode_data.load_splits(parse_flags(autoencode_config.AutoencodeConfig, argv))
    assert metrics["dense_image"]["images"] == len(splits.test) == 30
    for name in ("dense_image", "conv_image"):
        model = registry.load(files.join(result.version_directory, f"{name}.keras"))
        recomputed = autoencode.reconstruction_metrics(splits.test, autoencode.reconstruct(model, splits.test))
        for key in ("mse", "psnr", "ssim"):
            assert metrics[name][key] == pytest.approx(recomputed[key], rel=1e-4), (name, key)
        assert 0 < metrics[name]["mse"] < 1 and np.isfinite(metrics[name]["psnr"])
    baseline = metrics["mean_image_baseline"]
    assert baseline["mse"] == pytest.approx(np.mean((splits.test - splits.train.mean(axis=0)) ** 2), rel=1e-6)
    assert result.card["metrics"]["test"] == metrics


def test_a_code_other_than_two_dimensional_skips_the_latent_figures_with_a_reason(tmp_path, fashion_mnist_path):
    with np.load(fashion_mnist_path) as archive:
        pixels, labels = archive["images"][:120], archive["labels"][:120]
    source = tmp_path / "classes"
    for index, (image, label) in enumerate(zip(pixels, labels)):
        (source / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(source / f"class{label}" / f"{index:04d}.png")
    result = autoencode.run(["--data", str(source), "--z_dim", "3", "--epochs", "1", "--verbose", "0",
                             "--output_dir", str(tmp_path / "out"), "--reconstruction_images", "4"])
    directory = result.version_directory
    assert not files.exists(files.join(directory, "latent_scatter.png"))
    assert not files.exists(files.join(directory, "decoder_grid.png"))
    assert _is_png(files.join(directory, "reconstructions.png"))
    reasons = result.card["skipped_figures"]
    assert set(reasons) == {"latent_scatter", "decoder_grid"}
    assert all("--z_dim is 3" in text for text in reasons.values())
    assert result.card["data"]["labels"] == f"sub-directories of {source}"
    assert "Skipped: --z_dim is 3" in files.read_text(result.page_path)
    assert "skipped latent_scatter: --z_dim is 3" in autoencode.report(result)
    assert registry.load(files.join(directory, "conv_image.keras")).encoder.outputs[0].shape[-1] == 3


def test_the_keras_loader_offline_fails_with_one_line_naming_data_path(tmp_path):
    """The real loader with an empty Keras cache and no reachable network (a closed local proxy port)."""
    environment = {**os.environ, "KERAS_HOME": str(tmp_path / "keras"), "HTTPS_PROXY": "http://127.0.0.1:9",
                   "https_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
                   "http_proxy": "http://127.0.0.1:9", "PYTHONPATH": str(REPOSITORY), "TF_CPP_MIN_LOG_LEVEL": "3"}
    environment.pop("NO_PROXY", None)
    environment.pop("no_proxy", None)
    message_file = tmp_path / "message.txt"
    script = ("import pathlib, sys\nfrom pipeline import autoencode\ntry:\n    autoencode.run(['--data', "
              f"'fashion_mnist', '--output_dir', {str(tmp_path / 'out')!r}])\nexcept ValueError as error:\n"
              f"    pathlib.Path({str(message_file)!r}).write_text(str(error))\n    sys.exit(2)\n")
    completed = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True,
                               timeout=600, cwd=REPOSITORY)
    assert completed.returncode == 2, completed.stderr[-2000:]
    message = message_file.read_text()
    assert "\n" not in message and message.startswith("--data fashion_mnist: the Keras loader could not download")
    assert "--data <path>" in message
    assert not (tmp_path / "out").exists()


def test_bad_data_fails_clearly_before_any_training(tmp_path, fashion_mnist_path):
    def run(*argv):
        return autoencode.run([*argv, "--output_dir", str(tmp_path / "out"), "--verbose", "0"])

    with pytest.raises(FileNotFoundError, match="neither fashion_mnist, digits, synthetic"):
        run("--data", str(tmp_path / "missing.npz"))
    text_file = tmp_path / "notes.csv"
    text_file.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="cannot tell the format"):
        run("--data", str(text_file))
    with pytest.raises(ValueError, match="has no array 'targets'"):
        run("--data", fashion_mnist_path, "--label_key", "targets")
    wrong_count = tmp_path / "labels.npy"
    np.save(wrong_count, np.zeros(7, np.int64))
    with pytest.raises(ValueError, match="7 labels for 3443 images"):
        run("--data", fashion_mnist_path, "--labels", str(wrong_count))
    with pytest.raises(ValueError, match=r"conv_image cannot take images of shape \(30, 30, 1\).*--conv_filters"):
        run("--data", "synthetic:count=40,size=30")
    with pytest.raises(ValueError, match="--z_dim must be positive"):
        run("--data", "digits", "--z_dim", "0")
    with pytest.raises(ValueError, match="--test_fraction"):
        run("--data", "digits", "--test_fraction", "0")
    assert not (tmp_path / "out").exists()


def test_labels_come_with_the_image_input_or_are_stated_missing(tmp_path, fashion_mnist_path):
    def splits(*argv):
        return autoencode_data.load_splits(parse_flags(autoencode_config.AutoencodeConfig, list(argv)))

    digits = splits("--data", "digits")
    assert digits.labelled and set(digits.test_labels.tolist()) <= set(range(10))
    synthetic = splits("--data", "synthetic:count=50")
    assert not synthetic.labelled and synthetic.label_source == "unlabelled: synthetic images have none"
    assert set(synthetic.test_labels.tolist()) == {"unlabelled"}
    with np.load(fashion_mnist_path) as archive:
        pixels, labels = archive["images"][:60].copy(), archive["labels"][:60]
    pixels[:, 0, 0] = np.arange(60)  # each image carries its row number, to check its label follows it
    array = tmp_path / "images.npy"
    np.save(array, pixels)
    plain = splits("--data", str(array))
    assert plain.label_source.startswith("unlabelled: a npy image set carries no labels")
    label_file = tmp_path / "labels.npy"
    np.save(label_file, labels)
    with_labels = splits("--data", str(array), "--labels", str(label_file), "--test_fraction", "0.5")
    assert with_labels.labelled and len(with_labels.test) == 30
    rows = np.rint(with_labels.test[:, 0, 0, 0] * 255).astype(int)
    np.testing.assert_array_equal(with_labels.test_labels, labels[rows])
    renamed = tmp_path / "renamed.npz"
    np.savez(renamed, x_test=pixels, y_test=labels)
    assert splits("--data", str(renamed)).label_source == f"{renamed}[y_test]"


def test_help_and_flag_checks_need_no_tensorflow():
    script = ("import sys\nfrom models.common.flags import build_parser, parse_flags\n"
              "from pipeline.autoencode_config import AutoencodeConfig\n"
              "text = build_parser(AutoencodeConfig, prog='heartwatch autoencode').format_help()\n"
              "parse_flags(AutoencodeConfig, ['--z_dim', '3'], deep_checks=False)\n"
              "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'heavy import'\n"
              "sys.stdout.write(text)\n")
    completed = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
                               capture_output=True, text=True, timeout=300, cwd=REPOSITORY)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "--z_dim" in completed.stdout and "--label_names" in completed.stdout


def test_example_indices_cover_every_class_first():
    labels = np.array([3, 3, 1, 3, 2, 1, 2, 3])
    np.testing.assert_array_equal(autoencode_figures.example_indices(labels, 5), [0, 2, 4, 1, 5])
    np.testing.assert_array_equal(autoencode_figures.example_indices(labels, 20), [0, 2, 4, 1, 5, 6, 3, 7])
    with pytest.raises(ValueError, match="positive"):
        autoencode_figures.example_indices(labels, 0)


def test_reconstruction_metrics_and_label_names():
    originals = np.full((2, 4, 4, 1), 0.5)
    shifted = originals + np.array([0.1, 0.01]).reshape(2, 1, 1, 1)
    metrics = autoencode.reconstruction_metrics(originals, shifted)
    assert metrics["images"] == 2
    assert metrics["mse"] == pytest.approx((0.01 + 0.0001) / 2)
    assert metrics["psnr"] == pytest.approx((20.0 + 40.0) / 2)
    assert autoencode.reconstruction_metrics(originals, originals)["psnr"] == 100.0
    with pytest.raises(ValueError, match="equal, non-empty"):
        autoencode.reconstruction_metrics(originals, originals[:1])
    names = autoencode_config.FASHION_MNIST_CLASSES
    assert autoencode.display_label(np.uint8(9), names) == "Ankle boot"
    assert autoencode.display_label(12, names) == "12" and autoencode.display_label("coat", None) == "coat"
    config = parse_flags(autoencode_config.AutoencodeConfig, ["--data", "x.npz", "--label_names", "fashion_mnist"])
    assert config.names_of_labels() == names
    assert parse_flags(autoencode_config.AutoencodeConfig, []).names_of_labels() == names
    assert parse_flags(autoencode_config.AutoencodeConfig, ["--data", "x.npz"]).names_of_labels() is None


def test_the_model_card_is_valid_json_with_libraries(small_run):
    _, result = small_run
    card = json.loads(files.read_text(files.join(result.version_directory, artifacts.MODEL_CARD_FILE)))
    assert card["libraries"]["keras"] and card["files"]["figures"]["decoder_grid"] == "decoder_grid.png"
    assert card["latent_grid"] == {"low": -5.0, "high": 5.0, "step": 1.0}
