"""The alert rules under promtool, and a real Prometheus server scraping a running `heartwatch stream`.

``streaming/prometheus_alerts.yml`` is checked by ``promtool check rules`` and unit-tested by
``promtool test rules tests/promtool/*_test.yml`` (the same commands ``.ci/run`` runs);
a plain-Python test makes sure every alert rule has both a firing and a silent case there. The scrape
test starts the Debian ``prometheus`` binary with a temporary configuration and storage, pointed at
the stream's ``--metrics_port``, and reads the counters back through Prometheus's HTTP API.

Tests that need promtool or prometheus are skipped when the Debian ``prometheus`` package is absent
(``.ci/run`` installs it with apt-get where it runs as root).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml

from streaming.broker import free_port
from tests.streaming_fixtures import REPOSITORY, StreamProcess, create_topics, produce, wait_until
from tests.test_stream_broker import ecg_messages, stream_flags, topics

RULES = REPOSITORY / "streaming" / "prometheus_alerts.yml"
RULE_TESTS = sorted((REPOSITORY / "tests" / "promtool").glob("*_test.yml"))
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
MISSING = "is not installed (Debian: apt-get install prometheus; .ci/run installs it where it runs as root)"
JOB = "heartwatch-stream"

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason=f"promtool {MISSING}")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None, reason=f"prometheus {MISSING}")


def alert_names() -> list:
    """The alert names of the rules file, in order."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def _promtool(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *arguments], cwd=str(REPOSITORY), capture_output=True, text=True, timeout=120)


@needs_promtool
def test_promtool_accepts_the_alert_rules():
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_of_the_alert_rules_pass():
    assert RULE_TESTS, "no promtool test files in tests/promtool"
    result = _promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


def test_every_alert_rule_fires_and_stays_silent_in_the_promtool_tests():
    cases = [case for path in RULE_TESTS for test in yaml.safe_load(path.read_text())["tests"]
             for case in test["alert_rule_test"]]
    names = alert_names()
    assert names, f"no alert rules in {RULES}"
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    silent = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert not set(names) - firing, f"rules never shown firing: {sorted(set(names) - firing)}"
    assert not set(names) - silent, f"rules never shown silent: {sorted(set(names) - silent)}"
    unknown = {case["alertname"] for case in cases} - set(names)
    assert not unknown, f"tests of alerts that no rule defines: {sorted(unknown)}"
    new_metrics = ("heartwatch_broker_connected", "heartwatch_seconds_since_last_fetch",
                   "heartwatch_error_drift_statistic", "heartwatch_drift_alarms_total")
    rules_text = RULES.read_text()
    assert all(metric in rules_text for metric in new_metrics), "the outage and drift rules lost a metric"


class PrometheusServer:
    """The ``prometheus`` binary on a free localhost port with a temporary configuration and storage."""

    def __init__(self, directory, targets: list, rule_files: list):
        self.port = free_port()
        configuration = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": targets}]}],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(configuration))
        self.log_path = directory / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={directory / 'prometheus.yml'}",
                 f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(self._ready, 60, f"prometheus ready on port {self.port} (log {self.log_path})")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"prometheus exited with status {self.process.returncode}:\n{self.log_path.read_text()}")
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2).status == 200
        except (urllib.error.URLError, OSError):
            return False

    def api(self, path: str, **parameters) -> dict:
        """``data`` of a successful ``/api/v1/<path>`` answer."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(parameters)}"
        answer = json.loads(urllib.request.urlopen(url, timeout=10).read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def value(self, query: str) -> float | None:
        """The value of a query with at most one result (None when it has none yet)."""
        result = self.api("query", query=query)["result"]
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited after a grace period."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@needs_prometheus
def test_prometheus_scrapes_a_running_stream(kafka_broker, exported_detector, ecg5000_path, tmp_path):
    from models.ecg.sources import DatasetSpec, load_dataset

    names = topics("prometheus")
    create_topics(kafka_broker, 2, *(names[kind] for kind in ("input", "events", "scores", "dead", "alerts")))
    coordinates = produce(kafka_broker, names["input"], ecg_messages(load_dataset(DatasetSpec(path=ecg5000_path)), 200))
    metrics_port = free_port()
    flags = stream_flags(names, exported_detector.version_directory, "--metrics_port", str(metrics_port))
    stream = StreamProcess(kafka_broker, tmp_path / "stream.log", *flags)
    prometheus = None
    try:
        prometheus = PrometheusServer(tmp_path, [f"127.0.0.1:{metrics_port}"], [RULES])
        selector = f'{{job="{JOB}", instance="127.0.0.1:{metrics_port}"}}'

        def scored():
            if stream.process.poll() is not None:
                pytest.fail(f"the stream exited with status {stream.process.returncode}:\n{stream.log()[-3000:]}")
            return (prometheus.value(f"heartwatch_beats_scored_total{selector}") or 0) >= len(coordinates)
        wait_until(scored, 150, f"Prometheus scraped heartwatch_beats_scored_total >= {len(coordinates)}", 1.0)
        assert prometheus.value(f"heartwatch_beats_scored_total{selector}") == len(coordinates)
        assert prometheus.value(f"heartwatch_beats_consumed_total{selector}") == len(coordinates)
        assert prometheus.value(f"up{selector}") == 1
        loaded = [rule["name"] for group in prometheus.api("rules", type="alert")["groups"] for rule in group["rules"]]
        assert sorted(loaded) == sorted(alert_names()), "the server did not load every alert rule"
        assert stream.terminate() == 0, stream.log()[-3000:]
    finally:
        stream.close()
        if prometheus is not None:
            prometheus.stop()
