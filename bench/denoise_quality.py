"""Denoising quality: the default denoiser (``dncnn``) against the tutorial's ``Denoise``, side by side.

Same images, same split, same noise, same epoch budget, same batch size, optimiser and loss (MSE)
for both models; early stopping is off so both get every epoch, and both keep their best
validation-loss weights. Quality is measured on held-out images the models never saw, with a fixed
(seeded) noisy copy: mean PSNR and SSIM of the noisy input and of each model's output against the
clean images. One row per seed (split, noise and initialisation), then the means and the gain.

Data: ``digits`` (scikit-learn's bundled 8x8 digits scaled into 28x28, offline; the default),
``fashion_mnist`` (Keras loader, needs the download or its cache) or ``synthetic``.

    python bench/denoise_quality.py                          # digits, gaussian:0.2, 10 epochs, 2 seeds
    python bench/denoise_quality.py --noise gaussian:0.6     # the book chapter's noise
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.family.denoisers import BASELINE_MODEL, DEFAULT_MODEL  # noqa: E402
from models.images import noise, sets  # noqa: E402
from models.training.denoising import (  # noqa: E402
    DenoiserTrainingConfig,
    evaluate_denoiser,
    fixed_noisy,
    train_denoiser,
)

BAR_DECIBELS = 1.5


def load(data: str, seed: int, limit: int | None):
    """(train, validation, test) images for one seed."""
    if data == "fashion_mnist":
        train_pool, test = sets.fashion_mnist_images()
        rng = np.random.default_rng(seed)
        train_pool = train_pool[rng.permutation(len(train_pool))[:limit or len(train_pool)]]
        test = test[:max(1000, (limit or 10_000) // 5)]
        cut = len(train_pool) // 10
        return train_pool[cut:], train_pool[:cut], test
    pool = sets.digits_images() if data == "digits" else sets.synthetic_images(limit or 2000, 28, seed=seed)
    if limit:
        pool = pool[:limit]
    train, validation, test = sets.split_indices(len(pool), (0.1, 0.2), seed)
    return pool[train], pool[validation], pool[test]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits", choices=("digits", "fashion_mnist", "synthetic"))
    parser.add_argument("--noise", default="gaussian:0.2")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="use at most this many images")
    arguments = parser.parse_args()

    rows = []
    for seed in range(arguments.seeds):
        train, validation, test = load(arguments.data, seed, arguments.limit)
        noisy_test = fixed_noisy(test, noise.NoiseSpec.parse(arguments.noise), 1000 + seed)
        row = {"seed": seed}
        for name in (BASELINE_MODEL, DEFAULT_MODEL):
            config = DenoiserTrainingConfig(model=name, noise=arguments.noise, epochs=arguments.epochs,
                                            batch_size=arguments.batch_size, early_stopping_patience=0)
            started = time.perf_counter()
            result = train_denoiser(config, train, validation, seed=seed, verbose=0)
            quality = evaluate_denoiser(result.model, test, noisy_test)
            row[name] = {**quality, "seconds": time.perf_counter() - started, "parameters": result.parameter_count}
        row["noisy_psnr"] = row[DEFAULT_MODEL]["noisy_psnr"]
        rows.append(row)
        print(f"seed {seed}: {len(train)} train / {len(validation)} validation / {len(test)} held-out images "
              f"{test.shape[1:]}, noise {arguments.noise}, {arguments.epochs} epochs", flush=True)

    print(f"\n{'seed':<6}{'noisy PSNR':>11}{'tutorial PSNR':>15}{'dncnn PSNR':>12}{'gain dB':>9}"
          f"{'noisy SSIM':>12}{'tutorial SSIM':>15}{'dncnn SSIM':>12}{'tutorial s':>12}{'dncnn s':>9}")
    for row in rows:
        tutorial, default = row[BASELINE_MODEL], row[DEFAULT_MODEL]
        print(f"{row['seed']:<6}{row['noisy_psnr']:>11.2f}{tutorial['denoised_psnr']:>15.2f}"
              f"{default['denoised_psnr']:>12.2f}{default['denoised_psnr'] - tutorial['denoised_psnr']:>9.2f}"
              f"{default['noisy_ssim']:>12.3f}{tutorial['denoised_ssim']:>15.3f}{default['denoised_ssim']:>12.3f}"
              f"{tutorial['seconds']:>12.1f}{default['seconds']:>9.1f}")
    mean = lambda model, key: float(np.mean([row[model][key] for row in rows]))  # noqa: E731
    gain = mean(DEFAULT_MODEL, "denoised_psnr") - mean(BASELINE_MODEL, "denoised_psnr")
    noisy_psnr = np.mean([row["noisy_psnr"] for row in rows])
    print(f"{'mean':<6}{noisy_psnr:>11.2f}{mean(BASELINE_MODEL, 'denoised_psnr'):>15.2f}"
          f"{mean(DEFAULT_MODEL, 'denoised_psnr'):>12.2f}{gain:>9.2f}{mean(DEFAULT_MODEL, 'noisy_ssim'):>12.3f}"
          f"{mean(BASELINE_MODEL, 'denoised_ssim'):>15.3f}{mean(DEFAULT_MODEL, 'denoised_ssim'):>12.3f}")
    print(f"parameters: tutorial {rows[0][BASELINE_MODEL]['parameters']}, dncnn {rows[0][DEFAULT_MODEL]['parameters']}")
    print(f"default - tutorial mean held-out PSNR: {gain:+.2f} dB (bar >= +{BAR_DECIBELS} dB: "
          f"{'met' if gain >= BAR_DECIBELS else 'NOT met'})")


if __name__ == "__main__":
    main()
