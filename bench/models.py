"""Every ECG-capable autoencoder of the family on the real sample, over the same seeded splits.

For each seed the beats are split exactly as `heartwatch train` splits them (``pipeline.splits``,
20 % test, 20 % validation, stratified by source class). Each model trains on the min-max-scaled
training normals (statistics over training normals, as the pipeline's TFT graph computes them) with
early stopping on the validation normals (``models.training.fit.train_autoencoder``, the one fit loop).
Each model is scored by its reconstruction error (``Autoencoder.scores``, what the exported detector
computes). The threshold is calibrated with ``max_f1`` on the whole validation split; ROC-AUC, PR-AUC
and F1 are measured on the test split with anomaly as the positive class. Prints a Markdown table of
means (± standard deviation) over the splits, with the training time per split and the parameter count.

    python bench/models.py --data ../shared/data/ecg5000/ECG5000_TRAIN.txt --splits 5

``--models`` picks rows by name (default: all), ``--epochs`` caps every row's epochs,
``--output`` writes the per-split rows as JSON. The splits depend on the ``--data`` string (it is the
beats' source in the split key, as in the pipeline): pass the same string to compare runs.
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.detection import metrics, thresholds  # noqa: E402
from models.ecg import sources  # noqa: E402
from models.family import registry  # noqa: E402
from models.training.candidates import CandidateConfig  # noqa: E402
from models.training.fit import train_autoencoder  # noqa: E402
from pipeline import splits  # noqa: E402

DEFAULT_DATA = os.environ.get("HEARTWATCH_ECG5000", "../shared/data/ecg5000/ECG5000_TRAIN.txt")

BENCH_CANDIDATES = (
    CandidateConfig("dense", "dense", {}, epochs=200, batch_size=32),
    CandidateConfig("conv1d", "conv1d", {}, epochs=200, batch_size=32),
    CandidateConfig("lstm", "lstm", {}, epochs=200, batch_size=16, learning_rate=3e-3, early_stopping_patience=30),
    CandidateConfig("sparse_l1", "sparse", {"sparsity": "l1"}, epochs=200, batch_size=32),
    CandidateConfig("sparse_kl", "sparse", {"sparsity": "kl", "target_activation": 0.1}, epochs=200, batch_size=32),
    CandidateConfig("contractive", "contractive", {}, epochs=200, batch_size=32),
    CandidateConfig("vae", "vae", {}, epochs=200, batch_size=32),
)
"""The benchmarked rows: a registry model, its parameters and its fit settings.

A model with a ``negative_elbo`` method (the VAE) is scored twice from the same training run: by its
reconstruction error (what the exported detector computes) and by its negative ELBO.
"""
NEGATIVE_ELBO_SUFFIX = " (negative ELBO)"


def split_arrays(dataset, seed: int) -> dict:
    """The pipeline's split for ``seed``, min-max scaled by the training normals."""
    assignment = splits.assign_splits([dataset.source] * len(dataset), dataset.row_numbers,
                                      dataset.source_classes, splits.SplitConfig(seed=seed))
    normal = dataset.is_anomaly == 0
    train_normals = dataset.beats[(assignment == splits.TRAIN) & normal]
    minimum, maximum = float(train_normals.min()), float(train_normals.max())

    def scale(beats):
        return ((beats - minimum) / max(maximum - minimum, 1e-12)).astype(np.float32)

    validation = assignment == splits.VALIDATION
    test = assignment == splits.TEST
    return {"train": scale(train_normals), "validation_normals": scale(dataset.beats[validation & normal]),
            "validation": scale(dataset.beats[validation]), "validation_labels": dataset.is_anomaly[validation],
            "test": scale(dataset.beats[test]), "test_labels": dataset.is_anomaly[test]}


def evaluate(candidate: CandidateConfig, arrays: dict, seed: int) -> dict:
    """Trains ``candidate`` on one split, calibrates on validation; returns test metrics by score kind.

    Keys are the row names: the candidate's name for the reconstruction error, plus
    ``name + NEGATIVE_ELBO_SUFFIX`` for models that also score by negative ELBO.
    """
    result = train_autoencoder(candidate, arrays["train"], arrays["validation_normals"], seed=seed, verbose=0)
    model = result.model
    score_functions = {candidate.name: lambda beats: model.scores(beats)["reconstruction_error"]}
    if hasattr(model, "negative_elbo"):
        score_functions[candidate.name + NEGATIVE_ELBO_SUFFIX] = model.negative_elbo
    evaluations = {}
    for name, function in score_functions.items():
        validation_scores = np.asarray(function(arrays["validation"]), dtype=np.float64)
        test_scores = np.asarray(function(arrays["test"]), dtype=np.float64)
        threshold = thresholds.calibrate(thresholds.ThresholdConfig("max_f1"), validation_scores,
                                         arrays["validation_labels"])
        test = metrics.classification_metrics(arrays["test_labels"], test_scores, threshold.value)
        evaluations[name] = {"roc_auc": test["roc_auc"], "pr_auc": test["pr_auc"], "f1": test["f1"],
                             "seconds": result.seconds, "epochs_run": result.epochs_run,
                             "parameters": result.parameter_count}
    return evaluations


def summary(rows: list[dict], key: str, digits: int = 4) -> str:
    """``mean ± standard deviation`` of ``key`` over ``rows``."""
    values = np.array([row[key] for row in rows], dtype=np.float64)
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


def table(rows: list[dict], names: list[str]) -> str:
    """Markdown table of means ± standard deviations per model, in ``names`` order."""
    lines = ["| model | registry name (parameters) | ROC-AUC | PR-AUC | F1 | train s / split | epochs | parameters |",
             "|---|---|---|---|---|---|---|---|"]
    for name in names:
        own = [row for row in rows if row["name"] == name]
        if not own:
            continue
        first = own[0]
        parameters = f" `{json.dumps(first['parameters_set'])}`" if first["parameters_set"] else ""
        described = f"`{first['model']}`" + parameters
        seconds = np.mean([row["seconds"] for row in own])
        epochs = np.mean([row["epochs_run"] for row in own])
        lines.append(f"| {name} | {described} | {summary(own, 'roc_auc')} | {summary(own, 'pr_auc')} | "
                     f"{summary(own, 'f1')} | {seconds:.1f} | {epochs:.0f} | {first['parameters']:,} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--splits", type=int, default=5, help="seeds 0 .. splits-1")
    parser.add_argument("--models", default=",".join(candidate.name for candidate in BENCH_CANDIDATES),
                        help="comma-separated row names")
    parser.add_argument("--epochs", type=int, default=None, help="cap on every row's epochs")
    parser.add_argument("--output", default=None, help="write the per-split rows as JSON here")
    arguments = parser.parse_args()

    by_name = {candidate.name: candidate for candidate in BENCH_CANDIDATES}
    chosen = [name.strip() for name in arguments.models.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(by_name))
    if unknown:
        parser.error(f"unknown rows {unknown}; rows: {', '.join(by_name)}")
    candidates = [by_name[name] for name in chosen]
    if arguments.epochs:
        candidates = [dataclasses.replace(candidate, epochs=min(candidate.epochs, arguments.epochs))
                      for candidate in candidates]
    not_ecg = sorted({candidate.model for candidate in candidates} - set(registry.ecg_models()))
    if not_ecg:
        parser.error(f"models {not_ecg} are not ECG models")

    dataset = sources.load_dataset(sources.DatasetSpec(path=arguments.data))
    print(f"{len(dataset)} beats from {arguments.data}; {arguments.splits} splits; rows: {', '.join(chosen)}",
          flush=True)
    rows = []
    started = time.perf_counter()
    for seed in range(arguments.splits):
        arrays = split_arrays(dataset, seed)
        for candidate in candidates:
            for name, evaluation in evaluate(candidate, arrays, seed).items():
                row = {"seed": seed, "name": name, "model": candidate.model, "parameters_set": candidate.parameters,
                       **evaluation}
                rows.append(row)
                print(f"seed {seed} {name:<16} roc_auc {row['roc_auc']:.4f} pr_auc {row['pr_auc']:.4f} "
                      f"f1 {row['f1']:.4f} {row['seconds']:.1f} s {row['epochs_run']} epochs", flush=True)
    print()
    print(table(rows, list(dict.fromkeys(row["name"] for row in rows))))
    print(f"\nwall time {time.perf_counter() - started:.0f} s")
    if arguments.output:
        with open(arguments.output, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
