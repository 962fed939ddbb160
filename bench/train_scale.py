"""Peak memory and time of `heartwatch train` as the data grows, beside plain in-memory Keras on the same beats.

For every size, in fresh processes:

- the job: ``heartwatch train --data synthetic:beats=N,seed=S --candidates dense --epochs 1 --report false``
  (the default in-process runner), its peak resident memory (``getrusage`` of the child) and wall time;
- the baseline: the same beats generated into one array, the same dense network (``models.family.registry``,
  Adam, MAE, batch 32 as the ``dense`` candidate), one ``model.fit`` epoch on all of them, timed around the
  fit alone.

It prints one row per size, the beats per second of the whole job against the baseline's (the ratio is
the issue's throughput figure; target >= 0.5) and RSS(largest) / RSS(smallest) (the memory figure:
RSS(1M) <= 1.5 x RSS(100k)). Timings on a shared machine are noisy: the load average is printed.

    python bench/train_scale.py --sizes 100000,1000000
    python bench/train_scale.py --sizes 100000,1000000,3000000 --output scale.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runs a command as a child and prints its peak RSS (KiB, Linux ru_maxrss) and wall seconds as JSON.
MEASURE = (
    "import json, resource, subprocess, sys, time\n"
    "started = time.perf_counter()\n"
    "completed = subprocess.run(sys.argv[1:])\n"
    "print(json.dumps({'rc': completed.returncode, 'seconds': time.perf_counter() - started,\n"
    "                  'peak_rss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n")
KERAS_BASELINE = (
    "import json, sys, time\n"
    "import keras, numpy as np\n"
    "from models.ecg import sources\n"
    "from models.family import registry\n"
    "from models.training.candidates import candidate\n"
    "dense = candidate('dense')\n"
    "beats = sources.load_dataset(sources.DatasetSpec(sys.argv[1])).beats\n"
    "low, high = beats.min(), beats.max()\n"
    "beats = (beats - low) / (high - low)\n"
    "keras.utils.set_random_seed(0)\n"
    "model = registry.build(dense.model, dense.parameters)\n"
    "model.compile(optimizer=keras.optimizers.Adam(dense.learning_rate), loss=dense.loss)\n"
    "started = time.perf_counter()\n"
    "model.fit(beats, beats, batch_size=dense.batch_size, epochs=1, shuffle=True, verbose=0)\n"
    "print(json.dumps({'fit_seconds': time.perf_counter() - started, 'beats': int(len(beats))}))\n")


def synthetic_uri(beats: int, seed: int) -> str:
    """The synthetic dataset of one size."""
    return f"synthetic:beats={beats},seed={seed}"


def measured(command: list[str]) -> dict:
    """Peak RSS and wall time of ``command`` run as a child of a fresh interpreter."""
    environment = {**os.environ, "PYTHONPATH": REPOSITORY + os.pathsep + os.environ.get("PYTHONPATH", "")}
    output = subprocess.run([sys.executable, "-c", MEASURE, *command], check=True, capture_output=True, text=True,
                            cwd=REPOSITORY, env=environment).stdout
    result = json.loads(output.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(command)} failed with status {result['rc']}")
    return result


def job(beats: int, seed: int, shuffle_buffer: int | None) -> dict:
    """One `heartwatch train` run on ``beats`` synthetic beats: peak RSS, seconds and the card's counts."""
    with tempfile.TemporaryDirectory() as output_dir:
        command = [sys.executable, "-m", "heartwatch_cli", "train", "--data", synthetic_uri(beats, seed),
                   "--output_dir", output_dir, "--candidates", "dense", "--epochs", "1", "--report", "false",
                   "--verbose", "0"]
        if shuffle_buffer:
            command += ["--shuffle_buffer", str(shuffle_buffer)]
        result = measured(command)
        with open(os.path.join(output_dir, "1", "model_card.json")) as handle:
            card = json.load(handle)
    return {**result, "rows_by_split": card["data"]["rows_by_split"],
            "training_seconds": card["candidates"][0]["training_seconds"],
            "test_roc_auc": (card.get("test_metrics") or {}).get("roc_auc")}


def keras_baseline(beats: int, seed: int) -> dict:
    """One plain in-memory Keras epoch of the dense network on the same ``beats`` beats."""
    environment = {**os.environ, "PYTHONPATH": REPOSITORY + os.pathsep + os.environ.get("PYTHONPATH", "")}
    output = subprocess.run([sys.executable, "-c", KERAS_BASELINE, synthetic_uri(beats, seed)], check=True,
                            capture_output=True, text=True, cwd=REPOSITORY, env=environment).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated beat counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keras", default="true", choices=("true", "false"), help="run the Keras baseline")
    parser.add_argument("--shuffle_buffer", type=int, default=None, help="the job's --shuffle_buffer")
    parser.add_argument("--output", default=None, help="write the rows as JSON here")
    arguments = parser.parse_args()
    sizes = [int(size) for size in arguments.sizes.split(",") if size.strip()]
    rows = []
    print(f"{os.cpu_count()} cores; load average at start {os.getloadavg()[0]:.1f}", flush=True)
    for beats in sizes:
        row = {"beats": beats, "load_average": os.getloadavg()[0], "job": job(beats, arguments.seed,
                                                                               arguments.shuffle_buffer)}
        row["job_beats_per_second"] = beats / row["job"]["seconds"]
        if arguments.keras == "true":
            row["keras"] = keras_baseline(beats, arguments.seed)
            row["keras_beats_per_second"] = beats / row["keras"]["fit_seconds"]
            row["throughput_ratio"] = row["job_beats_per_second"] / row["keras_beats_per_second"]
        rows.append(row)
        print(_row_line(row), flush=True)
    smallest, largest = rows[0], rows[-1]
    if len(rows) > 1:
        ratio = largest["job"]["peak_rss_kib"] / smallest["job"]["peak_rss_kib"]
        print(f"peak RSS {largest['beats']:,} / {smallest['beats']:,} beats: {ratio:.2f} (bar: <= 1.5)")
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    if arguments.output:
        with open(arguments.output, "w") as handle:
            json.dump(rows, handle, indent=2)


def _row_line(row: dict) -> str:
    run = row["job"]
    text = (f"{row['beats']:>9,} beats: job {run['seconds']:7.1f} s, peak RSS {run['peak_rss_kib'] / 1024:7.0f} MiB, "
            f"{row['job_beats_per_second']:8.0f} beats/s (training {run['training_seconds']:.1f} s on "
            f"{run['rows_by_split'].get('train', 0):,} train-split beats; test ROC-AUC {run['test_roc_auc']})")
    if "keras" in row:
        text += (f" | keras fit {row['keras']['fit_seconds']:6.1f} s, {row['keras_beats_per_second']:8.0f} beats/s"
                 f" | ratio {row['throughput_ratio']:.2f}")
    return text + f" | load {row['load_average']:.1f}"


if __name__ == "__main__":
    main()
