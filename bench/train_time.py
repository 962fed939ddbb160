"""Wall time of the `heartwatch train` command on the real 500-beat sample, against a 3-minute budget.

Runs the installed command end to end in a fresh process (imports, Beam, TFT, every default
candidate, calibration, export, report), the way a user runs it, and prints the time beside the
budget, plus the time of the bare interpreter start + TensorFlow import as the fixed floor. The
child's CPU time (user + system) and the load average are printed too: on a shared machine the wall
time grows with the load while the CPU time barely does, so the CPU time bounds what a quiet
machine takes (TensorFlow uses both cores for part of the run, so a quiet run is somewhat faster).

    python bench/train_time.py --data ../shared/data/ecg5000/ECG5000_TRAIN.txt
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

BUDGET_SECONDS = 180.0
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(command: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of running ``command`` to completion."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPOSITORY, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("HEARTWATCH_ECG5000",
                                                         "../shared/data/ecg5000/ECG5000_TRAIN.txt"))
    parser.add_argument("--runs", type=int, default=1)
    arguments = parser.parse_args()
    floor, _ = timed([sys.executable, "-c", "import tensorflow, tensorflow_transform, apache_beam"])
    for run in range(arguments.runs):
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as output_dir:
            command = [sys.executable, "-m", "heartwatch_cli", "train", "--data", os.path.abspath(arguments.data),
                       "--output_dir", output_dir, "--verbose", "0"]
            seconds, cpu_seconds = timed(command)
        print(f"run {run}: heartwatch train {seconds:.1f} s = {seconds / BUDGET_SECONDS:.2f} of the "
              f"{BUDGET_SECONDS:.0f} s budget; CPU {cpu_seconds:.1f} s (import floor {floor:.1f} s; "
              f"{os.cpu_count()} cores; load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)")


if __name__ == "__main__":
    main()
