"""Pure image functions: noise, PSNR/SSIM against known values and TensorFlow, padding, codecs, array files."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from models.common import files
from models.images import io as images
from models.images import noise, quality, sets


def _rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------- noise


def test_noise_spec_parses_kinds_defaults_and_refuses_nonsense():
    assert noise.NoiseSpec.parse("gaussian:0.6") == noise.NoiseSpec("gaussian", 0.6)
    assert noise.NoiseSpec.parse("speckle") == noise.NoiseSpec("speckle", noise.DEFAULT_NOISE_AMOUNTS["speckle"])
    assert noise.NoiseSpec.parse("Salt-and-Pepper:0.1") == noise.NoiseSpec("salt_and_pepper", 0.1)
    assert noise.NoiseSpec.parse("none").is_none and noise.NoiseSpec("gaussian", 0.0).is_none
    assert str(noise.NoiseSpec.parse("gaussian:0.20")) == "gaussian:0.2"
    for text, message in (("blur:1", "unknown noise"), ("gaussian:x", "not a number"),
                          ("gaussian:-1", ">= 0"), ("salt_and_pepper:2", "fraction")):
        with pytest.raises(ValueError, match=message):
            noise.NoiseSpec.parse(text)


def test_gaussian_noise_has_the_noise_factor_as_standard_deviation_and_is_clipped():
    clean = np.full((200, 32, 32, 1), 0.5, np.float32)
    noisy = noise.gaussian_noise(clean, 0.2, _rng())
    assert noisy.dtype == np.float32 and noisy.shape == clean.shape
    assert abs(float(np.std(noisy - clean)) - 0.2) < 0.01 and abs(float(np.mean(noisy)) - 0.5) < 0.01
    strong = noise.gaussian_noise(clean, 0.6, _rng())
    assert strong.min() == 0.0 and strong.max() == 1.0
    np.testing.assert_array_equal(noise.gaussian_noise(clean, 0.2, _rng(3)), noise.gaussian_noise(clean, 0.2, _rng(3)))


def test_speckle_noise_is_multiplicative():
    clean = np.zeros((4, 16, 16, 1), np.float32)
    clean[:, :8] = 0.5
    noisy = noise.speckle_noise(clean, 0.3, _rng())
    np.testing.assert_array_equal(noisy[:, 8:], 0.0)
    assert abs(float(np.std(noisy[:, :8] - 0.5)) - 0.15) < 0.01
    assert 0.0 <= noisy.min() and noisy.max() <= 1.0


def test_salt_and_pepper_hits_the_asked_fraction_of_pixels_in_every_channel():
    clean = np.full((50, 20, 20, 3), 0.5, np.float32)
    noisy = noise.salt_and_pepper_noise(clean, 0.1, _rng())
    changed = np.any(noisy != 0.5, axis=-1)
    assert abs(float(changed.mean()) - 0.1) < 0.01
    values = noisy[changed]
    assert set(np.unique(values)) <= {0.0, 1.0}
    assert (values == values[:, :1]).all(), "a hit pixel is black or white in all channels"
    assert 0.4 < float((values[:, 0] == 1.0).mean()) < 0.6


def test_add_noise_dispatches_and_none_returns_an_unchanged_copy():
    clean = _rng().random((2, 8, 8, 1)).astype(np.float32)
    unchanged = noise.add_noise(clean, noise.NoiseSpec("none", 0.0), _rng())
    np.testing.assert_array_equal(unchanged, clean)
    assert unchanged is not clean
    np.testing.assert_array_equal(noise.add_noise(clean, noise.NoiseSpec("speckle", 0.2), _rng(1)),
                                  noise.speckle_noise(clean, 0.2, _rng(1)))


# ---------------------------------------------------------------------------------------- metrics


def test_psnr_known_values():
    clean = np.full((1, 8, 8, 1), 0.5)
    assert quality.psnr(clean, clean + 0.1)[0] == pytest.approx(20.0)
    assert quality.psnr(clean, clean + 0.01)[0] == pytest.approx(40.0)
    assert quality.psnr(clean[0], clean[0]) == np.inf
    assert quality.psnr(clean * 255, clean * 255 + 25.5, data_range=255.0)[0] == pytest.approx(20.0)


def test_psnr_and_ssim_match_tensorflow_on_random_grayscale_and_rgb_images():
    rng = _rng(4)
    for shape in ((3, 28, 28, 1), (2, 40, 33, 3)):
        clean = rng.random(shape).astype(np.float32)
        noisy = np.clip(clean + 0.15 * rng.standard_normal(shape), 0, 1).astype(np.float32)
        np.testing.assert_allclose(quality.psnr(clean, noisy), tf.image.psnr(clean, noisy, 1.0).numpy(), rtol=1e-5)
        np.testing.assert_allclose(quality.ssim(clean, noisy), tf.image.ssim(clean, noisy, 1.0).numpy(), atol=1e-5)


def test_ssim_known_values():
    image = _rng().random((16, 16, 1))
    assert quality.ssim(image, image) == pytest.approx(1.0)
    first, second = np.full((16, 16, 1), 0.2), np.full((16, 16, 1), 0.6)
    c1 = (0.01 * 1.0) ** 2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1)  # no variance: luminance term only
    assert quality.ssim(first, second) == pytest.approx(expected)
    assert quality.ssim(image, 1.0 - image) < 0.0, "an inverted image is anti-correlated"


def test_ssim_shrinks_the_window_for_images_smaller_than_it():
    small = _rng().random((5, 7, 1))
    value = quality.ssim(small, np.clip(small + 0.1, 0, 1))
    assert 0.0 < value < 1.0 and quality.ssim(small, small) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        quality.ssim(small, small[:4])


def test_gaussian_window_is_normalised_and_symmetric():
    window = quality.gaussian_window(11, 1.5)
    assert window.sum() == pytest.approx(1.0) and np.allclose(window, window[::-1]) and window.argmax() == 5


# ---------------------------------------------------------------------------------- shape handling


def test_pad_to_multiple_and_crop_round_trip():
    batch = _rng().random((2, 13, 18, 3)).astype(np.float32)
    padded, (height, width) = images.pad_to_multiple(batch, 4)
    assert padded.shape == (2, 16, 20, 3) and (height, width) == (13, 18)
    np.testing.assert_array_equal(images.crop(padded, height, width), batch)
    np.testing.assert_array_equal(padded[:, 13, :18], batch[:, 11], "reflection padding")
    same, _ = images.pad_to_multiple(batch[:, :12, :16], 4)
    assert same.shape == (2, 12, 16, 3)
    tiny, _ = images.pad_to_multiple(np.ones((1, 1, 3, 1), np.float32), 4)
    assert tiny.shape == (1, 4, 4, 1) and (tiny == 1).all()


def test_to_unit_float_scales_and_refuses_bad_pixels_with_reasons():
    assert images.to_unit_float(np.full((2, 3), 255, np.uint8)).max() == 1.0
    assert images.to_unit_float(np.full((2, 3, 1), 65535, np.uint16)).max() == 1.0
    assert images.to_unit_float(np.full((2, 3, 3), 0.25, np.float64)).dtype == np.float32
    for array, reason in ((np.full((2, 2), 1.5), "outside"), (np.full((2, 2), np.nan), "non-finite"),
                          (np.zeros((0, 4)), "zero-size"), (np.zeros((2, 2, 4)), "channel count"),
                          (np.zeros((2, 2, 2, 2)), "expected")):
        with pytest.raises(images.ImageError, match=reason):
            images.to_unit_float(array)


def test_match_channels_refuses_mismatches_unless_asked_to_convert():
    rgb = np.stack([np.full((2, 2), 1.0), np.zeros((2, 2)), np.zeros((2, 2))], axis=-1).astype(np.float32)
    with pytest.raises(images.ImageError, match="RGB image but the model denoises grayscale"):
        images.match_channels(rgb, 1)
    assert images.match_channels(rgb, 1, convert=True)[0, 0, 0] == pytest.approx(0.299)
    assert images.match_channels(rgb[..., :1], 3, convert=True).shape == (2, 2, 3)
    assert images.match_channels(rgb, 3) is rgb


# ------------------------------------------------------------------------------------ codecs, files


def _png_bytes(array, mode=None):
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_png_round_trip_is_exact_and_jpeg_close():
    image = images.to_uint8(sets.synthetic_images(1, 24, 3)[0]).astype(np.float32) / 255.0
    np.testing.assert_array_equal(images.decode_image(images.encode_image(image, "png")), image)
    gray = image[..., :1]
    assert images.decode_image(images.encode_image(gray, "png")).shape == (24, 24, 1)
    assert np.abs(images.decode_image(images.encode_image(image, "jpeg")) - image).mean() < 0.03
    with pytest.raises(ValueError, match="cannot encode"):
        images.encode_image(image, "gif")


def test_decode_image_modes_and_errors():
    rgba = np.zeros((3, 3, 4), np.uint8)
    rgba[..., 0] = 255
    assert images.decode_image(_png_bytes(rgba)).shape == (3, 3, 3)
    sixteen = images.decode_image(_png_bytes(np.full((3, 3), 65535, np.uint16)))
    assert sixteen.shape == (3, 3, 1) and sixteen.max() == 1.0
    cmyk = io.BytesIO()
    Image.new("CMYK", (3, 3)).save(cmyk, format="JPEG")
    for data, reason in ((b"", "empty file"), (b"\x89PNG\r\n\x1a\nbroken", "corrupt"),
                         (_png_bytes(np.zeros((4, 4), np.uint8))[:40], "corrupt"),
                         (cmyk.getvalue(), "unsupported image mode")):
        with pytest.raises(images.ImageError, match=reason):
            images.decode_image(data)


def test_example_round_trip_and_bad_records():
    encoded = images.encode_image(np.zeros((4, 4, 1), np.float32))
    parsed = images.parse_example(images.make_example("a/b.png", encoded, clean_encoded=encoded))
    assert parsed == {"key": "a/b.png", "encoded": encoded, "format": "png", "clean_encoded": encoded}
    bare = tf.train.Example(features=tf.train.Features(feature={
        images.ENCODED_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))}))
    assert images.parse_example(bare.SerializeToString())["key"] is None
    with pytest.raises(images.ImageError, match="no 'image/encoded'"):
        images.parse_example(tf.train.Example().SerializeToString())


def test_image_set_formats_are_detected(tmp_path):
    assert sets.detect_image_set_format(str(tmp_path)) == "images"
    assert sets.detect_image_set_format("a.NPZ") == "npz" and sets.detect_image_set_format("b.tfrecords") == "tfrecord"
    with pytest.raises(ValueError, match="cannot tell the format"):
        sets.detect_image_set_format("a.csv")


def test_load_image_set_skips_unreadable_files_and_refuses_mixed_sizes(tmp_path):
    for index in range(3):
        (tmp_path / f"{index}.png").write_bytes(_png_bytes(np.full((5, 6), index * 100, np.uint8)))
    (tmp_path / "bad.png").write_bytes(b"nope")
    loaded = sets.load_image_set(str(tmp_path))
    assert loaded.shape == (3, 5, 6, 1) and loaded[2].max() == pytest.approx(200 / 255)
    (tmp_path / "big.png").write_bytes(_png_bytes(np.zeros((7, 7), np.uint8)))
    with pytest.raises(ValueError, match="differ in size"):
        sets.load_image_set(str(tmp_path))


def test_image_sets_are_read_through_the_file_layer():
    root = "ram://image-sets"
    files.write_bytes(files.join(root, "pictures", "a.png"), _png_bytes(np.full((4, 5), 51, np.uint8)))
    files.write_bytes(files.join(root, "pictures", "nested", "b.jpg"),
                      images.encode_image(np.zeros((4, 5, 1), np.float32), "jpeg"))
    files.write_text(files.join(root, "pictures", "notes.txt"), "not an image")
    assert sets.list_image_files(files.join(root, "pictures")) == (["a.png", "nested/b.jpg"], ["notes.txt"])
    assert sets.detect_image_set_format(files.join(root, "pictures")) == "images"
    loaded = sets.load_image_set(files.join(root, "pictures"))
    assert loaded.shape == (2, 4, 5, 1) and loaded[0].max() == pytest.approx(0.2)
    with pytest.raises(FileNotFoundError, match="image directory not found"):
        sets.list_image_files(files.join(root, "missing"))
    buffer = io.BytesIO()
    np.save(buffer, np.full((3, 4, 4), 255, np.uint8))
    files.write_bytes(files.join(root, "rows.npy"), buffer.getvalue())
    assert sets.load_image_set(files.join(root, "rows.npy")).shape == (3, 4, 4, 1)
    record_path = files.join(root, "set.tfrecord")
    with tf.io.TFRecordWriter(record_path) as writer:
        writer.write(images.make_example("good", images.encode_image(np.ones((3, 3, 3), np.float32))))
        writer.write(images.make_example("broken", b"not a png"))
        writer.write(b"not an example")
    from_records = sets.load_image_set(record_path)
    assert from_records.shape == (1, 3, 3, 3) and (from_records == 1).all(), "bad records are skipped, not fatal"


def test_npz_image_sets_and_a_local_fashion_mnist_archive(tmp_path):
    path = tmp_path / "fashion.npz"
    train = np.arange(4 * 28 * 28, dtype=np.uint32).reshape(4, 28, 28).astype(np.uint8)
    np.savez(path, x_train=train, y_train=np.zeros(4), x_test=np.full((2, 28, 28), 255, np.uint8))
    loaded_train, loaded_test = sets.fashion_mnist_images(str(path))
    assert loaded_train.shape == (4, 28, 28, 1) and loaded_test.shape == (2, 28, 28, 1)
    assert loaded_train.dtype == np.float32 and (loaded_test == 1.0).all()
    np.testing.assert_allclose(loaded_train[..., 0], train / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(sets.load_image_set(str(path), array_key="x_test"), loaded_test)
    np.savez(tmp_path / "other.npz", images=train)
    with pytest.raises(ValueError, match="has no array 'x_train'"):
        sets.fashion_mnist_images(str(tmp_path / "other.npz"))


def test_offline_data_sources_and_split():
    digits = sets.digits_images()
    assert digits.shape == (1797, 28, 28, 1) and digits.min() >= 0 and digits.max() <= 1
    assert digits[:, :2].max() == 0, "digits are centred with a border, like MNIST"
    generated = sets.synthetic_images(5, 12, 3, seed=1)
    assert generated.shape == (5, 12, 12, 3) and generated.std() > 0.05
    np.testing.assert_array_equal(generated, sets.synthetic_images(5, 12, 3, seed=1))
    train, validation, test = sets.split_indices(100, (0.1, 0.2), seed=0)
    assert (len(train), len(validation), len(test)) == (70, 10, 20)
    assert sorted(np.concatenate([train, validation, test]).tolist()) == list(range(100))
    with pytest.raises(ValueError, match="too few"):
        sets.split_indices(2, (0.4, 0.4), seed=0)




def test_training_records_round_trip_float_pixels_losslessly():
    from models.images import records

    image = np.random.default_rng(3).random((5, 7, 3)).astype(np.float32)
    key, decoded = records.decode_record(records.encode_record("shard.npy:4", image))
    assert key == "shard.npy:4" and decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, image)
    with pytest.raises(ValueError, match="one \\(height, width, channels\\) image"):
        records.encode_record("k", image[0])
