"""Shared pytest fixtures: the real ECG sample and one small detector trained by the real pipeline."""

import os
import pathlib

import pytest

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ecg5000_path() -> str:
    """The 500 real ECG5000 beats (``HEARTWATCH_ECG5000`` or ``../shared/data`` beside the repo)."""
    path = os.environ.get("HEARTWATCH_ECG5000",
                          str(REPOSITORY.parent / "shared" / "data" / "ecg5000" / "ECG5000_TRAIN.txt"))
    if not os.path.exists(path):
        pytest.fail(f"real ECG sample not found at {path}; set HEARTWATCH_ECG5000")
    return path


@pytest.fixture(scope="session")
def trained_detector(tmp_path_factory, ecg5000_path):
    """A detector trained on the real sample by `heartwatch train` (dense model, short schedule)."""
    from pipeline import train

    output = tmp_path_factory.mktemp("detector")
    return train.run(["--data", ecg5000_path, "--output_dir", str(output), "--candidates", "dense",
                      "--epochs", "150", "--verbose", "0", "--seed", "0"])
