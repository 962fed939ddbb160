"""TLS end to end: kafka-python and `heartwatch stream` through stunnel in front of a real tansu broker.

tansu has no working TLS here, so ``stunnel4`` (Debian) terminates TLS in front of it with a server
certificate signed by a CA generated in the test (``cryptography``, a dependency of Apache Beam). Kafka
clients connect to the address a broker *advertises* in its metadata, not only to the bootstrap
address, so this module starts its own tansu whose advertised listener is the stunnel port: every
connection of every client, metadata and fetches included, goes through TLS. A second CA that signed
nothing plays the wrong ``ssl_cafile``.

SASL is pass-through only (``--kafka_option sasl_...``) and untested: tansu has no SASL.
Skipped when stunnel is not installed (``.ci/run`` installs it with apt-get where it can).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import logging
import re
import shutil
import socket
import ssl
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError

from models.common import artifacts
from models.ecg.sources import DatasetSpec, load_dataset
from streaming import codec
from streaming.broker import free_port, tansu_path
from streaming.config import KafkaSettings
from streaming.kafka_clients import ensure_topics, make_consumer, make_producer
from tests.streaming_fixtures import StreamProcess, outcomes_by_offset, unique, wait_until
from tests.test_stream_broker import ecg_messages, stream_flags, topics

STUNNEL = shutil.which("stunnel4") or shutil.which("stunnel")
HOST = "127.0.0.1"
CA_NAME = "heartwatch test CA"
START_TIMEOUT_SECONDS = 20.0

pytestmark = pytest.mark.skipif(STUNNEL is None, reason="stunnel4 is not installed (Debian: apt-get install stunnel4; "
                                                        ".ci/run installs it where it runs as root)")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=1))


def certificate_authority(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA key and certificate (valid for a day)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True))
    return key, _validity(builder).sign(key, hashes.SHA256())


def server_certificate(ca_key, ca_certificate: x509.Certificate, host: str):
    """A server key and certificate for ``host`` (an IP address) and ``localhost``, signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(host))]
    builder = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca_certificate.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .add_extension(x509.SubjectAlternativeName(names), critical=False)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    return key, _validity(builder).sign(ca_key, hashes.SHA256())


def _certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_for_port(process: subprocess.Popen, port: int, what: str, log_path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not _accepts_connections(port):
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}; log:\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on {HOST}:{port} within {START_TIMEOUT_SECONDS} s")
        time.sleep(0.05)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclasses.dataclass(frozen=True)
class TlsBroker:
    """tansu behind stunnel: clients reach it only at ``bootstrap_servers`` through TLS."""

    bootstrap_servers: str
    tls_port: int
    ca_file: str
    wrong_ca_file: str

    def settings(self, ca_file: str | None = None) -> KafkaSettings:
        """heartwatch's Kafka settings for TLS with ``ca_file`` (default: the CA that signed the broker)."""
        return KafkaSettings(bootstrap_servers=self.bootstrap_servers, kafka_option=tuple(self.flags(ca_file)[1::2]))

    def flags(self, ca_file: str | None = None) -> list:
        """The `heartwatch` command-line flags for TLS with ``ca_file``."""
        return ["--kafka_option", "security_protocol=SSL", "--kafka_option", f"ssl_cafile={ca_file or self.ca_file}"]

    def client_options(self, ca_file: str | None = None) -> dict:
        """Plain kafka-python options for TLS with ``ca_file``."""
        return {"bootstrap_servers": self.bootstrap_servers, "security_protocol": "SSL",
                "ssl_cafile": ca_file or self.ca_file}


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    """A tansu broker on a plain localhost port, advertised at a stunnel TLS port in front of it."""
    directory = tmp_path_factory.mktemp("tls")
    ca_key, ca_certificate = certificate_authority(CA_NAME)
    _, wrong_ca_certificate = certificate_authority("a CA that signed nothing here")
    key, certificate = server_certificate(ca_key, ca_certificate, HOST)
    (directory / "ca.pem").write_bytes(_certificate_pem(ca_certificate))
    (directory / "wrong-ca.pem").write_bytes(_certificate_pem(wrong_ca_certificate))
    (directory / "server.pem").write_bytes(_certificate_pem(certificate))
    (directory / "server.key").write_bytes(_key_pem(key))
    (directory / "server.key").chmod(0o600)
    plain_port, tls_port = free_port(HOST), free_port(HOST)
    (directory / "stunnel.conf").write_text(
        f"foreground = yes\npid =\ndebug = notice\n[kafka]\naccept = {HOST}:{tls_port}\n"
        f"connect = {HOST}:{plain_port}\ncert = {directory / 'server.pem'}\nkey = {directory / 'server.key'}\n")
    tansu_log, stunnel_log = directory / "tansu.log", directory / "stunnel.log"
    processes = []
    try:
        with open(tansu_log, "wb") as log:
            processes.append(subprocess.Popen(
                [tansu_path(), "broker", "--listener-url", f"tcp://{HOST}:{plain_port}",
                 "--advertised-listener-url", f"tcp://{HOST}:{tls_port}", "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        _wait_for_port(processes[-1], plain_port, "tansu", tansu_log)
        with open(stunnel_log, "wb") as log:
            processes.append(subprocess.Popen([STUNNEL, str(directory / "stunnel.conf")], stdout=log,
                                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        _wait_for_port(processes[-1], tls_port, "stunnel", stunnel_log)
        yield TlsBroker(f"{HOST}:{tls_port}", tls_port, str(directory / "ca.pem"), str(directory / "wrong-ca.pem"))
    finally:
        for process in reversed(processes):
            _stop(process)


@pytest.fixture(scope="module")
def ecg_dataset(ecg5000_path):
    """The 500 real labelled ECG beats."""
    return load_dataset(DatasetSpec(path=ecg5000_path))


def read_through_tls(broker: TlsBroker, topic: str, minimum: int, timeout_seconds: float = 90.0) -> list:
    """Every record of ``topic`` (all partitions from the beginning, no group) once ``minimum`` arrived."""
    consumer = make_consumer(broker.settings(), client_id="test-tls-reader")
    records = []
    try:
        partitions = wait_until(lambda: consumer.partitions_for_topic(topic), 30, f"topic {topic} visible")
        assignment = [TopicPartition(topic, partition) for partition in sorted(partitions)]
        consumer.assign(assignment)
        consumer.seek_to_beginning(*assignment)

        def enough():
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            return len(records) >= minimum
        wait_until(enough, timeout_seconds, f"{minimum} records on {topic} through TLS")
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    finally:
        consumer.close(autocommit=False)
    return records


def test_the_tls_port_serves_the_test_ca_certificate(tls_broker):
    context = ssl.create_default_context(cafile=tls_broker.ca_file)
    with socket.create_connection((HOST, tls_broker.tls_port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=HOST) as connection:
            issuer = dict(pair[0] for pair in connection.getpeercert()["issuer"])
            version = connection.version()
    assert issuer["commonName"] == CA_NAME
    assert version in ("TLSv1.2", "TLSv1.3")


def test_kafka_python_produces_and_consumes_through_tls(tls_broker):
    topic = unique("tls-raw")
    admin = KafkaAdminClient(**tls_broker.client_options())
    try:
        admin.create_topics([NewTopic(topic, 2, 1)])
        advertised = {(broker["host"], broker["port"]) for broker in admin.describe_cluster()["brokers"]}
    finally:
        admin.close()
    assert advertised == {(HOST, tls_broker.tls_port)}, "clients would bypass TLS: the broker advertises another port"
    sent = [(f"device-{index % 3}".encode(), f"beat {index}".encode()) for index in range(40)]
    producer = KafkaProducer(acks="all", **tls_broker.client_options())
    try:
        futures = [producer.send(topic, key=key, value=value) for key, value in sent]
        producer.flush()
        coordinates = {(metadata.partition, metadata.offset) for metadata in (f.get(timeout=30) for f in futures)}
    finally:
        producer.close()
    assert len(coordinates) == len(sent)
    consumer = KafkaConsumer(**tls_broker.client_options())
    received = []
    try:
        assignment = [TopicPartition(topic, partition) for partition in (0, 1)]
        consumer.assign(assignment)
        consumer.seek_to_beginning(*assignment)

        def everything_received():
            for batch in consumer.poll(timeout_ms=200).values():
                received.extend(batch)
            return len(received) >= len(sent)
        wait_until(everything_received, 60, f"{len(sent)} records consumed through TLS")
    finally:
        consumer.close()
    assert sorted((record.key, record.value) for record in received) == sorted(sent)
    assert {(record.partition, record.offset) for record in received} == coordinates


def test_kafka_python_refuses_a_broker_certificate_from_another_ca(tls_broker, caplog):
    with caplog.at_level(logging.WARNING, logger="kafka"), pytest.raises(KafkaError):
        KafkaProducer(bootstrap_timeout_ms=3000, **tls_broker.client_options(tls_broker.wrong_ca_file))
    reasons = [record.getMessage() for record in caplog.records if record.name.startswith("kafka")]
    assert any("CERTIFICATE_VERIFY_FAILED" in reason for reason in reasons), reasons[-5:]


def test_stream_scores_real_beats_through_tls(tls_broker, exported_detector, ecg_dataset, tmp_path):
    names = topics("tls")
    settings = tls_broker.settings()
    ensure_topics(settings, {names[kind]: 2 for kind in ("input", "events", "scores", "dead", "alerts")})
    messages = ecg_messages(ecg_dataset, 300)
    producer = make_producer(settings)
    try:
        futures = [producer.send(names["input"], key=key, value=value, headers=headers)
                   for key, value, headers in messages]
        producer.flush()
        coordinates = [(metadata.partition, metadata.offset) for metadata in (f.get(timeout=30) for f in futures)]
    finally:
        producer.close()
    stream = StreamProcess(tls_broker, tmp_path / "stream.log",
                           *stream_flags(names, exported_detector.version_directory, "--batch_size", "100"),
                           *tls_broker.flags())
    try:
        scores = read_through_tls(tls_broker, names["scores"], len(messages))
        assert stream.terminate() == 0, stream.log()[-3000:]
    finally:
        stream.close()
    outcomes = outcomes_by_offset(scores, [])
    assert set(outcomes) == set(coordinates), "some beats were not scored exactly at their offsets"
    documents = [codec.loads(record.value) for record in scores]
    assert {document["model_version"] for document in documents} == {artifacts.version_of(
        exported_detector.version_directory)}
    labels = {document["label"] for document in documents}
    flagged = {document["label"] for document in documents if document["is_anomaly"]}
    assert labels == {0, 1} and 1 in flagged, "the real anomalies were not detected through TLS"


def test_stream_with_the_wrong_ca_fails_fast_with_one_clear_line(tls_broker, exported_detector, tmp_path):
    names = topics("tls-wrong-ca")
    stream = StreamProcess(tls_broker, tmp_path / "stream.log",
                           *stream_flags(names, exported_detector.version_directory),
                           *tls_broker.flags(tls_broker.wrong_ca_file))
    try:
        status = stream.wait(120)
    finally:
        stream.close()
    log = stream.log()
    assert status != 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    naming_the_ca = [line for line in log.splitlines() if tls_broker.wrong_ca_file in line]
    assert len(naming_the_ca) == 1, f"expected one line naming {tls_broker.wrong_ca_file}:\n{log[-3000:]}"
    assert re.search(r"TLS|SSL|certificate", naming_the_ca[0], re.IGNORECASE), naming_the_ca[0]
    verify_failures = [line for line in log.splitlines() if re.search("certificate verify failed", line, re.I)]
    assert len(verify_failures) <= 1, f"{len(verify_failures)} lines repeat the verification failure:\n{log[-3000:]}"
