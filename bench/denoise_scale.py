"""Memory of `heartwatch denoise train` as the image set grows: peak RSS at N and at 10 x N images.

The real shared Fashion-MNIST sample (3,443 images) is written as ``.npy`` shard files in a temporary
directory: once as it is (N images) and once tiled ten times with augmentation (horizontal flips and
one-pixel shifts, so no two shards are byte-identical; 10 x N images). Each set is trained on by a
fresh `heartwatch denoise train --data '<dir>/shard-*.npy'` process (few epochs: the data is
streamed from files through Beam and ``tf.data``, so memory should not follow the image count), and
its peak RSS comes from ``getrusage(RUSAGE_CHILDREN)``. Bar: ratio <= 1.5. The model is a small
``dncnn`` by default (``--model_flags``) so that an epoch over 34,430 images stays short: what is
measured is how memory follows the data, and the model's own memory does not depend on it.

    python bench/denoise_scale.py                      # 3,443 vs 34,430 images, 1 epoch each
    python bench/denoise_scale.py --epochs 2 --factor 10
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(REPOSITORY, "..", "shared", "data", "fashion_mnist", "fashion_mnist_t10k_first3443.npz")
BAR_RATIO = 1.5


def augmented(images: np.ndarray, copy: int) -> np.ndarray:
    """Copy ``copy`` of the sample: copy 0 as it is, others flipped and/or shifted by one pixel."""
    if copy == 0:
        return images
    result = images[:, :, ::-1] if copy % 2 else images
    shift = (copy // 2) % 5 - 2
    return np.roll(result, shift, axis=2 if copy % 4 < 2 else 1)


def write_shards(images: np.ndarray, directory: str, copies: int) -> int:
    """Writes ``copies`` augmented copies of ``images`` as ``shard-<i>.npy``; returns the image count."""
    os.makedirs(directory, exist_ok=True)
    for copy in range(copies):
        np.save(os.path.join(directory, f"shard-{copy:03d}.npy"), augmented(images, copy))
    return copies * len(images)


def measure(data_glob: str, output_dir: str, epochs: int, batch_size: int, model_flags: list) -> tuple[float, float]:
    """``(peak RSS MiB, seconds)`` of one `heartwatch denoise train` run in a fresh process."""
    command = [sys.executable, "-m", "heartwatch_cli", "denoise", "train", "--data", data_glob, "--epochs",
               str(epochs), "--batch_size", str(batch_size), "--output_dir", output_dir, "--verbose", "0",
               *model_flags]
    environment = {**os.environ, "PYTHONPATH": REPOSITORY + os.pathsep + os.environ.get("PYTHONPATH", "")}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=environment, cwd=REPOSITORY, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("HEARTWATCH_FASHION_MNIST", DEFAULT_DATA))
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--model_flags", default='--model dncnn --model_parameters {"depth":3,"filters":8}',
                        help="model flags (space separated; '' for the default U-Net, about 10x slower per epoch)")
    arguments = parser.parse_args()

    with np.load(arguments.data) as archive:
        images = archive["images"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="denoise-scale-") as directory:
        # Smaller set first: RUSAGE_CHILDREN keeps the largest child so far, so this order reads each peak.
        for copies in (1, arguments.factor):
            data = os.path.join(directory, f"x{copies}")
            count = write_shards(images, data, copies)
            peak, seconds = measure(os.path.join(data, "shard-*.npy"), os.path.join(directory, f"models{copies}"),
                                    arguments.epochs, arguments.batch_size, arguments.model_flags.split())
            rows.append((count, copies, peak, seconds))
            print(f"{count} images in {copies} shards: peak RSS {peak:.0f} MiB, {seconds:.1f} s", flush=True)
    (small, _, small_peak, _), (large, _, large_peak, _) = rows
    ratio = large_peak / small_peak
    print(f"\n{'images':>8}{'shards':>8}{'peak RSS MiB':>14}{'seconds':>10}")
    for count, copies, peak, seconds in rows:
        print(f"{count:>8}{copies:>8}{peak:>14.0f}{seconds:>10.1f}")
    print(f"peak RSS at {large} images / at {small} images: {ratio:.2f} (bar <= {BAR_RATIO}: "
          f"{'met' if ratio <= BAR_RATIO else 'NOT met'}); epochs {arguments.epochs}, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
