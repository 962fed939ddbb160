"""The ram:// Beam filesystem: Beam's FileSystems and TensorFlow's file layer see the same in-memory files."""

import uuid

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from models.common import files
from pipeline import filesystems


@pytest.fixture
def root():
    return f"ram://{uuid.uuid4().hex}"


def _write(path, data: bytes):
    with FileSystems.create(path) as handle:
        handle.write(data)


def _read(path) -> bytes:
    with FileSystems.open(path) as handle:
        return handle.read()


def test_beam_finds_the_ram_filesystem_and_splits_paths(root):
    system = FileSystems.get_filesystem(f"{root}/a.txt")
    assert isinstance(system, filesystems.RamFileSystem)
    assert FileSystems.join(root, "x", "y.txt") == f"{root}/x/y.txt"
    assert FileSystems.split(f"{root}/x/y.txt") == (f"{root}/x", "y.txt")
    with pytest.raises(ValueError, match="not a ram://"):
        system.split("/local/path")
    assert not filesystems.renames_directories(root) and filesystems.renames_directories("/tmp/x")


def test_create_open_and_rewrite_are_shared_with_tensorflow(root):
    _write(f"{root}/deep/dir/a.bin", b"0123456789")
    assert files.read_bytes(f"{root}/deep/dir/a.bin") == b"0123456789", "TensorFlow reads what Beam wrote"
    assert files.list_directory(f"{root}/deep") == ["dir"], "parents exist, so listings see the file"
    files.write_bytes(f"{root}/b.bin", b"from tensorflow")
    assert _read(f"{root}/b.bin") == b"from tensorflow"
    checksum = FileSystems.checksum(f"{root}/deep/dir/a.bin")
    _write(f"{root}/deep/dir/a.bin", b"abc")
    assert _read(f"{root}/deep/dir/a.bin") == b"abc", "a rewritten file is replaced, not appended to"
    assert FileSystems.checksum(f"{root}/deep/dir/a.bin") != checksum
    _write(f"{root}/c.txt.gz", b"compressed text\n")
    assert _read(f"{root}/c.txt.gz") == b"compressed text\n"
    assert tf.io.gfile.GFile(f"{root}/c.txt.gz", "rb").read()[:2] == b"\x1f\x8b", "stored gzip-compressed"
    with pytest.raises(FileNotFoundError):
        FileSystems.open(f"{root}/missing.bin")


def test_match_copy_rename_delete(root):
    for name in ("x/1.txt", "x/2.txt", "x/sub/3.txt", "y.csv"):
        _write(f"{root}/{name}", name.encode())
    matched = FileSystems.match([f"{root}/x/*.txt", f"{root}/**.txt", f"{root}/y.csv"])
    assert [sorted(item.path for item in result.metadata_list) for result in matched] == [
        [f"{root}/x/1.txt", f"{root}/x/2.txt"],
        [f"{root}/x/1.txt", f"{root}/x/2.txt", f"{root}/x/sub/3.txt"],
        [f"{root}/y.csv"]]
    assert matched[2].metadata_list[0].size_in_bytes == len(b"y.csv")
    FileSystems.copy([f"{root}/x", f"{root}/y.csv"], [f"{root}/copy", f"{root}/copy.csv"])
    assert files.walk_files(f"{root}/copy") == [f"{root}/copy/{name}" for name in ("1.txt", "2.txt", "sub/3.txt")]
    assert _read(f"{root}/copy.csv") == b"y.csv"
    FileSystems.rename([f"{root}/copy", f"{root}/copy.csv"], [f"{root}/moved", f"{root}/x/1.txt"])
    assert not FileSystems.exists(f"{root}/copy") and not FileSystems.exists(f"{root}/copy.csv")
    assert _read(f"{root}/moved/sub/3.txt") == b"x/sub/3.txt", "a directory moves with its contents"
    assert _read(f"{root}/x/1.txt") == b"y.csv", "rename replaces an existing file"
    FileSystems.delete([f"{root}/moved", f"{root}/x/*.txt"])
    assert not FileSystems.exists(f"{root}/moved") and files.walk_files(f"{root}/x") == [f"{root}/x/sub/3.txt"]
    with pytest.raises(BeamIOError):
        FileSystems.delete([f"{root}/nothing-here"])
    FileSystems.mkdirs(f"{root}/new/dir")
    with pytest.raises(IOError):
        FileSystems.mkdirs(f"{root}/new/dir")


def test_beam_text_sinks_and_sources_on_ram(root):
    with TestPipeline(runner="FnApiRunner") as pipeline:
        _ = (pipeline | beam.Create([str(number) for number in range(20)])
             | beam.io.WriteToText(f"{root}/out/numbers.txt", num_shards=1, shard_name_template="", header="n"))
        _ = (pipeline | "Empty" >> beam.Create([])
             | "WriteEmpty" >> beam.io.WriteToText(f"{root}/out/empty.txt", num_shards=1, shard_name_template=""))
    assert files.list_directory(f"{root}/out") == ["empty.txt", "numbers.txt"], "no temporary files are left"
    assert files.read_text(f"{root}/out/empty.txt") == ""
    lines = files.read_text(f"{root}/out/numbers.txt").splitlines()
    assert lines[0] == "n" and sorted(lines[1:], key=int) == [str(number) for number in range(20)]
    with TestPipeline(runner="FnApiRunner") as pipeline:
        read = pipeline | beam.io.ReadFromText(f"{root}/out/*.txt", skip_header_lines=1)
        assert_that(read | beam.Map(int), equal_to(list(range(20))))
