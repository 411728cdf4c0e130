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

from edgecam.mqtt.publish import Publisher
from edgecam.mqtt.topics import device_id

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
    shown = {k: c for k, c in cfg["cmps"].items() if "name" in c}
    dev = device_id(CAM)
    assert {k: c for k, c in cfg["cmps"].items() if k not in shown} == {  # visitors off: their entities removed
        f"{dev}_visitor": {"p": "event"}, f"{dev}_visitor_face": {"p": "image"}}
    platforms = sorted(c["p"] for c in shown.values())
    assert platforms == ["binary_sensor"] * 3 + ["button"] + ["event"] * 3 + ["image"] + ["sensor"] * 5 + ["switch"]
    assert all(c["qos"] == 1 for c in shown.values()) and "qos" not in cfg  # per component, not device
    by_p = {c["p"]: c for k, c in cfg["cmps"].items()
            if k in {f"{dev}_{x}" for x in ("events", "faces", "detection", "snapshot", "snapshot_now")}}
    assert by_p["event"]["state_topic"] == f"edgecam/{CAM}/events" and by_p["event"]["event_types"]
    assert by_p["image"]["image_topic"] == f"edgecam/{CAM}/snapshot"
    assert by_p["image"]["content_type"] == "image/jpeg"
    assert by_p["switch"]["command_topic"] == f"edgecam/{CAM}/set/detection"
    assert by_p["sensor"]["state_topic"] == f"edgecam/{CAM}/face"
    assert by_p["switch"]["entity_category"] == by_p["button"]["entity_category"] == "config"
    diagnostic = {c["name"]: c for c in cfg["cmps"].values() if c.get("entity_category") == "diagnostic"}
    assert set(diagnostic) == {"Frames per second", "Events dropped", "Events queued", "Broker link"}
    assert all(c["state_topic"] == f"edgecam/{CAM}/stats" for c in diagnostic.values())
    people = {c["name"]: c for c in cfg["cmps"].values() if c.get("device_class") == "occupancy"}
    assert people["Bob Smith"]["state_topic"] == f"edgecam/{CAM}/Bob Smith"
    uids = [c["unique_id"] for c in shown.values()]
    assert len(set(uids)) == len(uids) and all(k == c["unique_id"] for k, c in shown.items())
    # every enrolled person starts OFF (retained), so HA never shows "unknown"
    assert sub.wait_count(f"edgecam/{CAM}/alice", 1)[0].payload == b"OFF"
    # a person removed later is sent as a bare component, which removes the entity in HA
    pub.publish_discovery(["alice"])
    sub.wait_count(DISCOVERY, 2)
    cmps = json.loads(sub.on(DISCOVERY)[-1].payload)["cmps"]
    gone = [c for c in cmps.values() if c["p"] == "binary_sensor" and "name" not in c]
    assert len(gone) == 1 and len(cmps) == 16


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
    from edgecam.mqtt.config import MqttConfig
    from edgecam.mqtt.publish import Publisher
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


# ---------------------------------------------------------------------------------------------- issue 12


def test_people_removed_while_the_daemon_was_down_leave_home_assistant(
        broker: Broker, collector: Callable[..., Collector], tmp_path: Path) -> None:
    sub = collector(["homeassistant/#", f"edgecam/{CAM}/+"])
    first = Publisher(make_cfg(broker.port), CAM, tmp_path)
    first.start()
    first.publish_discovery(["alice", "bob"])
    first.publish_state("bob", True)
    assert sub.wait_for(lambda msgs: any(m.topic == f"edgecam/{CAM}/bob" and m.payload == b"ON" for m in msgs))
    first.stop()
    # bob is removed from the gallery while the daemon is down; a new process knows only alice
    second = Publisher(make_cfg(broker.port), CAM, tmp_path)
    second.start()
    second.publish_discovery(["alice"])
    assert wait_until(lambda: second.status()["connected"], 10)
    cmps = json.loads(sub.wait_count(DISCOVERY, 2)[-1].payload)["cmps"]
    gone = [k for k, c in cmps.items() if c == {"p": "binary_sensor"}]
    assert gone == [f"{device_id(CAM)}_person_bob"]  # HA's removal form
    assert sub.wait_for(lambda msgs: any(m.topic == f"edgecam/{CAM}/bob" and m.payload == b"" for m in msgs))
    late = collector([f"edgecam/{CAM}/+"])  # retained: alice's OFF, nothing for bob any more
    assert late.wait_count(f"edgecam/{CAM}/alice", 1)
    assert late.sync(f"edgecam/{CAM}/sync")  # every retained message has arrived
    assert not late.on(f"edgecam/{CAM}/bob")
    saved = json.loads((tmp_path / f"ha-{device_id(CAM)}.json").read_text())
    assert saved["announced"] == ["alice"] and list(saved["removed"]) == ["bob"]
    before = len(sub.messages)
    second.publish_discovery(["alice", "bob"])  # enrolled again: a person, no removal, OFF again
    cmps = json.loads(sub.wait_count(DISCOVERY, 3)[-1].payload)["cmps"]
    assert cmps[f"{device_id(CAM)}_person_bob"]["name"] == "bob"
    assert sub.wait_for(lambda msgs: any(m.topic == f"edgecam/{CAM}/bob" and m.payload == b"OFF"
                                         for m in msgs[before:]))
    second.stop()


def test_two_prefixes_same_camera_name_are_two_clients_and_two_devices(
        broker: Broker, collector: Callable[..., Collector], tmp_path: Path) -> None:
    sub = collector(["homeassistant/#"])
    pubs = [Publisher(make_cfg(broker.port, prefix=prefix), CAM, tmp_path / prefix) for prefix in ("edgecam", "b")]
    for p in pubs:
        p.start()
        p.publish_discovery(["alice"])
    try:
        assert wait_until(lambda: all(p.status()["connected"] for p in pubs), 10)
        # the broker logs both connects; with one client id it would have logged the second one kicking the first
        assert wait_until(lambda: " as edgecam-door@b " in broker.log() and " as edgecam-door " in broker.log(), 5)
        assert all(p.status()["connected"] for p in pubs) and "already connected" not in broker.log()
        assert sub.wait_for(lambda msgs: len({m.topic for m in msgs}) >= 2)
        topics = {m.topic for m in sub.messages}
        assert topics == {DISCOVERY, "homeassistant/device/edgecam_b__door/config"}
        uids = [set(json.loads(sub.on(t)[-1].payload)["cmps"]) for t in topics]
        assert not uids[0] & uids[1]  # no entity shared between the two devices
    finally:
        for p in pubs:
            p.stop()


def test_recognitions_once_per_track_and_name(broker: Broker, collector: Callable[..., Collector],
                                              tmp_path: Path) -> None:
    from edgecam.outputs import MqttEvents

    # recognition() alone needs no publisher; a recognizer runs: an unvoted face is not "unknown" yet
    mqtt = MqttEvents(None, 90, recognizer_runs=True)  # type: ignore[arg-type]

    def ev(kind: str, track: str, name: str, status: str, votes: int) -> dict[str, Any] | None:
        return mqtt.recognition({"type": kind, "id": track, "identity": name, "status": status, "camera": CAM,
                                 "frames": {"votes": votes}, "timestamp": 1.0, "start": 0.5, "scores": {}})

    said = [ev("new", "t1", "unknown", "unknown", 0), ev("update", "t1", "alice", "known", 3),
            ev("update", "t1", "alice", "known", 4), ev("end", "t1", "alice", "known", 5),
            ev("new", "t2", "unknown", "unknown", 2), ev("update", "t2", "unknown", "unknown", 3),
            ev("end", "t2", "unknown", "unknown", 3), ev("new", "t3", "bob", "uncertain", 1),
            ev("end", "t3", "bob", "uncertain", 2)]
    assert [(s["event_type"], s["identity"], s["id"]) if s else None for s in said] == [
        None, ("recognized", "alice", "t1"), None, None, ("unknown", "unknown", "t2"), None, None, None,
        ("unknown", "unknown", "t3")]
    mqtt.recognizer_runs = False  # no recognizer: every face is unknown from its first event
    assert ev("new", "t4", "unknown", "unknown", 0)["event_type"] == "unknown"  # type: ignore[index]

    sub = collector([f"edgecam/{CAM}/recognized", f"edgecam/{CAM}/last_recognized"])
    pub = Publisher(make_cfg(broker.port), CAM, tmp_path)
    pub.start()
    try:
        for s in said:
            if s is not None:
                pub.publish_recognition(s)
        got = sub.wait_count(f"edgecam/{CAM}/recognized", 3)
        assert [json.loads(m.payload)["event_type"] for m in got] == ["recognized", "unknown", "unknown"]
        assert not any(m.retain for m in got)  # HA event entities ignore retained messages
        last = collector([f"edgecam/{CAM}/last_recognized"]).wait_count(f"edgecam/{CAM}/last_recognized", 1)[0]
        assert last.retain and json.loads(last.payload)["identity"] == "alice"
    finally:
        pub.stop()


HA_PYTHON = os.environ.get("EDGECAM_HA_PYTHON", "")
HA_CHECK = Path(__file__).with_name("ha_discovery_check.py")


def _ha_python() -> str | None:
    """A Python that imports Home Assistant 2025.4+ (``EDGECAM_HA_PYTHON``, or this one)."""
    for exe in (HA_PYTHON, sys.executable):
        if exe and subprocess.run([exe, "-c", "import homeassistant.components.mqtt.schemas"],
                                  capture_output=True, timeout=120).returncode == 0:
            return exe
    return None


@pytest.mark.skipif(_ha_python() is None, reason="Home Assistant not importable: set EDGECAM_HA_PYTHON to a Python "
                    "with homeassistant==2025.4.* installed (it needs Python >= 3.13; see README)")
def test_discovery_payloads_pass_home_assistants_own_schemas(tmp_path: Path) -> None:
    from edgecam.mqtt.topics import Topics, discovery_config

    payloads = {
        "default prefix, people": discovery_config(Topics("edgecam", CAM), ["alice", "Bob Smith"], qos=1),
        "other prefix, per-camera availability, removals, qos 2": discovery_config(
            Topics("site/b", "front-door", per_camera_availability=True), ["carol"], ["dave", "Bob Smith"], qos=2),
        "nobody enrolled": discovery_config(Topics("edgecam", CAM), []),
    }
    exe = _ha_python()
    assert exe is not None
    r = subprocess.run([exe, str(HA_CHECK)], input=json.dumps(payloads), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["homeassistant"].startswith("2025.") or report["homeassistant"] >= "2025"
    for name, result in report["payloads"].items():
        assert result["errors"] == [], (name, result["errors"])
        assert result["dropped_keys"] == [], (name, result["dropped_keys"])  # keys HA would silently ignore
    assert report["payloads"]["nobody enrolled"]["components"] == 12
    assert report["payloads"]["other prefix, per-camera availability, removals, qos 2"]["removed"] == 4  # 2 visitor
