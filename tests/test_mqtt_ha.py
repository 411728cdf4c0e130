"""Home Assistant discovery, command topics and the last will, against a real mosquitto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker, Collector, wait_until
from test_publish import CAM, make_cfg

from edgecam.publish import Publisher
from edgecam.topics import device_id

DISCOVERY = f"homeassistant/device/{device_id(CAM)}/config"


@pytest.fixture
def pub(broker: Broker, tmp_path: Path) -> Any:
    p = Publisher(make_cfg(broker.port), CAM, tmp_path)
    p.start()
    assert wait_until(lambda: p.status()["connected"], 10)
    yield p
    p.stop()


def test_discovery_config_retained_and_complete(pub: Publisher, collector: Callable[..., Collector]) -> None:
    sub = collector(["homeassistant/#", f"edgecam/{CAM}/+"])
    pub.publish_discovery(["alice", "Bob Smith", "alice"])
    assert sub.wait_count(DISCOVERY, 1)
    late = collector([DISCOVERY])  # subscribes after: gets the retained copy
    msg = late.wait_count(DISCOVERY, 1)[0]
    assert msg.retain and msg.payload == sub.on(DISCOVERY)[0].payload
    cfg = json.loads(msg.payload)
    assert cfg["dev"]["ids"] == [device_id(CAM)] and cfg["dev"]["name"] and cfg["o"]["name"] == "edgecam"
    assert cfg["availability"][0]["topic"] == "edgecam/availability"
    platforms = sorted(c["p"] for c in cfg["cmps"].values())
    assert platforms == ["binary_sensor", "binary_sensor", "button", "event", "image", "sensor", "switch"]
    by_p = {c["p"]: c for c in cfg["cmps"].values()}
    assert by_p["event"]["state_topic"] == f"edgecam/{CAM}/events" and by_p["event"]["event_types"]
    assert by_p["image"]["image_topic"] == f"edgecam/{CAM}/snapshot"
    assert by_p["image"]["content_type"] == "image/jpeg"
    assert by_p["switch"]["command_topic"] == f"edgecam/{CAM}/set/detection"
    assert by_p["sensor"]["state_topic"] == f"edgecam/{CAM}/face"
    people = {c["name"]: c for c in cfg["cmps"].values() if c["p"] == "binary_sensor"}
    assert people["Bob Smith"]["state_topic"] == f"edgecam/{CAM}/Bob Smith"
    uids = [c["unique_id"] for c in cfg["cmps"].values()]
    assert len(set(uids)) == len(uids) and all(k == c["unique_id"] for k, c in cfg["cmps"].items())
    # every enrolled person starts OFF (retained), so HA never shows "unknown"
    assert sub.wait_count(f"edgecam/{CAM}/alice", 1)[0].payload == b"OFF"
    # a person removed later is sent as a bare component, which removes the entity in HA
    pub.publish_discovery(["alice"])
    sub.wait_count(DISCOVERY, 2)
    cmps = json.loads(sub.on(DISCOVERY)[-1].payload)["cmps"]
    gone = [c for c in cmps.values() if c["p"] == "binary_sensor" and "name" not in c]
    assert len(gone) == 1 and len(cmps) == 7


def test_availability_per_camera(broker: Broker, collector: Callable[..., Collector], tmp_path: Path) -> None:
    sub = collector(["edgecam/#", "homeassistant/#"])
    p = Publisher(make_cfg(broker.port, availability_per_camera=True), CAM, tmp_path)
    p.start()
    p.publish_discovery([])
    assert wait_until(lambda: p.status()["connected"], 10)
    p.stop()
    assert [m.payload for m in sub.wait_count(f"edgecam/{CAM}/availability", 2)] == [b"online", b"offline"]
    assert not sub.on("edgecam/availability")
    cfg = json.loads(sub.wait_count(DISCOVERY, 1)[0].payload)
    assert cfg["availability"][0]["topic"] == f"edgecam/{CAM}/availability"


def test_discovery_off(broker: Broker, collector: Callable[..., Collector], tmp_path: Path) -> None:
    p = Publisher(make_cfg(broker.port, discovery=False), CAM, tmp_path)
    p.start()
    try:
        p.publish_discovery(["alice"])
        sub = collector(["homeassistant/#"])
        assert not sub.wait_for(lambda ms: bool(ms), timeout=0.5)
    finally:
        p.stop()


def test_discovery_resent_when_home_assistant_restarts(pub: Publisher, collector: Callable[..., Collector]) -> None:
    pub.publish_discovery([])
    sub = collector([DISCOVERY])
    sub.wait_count(DISCOVERY, 1)
    sub.publish("homeassistant/status", "online")
    assert len(sub.wait_count(DISCOVERY, 2)) >= 2


def test_commands_valid_ones_reach_the_callback(pub: Publisher, collector: Callable[..., Collector]) -> None:
    got: list[tuple[str, bytes]] = []
    pub.on_command(lambda cmd, payload: got.append((cmd, payload)))
    sub = collector([f"edgecam/{CAM}/detection"])
    sub.publish(f"edgecam/{CAM}/set/detection", " off\n")
    sub.publish(f"edgecam/{CAM}/set/snapshot", "PRESS")
    assert wait_until(lambda: len(got) == 2, 5)
    assert got == [("detection", b"OFF"), ("snapshot", b"")]
    assert sub.wait_count(f"edgecam/{CAM}/detection", 1)[0].payload == b"OFF"  # state echoed for HA's switch


def test_bad_commands_are_logged_and_ignored(
    pub: Publisher, collector: Callable[..., Collector], caplog: pytest.LogCaptureFixture
) -> None:
    got: list[tuple[str, bytes]] = []
    pub.on_command(lambda cmd, payload: got.append((cmd, payload)))
    sub = collector(["nothing/here"])
    bad = [
        ("detection", b"maybe"),
        ("detection", b"\xff\xfe"),
        ("detection", b"ON" * 600),
        ("reboot", b"now"),
        ("detection/extra", b"ON"),
        ("enroll", b'{"name": "mallory"}'),  # off by default
    ]
    for cmd, payload in bad:
        sub.publish(f"edgecam/{CAM}/set/{cmd}", payload)
    sub.publish(f"edgecam/{CAM}/set/detection", "ON")  # still alive and listening after the junk
    assert wait_until(lambda: got == [("detection", b"ON")], 5), got
    assert wait_until(lambda: pub.status()["bad_commands"] == len(bad), 5)
    warnings = [r.getMessage() for r in caplog.records if "ignored command" in r.getMessage()]
    assert len(warnings) == len(bad)
    assert any("enrollment over MQTT is off" in w for w in warnings)


def test_failing_callback_does_not_kill_the_client(pub: Publisher, collector: Callable[..., Collector]) -> None:
    calls: list[bytes] = []

    def boom(cmd: str, payload: bytes) -> None:
        calls.append(payload)
        raise RuntimeError("app bug")

    pub.on_command(boom)
    sub = collector(["nothing/here"])
    sub.publish(f"edgecam/{CAM}/set/detection", "ON")
    sub.publish(f"edgecam/{CAM}/set/detection", "OFF")
    assert wait_until(lambda: calls == [b"ON", b"OFF"], 5)
    assert pub.status()["connected"]


def test_enroll_command_when_allowed(broker: Broker, collector: Callable[..., Collector], tmp_path: Path) -> None:
    p = Publisher(make_cfg(broker.port, allow_enroll=True), CAM, tmp_path)
    got: list[tuple[str, bytes]] = []
    p.on_command(lambda cmd, payload: got.append((cmd, payload)))
    p.start()
    try:
        assert wait_until(lambda: p.status()["connected"], 10)
        sub = collector(["nothing/here"])
        sub.publish(f"edgecam/{CAM}/set/enroll", '{"name": "Zoë"}')
        sub.publish(f"edgecam/{CAM}/set/enroll", '{"name": "../../etc"}')
        sub.publish(f"edgecam/{CAM}/set/enroll", "[1, 2]")
        assert wait_until(lambda: p.status()["bad_commands"] == 2, 5)
        assert got == [("enroll", "Zoë".encode())]
    finally:
        p.stop()


DAEMON = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from edgecam.mqtt_config import MqttConfig
    from edgecam.publish import Publisher
    cfg = MqttConfig(host="127.0.0.1", port=int(sys.argv[1]), keepalive=5, reconnect_min_s=0.1)
    p = Publisher(cfg, "door", Path(sys.argv[2]))
    p.start()
    while not p.status()["connected"]:
        time.sleep(0.02)
    print("connected", flush=True)
    time.sleep(60)
    """
)


def test_last_will_offline_on_kill_9(broker: Broker, collector: Callable[..., Collector], tmp_path: Path) -> None:
    sub = collector(["edgecam/availability"])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", DAEMON, str(broker.port), str(tmp_path)], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "connected"
        assert sub.wait_for(lambda ms: bool(ms) and ms[-1].payload == b"online", 5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        assert sub.wait_for(lambda ms: ms[-1].payload == b"offline", 10)
    finally:
        if proc.poll() is None:
            proc.kill()
    late = collector(["edgecam/availability"])  # the will is retained
    msg = late.wait_count("edgecam/availability", 1)[0]
    assert msg.retain and msg.payload == b"offline"
