"""Shared pytest fixtures: the real ECG sample and one small detector trained by the real pipeline."""

import os
import pathlib

import pytest

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent

# The broker and detector fixtures of the streaming tests (``kafka_broker``, ``exported_detector``).
pytest_plugins = ("tests.streaming_fixtures",)


@pytest.fixture(scope="session")
def ecg5000_path() -> str:
    """The 500 real ECG5000 beats (``HEARTWATCH_ECG5000`` or ``../shared/data`` beside the repo)."""
    path = os.environ.get("HEARTWATCH_ECG5000",
                          str(REPOSITORY.parent / "shared" / "data" / "ecg5000" / "ECG5000_TRAIN.txt"))
    if not os.path.exists(path):
        pytest.fail(f"real ECG sample not found at {path}; set HEARTWATCH_ECG5000")
    return path


# Bad rows appended to the real sample for the training fixture: (line, expected reason prefix).
BAD_ROWS = (
    ("1.0 " + " ".join(["0.5"] * 139), "wrong length"),
    ("1.0 " + " ".join(["0.5"] * 139 + ["nan"]), "non-finite value"),
    ("2.0 " + " ".join(["0.5"] * 139 + ["inf"]), "non-finite value"),
    ("1.0 " + " ".join(["0.5"] * 70 + ["abc"] + ["0.5"] * 69), "non-numeric value"),
    ("7.0 " + " ".join(["0.5"] * 140), "unknown label"),
)


@pytest.fixture(scope="session")
def sample_with_bad_rows(tmp_path_factory, ecg5000_path) -> str:
    """The real sample followed by one bad row of each kind in ``BAD_ROWS``."""
    path = tmp_path_factory.mktemp("data") / "ecg5000_with_bad_rows.txt"
    with open(ecg5000_path) as source:
        text = source.read().rstrip("\n")
    path.write_text(text + "\n" + "\n".join(line for line, _ in BAD_ROWS) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def trained_detector(tmp_path_factory, sample_with_bad_rows):
    """A detector trained by `heartwatch train` on the real sample plus bad rows (dense, short schedule)."""
    from pipeline import train

    output = tmp_path_factory.mktemp("detector")
    return train.run(["--data", sample_with_bad_rows, "--output_dir", str(output), "--candidates", "dense",
                      "--epochs", "150", "--verbose", "0", "--seed", "0"])
