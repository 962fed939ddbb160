"""Denoising quality: the default `heartwatch denoise train` against the tutorial's ``Denoise``, side by side.

Data: the real shared Fashion-MNIST sample (3,443 images, ``--data``). Both models are trained by
`heartwatch denoise train` itself (``pipeline.denoise_train.run``) on the same split: each image's
split is a stable hash of (seed, key), so the held-out test images are never trained on and are the
same for both. The default model uses the command's defaults, but for the time budget: it runs
with ``--time_budget_minutes 0``, so a busy machine times the recipe rather than cutting its epochs
(the time bar is the command's own wall time, measured alone); the tutorial model uses the
tutorial's recipe (10 epochs, batch 32, Adam 1e-3 constant, MSE, no flips). Both are trained at
``--train_noise`` and judged on the held-out images at every ``--noise_levels`` level (Gaussian,
fixed per-image noise from ``noise_rng(seed + 2, key)``): mean PSNR and SSIM of the noisy input and
of each model's output, and the training time (wall and CPU seconds) with the load average.

    python bench/denoise_quality.py                                  # train at 0.2, judge at 0.2 and 0.6
    python bench/denoise_quality.py --train_noise 0.6                # models trained at the book's noise
"""

import argparse
import os
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.common import artifacts, files  # noqa: E402
from models.family import BASELINE_DENOISER, registry  # noqa: E402
from models.images import arrays, noise  # noqa: E402
from models.training.denoising import denoise_array, quality_sums, summarise_quality  # noqa: E402
from pipeline import denoise_shards, denoise_train  # noqa: E402

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(REPOSITORY, "..", "shared", "data", "fashion_mnist", "fashion_mnist_t10k_first3443.npz")
BAR_DECIBELS = 24.5
BAR_NOISE = 0.2
TUTORIAL_RECIPE = ["--model", BASELINE_DENOISER, "--epochs", "10", "--batch_size", "32", "--learning_rate", "1e-3",
                   "--loss", "mse", "--schedule", "constant", "--flip", "false", "--early_stopping_patience", "0"]
NO_TIME_BUDGET = ["--time_budget_minutes", "0"]


def held_out(data: str, seed: int, validation_fraction: float = 0.1, test_fraction: float = 0.1):
    """``(keys, images)`` of the test split `denoise train` holds out of ``data`` (same hash, same keys)."""
    rows = arrays.ArrayRows(data)
    prefix = files.basename(data) + ":"
    keys, images = [], []
    for index in range(rows.header.count):
        key = prefix + str(index)
        if denoise_shards.split_of(key, seed, validation_fraction, test_fraction) == "test":
            keys.append(key)
            images.append(arrays.array_rows_to_unit_float(rows.read(index, index + 1))[0])
    rows.close()
    return keys, np.stack(images)


def judge(model_path: str, keys: list, clean: np.ndarray, amount: float, seed: int) -> dict:
    """Mean PSNR/SSIM on the held-out images at Gaussian noise ``amount`` (the card's per-key fixed noise)."""
    spec = noise.NoiseSpec("gaussian", amount)
    noisy = np.stack([noise.add_noise(image, spec, noise.noise_rng(seed + 2, key)) for key, image in zip(keys, clean)])
    model = registry.load(model_path)
    return summarise_quality(quality_sums(clean, noisy, denoise_array(model, noisy)))


def train(data: str, output_dir: str, train_noise: float, seed: int, extra: list) -> tuple:
    """Runs `heartwatch denoise train`; returns (result, wall seconds, CPU seconds)."""
    wall, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    result = denoise_train.run(["--data", data, "--noise", f"gaussian:{train_noise:g}", "--output_dir", output_dir,
                                "--seed", str(seed), "--verbose", "0", *extra])
    after = resource.getrusage(resource.RUSAGE_SELF)
    return result, time.perf_counter() - wall, (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("HEARTWATCH_FASHION_MNIST", DEFAULT_DATA))
    parser.add_argument("--train_noise", type=float, default=0.2)
    parser.add_argument("--noise_levels", default="0.2,0.6")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--default_flags", default="", help="extra flags for the default model (space separated)")
    parser.add_argument("--default_model", default=None,
                        help="judge this already trained version directory (same data and seed) instead of training "
                             "the default again; its time is the card's training seconds")
    arguments = parser.parse_args()

    levels = [float(level) for level in arguments.noise_levels.split(",")]
    keys, clean = held_out(arguments.data, arguments.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="denoise-quality-") as directory:
        for label, extra in (("tutorial Denoise", TUTORIAL_RECIPE),
                             ("default", [*NO_TIME_BUDGET, *arguments.default_flags.split()])):
            if label == "default" and arguments.default_model:
                card = artifacts.read_card(arguments.default_model)
                result = denoise_train.DenoiseTrainResult(arguments.default_model, files.join(
                    arguments.default_model, denoise_train.MODEL_FILE), "", card)
                wall, cpu = card["training"]["seconds"], float("nan")
            else:
                result, wall, cpu = train(arguments.data, os.path.join(directory, label.split()[0]),
                                          arguments.train_noise, arguments.seed, extra)
                card = result.card
            name = f"{label} ({card['model']['name']}, {card['training']['epochs_run']} ep)"
            rows.append((name, wall, cpu, [judge(result.model_path, keys, clean, level, arguments.seed)
                                           for level in levels]))
            print(f"{name}: trained in {wall:.0f} s wall, {cpu:.0f} s CPU (load {os.getloadavg()[0]:.1f}); "
                  f"{card['data']['train_images']} train / {card['data']['validation_images']} validation / "
                  f"{card['data']['test_images']} held-out images", flush=True)

    header = "".join(f"{f'PSNR@{level:g}':>10}{f'SSIM@{level:g}':>10}" for level in levels)
    print(f"\ntrained at gaussian:{arguments.train_noise:g}, judged on {len(keys)} held-out images")
    print(f"{'model':<40}{header}{'train s':>9}{'CPU s':>8}")
    noisy = "".join(f"{row['noisy_psnr']:>10.2f}{row['noisy_ssim']:>10.3f}" for row in rows[0][3])
    print(f"{'noisy input':<40}{noisy}")
    for name, wall, cpu, judged in rows:
        cells = "".join(f"{row['denoised_psnr']:>10.2f}{row['denoised_ssim']:>10.3f}" for row in judged)
        print(f"{name:<40}{cells}{wall:>9.0f}{cpu:>8.0f}")
    if arguments.train_noise in levels:
        default = rows[-1][3][levels.index(arguments.train_noise)]["denoised_psnr"]
        verdict = (f" (bar >= {BAR_DECIBELS} dB: {'met' if default >= BAR_DECIBELS else 'NOT met'})"
                   if arguments.train_noise == BAR_NOISE else f" (the bar is for models trained at {BAR_NOISE:g})")
        print(f"default held-out PSNR at {arguments.train_noise:g}: {default:.2f} dB{verdict}; "
              f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
