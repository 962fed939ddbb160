"""Latent-space pictures: the 2-D scatter coloured by label and the decoder grid, as PNG files."""

import numpy as np
import pytest

from models.common import files
from models.family import latent, registry

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(8) == PNG_SIGNATURE


def test_grid_runs_from_minus_five_to_five_in_steps_of_one():
    np.testing.assert_array_equal(latent.GridConfig().values(), np.arange(-5.0, 6.0))
    np.testing.assert_allclose(latent.GridConfig(-1.0, 1.0, 0.5).values(), [-1.0, -0.5, 0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="step"):
        latent.GridConfig(step=0.0)
    with pytest.raises(ValueError, match="below"):
        latent.GridConfig(low=1.0, high=0.0)


def test_decoder_grid_of_a_two_dimensional_image_code(tmp_path):
    model = registry.build("conv_image", {"input_shape": (12, 12, 1), "filters": (4, 8), "z_dim": 2})
    _, outputs = latent.decoded_grid(model)
    assert outputs.shape == (11, 11, 12, 12, 1)
    top_left = np.asarray(model.decode(np.array([[-5.0, 5.0]], np.float32)))[0]
    bottom_right = np.asarray(model.decode(np.array([[5.0, -5.0]], np.float32)))[0]
    np.testing.assert_allclose(outputs[0, 0], top_left, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs[-1, -1], bottom_right, rtol=1e-5, atol=1e-6)
    path = latent.decoder_grid(model, str(tmp_path / "grid.png"))
    assert _is_png(path)


def test_decoder_grid_draws_beats_as_curves(tmp_path):
    model = registry.build("vae", {"hidden_units": (8,), "latent_dim": 2})
    path = latent.decoder_grid(model, str(tmp_path / "beats.png"), latent.GridConfig(-1.0, 1.0, 1.0))
    assert _is_png(path)


def test_decoder_grid_needs_a_two_dimensional_code(tmp_path):
    with pytest.raises(ValueError, match="2-D latent code"):
        latent.decoder_grid(registry.build("dense"), str(tmp_path / "grid.png"))


def test_projection_keeps_two_dimensional_codes_and_orders_components():
    codes = np.random.default_rng(0).normal(size=(50, 2))
    points, axis_name = latent.project_to_two_dimensions(codes)
    assert axis_name == "latent"
    np.testing.assert_array_equal(points, codes)
    rng = np.random.default_rng(1)
    wide = rng.normal(size=(200, 4)) * np.array([0.1, 5.0, 0.2, 2.0])
    points, axis_name = latent.project_to_two_dimensions(wide)
    assert axis_name == "principal component" and points.shape == (200, 2)
    assert points[:, 0].var() > points[:, 1].var() > 0.5 * wide[:, 3].var()
    with pytest.raises(ValueError, match=">= 2"):
        latent.project_to_two_dimensions(np.zeros((5, 1)))


def test_latent_scatter_writes_a_png(tmp_path):
    model = registry.build("dense", {"hidden_units": (16,), "latent_dim": 4})
    beats = np.random.default_rng(2).random((30, 140)).astype(np.float32)
    labels = np.repeat(["normal", "anomaly", "other"], 10)
    path = latent.latent_scatter(model, beats, labels, str(tmp_path / "scatter.png"))
    assert _is_png(path)
    with pytest.raises(ValueError, match="differ in length"):
        latent.latent_scatter(model, beats, labels[:5], str(tmp_path / "bad.png"))


def test_pictures_are_written_through_the_file_layer_to_any_scheme():
    model = registry.build("vae", {"hidden_units": (8,), "latent_dim": 2})
    beats = np.random.default_rng(3).random((12, 140)).astype(np.float32)
    scatter = latent.latent_scatter(model, beats, np.repeat([0, 1], 6), "ram://latent_test/pictures/scatter.png")
    grid = latent.decoder_grid(model, "ram://latent_test/pictures/grid.png", latent.GridConfig(-1.0, 1.0, 1.0))
    assert files.read_bytes(scatter)[:8] == PNG_SIGNATURE and files.read_bytes(grid)[:8] == PNG_SIGNATURE


def test_latent_scatter_names_labels_and_outlines_the_decoder_grid(tmp_path):
    model = registry.build("conv_image", {"input_shape": (12, 12, 1), "filters": (4, 8), "z_dim": 2})
    images = np.random.default_rng(4).random((20, 12, 12, 1)).astype(np.float32)
    labels = np.repeat([0, 1], 10)
    path = latent.latent_scatter(model, images, labels, str(tmp_path / "named.png"), label_names={0: "top", 1: "shoe"},
                                 grid=latent.GridConfig())
    assert _is_png(path)
    figure = latent.Figure()
    latent.write_png(figure, str(tmp_path / "empty.png"), dpi=10)
    assert _is_png(str(tmp_path / "empty.png"))
