"""The training report: PNG plots and one HTML page linking them, written beside the export.

Plots: training/validation loss, test anomaly-score histograms (normal vs abnormal) with the threshold line,
example inputs against their reconstructions with the error filled between, and ROC / PR curves
of the anomaly score. The test plots come from a bounded sample of the test split (every test beat
when the split is small; the page says how many of how many), the metrics tables from the whole
split's aggregates (the model card). Everything is written through the file layer (``models.common.files``), so the
report can go to any scheme the export goes to.
"""

from __future__ import annotations

import html
import io
import logging

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from models.common import files  # noqa: E402
from models.detection import metrics  # noqa: E402
from models.ecg import ANOMALY, NORMAL  # noqa: E402

LOGGER = logging.getLogger(__name__)


def _save(figure, directory: str, name: str) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    files.write_bytes(files.join(directory, name), buffer.getvalue())
    return name


def plot_loss(history: dict, directory: str) -> str:
    """Training and validation loss per epoch."""
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(history.get("loss", []), label="training loss")
    axes.plot(history.get("val_loss", []), label="validation loss")
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    axes.set_yscale("log")
    axes.legend()
    axes.set_title("Training of the selected model")
    return _save(figure, directory, "loss.png")


def plot_score_histogram(scores: np.ndarray, labels: np.ndarray, threshold: float, directory: str) -> str:
    """Anomaly-score histograms of normal and abnormal test beats, with the threshold."""
    figure, axes = plt.subplots(figsize=(7, 4))
    bins = np.linspace(float(scores.min()), float(scores.max()), 50) if scores.size else 10
    for value, name, color in ((NORMAL, "normal", "tab:blue"), (ANOMALY, "abnormal", "tab:red")):
        selected = scores[labels == value]
        if selected.size:
            axes.hist(selected, bins=bins, alpha=0.6, label=f"{name} ({selected.size})", color=color)
    axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4f}")
    axes.set_xlabel("anomaly score (the model's own; normalised space)")
    axes.set_ylabel("test beats")
    axes.legend()
    return _save(figure, directory, "error_histogram.png")


def plot_examples(beats: np.ndarray, labels: np.ndarray, normalize, reconstruct, directory: str) -> str:
    """One normal and one abnormal test beat against the reconstruction, error shaded between."""
    chosen = [(name, np.flatnonzero(labels == value)) for value, name in ((NORMAL, "normal"), (ANOMALY, "abnormal"))]
    chosen = [(name, indices[0]) for name, indices in chosen if indices.size]
    figure, axes_list = plt.subplots(1, max(len(chosen), 1), figsize=(6 * max(len(chosen), 1), 3.6), squeeze=False)
    for axes, (name, index) in zip(axes_list[0], chosen):
        normalized = normalize(beats[index:index + 1])
        reconstruction = reconstruct(normalized)[0]
        normalized = normalized[0]
        steps = np.arange(normalized.size)
        axes.plot(steps, normalized, color="tab:blue", label="input")
        axes.plot(steps, reconstruction, color="tab:red", label="reconstruction")
        axes.fill_between(steps, normalized, reconstruction, color="lightcoral", label="error")
        axes.set_title(f"{name} beat (test)")
        axes.set_xlabel("sample")
        axes.legend()
    return _save(figure, directory, "reconstructions.png")


def plot_curves(labels: np.ndarray, scores: np.ndarray, directory: str) -> str | None:
    """ROC and precision-recall curves with anomaly as the positive class."""
    if not (0 < int((labels == ANOMALY).sum()) < labels.size):
        return None
    false_positive_rate, true_positive_rate, _ = metrics.roc_curve(labels, scores)
    precision, recall, _ = metrics.precision_recall_curve(labels, scores)
    figure, (roc_axes, pr_axes) = plt.subplots(1, 2, figsize=(10, 4))
    roc_axes.plot(false_positive_rate, true_positive_rate, label=f"AUC {metrics.roc_auc(labels, scores):.4f}")
    roc_axes.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc_axes.set_xlabel("false-positive rate")
    roc_axes.set_ylabel("true-positive rate (recall)")
    roc_axes.set_title("ROC (anomaly positive)")
    roc_axes.legend()
    pr_axes.step(recall, precision, where="post", label=f"AP {metrics.average_precision(labels, scores):.4f}")
    pr_axes.set_xlabel("recall")
    pr_axes.set_ylabel("precision")
    pr_axes.set_title("Precision-recall (anomaly positive)")
    pr_axes.legend()
    return _save(figure, directory, "roc_pr.png")


def _metrics_rows(test_metrics: dict | None) -> str:
    if not test_metrics:
        return "<p>No labelled test beats: no metrics.</p>"
    names = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc")
    rows = "".join(f"<tr><td>{name}</td><td>{test_metrics[name]:.4f}</td></tr>" for name in names
                   if test_metrics.get(name) is not None)
    counts = "".join(f"<tr><td>{html.escape(key)}</td><td>{value}</td></tr>"
                     for key, value in test_metrics["confusion_matrix"].items())
    classes = "".join(f"<tr><td>{html.escape(name)}</td><td>{item['beats']}</td><td>{item['flagged']}</td>"
                      f"<td>{item['detection_rate']:.3f}</td></tr>"
                      for name, item in test_metrics["detection_rate_by_class"].items())
    return (f"<h2>Test metrics (anomaly = positive class)</h2><table>{rows}</table>"
            f"<h3>Confusion matrix</h3><table>{counts}</table>"
            f"<h3>Flagged per source class</h3><table><tr><th>class</th><th>beats</th><th>flagged</th>"
            f"<th>rate</th></tr>{classes}</table>")


def write_report(directory: str, card: dict, history: dict, test_beats: np.ndarray, test_labels: np.ndarray,
                 test_scores: dict, normalize, reconstruct, test_beat_count: int | None = None) -> str:
    """Writes the plots and ``index.html`` through the file layer; returns the page's path.

    ``card`` is the model card without its version number (the version is published afterwards);
    ``test_beats``, ``test_labels`` and ``test_scores`` are the plotted (sampled) test beats, of
    ``test_beat_count`` in the split (default: as many as given).
    """
    scores = np.asarray(test_scores["anomaly_score"])
    threshold = float(card["threshold"]["value"])
    labelled = test_labels.size > 0 and np.isin(test_labels, (NORMAL, ANOMALY)).all()
    images = [plot_loss(history, directory)]
    if scores.size:
        images.append(plot_score_histogram(scores, test_labels, threshold, directory))
        images.append(plot_examples(test_beats, test_labels, normalize, reconstruct, directory))
    if labelled:
        images.append(plot_curves(test_labels, scores, directory))
    candidates = "".join(
        f"<tr><td>{html.escape(item['name'])}</td><td>{html.escape(str(item['selection_metric']))}</td>"
        f"<td>{item['selection_score']:.4f}</td><td>{item['epochs_run']}</td><td>{item['training_seconds']}</td>"
        f"<td>{item['parameter_count']}</td></tr>" for item in card["candidates"])
    body = (f"<h1>heartwatch ECG detector, trained {html.escape(str(card['created']))}</h1>"
            f"<p>Data: {html.escape(str(card['data']['source']))}; {card['data']['valid_rows']} valid rows, "
            f"{card['data']['bad_rows']} bad rows. Model: {html.escape(card['model']['name'])}. "
            f"Threshold {threshold:.6f} ({html.escape(card['threshold']['method'])}). Test plots: "
            f"{scores.size} of {scores.size if test_beat_count is None else test_beat_count} test beats.</p>"
            f"<h2>Candidates</h2><table><tr><th>name</th><th>selection metric</th><th>score</th><th>epochs</th>"
            f"<th>seconds</th><th>parameters</th></tr>{candidates}</table>"
            + _metrics_rows(card.get("test_metrics"))
            + "".join(f'<h2>{html.escape(name[:-4].replace("_", " "))}</h2><img src="{name}" alt="{name}">'
                      for name in images if name))
    path = files.join(directory, "index.html")
    files.write_text(path, "<!doctype html><html><head><meta charset='utf-8'><title>heartwatch report</title>"
                     "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{padding:2px 10px;"
                     "border-bottom:1px solid #ddd}img{max-width:100%}</style></head><body>"
                     + body + "</body></html>")
    LOGGER.info("report written to %s", path)
    return path
