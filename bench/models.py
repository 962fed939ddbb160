"""Every `heartwatch train` candidate preset on the real sample, over the same seeded splits.

For each seed the beats are split exactly as `heartwatch train` splits them (``pipeline.splits``,
20 % test, 20 % validation, stratified by source class). Each candidate (``models.training.candidates
.CANDIDATES``: one preset per registered ECG model, the variants and the ensemble) trains with its
own preset settings on the min-max-scaled training normals (statistics over training normals, as the
pipeline's TFT graph computes them) with early stopping on the validation normals
(``models.training.fit.train_autoencoder``, the one fit loop). Each model is scored by its own
``anomaly_score`` (``Autoencoder.scores``, what the exported detector serves) on ``--score_error``,
which defaults to `heartwatch train`'s default (``TrainConfig().score_error``: ``window``, the worst
mean absolute error over 30 consecutive samples): that error itself, the VAE's negative ELBO on it
for ``vae_elbo``, the normalised member scores for the ensemble. The threshold is calibrated with
``max_f1`` on the whole validation split, as the pipeline does. ``--anomaly_exposure`` (default:
`heartwatch train`'s, ``TrainConfig().anomaly_exposure``) adds the training split's labelled
anomalies to training and the validation anomalies to early stopping with that weight
(``models.family.exposure``; the arrays are shuffled together here, where the pipeline joins each
normal batch with as many anomalies); 0 trains on normal beats alone. Validation ROC-AUC (what the
pipeline selects by), test ROC-AUC, accuracy and F1 are measured with anomaly as the positive
class. Prints a Markdown table of means (± standard deviation) over the splits, with the training
time per split, the epochs run and the parameter count.

    python bench/models.py --data ../shared/data/ecg5000/ECG5000_TRAIN.txt --splits 5

``--models`` picks rows by preset name (default: all but ``tutorial``; with ``--merge``: every
preset in the files), ``--seeds`` runs chosen seeds (``0-4``, ``3,7``), ``--epochs`` caps every
row's epochs, ``--output`` rewrites the per-split rows as JSON after every row, ``--merge`` prints
the table of such files.
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.quality import seed_list  # noqa: E402
from models.detection import SCORE_ERRORS, metrics, thresholds  # noqa: E402
from models.ecg import ANOMALY, sources  # noqa: E402
from models.family.exposure import labelled_targets  # noqa: E402
from models.training.candidates import CANDIDATES, CandidateConfig  # noqa: E402
from models.training.fit import train_autoencoder  # noqa: E402
from models.training.settings import check_anomaly_weight  # noqa: E402
from pipeline import splits  # noqa: E402
from pipeline.config import TrainConfig  # noqa: E402

DEFAULT_DATA = os.environ.get("HEARTWATCH_ECG5000", "../shared/data/ecg5000/ECG5000_TRAIN.txt")
DEFAULT_ROWS = tuple(name for name in CANDIDATES if name != "tutorial")


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
    train_anomalies = dataset.beats[(assignment == splits.TRAIN) & (dataset.is_anomaly == ANOMALY)]
    validation_anomalies = dataset.beats[validation & (dataset.is_anomaly == ANOMALY)]
    return {"train": scale(train_normals), "validation_normals": scale(dataset.beats[validation & normal]),
            "train_anomalies": scale(train_anomalies), "validation_anomalies": scale(validation_anomalies),
            "validation": scale(dataset.beats[validation]), "validation_labels": dataset.is_anomaly[validation],
            "test": scale(dataset.beats[test]), "test_labels": dataset.is_anomaly[test]}


def exposed(normals, anomalies) -> tuple:
    """``(inputs, exposure targets)`` of normal and anomalous beats together (``models.family.exposure``)."""
    inputs = np.concatenate([normals, anomalies])
    return inputs, labelled_targets(inputs, [0] * len(normals) + [1] * len(anomalies))


def evaluate(candidate: CandidateConfig, arrays: dict, seed: int, score_error: str,
             anomaly_exposure: float = 0.0) -> dict:
    """Trains ``candidate`` on one split, calibrates on validation; returns validation and test metrics.

    Beats are scored by the model's ``anomaly_score`` on ``score_error`` (`heartwatch train --score_error`);
    ``anomaly_exposure`` > 0 trains with the split's labelled anomalies (`heartwatch train --anomaly_exposure`).
    """
    train, validation = arrays["train"], arrays["validation_normals"]
    if anomaly_exposure > 0 and len(arrays["train_anomalies"]):
        train = exposed(train, arrays["train_anomalies"])
        validation = exposed(validation, arrays["validation_anomalies"])
    else:
        anomaly_exposure = 0.0
    result = train_autoencoder(candidate, train, validation, seed=seed, verbose=0, anomaly_weight=anomaly_exposure)
    validation_scores = np.asarray(result.model.anomaly_score(arrays["validation"], score_error), dtype=np.float64)
    test_scores = np.asarray(result.model.anomaly_score(arrays["test"], score_error), dtype=np.float64)
    threshold = thresholds.calibrate(thresholds.ThresholdConfig("max_f1"), validation_scores,
                                     arrays["validation_labels"])
    test = metrics.classification_metrics(arrays["test_labels"], test_scores, threshold.value)
    return {"validation_roc_auc": metrics.roc_auc(arrays["validation_labels"], validation_scores),
            "roc_auc": test["roc_auc"], "accuracy": test["accuracy"], "f1": test["f1"], "seconds": result.seconds,
            "epochs_run": result.epochs_run, "parameters": result.parameter_count}


def summary(rows: list[dict], key: str, digits: int = 4) -> str:
    """``mean ± standard deviation`` of ``key`` over ``rows``."""
    values = np.array([row[key] for row in rows], dtype=np.float64)
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


def describe(model: str, parameters: dict) -> str:
    """```model` `{parameters}``` for the table; an ensemble as its members, each described so."""
    members = parameters.get("members")
    if members:
        return f"`{model}` of " + ", ".join(describe(item["model"], item.get("parameters", {})) for item in members)
    return f"`{model}`" + (f" `{json.dumps(parameters)}`" if parameters else "")


def table(rows: list[dict], names: list[str]) -> str:
    """Markdown table of means ± standard deviations per candidate, in ``names`` order."""
    lines = ["| candidate | registry name (parameters) | validation ROC-AUC | test ROC-AUC | test accuracy | test F1 | "
             "train s / split | epochs | parameters |", "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        own = [row for row in rows if row["name"] == name]
        if not own:
            continue
        first = own[0]
        described = describe(first["model"], first["parameters_set"])
        seconds = np.mean([row["seconds"] for row in own])
        epochs = np.mean([row["epochs_run"] for row in own])
        lines.append(f"| {name} | {described} | {summary(own, 'validation_roc_auc')} | {summary(own, 'roc_auc')} | "
                     f"{summary(own, 'accuracy')} | {summary(own, 'f1')} | {seconds:.1f} | {epochs:.0f} | "
                     f"{first['parameters']:,} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--splits", type=int, default=5, help="seeds 0 .. splits-1")
    parser.add_argument("--seeds", default=None, help="seeds to run instead, e.g. 0-4 or 3,7")
    parser.add_argument("--models", default=None, help="comma-separated preset names (default: all but tutorial; "
                        "with --merge: every preset in the files)")
    parser.add_argument("--epochs", type=int, default=None, help="cap on every row's epochs")
    parser.add_argument("--score_error", default=TrainConfig().score_error, choices=SCORE_ERRORS,
                        help="what scores are built on, as `heartwatch train --score_error` (default: its default)")
    parser.add_argument("--anomaly_exposure", type=float, default=TrainConfig().anomaly_exposure,
                        help="weight of the labelled training anomalies, as `heartwatch train --anomaly_exposure` "
                        "(default: its default; 0: normal beats alone)")
    parser.add_argument("--output", default=None, help="write the per-split rows as JSON here (after every row)")
    parser.add_argument("--merge", nargs="+", default=None, help="only print the table of these --output files")
    arguments = parser.parse_args()
    try:
        check_anomaly_weight(arguments.anomaly_exposure, "--anomaly_exposure")
    except ValueError as error:
        parser.error(str(error))

    requested = arguments.models or ("" if arguments.merge else ",".join(DEFAULT_ROWS))
    chosen = [name.strip() for name in requested.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown rows {unknown}; presets: {', '.join(CANDIDATES)}")
    if arguments.merge:
        rows = []
        for path in arguments.merge:
            with open(path) as handle:
                rows += json.load(handle)
        present = [name for name in CANDIDATES if any(row["name"] == name for row in rows)]
        score_errors = sorted({row.get("score_error", "unrecorded") for row in rows})
        if len(score_errors) > 1:
            parser.error(f"the files mix score errors {score_errors}; merge runs of one --score_error")
        exposures = sorted({str(row.get("anomaly_exposure", 0.0)) for row in rows})
        if len(exposures) > 1:
            parser.error(f"the files mix anomaly exposures {exposures}; merge runs of one --anomaly_exposure")
        seeds = sorted({row["seed"] for row in rows})
        print(f"score error {score_errors[0]}; anomaly exposure {exposures[0]}; seeds {seeds}")
        print(table(rows, [name for name in chosen or present if name in present]))
        return
    candidates = [CANDIDATES[name] for name in chosen]
    if arguments.epochs:
        candidates = [dataclasses.replace(candidate, epochs=min(candidate.epochs, arguments.epochs))
                      for candidate in candidates]
    for candidate in candidates:
        candidate.check_model()

    dataset = sources.load_dataset(sources.DatasetSpec(path=arguments.data))
    seeds = seed_list(arguments.seeds, arguments.splits)
    print(f"{len(dataset)} beats from {arguments.data}; seeds {seeds}; score error {arguments.score_error}; "
          f"anomaly exposure {arguments.anomaly_exposure:g}; rows: {', '.join(chosen)}", flush=True)
    rows = []
    started = time.perf_counter()
    for seed in seeds:
        arrays = split_arrays(dataset, seed)
        for candidate in candidates:
            row = {"seed": seed, "name": candidate.name, "model": candidate.model,
                   "parameters_set": candidate.parameters, "score_error": arguments.score_error,
                   "anomaly_exposure": arguments.anomaly_exposure,
                   **evaluate(candidate, arrays, seed, arguments.score_error, arguments.anomaly_exposure)}
            rows.append(row)
            print(f"seed {seed} {candidate.name:<12} validation roc_auc {row['validation_roc_auc']:.4f} test roc_auc "
                  f"{row['roc_auc']:.4f} accuracy {row['accuracy']:.4f} f1 {row['f1']:.4f} {row['seconds']:.1f} s "
                  f"{row['epochs_run']} epochs", flush=True)
            if arguments.output:
                with open(arguments.output, "w") as handle:
                    json.dump(rows, handle, indent=2)
    print()
    print(table(rows, chosen))
    print(f"\nwall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
