"""The model card, the HTML page and the text report of `heartwatch autoencode`.

The page is styled like the training report (``pipeline.report``): a header paragraph on the data,
one table of the models and their held-out metrics, then every figure (each image links to its PNG)
and a stated reason for every figure that was skipped.
"""

from __future__ import annotations

import dataclasses
import html

from models.common import artifacts, files

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{padding:2px 10px;"
         "border-bottom:1px solid #ddd}img{max-width:100%}")
FIGURE_TITLES = {"reconstructions": "Held-out reconstructions", "loss": "Training curves",
                 "latent_scatter": "Latent space of the convolutional autoencoder (held-out images)",
                 "decoder_grid": "Decoder over the latent grid"}
BASELINE = "mean_image_baseline"


def build_model_card(config, splits, trained: dict, metrics: dict, written: dict, skipped: dict) -> dict:
    """The JSON model card (without its version: ``ArtifactRoot.publish`` adds it).

    ``written`` names the files of the version: ``models`` ({name: file}), ``history``, ``metrics``,
    ``page`` and ``figures`` ({figure: file}); ``skipped`` gives the reason for every figure not drawn.
    """
    models = {}
    for name, result in trained.items():
        models[name] = {"file": written["models"][name], "config": dataclasses.asdict(result.model.config),
                        "parameter_count": result.parameter_count,
                        "training": {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                                     "best_validation_loss": result.best_validation_loss,
                                     "seconds": round(result.seconds, 2)}}
    return {
        "name": "heartwatch image autoencoders",
        "created": artifacts.utc_now(),
        "files": written,
        "signature": {"input": "float32 [batch, height, width, channels] in [0, 1]",
                      "output": "float32, same shape, the reconstruction",
                      "load": "models.family.registry.load(path); encode()/decode() give and take the codes"},
        "data": {"source": config.data, "image_shape": list(splits.train.shape[1:]), **splits.counts(),
                 "labels": splits.label_source, "seed": config.seed, "max_images": config.max_images},
        "training": {"epochs": config.epochs, "batch_size": config.batch_size, "learning_rate": config.learning_rate,
                     "loss": config.loss, "early_stopping_patience": config.early_stopping_patience,
                     "optimizer": "Adam", "best_weights": "lowest val_loss"},
        "models": models,
        "metrics": {"test": metrics, "note": f"{BASELINE}: every image reconstructed as the training mean image"},
        "latent_grid": {"low": config.grid_low, "high": config.grid_high, "step": config.grid_step},
        "skipped_figures": skipped,
        "libraries": artifacts.library_versions(),
    }


def _metrics_table(card: dict) -> str:
    test = card["metrics"]["test"]
    rows = []
    for name, item in card["models"].items():
        values = test[name]
        training = item["training"]
        latent = item["config"].get("latent_dim", item["config"].get("z_dim"))
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{latent}</td><td>{item['parameter_count']}</td>"
                    f"<td>{training['epochs_run']} (best {training['best_epoch']})</td><td>{training['seconds']}</td>"
                    f"<td>{values['mse']:.5f}</td><td>{values['psnr']:.2f}</td><td>{values['ssim']:.3f}</td></tr>")
    baseline = test[BASELINE]
    rows.append(f"<tr><td>training mean image (baseline)</td><td></td><td></td><td></td><td></td>"
                f"<td>{baseline['mse']:.5f}</td><td>{baseline['psnr']:.2f}</td><td>{baseline['ssim']:.3f}</td></tr>")
    return ("<h2>Models and held-out reconstruction quality</h2><table><tr><th>model</th><th>code size</th>"
            "<th>parameters</th><th>epochs</th><th>seconds</th><th>MSE</th><th>PSNR (dB)</th><th>SSIM</th></tr>"
            + "".join(rows) + "</table>")


def _figures(card: dict) -> str:
    parts = []
    for name, file_name in card["files"]["figures"].items():
        title = html.escape(FIGURE_TITLES.get(name, name))
        parts.append(f'<h2>{title}</h2><a href="{html.escape(file_name)}"><img src="{html.escape(file_name)}" '
                     f'alt="{title}"></a>')
    for name, reason in card["skipped_figures"].items():
        parts.append(f"<h2>{html.escape(FIGURE_TITLES.get(name, name))}</h2><p>Skipped: {html.escape(reason)}.</p>")
    return "".join(parts)


def write_page(path: str, card: dict) -> str:
    """Writes ``index.html`` through the file layer; returns ``path``."""
    data = card["data"]
    files_list = [*card["files"]["models"].values(), card["files"]["metrics"], card["files"]["history"],
                  artifacts.MODEL_CARD_FILE]
    links = ", ".join(f'<a href="{html.escape(name)}">{html.escape(name)}</a>' for name in files_list)
    body = (f"<h1>heartwatch image autoencoders, trained {html.escape(str(card['created']))}</h1>"
            f"<p>Data: {html.escape(str(data['source']))}; images {html.escape(str(tuple(data['image_shape'])))}; "
            f"{data['train']} train, {data['validation']} validation, {data['test']} held out; labels: "
            f"{html.escape(str(data['labels']))}. Loss {html.escape(card['training']['loss'])}, Adam at "
            f"{card['training']['learning_rate']:g}, batch {card['training']['batch_size']}, "
            f"best weights by val_loss.</p><p>Files: {links}.</p>"
            + _metrics_table(card) + _figures(card))
    return files.write_text(path, "<!doctype html><html><head><meta charset='utf-8'><title>heartwatch image "
                            f"autoencoders</title><style>{STYLE}</style></head><body>{body}</body></html>")


def text_report(version_directory: str, page_path: str, card: dict) -> str:
    """Where the version went, each model's held-out metrics and any skipped figure, as text."""
    test = card["metrics"]["test"]
    lines = [f"image autoencoders: {version_directory} (version {card['version']})", f"report: {page_path}",
             f"data: {card['data']['source']}, {card['data']['train']} train / {card['data']['validation']} "
             f"validation / {card['data']['test']} held-out images {tuple(card['data']['image_shape'])}"]
    for name, item in card["models"].items():
        values = test[name]
        training = item["training"]
        lines.append(f"{name}: {files.join(version_directory, item['file'])} ({item['parameter_count']} parameters, "
                     f"{training['epochs_run']} epochs, {training['seconds']} s); held-out MSE {values['mse']:.5f}, "
                     f"PSNR {values['psnr']:.2f} dB, SSIM {values['ssim']:.3f}")
    baseline = test[BASELINE]
    lines.append(f"training mean image (baseline): MSE {baseline['mse']:.5f}, PSNR {baseline['psnr']:.2f} dB")
    lines.append("figures: " + ", ".join(files.join(version_directory, name)
                                         for name in card["files"]["figures"].values()))
    lines += [f"skipped {name}: {reason}" for name, reason in card["skipped_figures"].items()]
    return "\n".join(lines)

