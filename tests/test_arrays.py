"""Image arrays read and written by row ranges with numpy's own format I/O, locally and on ram://."""

import io
import os
import uuid
import zipfile

import numpy as np
import pytest

from models.common import files
from models.images import arrays


def test_array_rows_are_read_by_range_from_npy_and_npz(tmp_path):
    array = np.arange(5 * 3 * 2, dtype=np.uint8).reshape(5, 3, 2)
    np.save(tmp_path / "a.npy", array)
    np.savez(tmp_path / "a.npz", other=np.zeros(2), images=array)
    for name in ("a.npy", "a.npz"):
        header = arrays.read_array_header(str(tmp_path / name))
        assert header.shape == (5, 3, 2) and header.count == 5 and header.row_bytes == 6
        with arrays.ArrayRows(str(tmp_path / name)) as rows:
            np.testing.assert_array_equal(rows.read(3, 9), array[3:])
            np.testing.assert_array_equal(rows.read(1, 2), array[1:2])
            staged = rows.staged_path
        assert (staged is None) == (name == "a.npy"), "only the npz member is staged"
        assert staged is None or not os.path.exists(staged), "the staged copy is removed on close"
    with pytest.raises(ValueError, match="has no array 'x'"):
        arrays.npz_member_name(str(tmp_path / "a.npz"), "x")
    with open(tmp_path / "a.npy", "r+b") as handle:
        handle.truncate(os.path.getsize(tmp_path / "a.npy") - 3)
    with pytest.raises(ValueError, match="truncated"):
        arrays.ArrayRows(str(tmp_path / "a.npy"))


def test_unsupported_array_layouts_are_refused(tmp_path):
    np.save(tmp_path / "fortran.npy", np.asfortranarray(np.zeros((3, 4, 5), np.float32)))
    with pytest.raises(ValueError, match="Fortran-ordered"):
        arrays.read_array_header(str(tmp_path / "fortran.npy"))
    np.save(tmp_path / "objects.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="object arrays"):
        arrays.read_array_header(str(tmp_path / "objects.npy"))


def test_array_files_are_written_row_by_row(tmp_path):
    path = str(tmp_path / "out.npy")
    header = arrays.create_array_file(path, (4, 2, 3), np.float32)
    assert header.shape == (4, 2, 3) and np.dtype(header.dtype) == np.float32
    array = arrays.open_array_for_writing(path)
    arrays.write_rows(array, 2, np.ones((2, 2, 3)))
    with pytest.raises(ValueError, match="do not fit"):
        arrays.write_rows(array, 3, np.ones((2, 2, 3)))
    array.flush()
    del array
    written = np.load(path)
    assert written.shape == (4, 2, 3) and written[:2].sum() == 0 and (written[2:] == 1).all()


def test_image_array_shapes_are_checked():
    arrays.check_image_array_shape((3, 8, 8, 3), "x")
    for shape in ((3, 8), (3, 8, 8, 2), (3, 0, 8)):
        with pytest.raises(ValueError):
            arrays.check_image_array_shape(shape, "x")


def test_npz_member_defaults(tmp_path):
    path = tmp_path / "several.npz"
    np.savez(path, a=np.zeros(1), b=np.zeros(1))
    with pytest.raises(ValueError, match="several arrays"):
        arrays.npz_member_name(str(path), None)
    assert arrays.npz_member_name(str(path), "b") == "b.npy"
    with zipfile.ZipFile(path) as archive:
        assert "a.npy" in archive.namelist()


def test_arrays_on_ram_are_staged_locally_and_published_through_the_file_layer(tmp_path):
    root = f"ram://{uuid.uuid4().hex}"
    array = np.random.default_rng(0).random((6, 4, 4)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, array)
    files.write_bytes(f"{root}/in.npy", buffer.getvalue())
    assert arrays.read_array_header(f"{root}/in.npy").shape == (6, 4, 4)
    with arrays.ArrayRows(f"{root}/in.npy") as rows:
        assert rows.staged_path is not None and not files.has_scheme(rows.staged_path)
        np.testing.assert_array_equal(rows.read(4, 6), array[4:])

    for destination, member in ((f"{root}/out.npy", None), (f"{root}/out.npz", "images.npy"),
                                (str(tmp_path / "out.npz"), "images.npy"), (str(tmp_path / "out.npy"), None)):
        working = arrays.working_array_path(destination)
        assert not files.has_scheme(working) and (working == destination) == (destination.endswith(".npy")
                                                                             and not files.has_scheme(destination))
        arrays.create_array_file(working, array.shape, array.dtype)
        target = arrays.open_array_for_writing(working)
        arrays.write_rows(target, 0, array)
        target.flush()
        del target
        assert arrays.publish_array(working, destination, member) == destination
        assert working == destination or not os.path.exists(working), "the working file is moved, not left behind"
        content = np.load(io.BytesIO(files.read_bytes(destination)))
        np.testing.assert_array_equal(content["images"] if member else content, array)


@pytest.mark.parametrize("scheme", ["local", "ram"])
def test_parts_written_through_the_file_layer_are_applied_by_position(tmp_path, scheme):
    directory = str(tmp_path) if scheme == "local" else f"ram://{uuid.uuid4().hex}"
    rows = np.arange(6 * 2 * 2, dtype=np.uint8).reshape(6, 2, 2)
    arrays.write_part(files.join(directory, "parts", "a.npz"), [4, 0, 2], rows[[4, 0, 2]])
    arrays.write_part(files.join(directory, "parts", "b.npz"), [5, 1], rows[[5, 1]])
    working = str(tmp_path / "out.npy")
    arrays.create_array_file(working, rows.shape, rows.dtype)
    target = arrays.open_array_for_writing(working)
    counts = [arrays.apply_part(target, path) for path in sorted(files.glob(files.join(directory, "parts", "*.npz")))]
    target.flush()
    assert counts == [3, 2]
    written = np.load(working)
    np.testing.assert_array_equal(written[[0, 1, 2, 4, 5]], rows[[0, 1, 2, 4, 5]])
    assert not written[3].any(), "a row no part holds stays zero"
    with pytest.raises(ValueError, match="one position per row"):
        arrays.write_part(files.join(directory, "bad.npz"), [0, 1], rows[:1])
    arrays.write_part(files.join(directory, "far.npz"), [9], rows[:1])
    with pytest.raises(ValueError, match="does not fit"):
        arrays.apply_part(target, files.join(directory, "far.npz"))
    saved = arrays.save_array(files.join(directory, "saved", "x.npy"), rows)
    with arrays.ArrayRows(saved) as read_back:
        np.testing.assert_array_equal(read_back.read(0, 6), rows)
