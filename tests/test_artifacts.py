"""The versioned-artifact type on a local directory and on ram://: publish, newest, resolve, racing writers."""

import threading
import uuid

import pytest

from models.common import artifacts, files

MARKER = "saved/marker.bin"


@pytest.fixture(params=["local", "ram"])
def model_root(request, tmp_path):
    return str(tmp_path / "models") if request.param == "local" else f"ram://{uuid.uuid4().hex}/models"


def _stage(root: artifacts.ArtifactRoot, payload: str) -> str:
    staging = root.staging_directory()
    files.write_text(files.join(staging, "payload.txt"), payload)
    files.write_text(files.join(staging, MARKER), "complete")
    return staging


def test_publish_newest_and_resolve(model_root):
    root = artifacts.ArtifactRoot(model_root, MARKER, "test model")
    with pytest.raises(FileNotFoundError, match="no test model at"):
        root.newest()
    staging = root.staging_directory()
    assert files.basename(staging).startswith(artifacts.STAGING_PREFIX) and root.versions() == []
    with pytest.raises(ValueError, match="is missing"):
        root.publish(staging, {"name": "incomplete"})
    files.write_text(files.join(staging, "payload.txt"), "first")
    files.write_text(files.join(staging, MARKER), "complete")
    version, directory = root.publish(staging, {"name": "first"})
    assert (version, directory) == (1, files.join(model_root, "1")) and not files.exists(staging)
    assert artifacts.read_card(directory) == {"name": "first", "version": "1"}
    assert files.read_text(files.join(directory, "payload.txt")) == "first"
    assert root.publish(_stage(root, "second"), {"name": "second"})[0] == 2
    files.make_directories(files.join(model_root, "3"))  # a version being written by someone else: no marker yet
    assert root.versions() == [1, 2] and root.newest() == files.join(model_root, "2")
    assert root.publish(_stage(root, "fourth"), {"name": "fourth"})[0] == 4, "numbers in use are skipped"
    assert artifacts.resolve(model_root, MARKER) == files.join(model_root, "4")
    assert artifacts.resolve(files.join(model_root, "1"), MARKER) == files.join(model_root, "1")
    assert root.is_version(files.join(model_root, "2")) and not root.is_version(model_root)
    assert artifacts.version_of(root.newest()) == "4"
    assert [name for name in files.list_directory(model_root) if name.startswith(".")] == []
    with pytest.raises(FileNotFoundError, match="model card missing"):
        artifacts.read_card(files.join(model_root, "3"))


def test_concurrent_publishers_get_different_numbers(tmp_path):
    root = artifacts.ArtifactRoot(str(tmp_path / "models"), MARKER)
    stagings = [_stage(root, f"writer {index}") for index in range(6)]
    barrier = threading.Barrier(len(stagings))
    published = {}

    def publish(index):
        barrier.wait()
        published[index] = root.publish(stagings[index], {"writer": index})

    threads = [threading.Thread(target=publish, args=(index,)) for index in range(len(stagings))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(version for version, _ in published.values()) == [1, 2, 3, 4, 5, 6]
    for index, (version, directory) in published.items():
        assert files.read_text(files.join(directory, "payload.txt")) == f"writer {index}"
        assert artifacts.read_card(directory) == {"writer": index, "version": str(version)}
    assert root.versions() == [1, 2, 3, 4, 5, 6]


def test_publish_replaces_a_staged_card_on_ram():
    root = artifacts.ArtifactRoot(f"ram://{uuid.uuid4().hex}/models", MARKER)
    staging = _stage(root, "payload")
    artifacts.write_card(staging, {"name": "staged, without a version"})
    _, directory = root.publish(staging, {"name": "published"})
    assert artifacts.read_card(directory) == {"name": "published", "version": "1"}


def test_publish_on_ram_copies_trees_whose_names_share_a_prefix():
    root = artifacts.ArtifactRoot(f"ram://{uuid.uuid4().hex}/models", "model/marker.bin")
    staging = root.staging_directory()
    files.write_text(files.join(staging, "model", "marker.bin"), "complete")
    _, directory = root.publish(staging, {"name": "published"})
    assert artifacts.read_card(directory) == {"name": "published", "version": "1"}
