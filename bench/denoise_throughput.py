"""Throughput and peak memory of `heartwatch denoise run` against a plain in-memory ``model.predict``.

One run, side by side, each measurement in its own fresh Python process (peak RSS from
``resource.getrusage``): the default denoiser (``dncnn``) is exported by the real `denoise train`
(one short epoch: weights do not change the speed), then

* ``predict``: ``model.predict(array, batch_size)`` over the 10,000-image array already in memory
  (model loaded and warmed up first, so only the prediction is timed);
* ``beam``: the whole `heartwatch denoise run` job (FnApiRunner, pipeline start, model load, reading
  the ``.npy`` in row ranges, RunInference, writing ``denoised.npy`` and metrics) on 10,000 images and
  again on ``--large`` images (100,000 by default) to show that peak memory does not grow with the input.

Prints the figures and the ratios (Beam throughput / predict throughput; peak RSS large / small).

    python bench/denoise_throughput.py                     # 10k vs 100k, about 5 minutes on 2 cores
    python bench/denoise_throughput.py --large 30000       # quicker
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPOSITORY)


def make_array(path: str, count: int) -> None:
    """``count`` 28x28 uint8 images (scikit-learn digits scaled to 28x28, repeated) saved as ``.npy``."""
    from models.images.io import to_uint8
    from models.images.sets import digits_images

    digits = to_uint8(digits_images())[..., 0]
    np.save(path, np.resize(digits, (count,) + digits.shape[1:]))


def peak_rss_megabytes() -> float:
    """This process's peak resident set size in MiB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure_predict(model_directory: str, array_path: str, batch_size: int) -> dict:
    """Plain Keras: load, warm up, then time ``model.predict`` over the whole in-memory float array."""
    from models.family import registry

    model = registry.load(os.path.join(model_directory, "model.keras"))
    images = (np.load(array_path).astype(np.float32) / 255.0)[..., np.newaxis]
    model.predict(images[:batch_size], batch_size=batch_size, verbose=0)
    started = time.perf_counter()
    model.predict(images, batch_size=batch_size, verbose=0)
    seconds = time.perf_counter() - started
    return {"images": len(images), "seconds": seconds, "peak_rss_mb": peak_rss_megabytes()}


def measure_beam(model_directory: str, array_path: str, batch_size: int, out: str) -> dict:
    """The whole `heartwatch denoise run` job, timed from the call to its return."""
    from pipeline import denoise

    started = time.perf_counter()
    result = denoise.run(["run", "--input", array_path, "--model", model_directory, "--out", out,
                          "--batch_size", str(batch_size), "--chunk_size", "1000", "--grid_images", "4"])
    seconds = time.perf_counter() - started
    return {"images": result.summary["denoised_images"], "seconds": seconds, "peak_rss_mb": peak_rss_megabytes()}


def in_subprocess(kind: str, *arguments: str) -> dict:
    """Runs one measurement in a fresh interpreter and returns its JSON line."""
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPOSITORY}
    completed = subprocess.run([sys.executable, __file__, "--worker", kind, *arguments], capture_output=True,
                               text=True, env=environment, check=False)
    if completed.returncode:
        raise RuntimeError(f"{kind} measurement failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--worker", choices=("predict", "beam"), help=argparse.SUPPRESS)
    parser.add_argument("--model_directory", help=argparse.SUPPRESS)
    parser.add_argument("--array", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker == "predict":
        print(json.dumps(measure_predict(arguments.model_directory, arguments.array, arguments.batch_size)))
        return
    if arguments.worker == "beam":
        print(json.dumps(measure_beam(arguments.model_directory, arguments.array, arguments.batch_size,
                                      arguments.out)))
        return

    from pipeline.denoise_train import run_training

    with tempfile.TemporaryDirectory() as scratch:
        exported = run_training(["--data", "digits", "--epochs", "1", "--max_images", "300", "--verbose", "0",
                                 "--output_dir", os.path.join(scratch, "models")])
        model_directory = exported.version_directory
        print(f"model: {exported.card['model']['name']} {exported.card['model']['config']} "
              f"({exported.card['model']['parameter_count']} parameters); batch size {arguments.batch_size}")
        rows = {}
        for count in (arguments.small, arguments.large):
            path = os.path.join(scratch, f"images_{count}.npy")
            make_array(path, count)
            common = ["--model_directory", model_directory, "--array", path, "--batch_size", str(arguments.batch_size)]
            if count == arguments.small:
                rows[("predict", count)] = in_subprocess("predict", *common)
            rows[("beam", count)] = in_subprocess("beam", *common, "--out", os.path.join(scratch, f"out_{count}"))
            os.remove(path)
    print(f"{'measurement':<34}{'images':>9}{'seconds':>10}{'images/s':>11}{'peak RSS MiB':>14}")
    for (kind, _), row in rows.items():
        label = "model.predict (in memory)" if kind == "predict" else "heartwatch denoise run (Beam)"
        print(f"{label:<34}{row['images']:>9}{row['seconds']:>10.2f}{row['images'] / row['seconds']:>11.0f}"
              f"{row['peak_rss_mb']:>14.0f}")
    predict = rows[("predict", arguments.small)]
    small, large = rows[("beam", arguments.small)], rows[("beam", arguments.large)]
    ratio = (small["images"] / small["seconds"]) / (predict["images"] / predict["seconds"])
    print(f"Beam / predict throughput at {arguments.small} images: {ratio:.2f} (bar >= 0.60: "
          f"{'met' if ratio >= 0.6 else 'NOT met'})")
    growth = large["peak_rss_mb"] / small["peak_rss_mb"]
    print(f"Beam peak RSS {arguments.large} / {arguments.small} images: {growth:.2f} "
          f"({large['peak_rss_mb'] - small['peak_rss_mb']:+.0f} MiB for {arguments.large // arguments.small}x the "
          f"images; the float32 input alone is {arguments.large * 28 * 28 * 4 / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
