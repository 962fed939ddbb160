"""Wall time of the `heartwatch train` command on the real 500-beat sample, against a 2-minute budget.

Runs the installed command end to end in a fresh process (imports, Beam, TFT, every default
candidate, calibration, export, report), the way a user runs it, and prints the time beside the
budget, plus the time of the bare interpreter start + TensorFlow import as the fixed floor.

    python bench/train_time.py --data ../shared/data/ecg5000/ECG5000_TRAIN.txt
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

BUDGET_SECONDS = 120.0
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPOSITORY, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("HEARTWATCH_ECG5000",
                                                         "../shared/data/ecg5000/ECG5000_TRAIN.txt"))
    parser.add_argument("--runs", type=int, default=1)
    arguments = parser.parse_args()
    floor = timed([sys.executable, "-c", "import tensorflow, tensorflow_transform, apache_beam"])
    for run in range(arguments.runs):
        with tempfile.TemporaryDirectory() as output_dir:
            seconds = timed([sys.executable, "-m", "heartwatch_cli", "train", "--data", os.path.abspath(arguments.data),
                             "--output_dir", output_dir, "--verbose", "0"])
        print(f"run {run}: heartwatch train {seconds:.1f} s = {seconds / BUDGET_SECONDS:.2f} of the "
              f"{BUDGET_SECONDS:.0f} s budget (import floor {floor:.1f} s; {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
