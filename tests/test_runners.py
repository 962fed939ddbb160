"""The jobs end to end on other Beam runners than the default: multi-process direct mode and the portable runner.

The portable runner talks to Beam's own job service (``local_job_service_main``) with an EXTERNAL worker
pool (``worker_pool_main``): the Fn API that the Flink and Spark job servers speak too. The fixture
starts both processes (the venv's ``bin`` first on ``PATH``, this repository on ``PYTHONPATH``) and stops
them. Workers share no memory with the driver, so every path here is on the local disk (``ram://``
lives in one process). Data is tiny and training is one epoch: these tests check that the jobs run
and agree with themselves on those runners, not model quality.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPOSITORY

from models.common import artifacts
from models.detection.detector import load_detector
from models.ecg import synthetic
from models.images import sets
from pipeline import denoise, export, score, train

STARTUP_SECONDS = 120
STOP_SECONDS = 30
BEATS = 240
MULTI_PROCESSING = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, name: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{name} exited with status {process.returncode} before listening on port {port}")
        with socket.socket() as probe:
            if probe.connect_ex(("localhost", port)) == 0:
                return
        time.sleep(0.5)
    pytest.fail(f"{name} did not listen on port {port} within {STARTUP_SECONDS} s")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_SECONDS)


@pytest.fixture(scope="module")
def portable_services(tmp_path_factory):
    """Beam's job service and an external worker pool; yields the PortableRunner flags that use them."""
    logs = tmp_path_factory.mktemp("beam_services")
    environment = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))}
    job_port, pool_port = _free_port(), _free_port()
    commands = {
        "job service": [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                        "--port", str(job_port)],
        "worker pool": [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                        "--service_port", str(pool_port)],
    }
    processes = {}
    try:
        for (name, command), port in zip(commands.items(), (job_port, pool_port)):
            with open(logs / f"{name.replace(' ', '_')}.log", "wb") as log:
                processes[name] = subprocess.Popen(command, env=environment, cwd=REPOSITORY, stdout=log,
                                                   stderr=subprocess.STDOUT, start_new_session=True)
            _wait_for_port(port, processes[name], name)
        yield ("--runner", "PortableRunner", "--job_endpoint", f"localhost:{job_port}",
               "--environment_type", "EXTERNAL", "--environment_config", f"localhost:{pool_port}")
    finally:
        for process in processes.values():
            _stop(process)


@pytest.fixture(params=["multi_processing", "portable"])
def runner_flags(request):
    """The Beam flags of each runner mode under test."""
    if request.param == "multi_processing":
        return MULTI_PROCESSING
    return request.getfixturevalue("portable_services")


@pytest.fixture(scope="module")
def beat_file(tmp_path_factory) -> str:
    """A small labelled ecg.csv (1 = normal) of synthetic beats, read by the workers from disk."""
    beats, kinds = synthetic.generate(synthetic.SyntheticConfig(beats=BEATS, seed=11, anomaly_fraction=0.3))
    path = tmp_path_factory.mktemp("beats") / "beats.csv"
    path.write_text("".join(",".join(f"{value:.6f}" for value in beat) + f",{int(kind == 'normal')}\n"
                            for beat, kind in zip(beats, kinds)))
    return str(path)


def test_train_then_score(runner_flags, beat_file, tmp_path):
    model_root = str(tmp_path / "ecg")
    trained = train.run(["--data", beat_file, "--output_dir", model_root, "--candidates", "dense", "--epochs", "1",
                         "--verbose", "0", "--report", "false", *runner_flags])
    card = trained.summary
    assert trained.version_directory == os.path.join(model_root, "1")
    assert card["data"]["valid_rows"] == BEATS and card["data"]["bad_rows"] == 0
    assert sum(card["data"]["rows_by_split"].values()) == BEATS
    assert card["test_metrics"]["beats"] == card["data"]["rows_by_split"]["test"]
    assert artifacts.read_card(trained.version_directory) == card
    assert os.listdir(model_root) == ["1"], "the staging directory and its work files are gone"
    detector = load_detector(model_root)
    assert detector.threshold == pytest.approx(card["threshold"]["value"])

    result = score.run(["--model", model_root, "--data", beat_file, "--out", str(tmp_path / "scores.csv"),
                        *runner_flags])
    assert result.scored_rows == BEATS and result.bad_rows == 0
    scores = score.read_scores(result.out)
    assert (scores["index"] == np.arange(1, BEATS + 1)).all()
    assert (scores["is_anomaly"] == (scores["anomaly_score"] > scores["threshold"])).all()
    archive = np.load(os.path.join(trained.version_directory, export.TEST_SCORES_FILE))
    positions = np.searchsorted(scores["index"], archive["row_number"])
    np.testing.assert_allclose(scores["reconstruction_error"][positions], archive["reconstruction_error"],
                               rtol=1e-5)
    assert result.metrics["beats"] == BEATS


def test_denoise_train_then_run(runner_flags, tmp_path):
    trained = denoise.run(["train", "--data", "synthetic:count=48,size=12", "--epochs", "1", "--batch_size", "16",
                           "--validation_fraction", "0.2",
                           "--model", "dncnn", "--model_parameters", '{"depth": 3, "filters": 8}', "--output_dir",
                           str(tmp_path / "models"), "--verbose", "0", *runner_flags])
    assert trained.version_directory == str(tmp_path / "models" / "1")
    clean = sets.synthetic_images(6, 12, channels=1, seed=5)
    np.save(tmp_path / "clean.npy", clean)
    result = denoise.run(["run", "--input", str(tmp_path / "clean.npy"), "--model", str(tmp_path / "models"),
                          "--out", str(tmp_path / "out"), "--noise", "gaussian:0.2", "--batch_size", "4",
                          *runner_flags])
    assert result.summary["denoised_images"] == 6
    assert np.load(result.output_path).shape == clean.shape


def test_dask_runner_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="DaskRunner is not supported"):
        train.run(["--data", "synthetic:beats=50", "--output_dir", str(tmp_path / "ecg"), "--runner", "DaskRunner"])
    assert os.listdir(tmp_path / "ecg") == [], "nothing is published and the staging directory is removed"
