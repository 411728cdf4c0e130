"""Security of the running daemon (real ``edgecam`` processes, real mosquitto): TLS with a test CA, a wrong CA,
password auth with an ACL that confines the daemon to its prefix, wrong credentials, secrets kept out of every
output, and enrollment over MQTT off by default.

Publisher-level TLS and password tests live in ``tests/test_mqtt_security.py`` (whose CA fixture is reused).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from conftest import Broker, Collector, FaultReport, NotifySocket, free_port, needs_mosquitto, wait_until
from faultlib import (
    CLIP,
    CLIP_REASON,
    HAVE_CLIP_AND_DETECTOR,
    Daemon,
    long_clip,
    outbox_rows,
    read_jsonl,
    received_until_complete,
    replay_source,
    tally,
    traceback_free,
    write_config,
)
from paho.mqtt.enums import CallbackAPIVersion
from test_mqtt_security import OPENSSL, PASSWD, pki  # noqa: F401 - pki is a fixture

from edgecam.mqtt.config import MqttConfig

pytestmark = [needs_mosquitto, pytest.mark.skipif(not HAVE_CLIP_AND_DETECTOR, reason=CLIP_REASON),
              pytest.mark.skipif(OPENSSL is None or PASSWD is None, reason="needs openssl and mosquitto_passwd")]

CAM = "door"
EVENTS = f"edgecam/{CAM}/events"
CAM_PASSWORD = "cam-Pa55-6ce1f0"  # noqa: S105 - test credentials
VIEWER_PASSWORD = "viewer-Pa55-77ab"  # noqa: S105
ADMIN_PASSWORD = "admin-Pa55-19e0"  # noqa: S105
GUEST_PASSWORD = "guest-Pa55-5d2c"  # noqa: S105
RTSP_PASSWORD = "rtsp-Secret-42f9"  # noqa: S105
ACL = f"""\
# the daemon: writes only under its prefix (and its HA discovery config), reads only its command topics
user cam
topic write edgecam/{CAM}/#
topic write edgecam/availability
topic write homeassistant/device/edgecam_{CAM}/config
topic read edgecam/{CAM}/set/#
topic read homeassistant/status
# Home Assistant: reads everything, may command the camera
user admin
topic read #
topic write edgecam/{CAM}/set/#
# a dashboard: reads the camera's topics, may not command it
user guest
topic read edgecam/#
user viewer
topic read #
"""
ERROR_LINE = re.compile(r" ERROR ")


@pytest.fixture
def tls_broker(broker_factory: Callable[..., Broker], pki: Path) -> tuple[Broker, int, int]:  # noqa: F811
    """A plain listener (the test's subscriber), a TLS listener that requires client certificates and one that
    does not."""
    with_cert, server_only = free_port(), free_port()
    server = f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
    b = broker_factory(f"listener {with_cert} 127.0.0.1\n{server}require_certificate true\n"
                       f"listener {server_only} 127.0.0.1\n{server}")
    return b, with_cert, server_only


@pytest.mark.parametrize(("ca", "client_cert"), [("ca", True), ("ca", False), ("wrongca", True)],
                         ids=["client-cert", "server-only", "wrong-ca"])
def test_daemon_over_tls(tls_broker: tuple[Broker, int, int], pki: Path, tmp_path: Path,  # noqa: F811
                         fault_report: FaultReport, ca: str, client_cert: bool) -> None:
    """The daemon verifies the broker against the configured CA and, where the broker wants one, presents its
    client certificate; with the wrong CA it refuses the broker with one clear error, keeps its events on disk and
    exits 1 (a replay that leaves events undelivered says so)."""
    broker, with_cert, server_only = tls_broker
    port = with_cert if client_cert else server_only
    sub = Collector(broker.host, broker.port, [EVENTS])
    tls = {"ca": str(pki / f"{ca}.crt")}
    if client_cert:
        tls.update(cert=str(pki / "client.crt"), key=str(pki / "client.key"))
    cfg = write_config(tmp_path / "edgecam.yaml", broker, mqtt={"port": port, "tls": tls})
    events = tmp_path / "events.jsonl"
    d = Daemon(["replay", str(CLIP), "--config", str(cfg), "--camera", CAM, "--events", str(events)], tmp_path, ca)
    try:
        assert d.wait(120) == (0 if ca == "ca" else 1), d.stderr()[-3000:]
    finally:
        d.kill()
    produced, stderr = read_jsonl(events), d.stderr()
    errors = [line for line in stderr.splitlines() if ERROR_LINE.search(line)]
    if ca == "ca":
        t = tally(produced, received_until_complete(sub, EVENTS, produced, 30))
        what = "a client certificate" if client_cert else "no client certificate"
        fault_report.add("security", f"TLS with a test CA and {what}", **t.figures())
        assert f"MQTT: connected to mqtts://127.0.0.1:{port}" in stderr
        assert t.lost == 0 and not errors, errors
    else:
        queued = re.search(r"(\d+) queued on disk for the next start", stderr)
        fault_report.add("security", "TLS with the wrong CA: refused", error_lines=len(errors),
                         queued_on_disk=int(queued.group(1)) if queued else None)
        assert len(errors) == 1 and "CERTIFICATE_VERIFY_FAILED" in errors[0], errors
        assert queued and int(queued.group(1)) == outbox_rows(produced) > 0 and not sub.on(EVENTS)
    sub.stop()
    assert traceback_free(stderr)


def connect_reason(broker: Broker, username: str | None = None, password: str | None = None) -> str:
    """The broker's CONNACK reason for these credentials (MQTT 5)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if username:
        client.username_pw_set(username, password)
    reasons: list[str] = []
    client.on_connect = lambda c, u, f, reason, p: reasons.append(str(reason))
    client.connect(broker.host, broker.port, keepalive=5)
    deadline = time.monotonic() + 5
    while not reasons and time.monotonic() < deadline:
        client.loop(0.1)
    client.disconnect()
    return reasons[0] if reasons else "no answer"


@pytest.fixture
def acl_broker(broker_factory: Callable[..., Broker], tmp_path: Path) -> Broker:
    """Password file + ACL, no anonymous clients."""
    pwfile, aclfile = tmp_path / "passwd", tmp_path / "acl"
    for i, (user, pw) in enumerate([("cam", CAM_PASSWORD), ("admin", ADMIN_PASSWORD), ("guest", GUEST_PASSWORD),
                                    ("viewer", VIEWER_PASSWORD)]):
        flags = ["-b"] if i else ["-c", "-b"]
        subprocess.run([str(PASSWD), *flags, str(pwfile), user, pw], check=True, capture_output=True)
    aclfile.write_text(ACL)
    port = free_port()
    return broker_factory(listener=f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {pwfile}\n"
                                   f"acl_file {aclfile}", port=port)


def test_acl_confines_the_daemon_and_its_commands(acl_broker: Broker, tmp_path: Path, fault_report: FaultReport,
                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    """With the ACL the daemon delivers everything under its prefix; a user without write access to its
    command topics cannot switch it off, one with access can; enrollment over MQTT stays off by default;
    anonymous clients are refused."""
    from test_recognize import write_folder

    from edgecam.manifest import load_manifest
    from edgecam.recognize import Gallery

    assert connect_reason(acl_broker) == "Not authorized"  # anonymous
    assert connect_reason(acl_broker, "guest", "guessed") == "Not authorized"  # mosquitto 2.0 says the same
    viewer = Collector(acl_broker.host, acl_broker.port, ["#"], username="viewer", password=VIEWER_PASSWORD)
    admin = Collector(acl_broker.host, acl_broker.port, [f"edgecam/{CAM}/detection"], username="admin",
                      password=ADMIN_PASSWORD)
    guest = Collector(acl_broker.host, acl_broker.port, ["edgecam/#"], username="guest", password=GUEST_PASSWORD)
    model = write_folder(tmp_path / "emb", {"type": "embedding", "dim": 3, "thresholds": {"known": 0.95,
                                                                                          "unknown": 0.8}})
    gallery = tmp_path / "gallery.npz"
    Gallery(str(load_manifest(model).data["sha256"]), 3).save(gallery)
    before = gallery.read_bytes()
    clip = long_clip(tmp_path_factory.mktemp("clips") / "corridor_x2.mp4", 2)
    cfg = write_config(tmp_path / "edgecam.yaml", acl_broker, camera={"name": CAM, "source": replay_source(clip)},
                       mqtt={"username": "cam"}, stats_interval_s=1,
                       recognizer={"type": "identity", "model": str(model), "gallery": str(gallery)})
    events = tmp_path / "events.jsonl"
    d = Daemon(["run", "--config", str(cfg), "--events", str(events)], tmp_path, "daemon",
               env={"EDGECAM_MQTT_PASSWORD": CAM_PASSWORD})

    def last_stats() -> dict:
        stats = [json.loads(m.payload) for m in viewer.on(f"edgecam/{CAM}/stats")]
        return stats[-1] if stats else {}

    try:
        assert viewer.wait_for(lambda ms: any(m.topic == f"edgecam/{CAM}/stats" for m in ms), 60), d.stderr()[-3000:]
        guest.publish(f"edgecam/{CAM}/set/detection", b"OFF")  # denied by the ACL: silently dropped by the broker
        admin.publish(f"edgecam/{CAM}/set/enroll", json.dumps({"name": "mallory"}))
        assert wait_until(lambda: last_stats().get("mqtt", {}).get("bad_commands", 0) >= 1, 10), last_stats()
        assert last_stats()["mqtt"]["commands"] == 0  # the guest's OFF never reached the daemon
        admin.publish(f"edgecam/{CAM}/set/detection", b"OFF")
        assert admin.wait_for(lambda ms: ms and ms[-1].payload == b"OFF", 10)
        assert d.wait(60) == 0, d.stderr()[-3000:]
    finally:
        d.kill()
        for c in (viewer, admin, guest):
            c.stop()
    produced, stderr = read_jsonl(events), d.stderr()
    t = tally(produced, received_until_complete(viewer, EVENTS, produced, 10))
    fault_report.add("security", "password + ACL (daemon confined to its prefix)", guest_command_reached_daemon=0,
                     enroll_refused_by_default=int("enrollment over MQTT is off" in stderr), **t.figures())
    assert t.lost == 0 and t.in_order and last_stats()["mqtt"]["rejected"] == 0
    assert gallery.read_bytes() == before and MqttConfig(host="x").allow_enroll is False
    assert "enrollment over MQTT is off" in stderr and "detection switched off" in stderr
    assert traceback_free(stderr) and not [line for line in stderr.splitlines() if ERROR_LINE.search(line)]


def test_acl_refuses_writes_outside_the_prefix(acl_broker: Broker, tmp_path: Path, fault_report: FaultReport) -> None:
    """A daemon configured (wrongly) to publish outside its ACL: the broker refuses each event (MQTT 5 PUBACK
    'Not authorized'), the daemon says so once and keeps running."""
    viewer = Collector(acl_broker.host, acl_broker.port, ["#"], username="viewer", password=VIEWER_PASSWORD)
    cfg = write_config(tmp_path / "edgecam.yaml", acl_broker, mqtt={"username": "cam", "prefix": "intruder"})
    d = Daemon(["replay", str(CLIP), "--config", str(cfg), "--camera", CAM], tmp_path, "d",
               env={"EDGECAM_MQTT_PASSWORD": CAM_PASSWORD})
    try:
        assert d.wait(120) == 0, d.stderr()[-3000:]
    finally:
        d.kill()
        viewer.stop()
    stderr = d.stderr()
    errors = [line for line in stderr.splitlines() if ERROR_LINE.search(line)]
    fault_report.add("security", "ACL: writes outside the prefix refused by the broker", error_lines=len(errors),
                     messages_that_got_through=len([m for m in viewer.messages if m.topic.startswith("intruder/")]))
    assert len(errors) == 1 and "rejects events on intruder/door/events: Not authorized" in errors[0], errors
    assert not [m for m in viewer.messages if m.topic.startswith("intruder/")]
    assert traceback_free(stderr)


def test_wrong_password_one_error_backoff_no_crash(acl_broker: Broker, tmp_path: Path,
                                                   fault_report: FaultReport) -> None:
    """Wrong credentials: one ERROR line, reconnects with backoff (not a busy loop), events kept on disk."""
    cfg = write_config(tmp_path / "edgecam.yaml", acl_broker, mqtt={"username": "cam", "reconnect_min_s": 0.2,
                                                                     "reconnect_max_s": 1.0})
    d = Daemon(["replay", str(CLIP), "--config", str(cfg), "--camera", CAM, "--speed", "realtime"], tmp_path, "d",
               env={"EDGECAM_MQTT_PASSWORD": "not-the-password"})
    try:
        assert d.wait(120) == 1, d.stderr()[-3000:]  # a replay that leaves its events on disk exits 1
    finally:
        d.kill()
    stderr = d.stderr()
    errors = [line for line in stderr.splitlines() if ERROR_LINE.search(line)]
    attempts = acl_broker.log().count("not authorised")
    fault_report.add("security", "wrong password (6 s replay)", error_lines=len(errors), connect_attempts=attempts)
    assert len(errors) == 1 and "refused the connection" in errors[0], errors
    assert 2 <= attempts <= 20, attempts  # 0.2 s doubling to 1 s over ~6 s: a handful, not thousands
    assert re.search(r"[1-9]\d* queued on disk for the next start", stderr) and traceback_free(stderr)
    assert "not-the-password" not in stderr


def test_secrets_never_appear_anywhere(acl_broker: Broker, notify_socket: Callable[..., NotifySocket],
                                       tmp_path: Path, fault_report: FaultReport) -> None:
    """The broker password (from the environment and from a file) and an RTSP camera password are grepped
    for in everything the daemon writes: logs at debug level, stdout, events, stats and every other MQTT
    message, the systemd STATUS texts, the outbox database and the error messages of bad configs."""
    viewer = Collector(acl_broker.host, acl_broker.port, ["#"], username="viewer", password=VIEWER_PASSWORD)
    systemd = notify_socket(watchdog_s=5.0)
    outputs: list[str] = []
    # 1. a replay with the password from the environment, debug logs, events file, stats
    cfg = write_config(tmp_path / "a.yaml", acl_broker, stats_interval_s=1)
    a = Daemon(["--log-level", "debug", "replay", str(CLIP), "--config", str(cfg), "--camera", CAM, "--speed",
                "realtime", "--mqtt", f"mqtt://cam@127.0.0.1:{acl_broker.port}", "--events",
                str(tmp_path / "a.jsonl")], tmp_path, "a", env={"EDGECAM_MQTT_PASSWORD": CAM_PASSWORD, **systemd.env})
    assert a.wait(120) == 0, a.stderr()[-3000:]
    # 2. a camera behind an RTSP URL with credentials (unreachable), the password from a file, then SIGTERM
    (tmp_path / "pw").write_text(CAM_PASSWORD + "\n")
    source = {"type": "opencv", "device": f"rtsp://admin:{RTSP_PASSWORD}@127.0.0.1:{free_port()}/stream",
              "stall_timeout_s": 1, "reconnect_initial_s": 0.2, "reconnect_max_s": 0.5}
    cfg = write_config(tmp_path / "b.yaml", acl_broker, camera={"name": CAM, "source": source},
                       mqtt={"username": "cam", "password_file": str(tmp_path / "pw")}, stats_interval_s=1)
    b = Daemon(["--log-level", "debug", "run", "--config", str(cfg)], tmp_path, "b", env=systemd.env)
    try:
        assert wait_until(lambda: b.stderr().count("open failed") >= 2, 30), b.stderr()[-3000:]
        b.terminate(30)
    finally:
        b.kill()
    # 3. the same, wrong password (an error message about the broker), and bad configs holding secrets
    (tmp_path / "pw").write_text("wrong-" + CAM_PASSWORD + "\n")
    c = Daemon(["replay", str(CLIP), "--config", str(cfg)], tmp_path, "c")
    assert c.wait(60) == 1, c.stderr()[-3000:]  # refused: the events stay on disk
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"mqtt:\n  host: broker\n  password: {CAM_PASSWORD}\n"
                   f"camera:\n  name: rtsp://admin:{RTSP_PASSWORD}@cam/stream\n")
    d = Daemon(["check-config", str(bad)], tmp_path, "d")
    assert d.wait(60) == 2
    e = Daemon(["replay", str(CLIP), "--mqtt", f"mqtt://cam:{CAM_PASSWORD}@broker:1883"], tmp_path, "e")
    assert e.wait(60) == 2
    viewer.wait_for(lambda ms: any(m.topic == "edgecam/availability" and m.payload == b"offline" for m in ms), 10)
    viewer.stop()
    for proc in (a, b, c, d, e):
        outputs += [proc.stderr(), proc.stdout()]
    outputs += [(tmp_path / "a.jsonl").read_text(), "\n".join(systemd.texts())]
    outputs += [m.payload.decode("utf-8", "replace") + m.topic for m in viewer.messages]
    outputs += [p.read_bytes().decode("latin-1") for p in (tmp_path / "state").iterdir() if p.is_file()]
    text = "\n".join(outputs)
    leaks = {s: text.count(s) for s in (CAM_PASSWORD, RTSP_PASSWORD)}
    fault_report.add("security", "secrets grep (logs, stdout, events, MQTT, STATUS, outbox, errors)",
                     bytes_searched=len(text), mqtt_messages=len(viewer.messages), leaks=sum(leaks.values()))
    assert leaks == {CAM_PASSWORD: 0, RTSP_PASSWORD: 0}, leaks
    assert "rtsp://admin:***@" in b.stderr() and "refused the connection" in c.stderr()
    assert "***" in d.stderr() and "mqtt://cam:***@broker" in e.stderr()
    assert any(m.topic == f"edgecam/{CAM}/stats" for m in viewer.messages) and len(read_jsonl(tmp_path / "a.jsonl"))
