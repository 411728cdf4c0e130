"""TLS (server verification, client certificates) and username/password against a real mosquitto.

The test makes its own CA, server and client certificates with the openssl CLI.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Broker, Collector, free_port, wait_until
from test_publish import CAM, EVENTS, event, make_cfg

from edgecam.mqtt.publish import Publisher

OPENSSL = shutil.which("openssl")
PASSWD = shutil.which("mosquitto_passwd")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run([str(OPENSSL), *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=d)  # fmt: skip


def make_signed(d: Path, name: str, ca: str, san: str | None) -> None:
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", cwd=d)  # fmt: skip
    ext = []
    if san:
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        ext = ["-extfile", f"{name}.ext"]
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-out", f"{name}.crt", *ext, cwd=d)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "wrongca")
    make_signed(d, "server", "ca", "IP:127.0.0.1,DNS:localhost")
    make_signed(d, "client", "ca", None)
    return d


@pytest.fixture
def tls_broker(broker_factory: Callable[..., Broker], pki: Path) -> tuple[Broker, int]:
    """A broker with a plain listener (for the test's subscriber) and a TLS one that wants client certs."""
    tls_port = free_port()
    b = broker_factory(
        f"listener {tls_port} 127.0.0.1\n"
        f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
        "require_certificate true\n"
    )
    return b, tls_port


def test_tls_with_client_certificate_delivers(tls_broker: tuple[Broker, int], pki: Path, tmp_path: Path) -> None:
    b, tls_port = tls_broker
    sub = Collector(b.host, b.port, [EVENTS])
    tls = {"ca": pki / "ca.crt", "cert": pki / "client.crt", "key": pki / "client.key"}
    pub = Publisher(make_cfg(tls_port, tls=tls), CAM, tmp_path)
    pub.start()
    try:
        assert wait_until(lambda: pub.status()["connected"], 10), pub.status()
        assert pub.status()["broker"].startswith("mqtts://")
        pub.publish_event(event(7))
        assert json.loads(sub.wait_count(EVENTS, 1)[0].payload)["id"] == "ev-00007"
    finally:
        pub.stop()
        sub.stop()


def test_tls_wrong_ca_is_refused_with_one_clear_error(
    tls_broker: tuple[Broker, int], pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, tls_port = tls_broker
    tls = {"ca": pki / "wrongca.crt", "cert": pki / "client.crt", "key": pki / "client.key"}
    pub = Publisher(make_cfg(tls_port, tls=tls), CAM, tmp_path)
    with caplog.at_level(logging.ERROR, logger="edgecam.mqtt.publish"):
        pub.start()
        try:
            assert wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in (pub.status()["last_error"] or ""), 10)
            wait_until(lambda: False, 1.0)  # let it retry a few times
            assert not pub.status()["connected"]
            pub.publish_event(event(1))  # still queues on disk
            assert pub.status()["queued"] == 1
        finally:
            pub.stop()
    errors = [r for r in caplog.records
              if r.name == "edgecam.mqtt.publish" and "CERTIFICATE_VERIFY_FAILED" in r.message]
    assert len(errors) == 1, [r.message for r in errors]  # repeats go to DEBUG


def test_tls_without_client_certificate_is_refused(tls_broker: tuple[Broker, int], pki: Path, tmp_path: Path) -> None:
    _, tls_port = tls_broker
    pub = Publisher(make_cfg(tls_port, tls={"ca": pki / "ca.crt"}), CAM, tmp_path)
    pub.start()
    try:
        assert wait_until(lambda: pub.status()["last_error"] is not None, 10)
        assert not pub.status()["connected"]
    finally:
        pub.stop()


@pytest.fixture
def auth_broker(broker_factory: Callable[..., Broker], tmp_path: Path) -> Broker:
    if PASSWD is None:
        pytest.skip("mosquitto_passwd not installed")
    pwfile = tmp_path / "passwd"
    for user, pw in [("cam", "correct-horse-9"), ("viewer", "viewer-pw-1")]:
        flags = ["-b"] if pwfile.exists() else ["-c", "-b"]
        subprocess.run([str(PASSWD), *flags, str(pwfile), user, pw], check=True, capture_output=True)
    pwfile.chmod(0o600)
    port = free_port()
    listener = f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {pwfile}"
    return broker_factory(listener=listener, port=port)


def test_password_from_env_connects(
    auth_broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("EDGECAM_MQTT_PASSWORD", "correct-horse-9")
    sub = Collector(auth_broker.host, auth_broker.port, [EVENTS], username="viewer", password="viewer-pw-1")
    pub = Publisher(make_cfg(auth_broker.port, username="cam"), CAM, tmp_path)
    with caplog.at_level(logging.DEBUG):
        pub.start()
        try:
            assert wait_until(lambda: pub.status()["connected"], 10), pub.status()
            pub.publish_event(event(3))
            assert sub.wait_count(EVENTS, 1)
            pub.publish_stats({"fps": 1.0})
        finally:
            pub.stop()
            sub.stop()
    assert "correct-horse-9" not in caplog.text


def test_wrong_password_one_clear_error_no_crash(
    auth_broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("EDGECAM_MQTT_PASSWORD", "wrong-password-1")
    pub = Publisher(make_cfg(auth_broker.port, username="cam"), CAM, tmp_path)
    with caplog.at_level(logging.DEBUG):
        pub.start()
        try:
            assert wait_until(lambda: "refused" in (pub.status()["last_error"] or ""), 10), pub.status()
            wait_until(lambda: False, 1.5)  # several retries with backoff
            status = pub.status()
            assert not status["connected"]
            assert "wrong-password-1" not in json.dumps(status)
        finally:
            pub.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "edgecam.mqtt.publish"]
    assert len(errors) == 1 and "refused the connection" in errors[0].getMessage()
    assert "wrong-password-1" not in caplog.text
