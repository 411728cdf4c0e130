"""The parts of the MQTT publisher, without a broker: the retained cache, the people announced to Home
Assistant, command routing, client setup."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from edgecam.mqtt.client import PublisherError, connect_options, make_client
from edgecam.mqtt.config import MqttConfig, TlsConfig
from edgecam.mqtt.retained import AnnouncedPeople, RetainedCache
from edgecam.mqtt.routing import CommandRouter
from edgecam.mqtt.topics import Topics

CAM = "door"


# ---------------------------------------------------------------------------------------------- retained


def test_retained_cache_sends_changes_only_and_republishes_everything() -> None:
    cache, sent = RetainedCache(), []

    def send(topic: str, payload: bytes, qos: int) -> None:
        sent.append((topic, payload, qos))

    assert cache.put("a", b"ON", 1, send) and not cache.put("a", b"ON", 1, send)
    assert cache.put("a", b"OFF", 1, send) and cache.put("b", b"3", 0, send)
    assert sent == [("a", b"ON", 1), ("a", b"OFF", 1), ("b", b"3", 0)]
    assert cache.get("a") == b"OFF" and cache.get("nothing") is None
    sent.clear()
    with cache.lock:
        cache.republish(send)
    assert sorted(sent) == [("a", b"OFF", 1), ("b", b"3", 0)]


def test_retained_cache_remembers_what_could_not_be_sent() -> None:
    """A message put while disconnected (``send`` drops it) is still remembered and republished on connect."""
    cache, sent = RetainedCache(), []
    assert cache.put("a", b"ON", 1, lambda *m: None)
    assert not cache.put("a", b"ON", 1, lambda *m: sent.append(m))  # unchanged: not sent again now
    with cache.lock:
        cache.republish(lambda *m: sent.append(m))
    assert sent == [("a", b"ON", 1)]


def test_announced_people_removals_survive_a_restart_and_expire(tmp_path: Path) -> None:
    path = tmp_path / "ha.json"
    assert AnnouncedPeople(path).update(["alice", "bob"], now=100.0) == []
    later = AnnouncedPeople(path, keep_s=50.0)  # the next run of the daemon
    assert later.update(["alice"], now=110.0) == ["bob"]
    assert later.update(["alice", "carol"], now=120.0) == ["bob"]  # still within keep_s of its removal
    assert later.update(["alice"], now=200.0) == ["carol"]  # bob expired; carol removed at 200
    assert json.loads(path.read_text())["announced"] == ["alice"]


def test_announced_people_unreadable_file_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ha.json"
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert AnnouncedPeople(path).update(["alice"], now=1.0) == []
    assert "unreadable" in caplog.text and json.loads(path.read_text())["announced"] == ["alice"]


# ---------------------------------------------------------------------------------------------- routing


class Routed:
    def __init__(self, allow_enroll: bool = False) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.echoed: list[tuple[str, str]] = []
        self.ha_online = 0
        self.router = CommandRouter(Topics("edgecam", CAM), allow_enroll, "homeassistant/status",
                                    self._online, lambda name, value: self.echoed.append((name, value)))
        self.router.callbacks.append(lambda cmd, payload: self.got.append((cmd, payload)))

    def _online(self) -> None:
        self.ha_online += 1


def test_router_hands_valid_commands_on_and_echoes_detection() -> None:
    r = Routed()
    r.router.route(f"edgecam/{CAM}/set/detection", b" off\n")
    r.router.route(f"edgecam/{CAM}/set/snapshot", b"")
    assert r.got == [("detection", b"OFF"), ("snapshot", b"")]
    assert r.echoed == [("detection", "OFF")]
    assert r.router.counts == {"commands": 2, "bad_commands": 0}


def test_router_counts_and_drops_bad_commands(caplog: pytest.LogCaptureFixture) -> None:
    r = Routed()
    bad = [("detection", b"maybe"), ("reboot", b"now"), ("detection", b"ON" * 600), ("enroll", b'{"name": "x"}')]
    with caplog.at_level(logging.WARNING):
        for cmd, payload in bad:
            r.router.route(f"edgecam/{CAM}/set/{cmd}", payload)
        r.router.route(None, b"ON")  # a topic that was not UTF-8
    assert r.got == [] and r.echoed == []
    assert r.router.counts == {"commands": 0, "bad_commands": len(bad) + 1}
    assert "enrollment over MQTT is off" in caplog.text


def test_router_enroll_only_when_allowed_and_other_topics_ignored() -> None:
    r = Routed(allow_enroll=True)
    r.router.route(f"edgecam/{CAM}/set/enroll", b'{"name": "alice"}')
    r.router.route("edgecam/other_cam/set/detection", b"ON")
    r.router.route("homeassistant/status", b"offline")
    r.router.route("homeassistant/status", b"online")
    assert r.got == [("enroll", b"alice")] and r.ha_online == 1


def test_router_a_failing_callback_does_not_echo_and_others_still_run() -> None:
    r = Routed()

    def boom(cmd: str, payload: bytes) -> None:
        raise RuntimeError("boom")

    r.router.callbacks.insert(0, boom)
    r.router.route(f"edgecam/{CAM}/set/detection", b"ON")
    assert r.got == [("detection", b"ON")] and r.echoed == []


# ---------------------------------------------------------------------------------------------- client


def test_client_setup_without_a_broker(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("EDGECAM_MQTT_PASSWORD", "s3cret-for-test")
    cfg = MqttConfig(host="broker.invalid", username="cam", protocol="5")
    client = make_client(cfg, CAM, f"edgecam/{CAM}/availability")
    assert client is not None and connect_options(cfg) == {"clean_start": True}
    assert connect_options(MqttConfig(host="broker.invalid", protocol="3.1.1")) == {}
    with caplog.at_level(logging.WARNING):
        make_client(MqttConfig(host="broker.invalid"), CAM, "edgecam/availability")
    assert "mqtt.username is not" in caplog.text


def test_client_setup_errors_name_the_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGECAM_MQTT_PASSWORD", raising=False)
    missing = tmp_path / "password"
    cfg = MqttConfig.model_construct(**{**MqttConfig(host="h").__dict__, "username": "cam", "password_file": missing})
    with pytest.raises(PublisherError, match="password_file"):
        make_client(cfg, CAM, "edgecam/availability")
    bad_ca = tmp_path / "ca.pem"
    bad_ca.write_text("not a certificate")
    tls = TlsConfig(ca=bad_ca)
    with pytest.raises(PublisherError, match="mqtt.tls"):
        make_client(MqttConfig(host="h", tls=tls), CAM, "edgecam/availability")
