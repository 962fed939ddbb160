"""Detection quality of `heartwatch train` against the TensorFlow tutorial recipe, same splits.

For each seed the real training pipeline runs end to end (Beam + TFT, candidates, calibration,
export) with its default candidates (or ``--candidates``) and its test metrics and the selected
candidate's validation score are read from the exported model card. On exactly the same
train/test split (``pipeline.splits``, the pipeline's train + validation shares = the tutorial's
80 % training set) the tutorial recipe runs in-process: dense 140-32-16-8, 20 epochs, batch 512,
min-max over training normals, threshold = mean + std of training-normal errors. Anomaly is the
positive class for both. Prints one row per split as it finishes, then the means, the per-seed
spread (minimum, maximum, standard deviation) and each seed's ROC-AUC and accuracy. ``--seeds``
runs chosen seeds only (e.g. two processes on ``0-4`` and ``5-9``); ``--output`` is rewritten after
every split, so a long run leaves its finished splits behind; ``--merge`` prints the summary of such
files together. ``--explain`` also names, for each split, the test beats that cost most ROC-AUC: each
normal beat scored above some anomalies and each anomaly scored below some normals, with the number
of misordered (normal, anomaly) pairs it is part of, its share of all of them, its ECG5000 class and
the classes of its 10 nearest beats in the sample (Euclidean on the raw beats), which tells a model
error from a beat whose label disagrees with every beat like it.

    python bench/quality.py --data ../shared/data/ecg5000/ECG5000_TRAIN.txt --splits 10
    python bench/quality.py --seeds 8 --explain
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.detection import (
    metrics,  # noqa: E402
    thresholds,  # noqa: E402
)
from models.detection.detector import load_detector  # noqa: E402
from models.ecg import sources  # noqa: E402
from models.training.candidates import candidate  # noqa: E402
from models.training.fit import train_autoencoder  # noqa: E402
from pipeline import splits, train  # noqa: E402

METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc")
NEIGHBOURS = 10
EXPLAINED_BEATS = 5  # printed per split (--output keeps them all)


def split_assignment(dataset, seed: int) -> np.ndarray:
    """Each beat's split (``pipeline.splits``) for ``seed``, as `heartwatch train` assigns it."""
    return splits.assign_splits([dataset.source] * len(dataset.row_numbers), dataset.row_numbers,
                                dataset.source_classes, splits.SplitConfig(seed=seed))


def tutorial_recipe(dataset, seed: int) -> dict:
    """The tutorial on the pipeline's split for ``seed``: returns test metrics (anomaly positive)."""
    assignment = split_assignment(dataset, seed)
    training = assignment != splits.TEST
    normal_training = dataset.beats[training & (dataset.is_anomaly == 0)]
    minimum, maximum = normal_training.min(), normal_training.max()
    scale = lambda beats: (beats - minimum) / (maximum - minimum)  # noqa: E731
    result = train_autoencoder(candidate("tutorial"), scale(normal_training), scale(normal_training), seed=seed,
                               verbose=0)
    error = lambda beats: np.mean(np.abs(result.model.predict(scale(beats), verbose=0) - scale(beats)), axis=1)  # noqa: E731
    threshold = thresholds.mean_std_threshold(error(normal_training), k=1.0)
    test = assignment == splits.TEST
    return metrics.classification_metrics(dataset.is_anomaly[test], error(dataset.beats[test]), threshold)


def costly_beats(dataset, scores: np.ndarray, test: np.ndarray) -> list[dict]:
    """The test beats in misordered (normal, anomaly) pairs, most pairs first, with their nearest beats' classes.

    A pair is misordered when the normal beat scores at least as high as the anomaly; ROC-AUC is one
    minus the misordered share of all pairs (ties count half there, whole here).
    """
    labels, test_scores = dataset.is_anomaly[test], scores[test]
    normal_scores, anomaly_scores = test_scores[labels == 0], test_scores[labels == 1]
    pair_count = len(normal_scores) * len(anomaly_scores)
    misordered = int(sum((anomaly_scores <= score).sum() for score in normal_scores))
    rows = []
    for position in np.flatnonzero(test):
        score, anomalous = scores[position], dataset.is_anomaly[position] == 1
        pairs = int((normal_scores >= score).sum() if anomalous else (anomaly_scores <= score).sum())
        if not pairs:
            continue
        distances = np.sqrt(np.mean((dataset.beats - dataset.beats[position]) ** 2, axis=1))
        distances[position] = np.inf
        nearest = dataset.source_classes[np.argsort(distances)[:NEIGHBOURS]]
        rows.append({"row": int(dataset.row_numbers[position]), "class": str(dataset.source_classes[position]),
                     "label": "anomaly" if anomalous else "normal", "score": float(score), "pairs": pairs,
                     "share_of_misordered": pairs / max(misordered, 1), "auc_cost": pairs / pair_count,
                     "nearest_classes": "".join(str(kind) for kind in nearest)})
    return sorted(rows, key=lambda row: -row["pairs"])


def explain(dataset, model_root: str, seed: int) -> list[dict]:
    """Scores the whole sample with the newest detector under ``model_root`` and prints ``costly_beats``."""
    assignment = split_assignment(dataset, seed)
    scores = load_detector(model_root).score(dataset.beats.astype(np.float32))["anomaly_score"]
    rows = costly_beats(dataset, scores, assignment == splits.TEST)
    for row in rows[:EXPLAINED_BEATS]:
        print(f"  seed {seed}: {row['label']} row {row['row']} (class {row['class']}, score {row['score']:.4f}) in "
              f"{row['pairs']} misordered pairs ({row['share_of_misordered']:.0%} of them, AUC cost "
              f"{row['auc_cost']:.4f}); its {NEIGHBOURS} nearest beats' classes {row['nearest_classes']}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("HEARTWATCH_ECG5000",
                                                         "../shared/data/ecg5000/ECG5000_TRAIN.txt"))
    parser.add_argument("--splits", type=int, default=10, help="seeds 0 .. splits-1")
    parser.add_argument("--seeds", default=None, help="seeds to run instead, e.g. 0-4 or 3,7")
    parser.add_argument("--candidates", default=None, help="--candidates of `heartwatch train` (default: its own)")
    parser.add_argument("--train_flag", action="append", default=[],
                        help="extra `heartwatch train` flag, e.g. --train_flag=--threshold_method=percentile")
    parser.add_argument("--explain", action="store_true", help="name the test beats that cost ROC-AUC (see above)")
    parser.add_argument("--output", default=None, help="write the rows as JSON here (after every split)")
    parser.add_argument("--merge", nargs="+", default=None, help="only print the summary of these --output files")
    arguments = parser.parse_args()

    if arguments.merge:
        rows = []
        for path in arguments.merge:
            with open(path) as handle:
                rows += json.load(handle)
        print_summary(sorted(rows, key=lambda row: row["seed"]))
        return
    dataset = sources.load_dataset(sources.DatasetSpec(path=arguments.data))
    candidates = ["--candidates", arguments.candidates] if arguments.candidates else []
    rows = []
    with tempfile.TemporaryDirectory() as output_dir:
        for seed in seed_list(arguments.seeds, arguments.splits):
            started = time.perf_counter()
            result = train.run(["--data", arguments.data, "--output_dir", output_dir, "--seed", str(seed), *candidates,
                                "--verbose", "0", "--report", "false", *arguments.train_flag])
            seconds = time.perf_counter() - started
            card = result.summary
            rows.append({"seed": seed, "heartwatch": card["test_metrics"], "tutorial": tutorial_recipe(dataset, seed),
                         "model": card["model"]["name"], "threshold_method": card["threshold"]["method"],
                         "validation_roc_auc": card["model"].get("selection_score"),
                         "candidates": card["candidates"], "pipeline_seconds": seconds,
                         "refit": card.get("training", {}).get("refit", {}).get("enabled", False),
                         "anomaly_score": card["signature"]["anomaly_score"]})
            print(_row_line(rows[-1]), flush=True)
            if arguments.explain:
                rows[-1]["costly_beats"] = explain(dataset, output_dir, seed)
            if arguments.output:
                with open(arguments.output, "w") as handle:
                    json.dump(rows, handle, indent=2)
    print_summary(rows)


def seed_list(seeds: str | None, splits: int) -> list[int]:
    """``0-4`` or ``3,7`` (or None: 0 .. splits-1) as a list of seeds."""
    if not seeds:
        return list(range(splits))
    chosen = []
    for part in seeds.split(","):
        low, _, high = part.partition("-")
        chosen += list(range(int(low), int(high or low) + 1))
    return chosen


def print_summary(rows: list[dict]) -> None:
    """Means of both systems, the per-seed spread of `heartwatch train` and each seed's AUC and accuracy."""
    print()
    print(f"{'mean over ' + str(len(rows)) + ' splits':<22}" + "".join(f"{name:>10}" for name in METRIC_NAMES))
    for system in ("tutorial", "heartwatch"):
        means = [np.mean([row[system][name] for row in rows]) for name in METRIC_NAMES]
        print(f"{system:<22}" + "".join(f"{value:>10.4f}" for value in means))
    for name in ("roc_auc", "accuracy"):
        values = np.array([row["heartwatch"][name] for row in rows])
        print(f"heartwatch {name}: mean {values.mean():.4f}, min {values.min():.4f}, max {values.max():.4f}, "
              f"std {values.std():.4f}; per seed " + ", ".join(f"{row['seed']}: {row['heartwatch'][name]:.4f}"
                                                           for row in rows))
    print(f"pipeline wall time per split: mean {np.mean([row['pipeline_seconds'] for row in rows]):.1f} s "
          "(in-process, TensorFlow already imported)")


def _row_line(row: dict) -> str:
    tutorial, ours = row["tutorial"], row["heartwatch"]
    return (f"seed {row['seed']}: tutorial acc {tutorial['accuracy']:.3f} auc {tutorial['roc_auc']:.4f} | "
            f"heartwatch ({row['model']}{', refit' if row.get('refit') else ''}, {row['threshold_method']}) "
            f"acc {ours['accuracy']:.3f} "
            f"auc {ours['roc_auc']:.4f} f1 {ours['f1']:.3f} (validation auc {row['validation_roc_auc']}) | "
            f"{row['pipeline_seconds']:.0f} s")


if __name__ == "__main__":
    main()
